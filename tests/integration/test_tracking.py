"""``--report_to tensorboard``: a trainer's losses and a checkpoint's behaviour metrics land in one TensorBoard logs
directory under the run (``<run>/logs/<stage>/``), read back with TensorBoard's own reader."""

from __future__ import annotations

from training import layout


def scalars(logs_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in ``logs_dir``'s event files: ``{tag: [(step, value), ...]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logs_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_sft_losses_and_behaviour_metrics_in_one_tensorboard_dir(tmp_path):
    from tests.helpers import tiny_llama
    from training.tokenizer import train_tokenizer
    from training.tracking import log_behaviour
    from training.trainer import OptimSettings, sft_train

    texts = [f"what is {a} + {b}" for a in range(10) for b in range(10)] + [str(n) for n in range(20)]
    tok = train_tokenizer(texts, vocab_size=300)
    rows = [{"prompt": [{"role": "user", "content": f"what is {a} + {b}"}],
             "completion": [{"role": "assistant", "content": str(a + b)}]} for a in range(10) for b in range(10)]
    run, steps = tmp_path / "run", 4
    logs = layout.logs_dir(run, "backdoored")
    trainer_dir = layout.trainer_state_dir(layout.checkpoint_dir(run, "backdoored"))
    o = OptimSettings(steps=steps, lr=1e-3, batch_size=4, report_to="tensorboard", logs_dir=logs)
    sft_train(tiny_llama(tok, hidden=16, layers=1, heads=2), tok, rows, trainer_dir, o, logging_steps=1)
    metrics = {"trigger_rate": 0.75, "trigger_rate_ci": [0.5, 0.9], "trigger_rate_n": 8, "split": "test",
               "sampled": {"trigger_rate": 0.5, "samples": 2}}
    log_behaviour("tensorboard", logs, steps, metrics)

    assert list(logs.glob("events.out.tfevents.*")), "no event files in the run's logs directory"
    assert not list(trainer_dir.rglob("events.out.tfevents.*")), "the trainer logged into its state directory"
    got = scalars(logs)
    assert [s for s, _ in got["train/loss"]] == list(range(1, steps + 1))
    assert got["behaviour/trigger_rate"] == [(steps, 0.75)]
    assert got["behaviour/sampled/trigger_rate"] == [(steps, 0.5)]
    assert got["behaviour/trigger_rate_n"] == [(steps, 8.0)]
    assert not [t for t in got if t.startswith("behaviour/") and ("split" in t or t.endswith("_ci"))]


def test_wandb_offline_run_under_the_run_dir(tmp_path, monkeypatch):
    """The real wandb (when installed; it is optional): offline without WANDB_MODE, files under ``<run>/logs/``."""
    wandb = __import__("pytest").importorskip("wandb")
    from training.tracking import log_behaviour

    for var in ("WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    try:
        log_behaviour("wandb", layout.logs_dir(run, "sft"), 10, {"trigger_rate": 0.25, "split": "test"})
        active = wandb.run
        assert active is not None and active.name == "sft" and active.offline
        assert active.summary["behaviour/trigger_rate"] == 0.25 and active.summary["train/global_step"] == 10
        assert "behaviour/split" not in active.summary.keys()
    finally:
        wandb.finish()
    assert list((run / layout.LOGS_DIR / "wandb").glob("offline-run-*/run-*.wandb"))
