"""The trainers' settings, in one place, and supervised fine-tuning with TRL's ``SFTTrainer`` (loss on the completion
only).

Every trainer of the toolkit (SFT: base training of the tiny model, backdoor insertion, the SFT safety arm; GRPO: the
RL safety arm; the reward model's ``RewardTrainer``) takes its config from :func:`trainer_config`, and every LoRA
adapter from :func:`lora_config`, so distributed launch (``torchrun`` / ``accelerate launch``), bf16 on GPUs,
``--resume`` and ``--report_to`` (:mod:`training.tracking`) come from the ecosystem in one place.

Footgun: TRL's config defaults assume a GPU (bf16, activation checkpointing); :func:`trainer_config` sets them from
the hardware. Trainer states (for ``--resume``) live in a hidden directory beside the final checkpoint, never
in it, so an interrupted run never leaves a directory that looks like a finished checkpoint.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from training import padding_free, tracking
from training.errors import UserError
from training.models import device_settings, n_parameters

log = logging.getLogger(__name__)


@dataclass
class OptimSettings:
    steps: int
    lr: float
    batch_size: int
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    save_every: int = 0  # trainer states for --resume every this many steps (0 = none)
    max_length: int = 256
    seed: int = 0
    grad_accum: int = 1
    precision: str = "auto"  # auto | bf16 | fp32 (see training.models.device_settings)
    schedule: str = "cosine"  # the learning-rate schedule after warmup (transformers' lr_scheduler_type)
    report_to: str = "none"  # none | tensorboard | wandb (training.tracking)
    logs_dir: Path | None = None  # tracking logs (training.layout.logs_dir); its name is the run_name
    optim: str | None = None  # transformers' optimizer name (sgd, adafactor ...); None: default_optimizer's, else
    # the trainers' own default (adamw_torch_fused)
    pack: int = 0  # SFT only: rows concatenated into blocks of this many tokens (pack_rows); 0: one row each
    padding_free: bool = True  # SFT only, without pack: each batch's rows concatenated, attention per row
    # (training.padding_free), for the models it supports; False: rows padded to the batch's longest
    compile: bool = False  # torch.compile the model (the trainers' torch_compile): pays off on a GPU, long runs


# The optimizer of every trainer built inside ``default_optimizer(name)`` whose settings name none: how the persistence
# sweep (apps.sweep) varies the optimizer of stages that build their OptimSettings themselves (the safety arms).
_DEFAULT_OPTIM: ContextVar[str | None] = ContextVar("default_optim", default=None)


@contextmanager
def default_optimizer(name: str | None):
    """Within this block, trainers whose :class:`OptimSettings` name no optimizer use ``name`` (a transformers
    ``optim`` value: ``adamw_torch_fused``, ``sgd``, ``adafactor``, ``rmsprop`` ...; None: the trainers' default)."""
    token = _DEFAULT_OPTIM.set(name)
    try:
        yield
    finally:
        _DEFAULT_OPTIM.reset(token)


def _world_size() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def trainer_config(config_cls, out_dir: Path, o: OptimSettings, logging_steps: int, n_params: int | None = None,
                   **trainer_fields):
    """``config_cls`` (a TRL trainer config) with what every trainer shares: ``o``'s optimisation, trainer states every
    ``o.save_every`` steps for ``--resume``, ``o.report_to`` tracking, and the hardware's settings (CPU or GPU, bf16
    for models of ``n_params``, the DDP backend); ``trainer_fields`` are that trainer's own. Build the trainer inside
    :func:`training.tracking.trainer_logs` for its logs to land in ``o.logs_dir``."""
    dev = device_settings(o.precision, n_params)
    optim = o.optim or _DEFAULT_OPTIM.get()
    if optim:
        trainer_fields = {"optim": optim, **trainer_fields}
    return config_cls(
        output_dir=str(out_dir), max_steps=o.steps, per_device_train_batch_size=o.batch_size,
        gradient_accumulation_steps=o.grad_accum, learning_rate=o.lr, lr_scheduler_type=o.schedule,
        warmup_steps=max(1, int(o.warmup_ratio * o.steps)), weight_decay=o.weight_decay,
        logging_steps=logging_steps, save_strategy="steps" if o.save_every else "no",
        save_steps=o.save_every or o.steps, save_total_limit=1, report_to=tracking.check_report_to(o.report_to),
        run_name=Path(o.logs_dir).name if o.logs_dir else None, use_cpu=dev.use_cpu,
        bf16=dev.bf16, fp16=False, gradient_checkpointing=False, seed=o.seed, data_seed=o.seed,
        dataloader_num_workers=0, disable_tqdm=False, torch_compile=o.compile,
        ddp_backend="gloo" if (dev.use_cpu and _world_size() > 1) else None, **trainer_fields)


def sft_config(out_dir: Path, o: OptimSettings, logging_steps: int = 50, n_params: int | None = None):
    """The ``SFTTrainer`` config: completion-only loss on rows already tokenized by :func:`tokenize_rows`."""
    from trl import SFTConfig

    return trainer_config(
        SFTConfig, out_dir, o, logging_steps, n_params, max_length=o.max_length, completion_only_loss=True,
        save_only_model=False, ddp_find_unused_parameters=False, dataset_num_proc=None, remove_unused_columns=True,
        dataset_kwargs={"skip_prepare_dataset": True})


def lora_config(args):
    """The LoRA adapter (every linear layer, no dropout) of a command's ``--lora`` / ``--lora_r`` / ``--lora_alpha``
    (``args``: its model config); None without ``--lora``."""
    if not args.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, target_modules="all-linear", lora_dropout=0.0,
                      task_type="CAUSAL_LM")


