"""A probe run's behaviour generation plus caching: the bridge's second pass over the prompts (baseline) against
reading the prompt store off the generation's own prompt forward (``analysis.prefill``), in the same run.

Both arms run on the probe's own prompts (``analysis.probing.load_records`` with the probe's defaults: clean,
triggered and red-team prompts), the probe's hooks (``resid_post`` of every layer, final prompt token), its
generation budget and batch sizes (512 for generation, 64 for caching):

- baseline: greedy generation (plain HF copy, KV cache), then ``cache_activations`` through the bridge;
- ours: the same generation with a :class:`analysis.prefill.PrefillCapture`, then ``cache_activations`` finishing
  the captured store.

Alternating arms, ``--repeats`` times; reports each arm's best and the median of the back-to-back ratios, and checks
that the two arms generate the same tokens and store the same activations (largest difference relative to the
hook's largest activation, smallest cosine between a prompt's two vectors).

Usage: ``python benchmarks/prefill_bench.py --ckpt runs/x/checkpoints/backdoored --name tiny``
Writes ``benchmarks/results/prefill/<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GEN_BATCH, CACHE_BATCH = 512, 64


def one_arm(loaded, prompts: list[dict], hooks: list[str], max_new_tokens: int, out: Path, capture: bool):
    """(seconds generating, seconds caching, completions, store) of one arm."""
    from analysis.activations import cache_activations
    from analysis.intervene import generate
    from analysis.prefill import PrefillCapture

    texts = [p["text"] for p in prompts]
    with PrefillCapture(loaded, prompts, hooks, out) as cap:
        t = time.perf_counter()
        gen = generate(loaded, texts, cap.fwd_hooks() if capture else (), max_new_tokens=max_new_tokens,
                       batch_size=GEN_BATCH, on_batch=cap.on_batch if capture else None)
        t_gen = time.perf_counter() - t
        t = time.perf_counter()
        store = cache_activations(loaded, prompts, out, hooks=hooks, batch_size=CACHE_BATCH, progress=False,
                                  captured=cap)
        t_cache = time.perf_counter() - t
    assert store.manifest["source"] == ("generation" if capture else "bridge"), store.manifest["source"]
    return t_gen, t_cache, [g[0] for g in gen], store


def agreement(a, b, hooks: list[str]) -> dict:
    """How far the captured store ``b`` is from the bridge's ``a``."""
    rel, cos = [], []
    for h in hooks:
        x, y = np.asarray(a.get(h), dtype=np.float64), np.asarray(b.get(h), dtype=np.float64)
        rel.append(float(np.abs(x - y).max() / np.abs(x).max()))
        cos.append(float((np.sum(x * y, 1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))).min()))
    return {"max_rel_diff": max(rel), "min_cosine": min(cos), "max_rel_diff_by_hook": dict(zip(hooks, rel))}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--name", required=True, help="result file name, e.g. tiny or smollm2-135m")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    from analysis.hooks import hooks_for
    from analysis.intervene import generator, release
    from analysis.load import load_bridge
    from analysis.probing import ProbeConfig, _prompt_dicts, load_records
    from training.backdoors import spec_from_meta
    from training.evaluate import max_new_tokens_for

    ckpt = Path(a.ckpt)
    loaded = load_bridge(ckpt, device="cpu")
    spec = spec_from_meta(loaded.meta, None, None)
    records, _ = load_records(ckpt, spec, ProbeConfig(ckpt=str(ckpt)))
    prompts = _prompt_dicts(records, None)
    hooks = hooks_for("resid_post", range(loaded.n_layers))
    max_new = max_new_tokens_for(loaded.tokenizer, records)
    generator(loaded)  # the HF copy both arms generate on, loaded once outside the timings
    arms: dict[str, list] = {"baseline": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for arm in (("baseline", "ours") if r % 2 == 0 else ("ours", "baseline")):
                res = one_arm(loaded, prompts, hooks, max_new, Path(tmp) / f"{arm}{r}", capture=arm == "ours")
                arms[arm].append(res)
                print(f"repeat {r} {arm}: generation {res[0]:.1f}s, caching {res[1]:.1f}s", flush=True)
        same_tokens = all(b[2] == o[2] for b, o in zip(arms["baseline"], arms["ours"]))
        agree = agreement(arms["baseline"][0][3], arms["ours"][0][3], hooks)
    release(loaded)
    total = {k: [g + c for g, c, *_ in v] for k, v in arms.items()}
    paired = sorted(b / o for b, o in zip(total["baseline"], total["ours"]))
    res = {
        "machine": describe(), "checkpoint": str(ckpt), "n_layers": loaded.n_layers, "prompts": len(prompts),
        "max_new_tokens": max_new, "gen_batch_size": GEN_BATCH, "cache_batch_size": CACHE_BATCH,
        "repeats": a.repeats,
        "seconds": {k: [{"generation": round(g, 2), "caching": round(c, 2)} for g, c, *_ in v]
                    for k, v in arms.items()},
        "baseline_best_s": round(min(total["baseline"]), 2), "ours_best_s": round(min(total["ours"]), 2),
        "speedup_best": min(total["baseline"]) / min(total["ours"]), "paired_speedups": paired,
        "paired_speedup_median": statistics.median(paired), "same_completions": same_tokens, **agree,
    }
    out = ROOT / "benchmarks" / "results" / "prefill" / f"{a.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"{a.name}: generation + caching {res['baseline_best_s']:.1f}s -> {res['ours_best_s']:.1f}s "
          f"(x{res['speedup_best']:.2f} best, x{res['paired_speedup_median']:.2f} median paired); same completions "
          f"{same_tokens}; max relative difference {agree['max_rel_diff']:.1e}, min cosine {agree['min_cosine']:.6f}")
    return 0 if same_tokens else 1


if __name__ == "__main__":
    sys.exit(main())
