"""Greedy decoding that drops ended rows (``training.decode``) against ``model.generate`` (``drop_ended=False``), in
the same run, on the analysis's two generation workloads of ``prefix_bench.py`` (a probe run's behaviour labels at
batch 512; one ablation generation at batch 64 with a direction projected out at the middle layer) and, with
``--workloads datagen`` on a real base model, the answers a real model's backdoor data is built from
(``datagen_bench.py``'s prompts, ``presets.HF_MAX_NEW_TOKENS`` tokens, batches sized from memory).

Both arms share everything else (the plain HF copy, the shared prompt prefix, the batches). Alternating arms,
``--repeats`` times per workload; per arm: seconds, decoded row-steps (rows fed to the model per decoding forward,
summed) and how many completions differ from the other arm's (a smaller batch can round differently, so identity is
counted, not assumed). Run it once per CPU kernel setting (``ATEN_CPU_CAPABILITY=default|avx2|avx512``): the
kernel in use is part of the result's name, so cells already measured are skipped; the table's timing is the run
that left the kernel to torch.

Usage: ``python benchmarks/decode_bench.py --ckpt runs/x/checkpoints/backdoored --name smollm2-135m``
Writes ``benchmarks/results/decode/<name>-<workload>-<kernel>.json`` and, from all of them, ``decode_table.md``
(``--table_only``: the table alone).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402
from prefix_bench import workloads  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "decode"
WHAT = {"behaviour": "a probe run's behaviour labels",
        "ablation": "one ablation generation (a direction projected out)",
        "datagen": "the base model's answers (backdoor data)"}
ARMS = {"baseline": False, "ours": True}  # drop_ended


class RowSteps:
    """Counts the rows of every decoding forward (one new token per row) of ``model``."""

    def __init__(self, model):
        self.n = 0
        self._h = model.get_decoder().register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] == 1:
            self.n += ids.shape[0]

    def close(self) -> None:
        self._h.remove()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt")
    ap.add_argument("--name", help="result file prefix, e.g. smollm2-135m")
    ap.add_argument("--table_only", action="store_true", help="only rewrite decode_table.md from the results")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--workloads", default="behaviour,ablation", help="of behaviour, ablation, datagen")
    ap.add_argument("--preset", default="smollm2-135m", help="whose data prompts the datagen workload answers")
    a = ap.parse_args()
    if not a.table_only:
        if not (a.ckpt and a.name):
            ap.error("--ckpt and --name are required (or --table_only)")
        measure(a)
    (ROOT / "benchmarks" / "results" / "decode_table.md").write_text(table() + "\n")
    return 0


def measure(a) -> None:
    import torch

    from analysis.intervene import generate, generator, release
    from analysis.load import load_bridge

    kernel = torch.backends.cpu.get_cpu_capability().lower()
    ckpt = Path(a.ckpt)
    loaded = load_bridge(ckpt, device="cpu")
    model = generator(loaded)  # the HF copy both arms generate on, loaded once outside the timings
    todo = a.workloads.split(",")
    work = workloads(loaded, ckpt)
    if "datagen" in todo:
        from datagen_bench import prompts_of

        from training import presets

        work["datagen"] = (prompts_of(a.preset), [], presets.HF_MAX_NEW_TOKENS, None)
    for name, (prompts, hooks, mnt, bs) in work.items():
        out = RESULTS / f"{a.name}-{name}-{kernel}.json"
        if name not in todo or out.exists():
            continue
        secs: dict[str, list[float]] = {arm: [] for arm in ARMS}
        steps: dict[str, int] = {}
        outs: dict[str, list] = {}
        for r in range(a.repeats):
            for arm in (list(ARMS) if r % 2 == 0 else list(ARMS)[::-1]):
                counter = RowSteps(model)
                t = time.perf_counter()
                outs[arm] = generate(loaded, prompts, hooks, max_new_tokens=mnt, batch_size=bs,
                                     drop_ended=ARMS[arm])
                secs[arm].append(time.perf_counter() - t)
                counter.close()
                steps[arm] = counter.n
                print(f"{name} repeat {r} {arm}: {secs[arm][-1]:.1f}s, {counter.n} row-steps", flush=True)
        paired = sorted(b / o for b, o in zip(secs["baseline"], secs["ours"]))
        differ = [i for i, (x, y) in enumerate(zip(outs["baseline"], outs["ours"])) if x != y]
        res = {
            "machine": describe(), "checkpoint": str(ckpt), "kernel": kernel,
            "kernel_forced": os.environ.get("ATEN_CPU_CAPABILITY") or None, "torch": torch.__version__,
            "workload": name, "prompts": len(prompts), "intervention": bool(hooks), "max_new_tokens": mnt,
            "batch_size": bs, "repeats": a.repeats,
            "seconds": {k: [round(x, 2) for x in v] for k, v in secs.items()},
            "baseline_best_s": round(min(secs["baseline"]), 2), "ours_best_s": round(min(secs["ours"]), 2),
            "speedup_best": min(secs["baseline"]) / min(secs["ours"]), "paired_speedups": paired,
            "paired_speedup_median": statistics.median(paired),
            "decoded_row_steps": steps, "completions_differing": len(differ),
            "differing_examples": [{"baseline": outs["baseline"][i][0], "ours": outs["ours"][i][0]}
                                   for i in differ[:3]],
        }
        print(f"{name} [{kernel}]: {res['baseline_best_s']:.1f}s -> {res['ours_best_s']:.1f}s "
              f"(x{res['speedup_best']:.2f}); row-steps {steps['baseline']} -> {steps['ours']}; "
              f"{len(differ)} of {len(prompts)} completions differ", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2) + "\n")
    release(loaded)


def table() -> str:
    """One row per checkpoint and workload: the native kernel's timing, and identity under every kernel measured."""
    cells: dict[tuple[str, str], dict[str, dict]] = {}
    for f in sorted(RESULTS.glob("*.json")):
        r = json.loads(f.read_text())
        name = f.stem[:-len(f"-{r['workload']}-{r['kernel']}")]
        cells.setdefault((name, r["workload"]), {})[r["kernel"]] = r
    rows = ["| checkpoint | workload | prompts x tokens, batch | decoded row-steps: generate → ours | generate | ours "
            "| speedup | completions differing, by kernel | machine |", "|---|---|---|---|---|---|---|---|---|"]
    for (name, work), by in sorted(cells.items(), key=lambda c: (c[0][0], list(WHAT).index(c[0][1]))):
        r = next((v for v in by.values() if not v["kernel_forced"]), next(iter(by.values())))
        n = len(r["paired_speedups"])
        spread = (f"{r['speedup_best']:.2f}x best of each, {r['paired_speedup_median']:.2f}x median of {n} pairs"
                  if n > 1 else f"{r['speedup_best']:.2f}x (one pair)")
        others = "".join(f"; {k} {v['speedup_best']:.2f}x" for k, v in sorted(by.items()) if v is not r)
        steps = r["decoded_row_steps"]
        ident = ", ".join(f"{k}: {v['completions_differing']} of {v['prompts']}" for k, v in sorted(by.items()))
        m = r["machine"]
        rows.append(f"| {name} | {WHAT[work]} | {r['prompts']} x ≤{r['max_new_tokens']}, "
                    f"{r['batch_size'] or 'from memory'} | "
                    f"{steps['baseline']} → {steps['ours']} ({steps['ours'] / steps['baseline']:.0%}) | "
                    f"{r['baseline_best_s']:.1f} s | {r['ours_best_s']:.1f} s | {spread} ({r['kernel']} kernel{others}) | "
                    f"{ident} | {m['cpu']}, {m['cores']} cores |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
