"""Activation caching vs a plain Hugging Face forward pass over the same batches, and peak memory vs prompt count.

1. Throughput: ``analysis.activations.cache_activations`` (bridge, every layer's ``resid_post`` at the final prompt
   token, written to disk) against ``hf_forward_hidden_states`` on a freshly loaded HF model (same prompts, same
   batches), both timed in this run after one untimed round of each, best of 11, and the median of each repeat's
   back-to-back ratio, the two taking turns at going first (a shared machine's timings vary by tens of percent, and
   drift within a repeat would otherwise always favour the same side). Target: ratio ≤ 1.2 (issue 18).
2. Memory: the caching command in fresh processes for 1,000 and 10,000 prompts; peak RSS should stay flat.

Usage: ``python benchmarks/activations_bench.py --ckpt runs/x/checkpoints/backdoored``
Writes ``benchmarks/results/activations.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def prompts_for(ckpt: Path, n: int) -> list[dict]:
    from training.backdoors import BackdoorSpec
    from training.data import build_prompt_sets

    base = [r for recs in build_prompt_sets(BackdoorSpec()).values() for r in recs]
    return [{"id": f"{i}", "text": base[i % len(base)]["prompt"], "triggered": int(base[i % len(base)]["triggered"])}
            for i in range(n)]


def child(ckpt: Path, n: int, batch: int) -> None:
    from analysis.activations import cache_activations
    from analysis.load import load_bridge

    loaded = load_bridge(ckpt, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        cache_activations(loaded, prompts_for(ckpt, n), Path(tmp) / "store", batch_size=batch, progress=False)
    print(json.dumps({"n": n, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def throughput(ckpt: Path, n: int, batch: int, repeats: int = 11, device: str = "cpu") -> dict:
    """Best-of-``repeats`` wall time of ``cache_activations`` vs a plain HF forward over the same ``n`` prompts, after
    one untimed warm-up round of each; within a repeat the two alternate which goes first."""
    from analysis.activations import cache_activations, hf_forward_hidden_states
    from analysis.load import encode_prompts, load_bridge
    from training.checkpoint import load_model_and_tokenizer

    prompts = prompts_for(ckpt, n)
    texts = [p["text"] for p in prompts]
    loaded = load_bridge(ckpt, device=device)
    # a fresh, unbridged model (same device and dtype) for the baseline
    model, tok, _ = load_model_and_tokenizer(ckpt, device=device, dtype=loaded.dtype)
    n_tokens = sum(len(r) for r in encode_prompts(tok, texts))

    def cache() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            cache_activations(loaded, prompts, Path(tmp) / "store", batch_size=batch, progress=False)
            return time.perf_counter() - t

    def hf() -> float:
        t = time.perf_counter()
        hf_forward_hidden_states(model, tok, texts, batch_size=batch)
        return time.perf_counter() - t

    cache(), hf()  # warm-up: allocator, kernels, page cache
    t_cache, t_hf = [], []
    for i in range(repeats):
        if i % 2:
            t_hf.append(hf())
            t_cache.append(cache())
        else:
            t_cache.append(cache())
            t_hf.append(hf())
    c, h = min(t_cache), min(t_hf)
    paired = sorted(x / y for x, y in zip(t_cache, t_hf))  # each repeat's two runs back to back
    return {"prompts": n, "prompt_tokens": n_tokens, "batch_size": batch, "dtype": str(loaded.dtype), "cache_s": c,
            "hf_forward_s": h, "ratio": c / h, "paired_ratios": paired,
            "paired_ratio_median": statistics.median(paired), "cache_prompts_per_s": n / c,
            "cache_tokens_per_s": n_tokens / c, "hf_prompts_per_s": n / h,
            "all_cache_s": t_cache, "all_hf_s": t_hf, "warmup_rounds": 1, "order": "alternating"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--child", type=int, default=0)
    a = ap.parse_args()
    ckpt = Path(a.ckpt)
    if a.child:
        child(ckpt, a.child, a.batch)
        return 0
    res = {"machine": describe(), "checkpoint": str(ckpt), "throughput": throughput(ckpt, a.n, a.batch), "memory": []}
    for n in (1000, 10000):
        r = subprocess.run([sys.executable, __file__, "--ckpt", str(ckpt), "--child", str(n), "--batch", str(a.batch)],
                           capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=ROOT)
        if r.returncode != 0:
            raise SystemExit(r.stderr[-2000:])
        res["memory"].append(json.loads(r.stdout.strip().splitlines()[-1]))
    m = res["memory"]
    res["memory_growth_1k_to_10k"] = m[1]["peak_rss_mib"] / m[0]["peak_rss_mib"]
    out = ROOT / "benchmarks" / "results" / "activations.json"
    out.write_text(json.dumps(res, indent=2))
    t = res["throughput"]
    print(f"cache {t['cache_s']:.2f}s vs hf {t['hf_forward_s']:.2f}s: ratio {t['ratio']:.2f}; "
          f"peak RSS 1k {m[0]['peak_rss_mib']:.0f} MiB, 10k {m[1]['peak_rss_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
