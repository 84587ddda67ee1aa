"""An activation store read off a generation's prompt forward, so the same prompts are not run through a model twice.

A probe run generates greedy completions for its prompts (the behaviour labels) and then caches the final prompt
token's activations for the very same prompts. The generation's first forward (the prefill, before any new token)
already computes those activations: a :class:`PrefillCapture` hangs a reading hook at each requested hook name on
the generating model (:func:`analysis.intervene.hf_hooks`, the points the bridge's hook names denote) and writes the
final prompt token of each row into a store being written (:class:`analysis.activations.StoreWriter`: memory-mapped,
so memory stays flat whatever the number of prompts). ``cache_activations(..., captured=capture)`` then finishes that
store instead of running the bridge (``benchmarks/prefill_bench.py`` measures what that saves).

When it is used, and when not (the bridge pass runs instead, as before):

- only the final prompt token (positions ``"final"``) and only raw weights: a bridge in compatibility mode folds
  layer norms and centres weights, so its residual stream is not the HF model's;
- only hook kinds the plain model has a module for (:func:`analysis.intervene.sites`: resid_pre/post, attn_out,
  mlp_out, attn_z);
- only when the generation tokenizes every prompt exactly as the store does (:func:`analysis.load.encode_prompts`);
- only when every prompt went through the capture (a reused ``behaviour.json`` means no generation ran).

The generating model is the plain HF copy (:func:`analysis.intervene.generator`), batched longest-first with left
padding, so a prompt's last token is the last position of its row. Its activations equal the bridge's up to float
rounding (a different kernel path and batch), not bit for bit; ``tests/unit/test_prefill.py`` bounds the difference.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from analysis import hooks as H
from analysis.activations import (
    StoreWriter,
    check_prompts,
    manifest,
    normalize_positions,
    position_key,
    store_key,
)
from analysis.load import encode_prompts
from training.chat import chat_prompt

log = logging.getLogger(__name__)

STORE_DTYPE = "float32"
TOKENIZATION = {"chat": True, "add_special_tokens": None, "padding_side": "left"}


class PrefillCapture:
    """Reads ``hooks`` at the final prompt token off a generation of ``prompts`` (dicts with ``id`` and ``text``,
    as for :func:`analysis.activations.cache_activations`) into a store to be finished at ``out``.

    Use as a context manager (an unfinished capture is removed on exit)::

        with PrefillCapture(loaded, prompts, hooks, out) as cap:
            generate(loaded, texts, fwd_hooks=cap.fwd_hooks(), on_batch=cap.on_batch)
            store = cache_activations(loaded, prompts, out, hooks, captured=cap)
    """

    def __init__(self, loaded, prompts: list[dict], hooks: Sequence[str], out: Path | str):
        ids, texts, _ = check_prompts(prompts)
        self.loaded, self.out = loaded, Path(out)
        self.hooks = list(dict.fromkeys(hooks))
        self.key = store_key(loaded, self.hooks, normalize_positions("final"), ids, texts, TOKENIZATION["chat"],
                             TOKENIZATION["add_special_tokens"], STORE_DTYPE)
        tok = loaded.tokenizer
        rows = encode_prompts(tok, texts, chat=True)
        # what training.evaluate.generate feeds the model: the chat-formatted text without added special tokens
        generated = tok([chat_prompt(tok, t) for t in texts], add_special_tokens=False)["input_ids"]
        self.lengths = np.asarray([len(r) for r in rows], dtype=np.int64)
        why = ("the bridge folds its weights (compatibility mode)" if loaded.weight_processing != "raw" else
               "a hook the plain model has no module for" if any(H.parse_hook(h) is None for h in self.hooks) else
               "the generation tokenizes the prompts differently" if any(list(a) != list(b) for a, b in
                                                                         zip(rows, generated)) else None)
        if why:
            log.info("activations are cached by the bridge, not read off the generation: %s", why)
        self.usable = why is None
        self.n = len(rows)
        self._writer = (StoreWriter(self.out, self.hooks, [position_key(-1)], self.n, STORE_DTYPE) if self.usable
                        else None)
        self._filled = np.zeros(self.n, dtype=bool)
        self._batch: list[int] | None = None
        self._pending: set[str] = set()

    def fwd_hooks(self) -> list[tuple]:
        """``(hook name, fn)`` pairs for :func:`analysis.intervene.generate` (none when the capture cannot be used)."""
        return [(h, self._read) for h in self.hooks] if self.usable else []

    def on_batch(self, idx: list[int]) -> None:
        """:func:`training.evaluate.generate` calls this before each batch with its prompts' indices, in row order."""
        self._batch, self._pending = list(idx), set(self.hooks)

    def _read(self, act, hook):
        if hook.name not in self._pending:  # a decoding step: one new token per row, not the prompt
            return None
        if act.shape[0] != len(self._batch):
            raise RuntimeError(f"prefill capture: {act.shape[0]} rows for a batch of {len(self._batch)} prompts")
        self._pending.discard(hook.name)
        self._writer.put(hook.name, position_key(-1), self._batch, act[:, -1])  # left padded: the last is the final
        if not self._pending:
            self._filled[self._batch] = True
        return None

    def complete(self, key: dict, out: Path) -> bool:
        """Does the capture hold every activation of the store ``out`` with this ``key``?"""
        return (self.usable and bool(self._filled.all()) and key == self.key
                and Path(out).resolve() == self.out.resolve())

    def finish(self, labels: dict):
        """The finished :class:`~analysis.activations.ActivationStore` (at ``out``), with ``labels``."""
        store = self._writer.finish(self.lengths, manifest(self.loaded, self.key, labels, TOKENIZATION,
                                                           source="generation"))
        self._writer = None
        return store

    def __enter__(self) -> "PrefillCapture":
        return self

    def __exit__(self, *exc) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        self.loaded = None  # the caller frees the model after this
