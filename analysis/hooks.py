"""Hook-point names of a TransformerLens 4.3 ``TransformerBridge``, built in ONE place.

Every analysis module asks this module for hook names (``resid_post(3)``, ``hook_name("attn_z", 3)``) instead of
writing ``f"blocks.{l}...."`` strings itself, so a renamed hook is fixed here once.

Facts about the bridge (checked on a local Llama checkpoint, TransformerLens 4.3, raw weights):

- ``blocks.{l}.hook_resid_pre`` is an alias of ``blocks.{l}.hook_in`` and ``blocks.{l}.hook_resid_post`` of
  ``blocks.{l}.hook_out``; ``hook_attn_out`` / ``hook_mlp_out`` alias ``attn.hook_out`` / ``mlp.hook_out``.
  ``run_with_cache(names_filter=[alias])`` returns BOTH the alias and the canonical name in the cache; read the
  name you asked for. ``bridge.hook_dict`` lists aliases and canonical names alike.
- ``blocks.{l}.attn.hook_z`` exists per head: shape ``(batch, pos, n_heads, d_head)`` (an alias of
  ``attn.o.hook_in``); ``attn.hook_result`` (per-head output) is gated off until ``bridge.set_use_attn_result(True)``.
- Plain Hugging Face ``output_hidden_states`` indexing: ``hidden_states[l] == resid_pre(l)`` for every layer, and
  ``hidden_states[l + 1] == resid_post(l)`` for every layer EXCEPT the last: HF's final entry is taken after the
  final norm (it equals ``ln_final.hook_out``), the bridge's ``resid_post(n_layers - 1)`` is before it.
- An unknown name in ``run_with_cache(names_filter=[...])`` is a ``KeyError`` deep inside TransformerLens; call
  :func:`validate_hooks` first for a one-line :class:`~training.errors.UserError`.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Sequence

from training.errors import UserError


def resid_pre(layer: int) -> str:
    """Residual stream entering block ``layer``: ``(batch, pos, d_model)``."""
    return f"blocks.{layer}.hook_resid_pre"


def resid_post(layer: int) -> str:
    """Residual stream leaving block ``layer``: ``(batch, pos, d_model)``."""
    return f"blocks.{layer}.hook_resid_post"


def attn_out(layer: int) -> str:
    """Attention output of block ``layer`` written to the residual stream: ``(batch, pos, d_model)``."""
    return f"blocks.{layer}.hook_attn_out"


def mlp_out(layer: int) -> str:
    """MLP output of block ``layer`` written to the residual stream: ``(batch, pos, d_model)``."""
    return f"blocks.{layer}.hook_mlp_out"


def attn_z(layer: int) -> str:
    """Per-head attention values before the output projection: ``(batch, pos, n_heads, d_head)``."""
    return f"blocks.{layer}.attn.hook_z"


HOOK_KINDS: dict[str, Callable[[int], str]] = {
    "resid_pre": resid_pre,
    "resid_post": resid_post,
    "attn_out": attn_out,
    "mlp_out": mlp_out,
    "attn_z": attn_z,
}

_SUFFIX_TO_KIND = {fn(0).split(".", 2)[2]: kind for kind, fn in HOOK_KINDS.items()}
_NAME_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def hook_name(kind: str, layer: int) -> str:
    """The hook name of ``kind`` (a key of :data:`HOOK_KINDS`) at ``layer``."""
    try:
        fn = HOOK_KINDS[kind]
    except KeyError:
        raise UserError(f"unknown hook kind: {kind!r} (known: {', '.join(HOOK_KINDS)})") from None
    return fn(int(layer))


def hooks_for(kind: str, layers: Iterable[int]) -> list[str]:
    """``[hook_name(kind, l) for l in layers]``."""
    return [hook_name(kind, layer) for layer in layers]


def parse_hook(name: str) -> tuple[str, int] | None:
    """``(kind, layer)`` of a name built here, e.g. ``("resid_post", 3)``; None for any other hook name."""
    m = _NAME_RE.match(name)
    if not m or m.group(2) not in _SUFFIX_TO_KIND:
        return None
    return _SUFFIX_TO_KIND[m.group(2)], int(m.group(1))


def stop_point(names: Iterable[str], n_layers: int) -> str | None:
    """The hook point just past the deepest of ``names``, where a forward that only reads them can stop: the blocks
    above it, the final norm and the unembedding over every position change none of them. ``blocks.{l + 1}.hook_in``,
    or ``ln_final.hook_in`` after the last block; None when a name is not inside a block (``hook_embed``, the final
    norm's hooks ...)."""
    layers = [_NAME_RE.match(n) for n in names]
    if not layers or not all(layers):
        return None
    top = max(int(m.group(1)) for m in layers) + 1
    return f"blocks.{top}.hook_in" if top < n_layers else "ln_final.hook_in"


def untouched_blocks(names: Iterable[str]) -> int:
    """How many leading blocks compute the same whatever hooks at ``names`` do to their activations: the blocks
    below the shallowest name, and block ``l`` itself for ``resid_post(l)`` (its output is what the hook sees). 0
    when a name is not one built here."""
    parsed = [parse_hook(n) for n in names]
    if not parsed or not all(parsed):
        return 0
    return min(layer + (kind == "resid_post") for kind, layer in parsed)


def validate_layers(n_layers: int, layers: Sequence[int] | int) -> list[int]:
    """Check layer indices against ``n_layers``; return them as non-negative ints.

    Negative indices count from the end (``-1`` is the last layer), like Python indexing.
    Raises :class:`UserError` for an index outside ``[-n_layers, n_layers)`` or a non-integer.
    """
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise UserError(f"layer index must be an integer, got {layer!r}")
        if not -n_layers <= layer < n_layers:
            raise UserError(f"layer {layer} out of range: the model has {n_layers} layers (0..{n_layers - 1})")
        out.append(layer % n_layers)
    return out


def validate_hooks(bridge, names: Iterable[str]) -> list[str]:
    """Check that every hook name exists on ``bridge`` (and is not switched off); return the names as a list.

    Raises :class:`UserError` ("hook point does not exist: ...") naming the first bad hook.
    """
    names = list(names)
    available = bridge.hook_dict
    n_layers = getattr(bridge.cfg, "n_layers", None)
    gated = getattr(bridge, "_gated_hook_reason", None)  # TransformerLens-internal; absent in other versions
    for name in names:
        if name not in available:
            hint = ""
            parsed = _NAME_RE.match(name)
            if parsed and n_layers is not None and int(parsed.group(1)) >= n_layers:
                hint = f" (the model has {n_layers} layers: 0..{n_layers - 1})"
            elif n_layers:
                hint = f" (e.g. {resid_post(0)}; see bridge.hook_dict)"
            raise UserError(f"hook point does not exist: {name}{hint}")
        if gated is not None:
            reason = gated(available[name].name or name)
            if reason is not None:
                raise UserError(f"hook point is switched off: {name} (call bridge.set_{reason}(True) first)")
    return names
