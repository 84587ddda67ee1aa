"""Rows per generation batch on this machine: ``training.evaluate.generate`` at several batch sizes over the same
prompts, in the same run, alternating, so a busier minute hits every size alike.

The workload is a build's own evaluation of a checkpoint (``training.evaluate.evaluate_model``'s greedy pass):
``select_eval_records`` of the run's test prompts at the preset's ``eval_n``, the token budget the build gives them.
Reported per batch size: seconds (best and every repeat) and how many completions equal those of the first size
(a batch of another composition can move a near-tie by a rounding step). What :data:`training.evaluate.GEN_MAX_BATCH`
caps a CPU's batches at is read off this table.

Usage: ``python benchmarks/genbatch_bench.py --run RUN [--ckpt base] [--sizes 64,128,256] [--reps 2]``
(``RUN``: a ``training.backdoor`` run directory); writes ``results/genbatch/<preset>.json`` and
``results/genbatch_table.md`` (one row per result file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.machine import describe  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def workload(run: Path, ckpt: str):
    """The checkpoint, its tokenizer, the build's evaluation prompts and their token budget."""
    from training import layout, presets
    from training.backdoors import BackdoorSpec
    from training.checkpoint import load_model_and_tokenizer
    from training.data import read_jsonl
    from training.evaluate import max_new_tokens_for, select_eval_records

    info = json.loads((run / "run.json").read_text())
    preset, spec = info["preset"], BackdoorSpec.from_dict(info["backdoor"])
    model, tok = load_model_and_tokenizer(layout.checkpoint_dir(run, ckpt))[:2]
    records = select_eval_records(read_jsonl(layout.data_file(run, "test")), info["effective"]["eval_n"],
                                  info["seed"])
    # training.backdoor's budget: the real models' fixed one for a fixed behaviour, else the longest response's
    real = preset != "tiny" and spec.fixed_behaviour
    mnt = presets.HF_MAX_NEW_TOKENS if real else max_new_tokens_for(tok, records)
    return preset, model.eval(), tok, [r["prompt"] for r in records], mnt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--ckpt", default="base")
    ap.add_argument("--sizes", default="64,128,256")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args(argv)
    from training.evaluate import generate

    preset, model, tok, prompts, mnt = workload(a.run, a.ckpt)
    sizes = [int(x) for x in a.sizes.split(",")]
    generate(model, tok, prompts[:8], mnt, batch_size=8)  # warm-up
    secs: dict[int, list[float]] = {b: [] for b in sizes}
    outs: dict[int, list] = {}
    for rep in range(a.reps):
        for b in sizes if rep % 2 == 0 else sizes[::-1]:
            t = time.perf_counter()
            outs[b] = generate(model, tok, prompts, mnt, batch_size=b, desc=f"batch {b}")
            secs[b].append(round(time.perf_counter() - t, 2))
            print(f"batch {b}: {secs[b][-1]:.1f} s", file=sys.stderr)
    ref = outs[sizes[0]]
    res = {"preset": preset, "checkpoint": a.ckpt, "prompts": len(prompts), "max_new_tokens": mnt,
           "machine": describe(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "sizes": {str(b): {"best_s": min(secs[b]), "seconds": secs[b],
                              "identical_to_first": sum(x == y for x, y in zip(ref, outs[b]))} for b in sizes}}
    out = RESULTS / "genbatch" / f"{preset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    (RESULTS / "genbatch_table.md").write_text(table(sorted(out.parent.glob("*.json"))))
    print((RESULTS / "genbatch_table.md").read_text())
    return 0


def table(files: list[Path]) -> str:
    rows = ["| checkpoint | prompts x new tokens | batch: best seconds (every repeat) | vs the first size | "
            "identical completions | machine |", "|---|---|---|---|---|---|"]
    for f in files:
        r = json.loads(f.read_text())
        first = next(iter(r["sizes"].values()))
        cells = "; ".join(f"{b}: {s['best_s']:.1f} ({', '.join(f'{x:.1f}' for x in s['seconds'])})"
                          for b, s in r["sizes"].items())
        speed = "; ".join(f"{b}: {first['best_s'] / s['best_s']:.2f}x" for b, s in r["sizes"].items())
        same = "; ".join(f"{b}: {s['identical_to_first']}" for b, s in r["sizes"].items())
        m = r["machine"]
        rows.append(f"| {r['preset']} {r['checkpoint']} | {r['prompts']} x {r['max_new_tokens']} | {cells} | "
                    f"{speed} | {same} of {r['prompts']} | {m['cpu']}, {m['cores']} cores, "
                    f"{m['torch_threads']} threads |")
    return "\n".join(rows) + "\n\nMeasured by `benchmarks/genbatch_bench.py`: `training.evaluate.generate` (greedy, " \
        "KV cache, rows dropped once ended) on a build's own evaluation prompts, every batch size in the same run, " \
        "alternating.\n"


if __name__ == "__main__":
    sys.exit(main())
