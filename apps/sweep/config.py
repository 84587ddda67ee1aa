"""The sweep's typed config, its grid, and where every file of a sweep lives.

A sweep directory (``--out``) holds the organisms, one run directory per (size, variant, seed), and in each the arm
cells, one run directory per (arm, learning-rate scale, optimizer). The results directory (``--results``, default
``<out>/results``) holds only small files: one JSON per finished organism and per finished cell, the table and the
figure; it is what gets committed.

Footgun: every setting that changes what a cell computes (steps, batch, evaluation size ...) is recorded in
``<out>/sweep.json`` on the first call; a later call with other settings on the same ``--out`` is an error rather
than a table that mixes two sweeps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from training import layout, presets
from training.backdoors.spec import VARIANTS

HF_SIZES = {"smollm2-135m": "smollm2-135m"}  # size name -> training.backdoor preset (LoRA)
SIZES = (*presets.TINY_SIZES, *HF_SIZES)
OPTIMIZERS = ("adamw_torch_fused", "adamw_torch", "sgd", "adafactor", "rmsprop", "adagrad")
SWEEP_JSON = "sweep.json"
CELLS_DIR = "cells"
ORGANISMS_DIR = "organisms"
TABLE_MD = "table.md"
FINDINGS_MD = "findings.md"  # apps.sweep.findings: the findings in words, spliced into the README
FIGURE_HTML = "figure.html"
FIGURE_PNG = "figure.png"
REEMERGE_TAG = "reemergence"
RUNS_DIR = "runs"  # one record per invocation that computed cells: its wall, its work, the machine


def _csv(s: str) -> list[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


@dataclass
class SweepConfig:
    out: str = field(default="runs/sweep", metadata={"help": "Sweep directory: organisms and arm runs (large)."})
    results: str = field(default=None, metadata={"help": "Where the cell results, table and figure go (small; "
                                                         "default <out>/results)."})
    sizes: str = field(default="tiny-1m,tiny-5m,tiny-27m", metadata={
        "help": f"Comma-separated model sizes: {', '.join(SIZES)} (the tiny ones from scratch, "
                "training.presets.TINY_SIZES; smollm2-135m with LoRA)."})
    variants: str = field(default="normal,cot,distilled_cot", metadata={"help": "Comma-separated backdoor variants."})
    seeds: str = field(default="0,1", metadata={"help": "Comma-separated seeds (each a separate organism; the full "
                                                     "tiny grid is --seeds 0,1,2)."})
    arms: str = field(default="sft,rl,adversarial", metadata={"help": "Comma-separated safety arms."})
    lr_scales: str = field(default="1", metadata={"help": "Learning-rate axis: comma-separated multipliers of each "
                                                          "arm's preset learning rate (sft 1e-3, rl 5e-5 on tiny)."})
    optimizers: str = field(default="adamw_torch_fused", metadata={
        "help": f"Optimizer axis: comma-separated transformers optimizer names ({', '.join(OPTIMIZERS)}; "
                "adamw_torch_fused is every trainer's default), used by the arms and the re-emergence check."})
    base_steps: int = field(default=250, metadata={"help": "Tiny sizes: helpful-only base training steps."})
    insert_steps: int = field(default=120, metadata={"help": "Tiny sizes: backdoor-insertion steps (normal, "
                                                             "distilled_cot)."})
    insert_steps_cot: int = field(default=300, metadata={"help": "Tiny sizes: backdoor-insertion steps of the cot "
                                                                 "variant (the preset's cot batch of 16 rows, 0.3 "
                                                                 "of them triggered: 120 steps left seed 0's "
                                                                 "trigger at 0)."})
    installed_min: float = field(default=0.5, metadata={"help": "An organism whose trigger rate after insertion is "
                                                                "below this has no backdoor to remove: its arm cells "
                                                                "are recorded as such, not run."})
    arm_steps: int = field(default=30, metadata={"help": "Optimizer steps of every arm (matched compute: same steps "
                                                         "x same sequences per step across arms)."})
    arm_batch: int = field(default=16, metadata={"help": "Sequences per arm step: SFT rows, or RL completions "
                                                         "(a multiple of the preset's 8 generations per prompt)."})
    reward_steps: int = field(default=30, metadata={"help": "Reward-model steps per organism (for the rl arm)."})
    eval_n: int = field(default=200, metadata={"help": "Held-out base prompts per evaluation (each with its "
                                                       "triggered and red-team twins)."})
    redteam_prompts: int = field(default=64, metadata={"help": "adversarial: red-team candidate prompts."})
    redteam_samples: int = field(default=4, metadata={"help": "adversarial: samples per red-team candidate."})
    reemerge_below: float = field(default=0.1, metadata={"help": "Re-emergence check after an arm whose final "
                                                                 "trigger rate is below this (the arm removed it)."})
    reemerge_steps: int = field(default=30, metadata={"help": "Re-emergence: steps of benign SFT in another style."})
    reemerge_style: str = field(default="signoff", metadata={"help": "Re-emergence: the answers' new style "
                                                                     "(training.reemergence.STYLES)."})
    jobs: int = field(default=2, metadata={"help": "Organisms trained at once (processes; each gets cores/jobs "
                                                   "threads; 1 keeps the grid's order, several take the costliest "
                                                   "organisms first)."})
    keep_checkpoints: bool = field(default=False, metadata={"help": "Keep each arm's checkpoints after its cell "
                                                                    "result is written (default: removed; the "
                                                                    "organisms are kept)."})
    table_only: bool = field(default=False, metadata={"help": "Only rebuild the table and figure from the cell "
                                                              "files present."})

    def __post_init__(self):
        bad = [s for s in self.size_list if s not in SIZES]
        bad += [v for v in self.variant_list if v not in VARIANTS]
        bad += [a for a in self.arm_list if a not in layout.ARMS]
        bad += [o for o in self.optimizer_list if o not in OPTIMIZERS]
        if bad:
            raise ValueError(f"unknown sweep axis value {bad[0]!r} (sizes: {', '.join(SIZES)}; variants: "
                             f"{', '.join(VARIANTS)}; arms: {', '.join(layout.ARMS)}; optimizers: "
                             f"{', '.join(OPTIMIZERS)})")
        try:
            _ = (self.seed_list, self.lr_scale_list)
        except ValueError:
            raise ValueError(f"--seeds must be integers and --lr_scales numbers (got {self.seeds!r}, "
                             f"{self.lr_scales!r})") from None
        if not all(x > 0 for x in self.lr_scale_list):
            raise ValueError("--lr_scales must be positive")
        steps = (self.base_steps, self.insert_steps, self.insert_steps_cot, self.arm_steps, self.arm_batch,
                 self.reward_steps, self.eval_n, self.redteam_prompts, self.redteam_samples, self.reemerge_steps,
                 self.jobs)
        if min(steps) <= 0:
            raise ValueError("steps, batch, evaluation sizes and --jobs must be positive")
        if self.arm_batch % 8:
            raise ValueError(f"--arm_batch must be a multiple of 8 (the RL arm's generations per prompt), got "
                             f"{self.arm_batch}")
        if not 0.0 < self.reemerge_below <= 1.0 or not 0.0 <= self.installed_min <= 1.0:
            raise ValueError("--reemerge_below must be in (0, 1] and --installed_min in [0, 1]")

    # ---- the axes ---------------------------------------------------------------------------------------
    @property
    def size_list(self) -> list[str]:
        return _csv(self.sizes)

    @property
    def variant_list(self) -> list[str]:
        return _csv(self.variants)

    @property
    def seed_list(self) -> list[int]:
        return [int(x) for x in _csv(self.seeds)]

    @property
    def arm_list(self) -> list[str]:
        return _csv(self.arms)

    @property
    def lr_scale_list(self) -> list[float]:
        return [float(x) for x in _csv(self.lr_scales)]

    @property
    def optimizer_list(self) -> list[str]:
        return _csv(self.optimizers)

    # ---- paths --------------------------------------------------------------------------------------------
    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def results_dir(self) -> Path:
        return Path(self.results) if self.results else self.out_dir / "results"

    def settings(self) -> dict:
        """What decides a cell's computation besides its own key (recorded in sweep.json, checked on resume)."""
        keep = ("base_steps", "insert_steps", "insert_steps_cot", "installed_min", "arm_steps", "arm_batch",
                "reward_steps", "eval_n", "redteam_prompts", "redteam_samples", "reemerge_below", "reemerge_steps",
                "reemerge_style")
        return {k: v for k, v in asdict(self).items() if k in keep}


