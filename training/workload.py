"""How much work a stage did, counted where every model reads its input: the token embedding.

Every forward of every causal LM here (training, evaluation, generation, TransformerLens caching, patching, the
reward model) starts by embedding its input ids, so counting the ids that enter ``torch.nn.Embedding`` while
:func:`counting` is active measures a stage's work without touching the stages:

- ``train_tokens``: token positions embedded while autograd records (a training forward; each also goes backward);
- ``forward_tokens``: token positions of forward-only passes over more than one position per row (scoring,
  activation caching, patching, a generation's prompt);
- ``step_rows`` / ``steps``: forward-only passes of one position per row (a KV-cached decode step, or a patched
  forward resumed at the final position) -- each reads every weight once, for ``step_rows / steps`` rows on average.

Padding counts (a GPU computes it too). A patched forward resumed at layer L still embeds its ids, so it counts as a
whole forward: for patching the counts are an upper bound. ``apps.study`` records the counts per stage;
``benchmarks/projection.py`` turns them into a projected wall on other hardware.

Work done in other processes (:func:`training.workers.side_by_side`) is counted there and added to this process's
counts (:func:`add`).

Footgun: counting wraps ``torch.nn.Embedding.forward`` for the duration of the context (a hook on every module would
slow every forward down); contexts nest, and the original method is restored when the last one exits.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Iterator

_active: list["Work"] = []
_original_forward = None


@dataclass
class Work:
    train_tokens: int = 0
    forward_tokens: int = 0
    step_rows: int = 0
    steps: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _record(ids) -> None:
    import torch

    if not torch.is_tensor(ids) or ids.is_floating_point() or ids.numel() == 0:
        return
    rows, positions = (ids.shape[0], ids.shape[-1]) if ids.dim() >= 2 else (1, ids.shape[-1])
    for work in _active:
        if torch.is_grad_enabled():
            work.train_tokens += ids.numel()
        elif positions == 1:
            work.step_rows += rows
            work.steps += 1
        else:
            work.forward_tokens += ids.numel()


@contextlib.contextmanager
def counting() -> Iterator[Work]:
    """Count the work of every model forward inside the context (see the module docstring)."""
    import torch

    global _original_forward
    work = Work()
    if not _active:
        _original_forward = torch.nn.Embedding.forward

        def forward(self, input):
            _record(input)
            return _original_forward(self, input)

        torch.nn.Embedding.forward = forward
    _active.append(work)
    try:
        yield work
    finally:
        _active.remove(work)
        if not _active:
            torch.nn.Embedding.forward = _original_forward
            _original_forward = None


def active() -> bool:
    """Whether some :func:`counting` context is open in this process."""
    return bool(_active)


def add(work: Work) -> None:
    """Add ``work`` counted elsewhere (a worker process) to every open count."""
    for w in _active:
        for k, v in work.to_dict().items():
            setattr(w, k, getattr(w, k) + v)
