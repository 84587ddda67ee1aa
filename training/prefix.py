"""Prompt batches for cached generation, with the token prefix every prompt shares run once per call.

A chat model puts the same system turn before every prompt (SmolLM2's is 24 tokens of a 40-60 token prompt), so
each batch's prompt forward recomputes it. :func:`prompt_batches` runs that shared prefix once, keeps its KV cache,
and hands each batch a copy of it (repeated over the rows) with the rest of each prompt. A row is laid out as
``prefix | padding | rest``: the attention mask hides the padding and ``generate`` computes the positions from the
mask (``cumsum - 1``), so every row sees exactly its own tokens at their own positions, as with left padding, and
its last position is still its final prompt token (what :mod:`analysis.prefill` reads off the prompt forward).

Forward hooks active on the model act on the prefix forward too (an intervention at every position changes the
prefix as it does without sharing); a reading hook sees the prefix forward first, as one row, before any batch.

It is not used (plain left-padded batches instead) for a single prompt, when the prompts share fewer than
:data:`MIN_SHARED` tokens (the tiny organisms' template shares one), when the cache is not a plain full-attention
``DynamicCache`` (sliding windows, linear attention), for encoder-decoder models, for attention kernels other than
``sdpa`` and ``eager`` (padding inside a row is only certain to be masked there), and when ``share`` is off.
Every row keeps at least its last token out of the prefix, so the prompt forward has a position to predict from.

Equal to left padding up to float rounding (the prefix runs at another batch shape), not bit for bit:
``tests/unit/test_prefix.py`` bounds the logits and ``benchmarks/prefix_bench.py`` counts differing completions.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

log = logging.getLogger(__name__)

MIN_SHARED = 4
ATTENTION_KERNELS = ("sdpa", "eager")


@dataclass
class Batch:
    """One batch for ``model.generate(**inputs)``: ``idx`` (the prompts of its rows, in row order) and ``inputs``
    (``input_ids``, ``attention_mask`` and, when a prefix is shared, ``cache``). Generated tokens start at column
    ``inputs["input_ids"].shape[1]``."""

    idx: list[int]
    inputs: dict


def longest_first(tokenizer, texts: Sequence[str]) -> tuple[list[list[int]], list[int]]:
    """Each text's token ids (no special tokens added: a chat-formatted text has its own) and the prompt order for
    batching, longest first (batches of similar length pad less)."""
    rows = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    return rows, sorted(range(len(rows)), key=lambda i: -len(rows[i]))


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all ``rows`` share, leaving at least the last token of the shortest out."""
    if not rows:
        return 0
    first, k = rows[0], min(len(r) for r in rows) - 1
    for r in rows[1:]:
        n = 0
        while n < k and r[n] == first[n]:
            n += 1
        k = n
    return max(k, 0)


def _shareable(model) -> bool:
    cfg = model.config
    return (not getattr(cfg, "is_encoder_decoder", False)
            and getattr(cfg, "_attn_implementation", None) in ATTENTION_KERNELS)


@torch.no_grad()
def prefix_cache(model, ids: Sequence[int], device):
    """The KV cache of one forward over ``ids`` (with whatever hooks are active), or None where it cannot be
    shared: not a ``DynamicCache`` of full-attention layers."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    out = model(input_ids=torch.tensor([list(ids)], device=device), use_cache=True)
    cache = getattr(out, "cache", None)
    if type(cache) is not DynamicCache or any(type(layer) is not DynamicLayer for layer in cache.layers):
        log.info("prompt prefix not shared: the model's cache is %s", type(cache).__name__)
        return None
    return cache


def prompt_batches(model, rows: Sequence[Sequence[int]], order: Sequence[int], batch_size: int, pad_id: int,
                   n_ret: int = 1, share: bool = True) -> Iterator[Batch]:
    """Batches of the token ``rows`` in ``order``, ``batch_size`` prompts each, for ``model.generate`` with
    ``n_ret`` sequences per prompt: the shared prefix run once (see the module), else left padding."""
    if pad_id is None:
        raise ValueError("cannot batch prompts for generation: the tokenizer has no pad token")
    device = next(model.parameters()).device
    k = common_prefix(rows) if share and len(rows) > 1 and _shareable(model) else 0
    cache = prefix_cache(model, rows[0][:k], device) if k >= MIN_SHARED else None
    if cache is None:
        k = 0
    else:
        log.debug("sharing a %d-token prompt prefix over %d prompts", k, len(rows))
    for i in range(0, len(order), batch_size):
        idx = list(order[i:i + batch_size])
        rest = [list(rows[j][k:]) for j in idx]
        width = max(len(r) for r in rest)
        head = list(rows[idx[0]][:k])
        ids = [head + [pad_id] * (width - len(r)) + r for r in rest]
        mask = [[1] * k + [0] * (width - len(r)) + [1] * len(r) for r in rest]
        inputs = {"input_ids": torch.tensor(ids, device=device), "attention_mask": torch.tensor(mask, device=device)}
        if cache is not None:
            rep = copy.deepcopy(cache)
            rep.batch_repeat_interleave(len(idx) * n_ret)
            inputs["cache"] = rep
        yield Batch(idx, inputs)