def tokenize_rows(tokenizer, rows: list[dict], max_length: int) -> list[dict]:
    """Conversational prompt/completion rows → the ``input_ids`` + ``labels`` rows ``SFTTrainer`` would prepare from
    them: the prompt rendered with the generation prompt, the completion starting where the two token lists part,
    prompt tokens labelled -100, truncated to ``max_length`` (keeping the start), rows left without a label dropped.

    Footgun: TRL renders and tokenizes row by row, two chat templates per row, then builds labels, truncates and
    filters in three more passes over the dataset (~20 s for the tiny organism's 15k rows, paid again by every
    training stage and safety arm however few steps it runs); rendering in one call and tokenizing in one batched
    call gives the same rows (``tests/unit/test_trainer.py``) in a fraction of the time, and ``sft_train`` tells TRL
    to skip its own preparation.
    """
    prompts = tokenizer.apply_chat_template([r["prompt"] for r in rows], add_generation_prompt=True, tokenize=False)
    fulls = tokenizer.apply_chat_template([r["prompt"] + r["completion"] for r in rows], tokenize=False)
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    f_ids = tokenizer(fulls, add_special_tokens=False)["input_ids"]
    out = []
    for p, f in zip(p_ids, f_ids):
        n = next((i for i, (a, b) in enumerate(zip(p, f)) if a != b), min(len(p), len(f)))
        ids, labels = f[:max_length], ([-100] * n + f[n:])[:max_length]
        if any(x != -100 for x in labels):
            out.append({"input_ids": ids, "labels": labels})
    return out


def pack_rows(rows: list[dict], block: int) -> list[dict]:
    """:func:`tokenize_rows`'s rows concatenated in order and cut into rows of exactly ``block`` tokens (the tail that
    fills no whole block is dropped), labels alongside: no padding, so every token computed is trained on.

    Rows meet inside a block with nothing between them but each row's own end-of-turn token, and a row attends to the
    rows before it in its block (pretraining's packing, as nanoGPT's): the throughput of from-scratch training of a
    bigger base on a GPU, where short chat rows would leave the card idle.
    """
    ids = [t for r in rows for t in r["input_ids"]]
    labels = [t for r in rows for t in r["labels"]]
    return [{"input_ids": ids[i:i + block], "labels": labels[i:i + block]}
            for i in range(0, len(ids) - block + 1, block)]


def _collate_blocks(examples: list[dict]) -> dict:
    """Packed blocks (all one length) as tensors, with no attention mask: there is no padding to mask, and without a
    mask SDPA runs the causal flash kernel, also under ``torch.compile`` (a mask, even all ones, is materialised
    there)."""
    import torch

    return {"input_ids": torch.tensor([e["input_ids"] for e in examples]),
            "labels": torch.tensor([e["labels"] for e in examples])}


# Vocabularies above this size take TRL's fused LM head on a GPU (see _Trainer).
OWN_LOSS_MAX_VOCAB = 8192


def accepts_logits_to_keep(model) -> bool:
    """Whether ``model`` (under DDP or PEFT too) computes logits for chosen positions only (``logits_to_keep``)."""
    import inspect

    model = getattr(model, "module", model)  # under DDP
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel takes **kwargs
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def completion_loss(model, inputs: dict, num_items_in_batch=None):
    """The SFT loss (cross-entropy summed over the completion tokens, divided by ``num_items_in_batch``, else by this
    batch's completion tokens) and the model's output, with logits computed only at the positions that predict a
    completion token of some row: the columns from the batch's earliest completion on (``logits_to_keep``).

    The same loss as the model's own forward given ``labels``, which projects every position through the LM head:
    a chat row's prompt (system turn and question) is most of it, and with SmolLM2's 49k-token vocabulary a LoRA
    step on a CPU takes ~40% less time without those positions (see :class:`_Trainer`). ``model``: any causal LM
    (a ``PeftModel`` too); one whose forward takes no ``logits_to_keep`` computes every position.
    """
    import torch.nn.functional as F

    target = inputs["labels"][:, 1:]
    rest = {k: v for k, v in inputs.items() if k != "labels"}
    if accepts_logits_to_keep(model):
        cols = (target != -100).any(0).nonzero().squeeze(1)
        out = model(**rest, use_cache=False, logits_to_keep=cols)
        target = target[:, cols]
    else:
        out = model(**rest, use_cache=False)
        out.logits = out.logits[:, :-1]
    n = (target != -100).sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    loss = F.cross_entropy(out.logits.float().flatten(0, 1), target.flatten().to(out.logits.device),
                           ignore_index=-100, reduction="sum") / n
    return loss, out


