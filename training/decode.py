"""Greedy decoding that drops each row from the batch once it has ended (or once the caller has what it needs).

``model.generate`` runs a batch until its last row ends: a row that emitted its end token keeps being decoded (its
output thrown away) for as long as the longest row goes on. On SmolLM2's probe prompts only 65% of the decoded
row-steps were rows still generating (``benchmarks/throughput_bench.py``). :func:`greedy` feeds the model what
``generate`` feeds it (positions ``cumsum(mask) - 1``, the 2D attention mask grown by one column per step, logits at
the last position only, the KV cache it is handed, e.g. :mod:`training.prefix`'s shared prompt prefix) and, after
each step, drops the rows that ended from the batch and from the cache (``Cache.batch_select_indices``).

It is used (by :func:`training.evaluate.generate`) only where it decodes what ``generate`` would: greedy, KV cache
on, a decoder-only model on one device whose ``forward`` takes ``position_ids``, ``cache`` and ``logits_to_keep``, a
plain full-attention ``DynamicCache``, and a generation config that sets nothing acting on greedy decoding
(:data:`ACTS_ON_GREEDY`; a repetition penalty, say, sends the call back to ``generate``).

Footgun: a forward hook active while decoding sees only the rows still generating, so it must act on each row alone
(ablation, steering and :mod:`analysis.prefill`'s reads do; a hook indexing rows by batch position would not).

Equal to ``generate`` up to float rounding, not bit for bit: a smaller batch can round differently in a matmul.
``tests/unit/test_decode.py`` checks the tokens on a tiny model and ``benchmarks/decode_bench.py`` counts differing
completions on real checkpoints under each CPU kernel setting.
"""

from __future__ import annotations

import inspect
import logging
from typing import Callable, Iterable

import torch

log = logging.getLogger(__name__)

# generation-config fields that change what greedy decoding emits, with their neutral value (None is neutral too)
ACTS_ON_GREEDY = {
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "force_words_ids": None, "constraints": None,
    "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "min_length": 0, "min_new_tokens": 0, "exponential_decay_length_penalty": None,
    "renormalize_logits": False, "remove_invalid_values": False, "num_beams": 1, "penalty_alpha": None,
    "dola_layers": None, "guidance_scale": 1.0, "watermarking_config": None, "stop_strings": None, "max_time": None,
    "prompt_lookup_num_tokens": None, "assistant_early_exit": None, "cache_implementation": None,
    "token_healing": False,
}


def supported(model) -> str | None:
    """None when :func:`greedy` decodes what ``model.generate`` would, else why not (one phrase)."""
    cfg = model.config
    if getattr(cfg, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    if len(set((getattr(model, "hf_device_map", None) or {}).values())) > 1:
        return "it is split over devices"
    params = inspect.signature(model.forward).parameters
    if not {"position_ids", "cache", "logits_to_keep"} <= set(params):
        return "its forward takes no position_ids, cache or logits_to_keep"
    gc = getattr(model, "generation_config", None)
    set_ = [k for k, neutral in ACTS_ON_GREEDY.items()
            if getattr(gc, k, None) is not None and getattr(gc, k, None) != neutral]
    return f"its generation config sets {', '.join(set_)}" if set_ else None


@torch.no_grad()
def greedy(model, inputs: dict, max_new_tokens: int, eos_ids: Iterable[int], pad_id: int,
           stop: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor | None:
    """Greedy tokens ``(rows, steps)`` for one batch of ``inputs`` (``input_ids`` left padded, ``attention_mask``
    and optionally ``cache`` holding the first columns' KV, as :func:`training.prefix.prompt_batches` gives).

    Laid out as ``generate(...)[:, prompt_width:]``: each row up to and including its end token, then ``pad_id``;
    ``steps`` is the longest row's, at most ``max_new_tokens``. ``stop(tokens)``, given the tokens so far of the
    rows still generating (``(rows, t)``), says which of them end here too (the caller has what it needs from them);
    their tokens end there, followed by ``pad_id``. None when the cache built is not a plain ``DynamicCache`` (the
    caller uses ``generate``)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    cache = inputs.get("cache")
    if cache is None:
        cache = DynamicCache(config=model.config)
    if type(cache) is not DynamicCache or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    past = cache.get_seq_length()
    pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    rows = ids.shape[0]
    out = torch.full((rows, max_new_tokens), pad_id, dtype=ids.dtype, device=ids.device)
    alive = torch.arange(rows, device=ids.device)
    eos = torch.tensor(sorted(set(eos_ids)), dtype=ids.dtype, device=ids.device)
    logits = model(input_ids=ids[:, past:], position_ids=pos[:, past:], attention_mask=mask, cache=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1]
    steps = 0
    for t in range(max_new_tokens):
        nxt = logits.float().argmax(-1)
        out[alive, t] = nxt
        steps = t + 1
        done = torch.isin(nxt, eos)
        if stop is not None:
            done |= stop(out[alive, :t + 1]).to(done.device)
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            alive, nxt, mask, pos = alive[keep], nxt[keep], mask[keep], pos[keep]
            cache.batch_select_indices(keep)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], -1)
        pos = torch.cat([pos, pos[:, -1:] + 1], -1)
        logits = model(input_ids=nxt[:, None], position_ids=pos[:, -1:], attention_mask=mask, cache=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1]
    return out[:, :steps]