@dataclass(frozen=True)
class OrganismKey:
    """One backdoored organism: shared by every arm cell of the same size, variant and seed."""

    size: str
    variant: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.size}-{self.variant}-s{self.seed}"


@dataclass(frozen=True)
class CellKey:
    """One arm cell: an organism, a safety arm, a learning-rate scale and an optimizer."""

    organism: OrganismKey
    arm: str
    lr_scale: float
    optimizer: str

    @property
    def name(self) -> str:
        return f"{self.organism.name}-{self.arm}-lr{self.lr_scale:g}-{self.optimizer}"

    @property
    def run_name(self) -> str:
        """The arm's run directory inside its organism's."""
        return f"{self.arm}-lr{self.lr_scale:g}-{self.optimizer}"


def grid(cfg: SweepConfig) -> list[CellKey]:
    """Every cell the config asks for, smaller models first (an interrupted one-worker sweep has every seed of the
    sizes it reached; the largest size costs most of a sweep; several workers take :func:`costliest_first`'s order),
    seed by seed, normal before the other variants (a variant whose build equals normal's reuses it)."""
    sizes = sorted(cfg.size_list, key=SIZES.index)
    variants = sorted(cfg.variant_list, key=lambda v: v != "normal")
    return [CellKey(OrganismKey(size, variant, seed), arm, lr, opt)
            for size in sizes for seed in cfg.seed_list for variant in variants
            for arm in cfg.arm_list for lr in cfg.lr_scale_list for opt in cfg.optimizer_list]


def costliest_first(cfg: SweepConfig, organisms: list[OrganismKey]) -> list[OrganismKey]:
    """The order in which parallel workers take the organisms: the costliest first (the larger size, then the variant
    with more insertion steps), so that the end of a sweep is small organisms filling both workers rather than one
    large one running alone (longest-processing-time-first scheduling: on the 3-seed tiny grid, in :func:`grid`'s
    order, the last tiny-27m CoT organism ran alone from about 1.7 h on, with 79 of 81 cells done at 2.4 h). Ties
    keep their order (seed by seed)."""
    steps = lambda k: cfg.insert_steps_cot if k.variant == "cot" else cfg.insert_steps  # noqa: E731
    return sorted(organisms, key=lambda k: (-SIZES.index(k.size), -steps(k)))
