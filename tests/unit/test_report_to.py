"""``training.tracking``: a bad ``--report_to`` is one line and exit code 2 in every training command; a missing
package names its install; the behaviour scalars; the wandb path against a stand-in module (wandb is optional)."""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types

import pytest

from training import tracking
from training.errors import UserError

COMMANDS = {"training.backdoor": ["--out", "{tmp}/run"],
            "training.safety": ["--method", "sft", "--ckpt", "{tmp}/run/checkpoints/backdoored"],
            "training.reward": ["--run", "{tmp}/run"]}


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_unknown_report_to_is_one_line_and_exit_code_2(module, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path) for a in COMMANDS[module]] + ["--report_to", "mlflow"]
    assert importlib.import_module(module).main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown --report_to 'mlflow'" in err and "none, tensorboard, wandb" in err
    assert not (tmp_path / "run").exists()  # checked before any work


def test_missing_package_says_what_to_install(monkeypatch):
    assert tracking.check_report_to("none") == "none"
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    for choice in ("tensorboard", "wandb"):
        with pytest.raises(UserError, match=f"pip install {choice}$"):
            tracking.check_report_to(choice)


def test_behaviour_scalars_keep_numbers_only():
    metrics = {"trigger_rate": 0.5, "trigger_rate_ci": [0.1, 0.9], "n": 30, "split": "test", "ok": True,
               "nan": float("nan"), "sampled": {"trigger_rate": 0.25}, "examples": [{"id": 1}]}
    assert tracking.behaviour_scalars(metrics) == {"behaviour/trigger_rate": 0.5, "behaviour/n": 30.0,
                                                   "behaviour/sampled/trigger_rate": 0.25}


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in ``wandb`` module recording init/log/finish calls."""
    calls = []
    wandb = types.ModuleType("wandb")
    wandb.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    wandb.run = None

    def init(**kw):
        calls.append(("init", kw))
        wandb.run = types.SimpleNamespace(name=kw["name"], log=lambda d: calls.append(("log", wandb.run.name, d)))

    def finish():
        calls.append(("finish",))
        wandb.run = None

    wandb.init, wandb.finish = init, finish
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    return calls


def test_wandb_offline_one_run_per_stage(fake_wandb, tmp_path):
    run = tmp_path / "myrun"
    with tracking.trainer_logs("wandb", run / "logs" / "base"):
        pass
    tracking.log_behaviour("wandb", run / "logs" / "base", 10, {"trigger_rate": 0.1})
    tracking.log_behaviour("wandb", run / "logs" / "backdoored", 20, {"trigger_rate": 0.9})
    kinds = [c[0] for c in fake_wandb]
    assert kinds == ["init", "log", "finish", "init", "log"]
    init = fake_wandb[0][1]
    assert init["mode"] == "offline" and init["name"] == "base" and init["group"] == "myrun"
    assert init["dir"] == str(run / "logs")
    assert fake_wandb[1] == ("log", "base", {"behaviour/trigger_rate": 0.1, "train/global_step": 10})
    assert fake_wandb[4][1] == "backdoored"


def test_tensorboard_dir_is_set_only_while_the_trainer_is_built(monkeypatch, tmp_path):
    import os

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "/elsewhere")
    with tracking.trainer_logs("tensorboard", tmp_path / "logs" / "sft"):
        assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "logs" / "sft")
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == "/elsewhere"
