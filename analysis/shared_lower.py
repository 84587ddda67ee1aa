"""The prompt forward below an intervention, computed once and reused by every generation over the same prompts.

An ablation generates over the same prompts about a hundred times (the probe direction and each placebo, projected
out or added at each alpha), each time with hooks at the probe's layer ``L`` or above. The blocks below the hooks
compute exactly the same thing in every one of those prompt forwards: same tokens, same batch, same weights, and
no hook acts on them. :class:`SharedLower` runs them once per batch and replays them afterwards.

How: while :meth:`SharedLower.active`, each of the first ``depth`` blocks of the plain HF model has its ``forward``
replaced (on the instance, so forward hooks registered on the block still fire). A generation calls
:meth:`~SharedLower.on_batch` before each batch (``training.evaluate.generate``'s callback), which arms the blocks
for the next forward, the batch's prompt forward. The first time a batch is seen, the blocks run as usual and keep
their output and their KV-cache layer; every later time, block 0 checks that its input (the token embeddings, the
positions, the mask, the cached prefix length) is the recorded one, each block puts its recorded cache layer back
in place of computing it, the blocks below the last return their input untouched, and the last returns its
recorded output (which the hooks at ``resid_post`` of that block then see, as they would); a batch whose inputs
differ from the recorded ones (another layout of the same prompts) is recorded afresh. Decoding steps run every
block as usual. One :class:`SharedLower` serves one model: its records are the outputs of that model's weights.

Exact: the replayed tensors are those the same computation produced, so completions are the same token for token
(``tests/integration/test_intervene.py``). Used only where it holds: hooks at ``depth`` blocks or above
(:func:`analysis.hooks.untouched_blocks`), blocks that return a tensor and take the KV cache as ``cache``, a plain
``DynamicCache`` of full-attention layers. Anywhere else the blocks just run (and :attr:`SharedLower.replayed`
stays 0). Memory: per batch, the lower blocks' KV cache and one activation of the batch (a few tens of MB for
SmolLM2 at 64 prompts).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch

from analysis import hooks as H

log = logging.getLogger(__name__)


@dataclass
class _Record:
    """One batch's lower blocks: block 0's inputs, each block's cache layer, the last block's output."""

    inputs: tuple
    layers: dict = field(default_factory=dict)
    output: torch.Tensor | None = None


def _signature(hidden: torch.Tensor, kwargs: dict) -> tuple:
    """What decides the lower blocks' output besides the weights: the embeddings, positions, mask, cached length."""
    cache = kwargs.get("cache")
    mask = kwargs.get("attention_mask")
    return (hidden, kwargs.get("position_ids"), mask if isinstance(mask, torch.Tensor) else None,
            cache.get_seq_length() if cache is not None else 0)


def _same(a: tuple, b: tuple) -> bool:
    def eq(x, y) -> bool:
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            return (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape
                    and x.dtype == y.dtype and torch.equal(x, y))
        return x == y

    return len(a) == len(b) and all(eq(x, y) for x, y in zip(a, b))


class SharedLower:
    """The first ``depth`` blocks' prompt forward of each batch, recorded once and replayed (see the module)."""

    def __init__(self, depth: int):
        self.depth = max(0, int(depth))
        self.records: dict[tuple, _Record] = {}
        self.computed = self.replayed = 0  # batches whose lower blocks ran / were replayed
        self._armed: tuple | None = None
        self._mode: str | None = None

    def covers(self, names: Sequence[str]) -> bool:
        """Do hooks at ``names`` leave the shared blocks untouched?"""
        return self.depth > 0 and (not names or H.untouched_blocks(names) >= self.depth)

    def on_batch(self, key: tuple) -> None:
        """Arm the blocks for the next forward, the prompt forward of the batch ``key`` (its prompts)."""
        self._armed = tuple(key)

    @contextlib.contextmanager
    def active(self, blocks: torch.nn.ModuleList):
        """Replace the first :attr:`depth` blocks' ``forward`` while inside (restored on exit)."""
        lower = list(blocks)[:self.depth]
        try:
            for i, block in enumerate(lower):
                block.forward = self._forward(i, block.forward)
            yield self
        finally:
            for block in lower:
                block.__dict__.pop("forward", None)
            self._armed = self._mode = None

    def _forward(self, i: int, run):
        last = i == self.depth - 1

        def forward(hidden_states, *args, **kwargs):
            if i == 0:
                self._mode = self._begin(hidden_states, args, kwargs)
            mode = self._mode
            if mode is None:
                return run(hidden_states, *args, **kwargs)
            rec, cache = self.records[self._armed], kwargs["cache"]
            if mode == "replay":
                cache.layers[i] = copy.copy(rec.layers[i])
                out = rec.output if last else hidden_states
            else:
                out = run(hidden_states, *args, **kwargs)
                if not isinstance(out, torch.Tensor):  # a block returning a tuple: not shared
                    log.debug("lower blocks not shared: a block returns %s", type(out).__name__)
                    del self.records[self._armed]
                    self.depth, self._armed, self._mode = 0, None, None
                    return out
                rec.layers[i] = copy.copy(cache.layers[i])
                if last:
                    rec.output = out
            if last:
                self.computed += mode == "record"
                self.replayed += mode == "replay"
                self._armed = self._mode = None
            return out

        return forward

    def _begin(self, hidden: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
        """Block 0 of an armed forward: ``"record"``, ``"replay"`` or None (run as usual)."""
        from transformers.cache_utils import DynamicCache, DynamicLayer

        key, cache = self._armed, kwargs.get("cache")
        if key is None or not self.depth:
            return None
        if args or type(cache) is not DynamicCache or any(type(x) is not DynamicLayer for x in cache.layers):
            log.debug("lower blocks not shared: the blocks take no DynamicCache as a keyword")
            self._armed = None
            return None
        sig = _signature(hidden, kwargs)
        rec = self.records.get(key)
        if rec is not None and rec.output is not None and _same(rec.inputs, sig):
            return "replay"
        self.records[key] = _Record(inputs=tuple(x.detach() if isinstance(x, torch.Tensor) else x for x in sig))
        return "record"
