"""Generation under interventions, with a KV cache: TransformerLens hook names on a plain Hugging Face copy.

A bridge cannot generate with a KV cache (:mod:`analysis.load`: garbage after the first token), and generating
through it without one recomputes the whole prefix for every new token. So every generation of the analysis --
behaviour labels, ablation, steering, the explorer's live prompt -- runs on ONE plain HF copy of the checkpoint
(:func:`generator`, loaded once per :class:`~analysis.load.LoadedModel`) with ``model.generate``'s cache, and an
intervention written for the bridge (a ``(hook name, fn(act, hook))`` pair, as for ``bridge.hooks``) is applied by
a torch forward hook on the HF module at the point the hook name denotes (:func:`hf_hooks`).

Where each hook kind of :mod:`analysis.hooks` lives, by the bridge's own architecture adapter (so the module names
are right for every architecture TransformerLens bridges, e.g. ``model.layers.3.mlp`` for Llama,
``transformer.h.3.mlp`` for GPT-2):

- ``resid_pre(l)``: the input of block ``l`` (a forward *pre*-hook on it);
- ``resid_post(l)``: the output of block ``l`` (its first element when the block returns a tuple);
- ``attn_out(l)`` / ``mlp_out(l)``: the output of the block's attention / MLP module;
- ``attn_z(l)``: the input of the attention's output projection, shown to ``fn`` as ``(batch, pos, n_heads,
  d_head)`` as the bridge shows it.

Why the cache changes nothing: every intervention here acts on each position independently (project a direction
out, add a vector), so the cached activations of the earlier positions are exactly the ones the hook already
changed when they were computed. :func:`hook_activations` reads the HF copy's activations at the same points, which
is how the tests prove the mapping against the bridge's ``run_with_cache``. Footgun: an intervention that depends
on the position index or on other positions (e.g. "patch position 5 only") is NOT cache-safe: during decoding the
hook sees one new position at a time; use the bridge for those.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from analysis import hooks as H
from training.errors import UserError

log = logging.getLogger(__name__)

HookFn = Callable  # fn(activation, hook) -> activation or None, as for ``bridge.hooks``


@dataclass(frozen=True)
class Site:
    """Where a hook name lives on the plain HF model: ``module`` (dotted path), ``pre`` (its input, not its output),
    ``heads`` (reshape the last dim to ``(n_heads, d_head)`` for ``fn``)."""

    name: str
    module: str
    pre: bool = False
    heads: int | None = None


class _HookInfo:
    """The ``hook`` argument a hook function receives (it reads ``hook.name``, as on a TransformerLens HookPoint)."""

    def __init__(self, name: str):
        self.name = name


def _sub(component, key: str):
    subs = getattr(component, "submodules", None) or {}
    if key not in subs or not getattr(subs[key], "name", None):
        raise UserError(f"the bridge's architecture adapter has no {key!r} submodule to intervene on")
    return subs[key]


def sites(bridge, names: Iterable[str]) -> list[Site]:
    """The HF module of each hook name (kinds of :data:`analysis.hooks.HOOK_KINDS`), from ``bridge.adapter``."""
    blocks = bridge.adapter.component_mapping["blocks"]
    n_layers, n_heads = int(bridge.cfg.n_layers), int(bridge.cfg.n_heads)
    out = []
    for name in names:
        parsed = H.parse_hook(name)
        if parsed is None:
            raise UserError(f"cannot intervene at {name!r} during cached generation (supported: "
                            f"{', '.join(H.HOOK_KINDS)} per layer, e.g. {H.resid_post(0)})")
        kind, layer = parsed
        H.validate_layers(n_layers, layer)
        block = f"{blocks.name}.{layer}"
        if kind == "resid_pre":
            out.append(Site(name, block, pre=True))
        elif kind == "resid_post":
            out.append(Site(name, block))
        elif kind == "attn_out":
            out.append(Site(name, f"{block}.{_sub(blocks, 'attn').name}"))
        elif kind == "mlp_out":
            out.append(Site(name, f"{block}.{_sub(blocks, 'mlp').name}"))
        else:  # attn_z
            attn = _sub(blocks, "attn")
            out.append(Site(name, f"{block}.{attn.name}.{_sub(attn, 'o').name}", pre=True, heads=n_heads))
    return out


def _apply(site: Site, fn: HookFn, x: torch.Tensor) -> torch.Tensor:
    shown = x.unflatten(-1, (site.heads, -1)) if site.heads else x
    y = fn(shown, _HookInfo(site.name))
    if y is None:  # a hook that only reads
        return x
    return y.flatten(-2) if site.heads else y


def _torch_hook(site: Site, fn: HookFn):
    if site.pre:
        def pre(module, args, kwargs):
            if args:
                return (_apply(site, fn, args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": _apply(site, fn, kwargs["hidden_states"])}
        return pre

    def post(module, args, kwargs, output):
        if isinstance(output, tuple):
            return (_apply(site, fn, output[0]), *output[1:])
        return _apply(site, fn, output)
    return post


@contextlib.contextmanager
def hf_hooks(model, bridge, fwd_hooks: Sequence[tuple[str, HookFn]]):
    """Apply ``fwd_hooks`` (``(hook name, fn)``, as for ``bridge.hooks``) to the plain HF ``model`` while inside.

    ``bridge`` supplies the module names (any bridge of the same architecture; it is not run). Hooks on the same
    site run in the order given, as on the bridge."""
    handles = []
    try:
        for site, (_, fn) in zip(sites(bridge, [n for n, _ in fwd_hooks]), fwd_hooks):
            module = model.get_submodule(site.module)
            if site.pre:
                handles.append(module.register_forward_pre_hook(_torch_hook(site, fn), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(_torch_hook(site, fn), with_kwargs=True))
        yield model
    finally:
        for h in handles:
            h.remove()


def generator(loaded):
    """The plain HF copy of ``loaded``'s checkpoint that all generation uses (loaded on first use, then kept in
    ``loaded.extra`` until :func:`release`). Same device, dtype and ``trust_remote_code`` as the bridge."""
    model = loaded.extra.get("generator")
    if model is None:
        from training.checkpoint import load_model_and_tokenizer

        device_map = loaded.extra.get("device_map")
        model, _, _ = load_model_and_tokenizer(loaded.ckpt, device=None if device_map else loaded.device,
                                               dtype=loaded.dtype, device_map=device_map,
                                               trust_remote_code=loaded.extra.get("trust_remote_code", False),
                                               check_hash=False, base=loaded.extra.get("base"))
        loaded.extra["generator"] = model.eval()
    return model


def release(loaded) -> None:
    """Drop :func:`generator`'s copy (the next generation loads it again)."""
    loaded.extra.pop("generator", None)


