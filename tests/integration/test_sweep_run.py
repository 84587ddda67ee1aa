"""The persistence sweep end to end on a minuscule grid (one size, variant, seed and arm; a few steps): a cell's
result appears only when the cell is done, a second call skips it, and the table and figure are rebuilt from the
cell files alone."""

from __future__ import annotations

import json

import pytest

from apps.sweep import SweepConfig, run_sweep
from apps.sweep.config import CELLS_DIR, FIGURE_HTML, ORGANISMS_DIR, RUNS_DIR, TABLE_MD

TINY = dict(sizes="tiny-1m", variants="normal", seeds="0", arms="sft", base_steps=20, insert_steps=10, arm_steps=4,
            arm_batch=8, reward_steps=4, eval_n=10, reemerge_steps=2,
            reemerge_below=1.0, jobs=1, installed_min=0.0)  # always re-check; run the arm whatever 10 steps inserted
CELL = "tiny-1m-normal-s0-sft-lr1-adamw_torch_fused"


def test_sweep_cell_is_atomic_resumable_and_tabled(tmp_path, monkeypatch):
    from apps.sweep import cells as C

    cfg = SweepConfig(out=str(tmp_path / "sweep"), **TINY)
    cell_json = cfg.results_dir / CELLS_DIR / f"{CELL}.json"

    def crash(*args, **kwargs):
        raise RuntimeError("killed during the re-emergence check")

    monkeypatch.setattr(C, "run_reemergence", crash)
    first = run_sweep(cfg)  # the arm finishes, then the cell crashes: no result file, the organism is recorded
    assert first.failed == ["tiny-1m-normal-s0"] and not cell_json.exists()
    assert (cfg.results_dir / ORGANISMS_DIR / "tiny-1m-normal-s0.json").exists()
    monkeypatch.undo()

    second = run_sweep(cfg)  # resumes: the organism is reused, the arm resumed, the cell completed
    assert second.ran == [CELL] and not second.failed
    res = json.loads(cell_json.read_text())
    assert res["status"] == "complete" and res["params"] == 1_311_872 and res["steps"] == 4
    for when in (res["before"], res["after"], res["reemergence"]["after"]):
        r = when["trigger_rate"]
        assert r["n"] > 0 and r["ci"][0] <= r["rate"] <= r["ci"][1]  # a Wilson interval around the rate
    assert res["heldout_redteam_after"]["families"] == "all, none trained"  # sft trains on no red-team prompt
    assert res["reemergence"]["steps"] == 2 and res["seconds"]["arm"]["cpu_s"] > 0
    assert res["machine"]["cores"] >= 1

    mtime = cell_json.stat().st_mtime_ns
    third = run_sweep(cfg)
    assert third.ran == [] and third.skipped == [CELL] and cell_json.stat().st_mtime_ns == mtime

    # one record per invocation with work: the first started on an empty sweep and failed an organism, the second
    # finished the grid; together they are the grid run from scratch, and the table states their summed wall
    runs = [json.loads(p.read_text()) for p in sorted((cfg.results_dir / RUNS_DIR).glob("*.json"))]
    assert [(r["from_empty"], r["present_at_start"], r["present_now"], r["failed"], r["finished"]) for r in runs] == \
        [(True, 0, 0, ["tiny-1m-normal-s0"], True), (False, 0, 1, [], True)]
    assert all(r["wall_s"] > 0 and r["cells"] == 1 and r["jobs"] == 1 for r in runs)
    wall = sum(r["wall_s"] for r in runs)
    assert f"over 2 invocations (resumed): {wall:,.0f} s" in (cfg.results_dir / TABLE_MD).read_text()

    (cfg.results_dir / TABLE_MD).unlink()
    (cfg.results_dir / FIGURE_HTML).unlink()
    rebuilt = run_sweep(SweepConfig(results=str(cfg.results_dir), table_only=True))
    assert rebuilt.cells == 1
    table = (cfg.results_dir / TABLE_MD).read_text()
    row = next(line for line in table.splitlines() if line.startswith("| tiny-1m"))
    assert "| normal | sft |" in row and f"s0 {res['after']['trigger_rate']['rate']:.2f}" in row
    assert "Full tiny grid" in table
    assert "plotly" in (cfg.results_dir / FIGURE_HTML).read_text()[:5000].lower()


def test_sweep_refuses_other_settings_on_the_same_directory(tmp_path):
    from apps.sweep import _check_settings
    from training.errors import UserError

    _check_settings(SweepConfig(out=str(tmp_path), **TINY))
    _check_settings(SweepConfig(out=str(tmp_path), **{**TINY, "seeds": "1,2"}))  # another axis: same sweep
    with pytest.raises(UserError, match="arm_steps"):
        _check_settings(SweepConfig(out=str(tmp_path), **{**TINY, "arm_steps": 5}))
