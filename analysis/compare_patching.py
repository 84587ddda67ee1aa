"""Patching side by side: each compared checkpoint's stored ``patch.json`` (computed with
:func:`analysis.patching.patch_checkpoint` for the reference and each arm's final checkpoint when missing or stale),
its resid_pre layer x position map, and each arm's final map minus the reference's (maps aligned on the first
trigger column).

A checkpoint whose patching cannot run (the backdoor is gone: no pair separates triggered from untriggered) is
recorded in ``patch-skipped.json`` beside its other results, so a second comparison does not retry it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.checkpoints import ComparedCheckpoint
from analysis.results import PatchResult
from analysis.stats import json_array
from training import layout
from training.errors import UserError
from training.io import write_json_atomic

if TYPE_CHECKING:
    from analysis.comparing import CompareConfig

log = logging.getLogger(__name__)

PATCH_SKIPPED_JSON = "patch-skipped.json"


def _read_patch(c: ComparedCheckpoint) -> tuple[PatchResult | None, str]:
    d = layout.analysis_dir(c.path)
    p = d / layout.PATCH_JSON
    if p.exists():
        try:
            res = PatchResult.load(p)
        except UserError as e:
            return None, str(e)
        if res.weights_sha256 not in (None, c.sha):
            return None, "stale (weights changed)"
        if res.resid_pre is None:
            return None, "patch.json has no resid_pre grid"
        return res, "ok"
    s = d / PATCH_SKIPPED_JSON
    if s.exists():
        try:
            skip = json.loads(s.read_text())
            if skip.get("weights_sha256") == c.sha:
                return None, f"skipped: {skip.get('error')}"
        except json.JSONDecodeError:
            pass
    return None, "missing"


def _patch_config(c: ComparedCheckpoint, a: CompareConfig):
    """The :class:`~analysis.patching.PatchConfig` for a checkpoint without (current) patching results."""
    from analysis.patching import PatchConfig

    cfg = PatchConfig(ckpt=str(c.path), n_pairs=a.patch_n_pairs, n_boot=a.n_boot)
    if a.patch_grids:
        grids = [g.strip() for g in a.patch_grids.split(",") if g.strip()]
        cfg.grids = ",".join(dict.fromkeys(["resid_pre", *grids]))
    if a.patch_min_gap is not None:
        cfg.min_gap = a.patch_min_gap
    if a.patch_methods:
        cfg.methods = a.patch_methods
    for k in ("device", "device_map", "backdoor", "trigger"):
        if getattr(a, k):
            setattr(cfg, k, getattr(a, k))
    return cfg


def _run_patch(c: ComparedCheckpoint, a: CompareConfig) -> str | None:
    """Patch one checkpoint; the reason when it cannot be patched (e.g. no pair separates the triggered from the
    untriggered run: the backdoor is gone), else None."""
    from analysis.patching import patch_checkpoint

    try:
        patch_checkpoint(_patch_config(c, a))
    except UserError as e:
        log.warning("patching %s: %s", c.id, e)
        return str(e)
    return None


def ensure_patches(cks: list[ComparedCheckpoint], a: CompareConfig, reference: str, computed: dict
                   ) -> tuple[dict[str, PatchResult], dict[str, str]]:
    """Stored patch.json per checkpoint; missing ones computed for the reference and each arm's final checkpoint
    (``--patch finals``), every checkpoint but base (``all``), or none."""
    finals = layout.arm_finals(cks)
    wanted = set()
    if a.patch == "finals":
        wanted = {reference} | {c.id for c in finals.values()}
    elif a.patch == "all":
        wanted = {c.id for c in cks}
    wanted -= {c.id for c in cks if c.stage == "base" and c.arm is None}  # no backdoor to locate
    out, why = {}, {}
    for c in cks:
        data, status = _read_patch(c)
        if data is None and status in ("missing", "stale (weights changed)") and a.compute_missing \
                and c.id in wanted:
            log.info("patching results for %s: %s; running analysis.patch", c.id, status)
            t = time.time()
            msg = _run_patch(c, a)
            computed["patch"].append(c.id)
            computed["seconds"][f"patch:{c.id}"] = round(time.time() - t, 2)
            if msg is None:
                data, status = _read_patch(c)
            else:
                status = f"skipped: {msg}"
                write_json_atomic(layout.analysis_dir(c.path) / PATCH_SKIPPED_JSON,
                            {"weights_sha256": c.sha, "error": msg, "config": asdict(_patch_config(c, a)),
                             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        if data is not None:
            out[c.id] = data
        elif c.id in wanted or status.startswith("skipped"):
            why[c.id] = status
    return out, why


def patch_map(res: PatchResult) -> dict:
    """The resid_pre layer x position map of one patch.json, as compare.json carries it."""
    g = res.resid_pre
    pos = res.positions or {}
    return {"axes": g.axes, "effect": g.effect, "ci_low": g.ci_low, "ci_high": g.ci_high, "tokens": res.tokens or [],
            "trigger_columns": pos.get("trigger_columns", []), "final_columns": pos.get("final_columns", []),
            "n_pairs": res.n_pairs, "direction": res.metric.get("direction"),
            "summary": {k: v for k, v in res.summary.items()
                        if k in ("resid_pre_best", "trigger_span_layers_restoring", "trigger_span_best_layer",
                                 "trigger_span_best_effect")}}


def align_maps(ref: dict, other: dict) -> tuple[np.ndarray, np.ndarray, list, list[int]]:
    """Both maps on one column axis, aligned on their first trigger column (NaN where a map has no column)."""
    a, b = np.array(ref["effect"], dtype=np.float64), np.array(other["effect"], dtype=np.float64)
    ta = (ref.get("trigger_columns") or [0])[0]
    tb = (other.get("trigger_columns") or [0])[0]
    if a.shape == b.shape and ta == tb:
        return a, b, list(ref.get("tokens") or other.get("tokens") or []), list(ref.get("trigger_columns") or [])
    if a.shape[0] != b.shape[0]:
        raise UserError(f"patching maps have {a.shape[0]} and {b.shape[0]} layers; cannot compare them")
    left = max(ta, tb)
    right = max(a.shape[1] - ta, b.shape[1] - tb)
    P = left + right
    A, B = np.full((a.shape[0], P), np.nan), np.full((b.shape[0], P), np.nan)
    A[:, left - ta:left - ta + a.shape[1]] = a
    B[:, left - tb:left - tb + b.shape[1]] = b
    tokens: list = [None] * P
    for src, off in ((other.get("tokens") or [], left - tb), (ref.get("tokens") or [], left - ta)):
        for k, t in enumerate(src):
            tokens[off + k] = t
    trig = [c + left - ta for c in ref.get("trigger_columns") or []]
    return A, B, tokens, trig


def patching(cks: list[ComparedCheckpoint], patches: dict[str, PatchResult], why: dict[str, str],
             reference: str) -> dict:
    ids = [c.id for c in cks if c.id in patches]
    out: dict[str, Any] = {"checkpoints": ids, "grid": "resid_pre", "diff": {}, "diff_tokens": {},
                           "diff_trigger_columns": {}, "unavailable": dict(why)}
    for i in ids:
        out[i] = patch_map(patches[i])
    finals = {arm: c.id for arm, c in layout.arm_finals(cks).items()}
    out["finals"] = dict(finals)
    if reference in patches:
        for arm, fid in finals.items():
            if fid not in patches:
                continue
            A, B, tokens, trig = align_maps(out[reference], out[fid])
            out["diff"][fid] = json_array(B - A)
            out["diff_tokens"][fid] = tokens
            out["diff_trigger_columns"][fid] = trig
    return out
