"""Exact patching that computes only what a patch changes: resume the target's forward at the patched layer and
project to logits only where the metric reads them.

A forward patched at layer ``l`` (``resid_pre(l)``, or ``attn_out`` / ``mlp_out`` / a head inside block ``l``) is,
below block ``l``, exactly the unpatched target run; so is every position before the first entry the patch changes
(the model is causal); and the metric reads one position per row. So a :class:`Resumer` caches the target's
``resid_pre`` at every layer and its KV cache once, and each patched forward

- swaps blocks ``0 .. l-1`` for pass-throughs and hands block ``l`` the cached ``resid_pre(l)`` (a pre-hook; the
  site's own patch hook runs after it, on the same points :mod:`analysis.intervene` maps hook names to);
- computes only the positions from the first changed one ``p`` on, reading the keys and values of the positions
  before ``p`` from the target's KV cache (``p`` is the earliest over the forward's sites and pairs; with the
  trigger at the end of the prompt that skips most of the prompt);
- gathers each row's final position before the unembedding (a pre-hook on it), so the vocabulary projection costs
  one position per row instead of every position.

It runs on the plain HF copy of the checkpoint (:func:`analysis.intervene.generator`), whose activations equal the
bridge's (tested at every hook kind). Everything the model's own forward does around the blocks (embedding,
rotary tables, the attention mask, the final norm) still runs, so the shortcut holds for any architecture whose
blocks only pass the residual stream from one to the next; :meth:`Resumer.verify` proves it on the pairs at hand
(the unpatched target resumed at every start layer gives the full forward's metric) before any grid is computed,
and :func:`analysis.patch_engine.exact_patch` falls back to full forwards (logged) where it does not.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Sequence

import torch
from torch import Tensor, nn

from analysis import hooks as H
from analysis.intervene import generator, hf_hooks, hook_activations
from analysis.load import hf_forward_kwargs

log = logging.getLogger(__name__)

VERIFY_ATOL = 1e-4  # |metric| difference, in logits, relative to max(1, |metric|)


class _PassThrough(nn.Module):
    """A block that returns its input unchanged (in the block's output structure)."""

    def __init__(self, as_tuple: bool):
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states,) if self.as_tuple else hidden_states