def generate(loaded, prompts: list[str], fwd_hooks: Sequence[tuple[str, HookFn]] = (), shared=None,
             **kw) -> list[list[str]]:
    """:func:`training.evaluate.generate` on :func:`generator` (KV cache on) with ``fwd_hooks`` applied.

    ``shared``: a :class:`analysis.shared_lower.SharedLower` that runs the prompt forward of the blocks below the
    hooks once per batch over all the calls given it (used when the hooks leave those blocks untouched)."""
    from training.evaluate import generate as hf_generate

    model = generator(loaded)
    if shared is None or not shared.covers([n for n, _ in fwd_hooks]):
        with hf_hooks(model, loaded.bridge, fwd_hooks):
            return hf_generate(model, loaded.tokenizer, prompts, **kw)
    inner = kw.pop("on_batch", None)

    def on_batch(idx: list[int]) -> None:
        shared.on_batch(tuple(prompts[i] for i in idx))
        if inner is not None:
            inner(idx)

    blocks = model.get_submodule(loaded.bridge.adapter.component_mapping["blocks"].name)
    with hf_hooks(model, loaded.bridge, fwd_hooks), shared.active(blocks):
        return hf_generate(model, loaded.tokenizer, prompts, on_batch=on_batch, **kw)


@torch.no_grad()
def hook_activations(loaded, input_ids: torch.Tensor, attention_mask: torch.Tensor, names: Sequence[str],
                     use_cache: bool = False) -> tuple[dict[str, torch.Tensor], object]:
    """Activations of :func:`generator` at ``names`` on one forward (what ``run_with_cache`` gives on the bridge),
    and that forward's output (its logits; its KV cache too with ``use_cache``)."""
    from analysis.load import hf_forward_kwargs

    model = generator(loaded)
    got: dict[str, torch.Tensor] = {}

    def keep(act, hook):
        got[hook.name] = act.detach().clone()

    with hf_hooks(model, loaded.bridge, [(n, keep) for n in names]):
        out = model(**hf_forward_kwargs(model, input_ids.to(loaded.device), attention_mask.to(loaded.device)),
                    use_cache=use_cache)
    return got, out