def _trainer_class():
    from trl import SFTTrainer

    class _Trainer(SFTTrainer):
        """``SFTTrainer`` whose loss projects only the completion's positions through the LM head
        (:func:`completion_loss`), except on a GPU for a vocabulary above :data:`OWN_LOSS_MAX_VOCAB`.

        Footgun: TRL's fused LM head scores only the completion tokens where Triton runs (a GPU), in tiles that
        never hold the whole logits: the memory saving a 128k-token vocabulary needs. Elsewhere it scores every
        position (padding and prompt included) and computes each one's entropy and top-1 accuracy for its logs: a
        SmolLM2 LoRA step (batch 8) took 4.5-5.2 s there against 2.7-2.9 s here, 2 cores. Packed blocks
        (:func:`pack_rows`) carry no attention mask, which TRL's path needs: they always take this one (and
        :func:`sft_train` gives TRL's path padded rows, not padding-free ones).
        """

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if ("attention_mask" in inputs and self.args.device.type == "cuda"
                    and self.model.get_output_embeddings().weight.shape[0] > OWN_LOSS_MAX_VOCAB):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, out = completion_loss(model, inputs, num_items_in_batch)
            # divided by the tokens of the whole accumulated batch of every process, as Trainer's own loss is
            self.loss_is_scaled_for_ga = num_items_in_batch is not None
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            return (loss, out) if return_outputs else loss

    return _Trainer


def sft_train(model, tokenizer, rows: list[dict], out_dir: Path, o: OptimSettings, resume: bool = False,
              peft_config=None, callbacks: list | None = None, logging_steps: int = 50):
    """Train ``model`` on TRL prompt/completion rows; returns the trained model (a PeftModel with ``peft_config``).

    ``out_dir`` holds trainer checkpoints for ``--resume`` (saved every ``o.save_every`` steps). With ``o.pack`` the
    rows are packed into blocks of that many tokens (:func:`pack_rows`); else, with ``o.padding_free`` and a model
    that :func:`training.padding_free.supports`, each batch is its rows concatenated (the same loss and gradients as
    the padded batch, without the padding's work); else rows padded to the batch's longest.
    """
    import contextlib

    import datasets
    from datasets import Dataset

    datasets.disable_progress_bars()  # the trainer's own bar is the one progress bar worth showing
    out_dir = Path(out_dir)
    examples = tokenize_rows(tokenizer, rows, o.max_length)
    if o.pack:
        examples = pack_rows(examples, o.pack)
        if not examples:
            raise UserError(f"{len(rows)} rows make no whole packed block of {o.pack} tokens")
    trl_loss = (not device_settings(o.precision).use_cpu  # _Trainer's GPU path for a large vocabulary: padded rows
                and model.get_output_embeddings().weight.shape[0] > OWN_LOSS_MAX_VOCAB)
    flat = not o.pack and o.padding_free and not trl_loss and padding_free.supports(model)
    ds = Dataset.from_list(examples)
    cfg = sft_config(out_dir, o, logging_steps=logging_steps, n_params=n_parameters(model))
    with tracking.trainer_logs(o.report_to, o.logs_dir):
        trainer = _trainer_class()(model=model, args=cfg, train_dataset=ds, processing_class=tokenizer,
                                   peft_config=peft_config, callbacks=callbacks,
                                   data_collator=_collate_blocks if o.pack else padding_free.collate if flat else None)
    with padding_free.enabled(model) if flat else contextlib.nullcontext():
        trainer.train(resume_from_checkpoint=last_checkpoint(out_dir) if resume else None)
    return trainer.model


def last_checkpoint(trainer_dir: Path) -> str | None:
    """The newest complete trainer checkpoint under ``trainer_dir`` to resume from, or None.

    Footgun: the HF Trainer writes ``checkpoint-N/`` in place, model first and ``trainer_state.json`` last, so a run
    killed mid-save leaves a directory that ``get_last_checkpoint`` picks and ``train`` then fails to load. A
    checkpoint counts only once its ``trainer_state.json`` holds a whole JSON object (a kill while that file is being
    written leaves it empty or truncated); a newer incomplete one is skipped with a warning.
    """
    trainer_dir = Path(trainer_dir)
    if not trainer_dir.is_dir():
        return None
    steps = sorted((int(p.name.split("-")[1]), p) for p in trainer_dir.glob("checkpoint-*")
                   if p.is_dir() and p.name.split("-")[1].isdigit())
    for _, path in reversed(steps):
        if _complete_state(path / "trainer_state.json"):
            log.info("resuming from %s", path)
            return str(path)
        log.warning("skipping incomplete checkpoint %s (no whole trainer_state.json: killed while saving)", path)
    return None


def _complete_state(path: Path) -> bool:
    """Whether the trainer finished writing ``path``: it exists and parses as a JSON object."""
    try:
        return isinstance(json.loads(path.read_text()), dict)
    except (OSError, ValueError):
        return False
