"""Factories the tests share: a tiny Llama with random weights (any size) and a checkpoint of it.

The trained organisms come from the session fixtures in ``conftest.py``; these are for tests that need a model of
a given shape, not a trained one.
"""

from __future__ import annotations

from pathlib import Path


def tiny_llama(tok, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int | None = None,
               max_positions: int = 128, tie: bool = False, seed: int = 0):
    """A randomly initialised ``LlamaForCausalLM`` (MLP 2x ``hidden``) for ``tok``'s vocabulary, seeded."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                      max_position_embeddings=max_positions, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg)


def tiny_checkpoint(path: Path, tok, *, stage: str = "backdoored", backdoor: dict | None = None, step: int = 0,
                    **model) -> Path:
    """:func:`tiny_llama` saved through the checkpoint contract at ``path`` (``model``: its keyword arguments)."""
    from training.checkpoint import save_checkpoint

    return save_checkpoint(tiny_llama(tok, **model), tok, path, stage=stage, backdoor=backdoor, step=step)
