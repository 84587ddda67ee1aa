"""``benchmarks/projection.py``: the formula its table states, term by term."""

from __future__ import annotations

import json

import pytest

from tests.helpers import benchmark_module


@pytest.fixture(scope="module")
def proj():
    return benchmark_module("projection")


def test_terms(proj):
    n, peak, bw = 8e9, 1e15, 4e12
    work = {"train_tokens": 10**6, "forward_tokens": 3 * 10**6, "step_rows": 64_000, "steps": 1_000}
    one = proj.stage_seconds(work, 0.5, n_params=n, peak=peak, bandwidth=bw)
    assert one["train"] == pytest.approx(4 * n * 1e6 / 5e14)  # 64 s
    assert one["forward"] == pytest.approx(2 * n * 3e6 / 5e14)  # 96 s
    assert one["decode"] == pytest.approx(1_000 * 2 * n / bw)  # 64 rows a step: bandwidth-bound, 4 s
    eight = proj.stage_seconds(work, 0.5, n_params=n, cards=8, peak=peak, bandwidth=bw)
    assert eight["train"] == pytest.approx(one["train"] / 8)  # only training is data-parallel
    assert (eight["forward"], eight["decode"]) == (one["forward"], one["decode"])
    wide = proj.stage_seconds({**work, "step_rows": 1_000 * 4_096}, 0.5, n_params=n, peak=peak, bandwidth=bw)
    assert wide["decode"] == pytest.approx(1_000 * 2 * n * 4_096 / 5e14)  # 4,096 rows a step: compute-bound


def test_study_totals_and_measured_u(proj):
    gpu = {"train_toolkit": {"steady_tokens_per_s": 50_000}, "model": {"parameters": 10**8}}
    mfu = [{"mfu": {"runs": {"toolkit_compiled": {"mfu_datasheet": u}}}} for u in (0.32, 0.3)]
    assert proj.short_rows_u(gpu) == pytest.approx(50_000 * 6e8 / proj.H100_PEAK)
    assert proj.packed_u(mfu) == 0.3
    study = {"path": "s/study.json", "seconds": {"stages": {"a": 10.0}, "earlier_stages": {"b": 5.0}},
             "work": {"a": {"train_tokens": 100, "forward_tokens": 0, "step_rows": 0, "steps": 0},
                      "b": {"train_tokens": 0, "forward_tokens": 50, "step_rows": 4, "steps": 2}}}
    p = proj.project(study, gpu, mfu)
    assert p["measured_total_s"] == 15.0 and p["stages"]["b"]["measured_s"] == 5.0
    for key, total in p["totals"].items():
        assert total == pytest.approx(sum(s["projected_s"][key] for s in p["stages"].values()))
    assert p["totals"]["packed_8"] < p["totals"]["packed_1"] < p["totals"]["short_1"]
    line = proj.summary(p)
    assert "100 tokens trained, 50 read" in line and "2 decode steps" in line
    assert proj._h(p["totals"]["short_1"]) in line and proj._h(p["totals"]["packed_8"]) in line
    assert "s/study.json" in proj.table(p)


def test_read_study_takes_a_study_or_the_projection_that_recorded_it(proj, tmp_path):
    work = {"train_tokens": 5, "forward_tokens": 7, "step_rows": 2, "steps": 1}
    study = {"args": {"preset": "tiny"}, "work": {"backdoor": work}, "seconds": {"stages": {"backdoor": 3.5}}}
    (tmp_path / "study.json").write_text(json.dumps(study))
    got = proj.read_study(tmp_path / "study.json")
    assert got == {**study, "path": str(tmp_path / "study.json")}
    recorded = {"study": "/gone/study.json", "study_args": {"preset": "tiny"},
                "stages": {"backdoor": {"measured_s": 3.5, "work": work, "projected_s": {}}}}
    (tmp_path / "projection.json").write_text(json.dumps(recorded))
    assert proj.read_study(tmp_path / "projection.json") == {**study, "path": "/gone/study.json"}
    (tmp_path / "old.json").write_text(json.dumps({"seconds": {"stages": {}}}))
    assert proj.read_study(tmp_path / "old.json") is None
