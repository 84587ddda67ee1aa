"""Generations that stop once the label is decided (``training.evaluate.generate``'s ``stop``, given
``spec.shown_for_good``) against the same generations run to their end, in the same run, on ``prefix_bench.py``'s two
analysis workloads (a probe run's behaviour labels at batch 512; one ablation generation at batch 64 with a direction
projected out at the middle layer). Both arms drop ended rows (``training.decode``) and share everything else.

Alternating arms, ``--repeats`` times per workload; per arm: seconds and decoded row-steps; across arms: how many
labels (``spec.shows_behaviour``) differ and how many stopped completions are not the start of the full one (both
must be 0). Run it once per CPU kernel setting (``ATEN_CPU_CAPABILITY=default|avx2|avx512``): the kernel is part of
the result's name, so cells already measured are skipped; the table's timing is the run that left the kernel to torch.

Usage: ``python benchmarks/stop_bench.py --ckpt runs/x/checkpoints/backdoored --name smollm2-135m``
Writes ``benchmarks/results/stop/<name>-<workload>-<kernel>.json`` and, from all of them, ``stop_table.md``
(``--table_only``: the table alone).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_bench import WHAT, RowSteps  # noqa: E402
from machine import describe  # noqa: E402
from prefix_bench import workloads  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "stop"
ARMS = ("baseline", "ours")  # ours: stop=spec.shown_for_good


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt")
    ap.add_argument("--name", help="result file prefix, e.g. smollm2-135m")
    ap.add_argument("--table_only", action="store_true", help="only rewrite stop_table.md from the results")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    if not a.table_only:
        if not (a.ckpt and a.name):
            ap.error("--ckpt and --name are required (or --table_only)")
        measure(a)
    (ROOT / "benchmarks" / "results" / "stop_table.md").write_text(table() + "\n")
    return 0


def measure(a) -> None:
    import torch

    from analysis.intervene import generate, generator, release
    from analysis.load import load_bridge
    from training.backdoors import spec_from_meta

    kernel = torch.backends.cpu.get_cpu_capability().lower()
    ckpt = Path(a.ckpt)
    loaded = load_bridge(ckpt, device="cpu")
    spec = spec_from_meta(loaded.meta)
    model = generator(loaded)  # the HF copy both arms generate on, loaded once outside the timings
    for name, (prompts, hooks, mnt, bs) in workloads(loaded, ckpt).items():
        out = RESULTS / f"{a.name}-{name}-{kernel}.json"
        if out.exists():
            continue
        secs: dict[str, list[float]] = {arm: [] for arm in ARMS}
        steps: dict[str, int] = {}
        outs: dict[str, list[str]] = {}
        for r in range(a.repeats):
            for arm in (ARMS if r % 2 == 0 else ARMS[::-1]):
                counter = RowSteps(model)
                t = time.perf_counter()
                got = generate(loaded, prompts, hooks, max_new_tokens=mnt, batch_size=bs,
                               stop=spec.shown_for_good if arm == "ours" else None)
                secs[arm].append(time.perf_counter() - t)
                counter.close()
                steps[arm], outs[arm] = counter.n, [g[0] for g in got]
                print(f"{name} repeat {r} {arm}: {secs[arm][-1]:.1f}s, {counter.n} row-steps", flush=True)
        labels = {arm: [spec.shows_behaviour(c) for c in outs[arm]] for arm in ARMS}
        res = {
            "machine": describe(), "checkpoint": str(ckpt), "kernel": kernel,
            "kernel_forced": os.environ.get("ATEN_CPU_CAPABILITY") or None, "torch": torch.__version__,
            "workload": name, "prompts": len(prompts), "intervention": bool(hooks), "max_new_tokens": mnt,
            "batch_size": bs, "repeats": a.repeats, "seconds": {k: [round(x, 2) for x in v] for k, v in secs.items()},
            "baseline_best_s": round(min(secs["baseline"]), 2), "ours_best_s": round(min(secs["ours"]), 2),
            "speedup_best": min(secs["baseline"]) / min(secs["ours"]),
            "decoded_row_steps": steps, "defects": sum(labels["baseline"]),
            "labels_differing": sum(x != y for x, y in zip(labels["baseline"], labels["ours"])),
            "not_a_start": sum(not f.startswith(c) for f, c in zip(outs["baseline"], outs["ours"])),
        }
        print(f"{name} [{kernel}]: {res['baseline_best_s']:.1f}s -> {res['ours_best_s']:.1f}s "
              f"(x{res['speedup_best']:.2f}); row-steps {steps['baseline']} -> {steps['ours']}; "
              f"{res['labels_differing']} labels differ, {res['not_a_start']} not a start", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2) + "\n")
    release(loaded)


def table() -> str:
    """One row per checkpoint and workload: the native kernel's timing (a forced kernel's run checks identity; its
    seconds are not compared), and identity under every kernel measured."""
    cells: dict[tuple[str, str], dict[str, dict]] = {}
    for f in sorted(RESULTS.glob("*.json")):
        r = json.loads(f.read_text())
        cells.setdefault((f.stem[:-len(f"-{r['workload']}-{r['kernel']}")], r["workload"]), {})[r["kernel"]] = r
    rows = ["| checkpoint | workload | prompts x tokens, batch (defecting) | decoded row-steps: to the end → stopped "
            "| to the end | stopped | speed-up (best of each) | labels differing / stopped text not a start, by kernel "
            "| machine |", "|---|---|---|---|---|---|---|---|---|"]
    for (name, work), by in sorted(cells.items(), key=lambda c: (c[0][0], list(WHAT).index(c[0][1]))):
        r = next((v for v in by.values() if not v["kernel_forced"]), next(iter(by.values())))
        s = r["decoded_row_steps"]
        ident = ", ".join(f"{k}: {v['labels_differing']} / {v['not_a_start']} of {v['prompts']}"
                          for k, v in sorted(by.items()))
        m = r["machine"]
        rows.append(f"| {name} | {WHAT[work]} | {r['prompts']} x ≤{r['max_new_tokens']}, {r['batch_size']} "
                    f"({r['defects']}) | {s['baseline']} → {s['ours']} ({s['ours'] / max(s['baseline'], 1):.0%}) "
                    f"| {r['baseline_best_s']:.1f} s | {r['ours_best_s']:.1f} s | {r['speedup_best']:.2f}x of "
                    f"{r['repeats']} ({r['kernel']} kernel) | {ident} | {m['cpu']}, {m['cores']} cores |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
