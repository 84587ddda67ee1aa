"""Cached generation with the prompts' shared prefix run once per call (``training.prefix``) against plain left
padding (``share_prefix=False``), in the same run, on the analysis's two generation workloads:

- ``behaviour``: a probe run's behaviour labels (``analysis.probing.load_records`` with the probe's defaults: clean,
  triggered and red-team prompts; its generation budget; batches of 512);
- ``ablation``: one generation run of an ablation (``analysis.ablation``'s defaults: 64 triggered test prompts,
  batches of 64, the behaviour's token budget) with a direction projected out of ``resid_post`` at the middle layer.

Alternating arms, ``--repeats`` times per workload; reports each arm's best, the median of the back-to-back ratios,
the shared prefix's length against the mean prompt length, and how many completions differ between the arms (the
prefix runs at another batch shape, so logits agree to rounding, not bit for bit).

Usage: ``python benchmarks/prefix_bench.py --ckpt runs/x/checkpoints/backdoored --name smollm2-135m``
Writes ``benchmarks/results/prefix/<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def workloads(loaded, ckpt: Path) -> dict:
    """name -> (prompts, hooks, max_new_tokens, batch size)."""
    import torch

    from analysis import hooks as H
    from analysis.ablation import projection_hook
    from analysis.pairs import record_pairs
    from analysis.probing import ProbeConfig, load_records
    from training.backdoors import spec_from_meta
    from training.evaluate import eval_records_for, max_new_tokens_for

    spec = spec_from_meta(loaded.meta, None, None)
    records, _ = load_records(ckpt, spec, ProbeConfig(ckpt=str(ckpt)))
    pairs = record_pairs(eval_records_for(ckpt, spec, "test", 0))
    rng = np.random.default_rng(0)
    pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), size=min(64, len(pairs)), replace=False).tolist())]
    u = torch.randn(loaded.d_model, generator=torch.Generator().manual_seed(0))
    ablate = [(H.resid_post(loaded.n_layers // 2), projection_hook(u / u.norm()))]
    mnt = 16 if spec.fixed_behaviour else max_new_tokens_for(loaded.tokenizer, [t for _, t in pairs])
    return {"behaviour": ([r["prompt"] for r in records], [], max_new_tokens_for(loaded.tokenizer, records), 512),
            "ablation": ([t["prompt"] for _, t in pairs], ablate, mnt, 64)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--name", required=True, help="result file name, e.g. smollm2-135m")
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()

    from analysis.intervene import generate, generator, release
    from analysis.load import load_bridge
    from training.evaluate import chat_prompts
    from training.prefix import common_prefix

    ckpt = Path(a.ckpt)
    loaded = load_bridge(ckpt, device="cpu")
    generator(loaded)  # the HF copy both arms generate on, loaded once outside the timings
    res = {"machine": describe(), "checkpoint": str(ckpt), "repeats": a.repeats, "workloads": {}}
    for name, (prompts, hooks, mnt, bs) in workloads(loaded, ckpt).items():
        rows = loaded.tokenizer(chat_prompts(loaded.tokenizer, prompts), add_special_tokens=False)["input_ids"]
        secs: dict[str, list[float]] = {"baseline": [], "ours": []}
        outs: dict[str, list] = {}
        for r in range(a.repeats):
            for arm in (("baseline", "ours") if r % 2 == 0 else ("ours", "baseline")):
                t = time.perf_counter()
                outs[arm] = generate(loaded, prompts, hooks, max_new_tokens=mnt, batch_size=bs,
                                     share_prefix=arm == "ours")
                secs[arm].append(time.perf_counter() - t)
                print(f"{name} repeat {r} {arm}: {secs[arm][-1]:.1f}s", flush=True)
        paired = sorted(b / o for b, o in zip(secs["baseline"], secs["ours"]))
        differ = sum(x != y for x, y in zip(outs["baseline"], outs["ours"]))
        res["workloads"][name] = {
            "prompts": len(prompts), "intervention": bool(hooks), "max_new_tokens": mnt, "batch_size": bs,
            "shared_prefix_tokens": common_prefix(rows), "mean_prompt_tokens": float(np.mean([len(x) for x in rows])),
            "seconds": {k: [round(x, 2) for x in v] for k, v in secs.items()},
            "baseline_best_s": round(min(secs["baseline"]), 2), "ours_best_s": round(min(secs["ours"]), 2),
            "speedup_best": min(secs["baseline"]) / min(secs["ours"]), "paired_speedups": paired,
            "paired_speedup_median": statistics.median(paired), "completions_differing": differ,
        }
        w = res["workloads"][name]
        print(f"{name}: {w['baseline_best_s']:.1f}s -> {w['ours_best_s']:.1f}s (x{w['speedup_best']:.2f}); "
              f"prefix {w['shared_prefix_tokens']} of {w['mean_prompt_tokens']:.1f} tokens; "
              f"{differ} of {len(prompts)} completions differ", flush=True)
    release(loaded)
    out = ROOT / "benchmarks" / "results" / "prefix" / f"{a.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