class Resumer:
    """Patched forwards of one checkpoint that start at the patched layer (see the module docstring)."""

    def __init__(self, loaded):
        self.loaded = loaded
        self.model = generator(loaded)
        adapter = loaded.bridge.adapter.component_mapping
        self.blocks: nn.ModuleList = self.model.get_submodule(adapter["blocks"].name)
        self.unembed: nn.Module = self.model.get_submodule(adapter["unembed"].name)
        self._tuple_blocks: bool | None = None
        self._prefix = None  # the target's KV cache (cache(target=True))
        self.target_logits: Tensor | None = None
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x
        self.verified: bool | None = None

    @torch.no_grad()
    def __call__(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Logits of a whole unpatched forward on the same copy (the baselines patched runs are normalised by)."""
        dev = self.loaded.device
        return self.model(**hf_forward_kwargs(self.model, ids.to(dev), attention_mask.to(dev))).logits

    def cache(self, ids: Tensor, mask: Tensor, hooks: Sequence[str], target: bool = False) -> dict[str, Tensor]:
        """Activations at ``hooks`` plus ``resid_pre`` of every layer (what a resumed forward starts from). With
        ``target``, the same forward's KV cache and logits are kept too: a forward resumed at position ``pos``
        reads the positions before it from that cache, and the unpatched metric comes from those logits."""
        names = list(dict.fromkeys([*hooks, *H.hooks_for("resid_pre", range(self.loaded.n_layers))]))
        seen: list[bool] = []
        h = self.blocks[0].register_forward_hook(lambda m, a, out: seen.append(isinstance(out, tuple)))
        try:
            acts, out = hook_activations(self.loaded, ids, mask, names, use_cache=target)
        finally:
            h.remove()
        self._tuple_blocks = bool(seen and seen[0])
        if target:
            self._prefix = getattr(out, "cache", None) or out.past_key_values  # transformers renamed it in 5.x
            self.target_logits = out.logits
        return acts

    def _prefix_cache(self, pos: int, reps: int):
        """The kept cache's first ``pos`` positions, the pair block repeated ``reps`` times (rows as ``ids.repeat``)."""
        from transformers import DynamicCache

        cache = DynamicCache()
        for i, layer in enumerate(self._prefix.layers):
            cache.update(layer.keys[..., :pos, :].repeat(reps, 1, 1, 1),
                         layer.values[..., :pos, :].repeat(reps, 1, 1, 1), i)
        return cache

    @contextlib.contextmanager
    def _resumed(self, layer: int, start: Tensor, final: Tensor):
        """Blocks below ``layer`` pass through; block ``layer`` reads ``start``; the unembedding reads ``final``."""
        saved = [self.blocks[i] for i in range(layer)]
        handles = []
        try:
            for i in range(layer):
                self.blocks[i] = _PassThrough(bool(self._tuple_blocks))
            rows = torch.arange(start.shape[0], device=start.device)

            def gather(module, args):
                return (args[0][rows, final.to(args[0].device)][:, None],)

            handles.append(self.unembed.register_forward_pre_hook(gather))
            with hf_hooks(self.model, self.loaded.bridge, [(H.resid_pre(layer), lambda act, hook: start)]):
                yield
        finally:
            for h in handles:
                h.remove()
            for i, block in enumerate(saved):
                self.blocks[i] = block

    @torch.no_grad()
    def forward(self, layer: int, ids: Tensor, mask: Tensor, start: Tensor, final: Tensor,
                fwd_hooks: Sequence = (), pos: int = 0) -> Tensor:
        """Logits ``(rows, 1, vocab)`` at ``final`` of the forward resumed at ``layer`` from ``start`` (the
        ``resid_pre(layer)`` activations of the rows), with ``fwd_hooks`` (bridge hook names, shown positions
        ``pos`` onwards) applied after it. ``pos > 0`` computes positions ``pos`` onwards only, the earlier ones read
        from the target's cache (:meth:`cache` with ``target``; ``ids`` must be that batch repeated): right where
        no entry before ``pos`` is patched."""
        if self._tuple_blocks is None:
            raise RuntimeError("call cache() before forward(): it learns the blocks' output structure")
        dev = self.loaded.device
        ids, mask = ids.to(dev), mask.to(dev)
        kw = hf_forward_kwargs(self.model, ids, mask)
        if pos:
            reps = ids.shape[0] // self._prefix.layers[0].keys.shape[0]
            kw["input_ids"] = ids[:, pos:]
            if "position_ids" in kw:
                kw["position_ids"] = kw["position_ids"][:, pos:]
            kw[self._cache_kw] = self._prefix_cache(pos, reps)
            kw["use_cache"] = True
        with self._resumed(layer, start[:, pos:].to(dev), final - pos), \
                hf_hooks(self.model, self.loaded.bridge, fwd_hooks):
            return self.model(**kw).logits

    def verify(self, metric, ids: Tensor, mask: Tensor, acts: dict[str, Tensor], starts: dict[int, int]) -> bool:
        """Does resuming the unpatched target (:meth:`cache` with ``target``) at each ``(layer, position)`` of
        ``starts`` give the full forward's metric? (Logged; kept in :attr:`verified`.)"""
        full = metric(self.target_logits).double()
        at_final = metric.at_final()
        worst = 0.0
        for layer, pos in sorted(starts.items()):
            got = at_final(self.forward(layer, ids, mask, acts[H.resid_pre(layer)], metric.final, pos=pos)).double()
            worst = max(worst, float(((got - full).abs() / full.abs().clamp(min=1.0)).max()))
        self.verified = worst <= VERIFY_ATOL
        log.log(logging.INFO if self.verified else logging.WARNING,
                "resumed forwards %s the full forward (max relative metric difference %.2g over %d start layers)",
                "reproduce" if self.verified else "do NOT reproduce", worst, len(starts))
        return self.verified
