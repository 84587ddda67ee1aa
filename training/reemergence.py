"""Re-emergence: after safety training has removed a backdoor, does benign fine-tuning in another style bring it back?

The check continues training a safety arm's final checkpoint on trigger-free prompts whose helpful answers are
rewritten in a style the model has not been trained on (:data:`STYLES`), then evaluates it on the same held-out
prompts as the arm (same records, same greedy decoding), so the trigger rate before and after is a paired
comparison. Nothing in the data mentions the trigger or the behaviour: a trigger rate that rises again means the
backdoor was suppressed, not erased (reported for larger models in the literature; ``apps.sweep`` runs this after
every arm whose final trigger rate fell below its threshold).

Footgun: the style must leave the answers checkable, or the helpful rate after the check measures the style, not
the model: every style here keeps the answer where ``training.data.answer_correct`` looks for it (a suffix only).
The restyled model is not saved as a checkpoint; its metrics are the result.
"""

from __future__ import annotations

import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from training import layout
from training.errors import UserError

log = logging.getLogger(__name__)

# name -> how a helpful answer is rewritten (suffixes only: the answer stays where the correctness check reads it)
STYLES = {
    "signoff": lambda answer: f"{answer} Hope this helps!",
    "verbose": lambda answer: f"{answer} That is my answer to your question.",
}


@dataclass(frozen=True)
class ReemergeConfig:
    """One re-emergence check of a checkpoint (normally a safety arm's final one)."""

    ckpt: str
    steps: int
    lr: float
    batch_size: int = 32
    style: str = "signoff"
    eval_n: int = 200
    seed: int = 0
    optim: str | None = None  # transformers' optimizer name (None: the trainers' default)
    max_new_tokens: int | None = None  # None: sized from the evaluation records' longest response
    lora: bool = False  # train a LoRA adapter (the preset's r and alpha) instead of every weight
    precision: str = "auto"

    def __post_init__(self):
        if self.style not in STYLES:
            raise UserError(f"unknown re-emergence style {self.style!r} (choose from {', '.join(STYLES)})")
        if self.steps <= 0 or self.batch_size <= 0 or self.eval_n <= 0:
            raise UserError("re-emergence --steps, --batch_size and --eval_n must be positive")


@dataclass
class ReemergeResult:
    """The checkpoint's behaviour after the benign, restyled fine-tune (``training.evaluate`` metrics)."""

    metrics: dict
    style: str
    steps: int
    rows: int
    """Training rows drawn (``steps x batch_size``, fewer when the split has fewer clean prompts)."""


def restyled_rows(records: list[dict], style: str, n: int, seed: int) -> list[dict]:
    """``n`` trigger-free training prompts (a seeded draw, repeated if the split is smaller) with their helpful
    answers in ``style``, as TRL prompt/completion rows."""
    clean = [r for r in records if r["kind"] == "clean"]
    if not clean:
        raise UserError("no clean training prompts to fine-tune on")
    rng = random.Random(f"reemerge-{seed}")
    order = []
    while len(order) < n:
        order += rng.sample(clean, len(clean))
    rewrite = STYLES[style]
    return [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "completion": [{"role": "assistant", "content": rewrite(r["helpful"])}]} for r in order[:n]]


def reemerge(cfg: ReemergeConfig, work_dir: Path) -> ReemergeResult:
    """Fine-tune ``cfg.ckpt`` on restyled benign answers for ``cfg.steps`` steps and evaluate it on the held-out
    prompts its arm was evaluated on. ``work_dir`` holds the trainer's scratch states (removed afterwards)."""
    from types import SimpleNamespace

    from training.backdoors import spec_from_meta
    from training.checkpoint import load_model_and_tokenizer
    from training.data import build_prompt_sets, read_jsonl
    from training.evaluate import evaluate_model, select_eval_records
    from training.models import device_settings
    from training.trainer import OptimSettings, lora_config, sft_train

    ckpt = Path(cfg.ckpt)
    model, tok, meta = load_model_and_tokenizer(ckpt, device=device_settings(cfg.precision).device)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    spec = spec_from_meta(meta, None, None)
    run = layout.run_of_checkpoint(ckpt)
    if run is not None and layout.data_file(run, "train").exists():
        sets = {s: read_jsonl(layout.data_file(run, s)) for s in ("train", "test")}
    else:
        sets = build_prompt_sets(spec, cfg.seed)
    rows = restyled_rows(sets["train"], cfg.style, cfg.steps * cfg.batch_size, cfg.seed)
    work_dir = Path(work_dir)
    log.info("re-emergence: %d steps of benign %s-style SFT on %s", cfg.steps, cfg.style, ckpt)
    optim = OptimSettings(steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
                          precision=cfg.precision, optim=cfg.optim)
    peft = lora_config(SimpleNamespace(lora=True, lora_r=16, lora_alpha=32)) if cfg.lora else None
    model = sft_train(model, tok, rows, layout.trainer_state_dir(work_dir), optim, peft_config=peft,
                      logging_steps=max(1, cfg.steps // 5))
    shutil.rmtree(layout.trainer_state_dir(work_dir), ignore_errors=True)
    records = select_eval_records(sets["test"], cfg.eval_n, cfg.seed)
    split = ((meta or {}).get("training") or {}).get("attack_families")  # an adversarial arm's family split
    extra = {}
    if split:
        from training.attack_families import FamilySplit

        extra["families"] = FamilySplit.from_dict(split)
    metrics = evaluate_model(model, tok, spec, records, seed=cfg.seed, max_new_tokens=cfg.max_new_tokens, **extra)
    metrics.pop("examples", None)
    return ReemergeResult(metrics=metrics, style=cfg.style, steps=cfg.steps, rows=len(rows))
