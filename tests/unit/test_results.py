"""analysis.results: the typed results round-trip their files exactly and refuse what they cannot read, clearly."""

from __future__ import annotations

import json

import pytest

from analysis.results import PROBE_KINDS, AblateResult, CompareResult, PatchResult, ProbeResult
from training.errors import UserError

ROW = {"layer": 1, "hook": "blocks.1.hook_resid_post", "contrast_auroc": 0.9, "contrast_auroc_ci": [0.8, 0.95],
       "supervised_dom_auroc": 1.0, "supervised_logreg_auroc": None, "random_best_auroc": 0.7,
       "contrast_beats_random": True}  # the last one is not a typed field: it rides along
PROBE = {"checkpoint": "backdoored", "weights_sha256": "ab" * 32, "layers": [ROW], "best_layer": {"contrast": 1},
         "n_random": 100, "parent": None, "labels": {"x": "y"}}


def test_a_result_round_trips_its_file_exactly():
    res = ProbeResult.from_json(PROBE)  # probe.json of earlier versions has no schema key: schema 1
    assert res.to_json() == {"schema": 1, **PROBE}
    assert res.layers[0].auroc("supervised_dom") == 1.0 and res.layers[0].extra == {"contrast_beats_random": True}
    assert res.rows()[1].behaviour_auroc is None  # an optional field the file lacks reads as None ...
    assert "behaviour_auroc" not in res.to_json()["layers"][0]  # ... and is not written back as null
    assert res.parent is None and res.to_json()["parent"] is None  # an explicit null stays


def test_every_probe_kind_names_a_row_field():
    row = ProbeResult.from_json(PROBE).layers[0]
    assert {k: row.auroc(k) for k in PROBE_KINDS} == {"contrast": 0.9, "supervised_dom": 1.0,
                                                      "supervised_logreg": None}


def test_save_and_load(tmp_path):
    patch = {"schema": 1, "n_pairs": 3, "metric": {"direction": "denoise"}, "summary": {},
             "resid_pre": {"axes": ["layer", "pos"], "effect": [[0.1, None]], "ci_low": None, "ci_high": None,
                           "n": [[3, 0]]}}
    p = tmp_path / "patch.json"
    PatchResult.from_json(patch).save(p)
    back = PatchResult.load(p)
    assert back.stored_at == p and back.resid_pre.effect == [[0.1, None]] and back.heads is None
    assert json.loads(p.read_text()) == patch


@pytest.mark.parametrize("cls, doc, message", [
    (ProbeResult, {**PROBE, "schema": 99}, "schema 99, newer than"),
    (ProbeResult, {k: v for k, v in PROBE.items() if k != "layers"}, "without 'layers'"),
    (AblateResult, [1, 2], "not a ablate result"),
    (CompareResult, {"schema": "1"}, "schema '1'"),
])
def test_what_cannot_be_read_is_one_line_with_the_command_to_recompute(cls, doc, message, tmp_path):
    p = tmp_path / cls.FILE
    p.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=message) as e:
        cls.load(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)
    if "newer" in message or "without" in message:
        assert cls.COMMAND in str(e.value)


def test_an_unreadable_file_names_itself(tmp_path):
    p = tmp_path / "probe.json"
    p.write_text("{not json")
    with pytest.raises(UserError, match="unreadable probe.json"):
        ProbeResult.load(p)
