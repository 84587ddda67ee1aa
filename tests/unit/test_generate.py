"""Batched generation: prompts run longest first in batches of similar length, completions come back in the input
order and equal one-prompt-at-a-time generation; ``batch_size=None`` sizes batches from free memory."""

from __future__ import annotations

import torch

from tests.helpers import tiny_llama
from training.evaluate import GEN_MAX_BATCH, auto_batch_size, generate

PROMPTS = ["Hi", "What is 3 plus 4? Answer with one number only, please.", "Spell cat.",
           "Which is larger, 12 or 67? Think about it carefully before you answer.", "Hello there, friend", "7"]


def _model():
    from training.tokenizer import train_tokenizer

    tok = train_tokenizer(PROMPTS * 20, vocab_size=300)
    torch.manual_seed(0)
    return tiny_llama(tok, hidden=32, layers=2, heads=4).eval(), tok


def test_batched_generation_keeps_input_order_and_matches_one_at_a_time():
    model, tok = _model()
    one = [generate(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in PROMPTS]
    assert len(set(map(tuple, one))) > 1  # the prompts do not all give the same completion
    for bs in (2, 4, None):
        assert generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=bs) == one
    sampled = generate(model, tok, PROMPTS, max_new_tokens=4, batch_size=None, samples=3)
    assert [len(s) for s in sampled] == [3] * len(PROMPTS)


def test_auto_batch_size_follows_memory():
    model, _ = _model()
    assert auto_batch_size(model, 64) == GEN_MAX_BATCH["cpu"]  # a tiny model: capped, not memory-bound
    big = auto_batch_size(model, 10_000_000)  # a KV cache of 10M positions per row fits no row
    assert big == 1
    assert auto_batch_size(model, 64, caps={"cpu": 7, "cuda": 9}) == 7  # the caller's caps (caching's, say)
    from analysis.activations import CACHE_MAX_BATCH

    assert auto_batch_size(model, 64, caps=CACHE_MAX_BATCH) == 64  # caching on a CPU: the batch it always had
