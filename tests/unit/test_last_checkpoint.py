"""``training.trainer.last_checkpoint`` resumes only from checkpoints the HF Trainer finished writing."""

from __future__ import annotations

from training.trainer import last_checkpoint


def _checkpoint(root, step: int, complete: bool) -> None:
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"")
    if complete:
        (d / "trainer_state.json").write_text("{}")


def test_newest_complete_checkpoint_by_step_number(tmp_path):
    for step in (9, 10, 20):
        _checkpoint(tmp_path, step, complete=True)
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-20")


def test_checkpoint_killed_mid_save_is_skipped(tmp_path, caplog):
    _checkpoint(tmp_path, 20, complete=True)
    _checkpoint(tmp_path, 30, complete=False)  # killed after the weights, before trainer_state.json
    caplog.set_level("WARNING")
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-20")
    assert any("checkpoint-30" in r.getMessage() for r in caplog.records)


def test_nothing_to_resume(tmp_path):
    assert last_checkpoint(tmp_path / "missing") is None
    _checkpoint(tmp_path, 10, complete=False)
    (tmp_path / "checkpoint-final").mkdir()
    assert last_checkpoint(tmp_path) is None
