"""Atomic file writes: every file the toolkit writes appears whole or not at all.

One convention: the content is written to a hidden sibling ``.{name}.tmp-{pid}`` in the target's directory, then
moved onto the target with one ``os.replace`` (atomic on one filesystem); parent directories are created, and the
temporary file is removed if anything fails. JSON and JSONL are serialised in full before any file is opened, so
an unserialisable value (or NaN, where it is an error) leaves the old file untouched.

Footgun: the formatting arguments (``indent``, ``allow_nan``) are part of each file's bytes; a writer that changes
them changes committed result files and their hashes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable


def _plain(o):
    """Objects with ``to_dict`` (configs, specs), numpy scalars and arrays, and paths as JSON values
    (``json.dumps``'s ``default``)."""
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "tolist"):  # numpy scalar or array
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def clean_json(o):
    """``o`` as strict JSON values: NaN/inf → None, numpy → Python, paths → str, keys → str."""
    if isinstance(o, dict):
        return {str(k): clean_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean_json(v) for v in o]
    if hasattr(o, "tolist"):  # numpy scalar or array
        return clean_json(o.tolist())
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, Path):
        return str(o)
    return o


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary sibling and one rename; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 1, allow_nan: bool = False) -> Path:
    """``json.dumps(obj, indent=indent)`` written atomically, no trailing newline; returns ``path``.

    Strict by default: NaN/inf raise ``ValueError`` (``clean_json`` maps them to None first); ``allow_nan=True``
    writes them as Python's ``NaN``/``Infinity``. Values with ``to_dict``, numpy values and paths are converted.
    """
    return write_text_atomic(path, json.dumps(obj, indent=indent, allow_nan=allow_nan, default=_plain))


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[Any], *, allow_nan: bool = False) -> Path:
    """One compact JSON value per line, each line ending in a newline, written atomically; returns ``path``."""
    return write_text_atomic(path, "".join(json.dumps(r, allow_nan=allow_nan, default=_plain) + "\n" for r in rows))
