"""``training.trainer.last_checkpoint`` resumes only from checkpoints the HF Trainer finished writing."""

from __future__ import annotations

from training.trainer import last_checkpoint


def _checkpoint(root, step: int, complete: bool, state: str = '{"global_step": 0}') -> None:
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"")
    if complete:
        (d / "trainer_state.json").write_text(state)


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


def test_checkpoint_killed_while_writing_its_state_is_skipped(tmp_path):
    """The kill can land after ``trainer_state.json`` is created and before it is written (a CI run met it)."""
    _checkpoint(tmp_path, 20, complete=True)
    _checkpoint(tmp_path, 30, complete=True, state="")
    _checkpoint(tmp_path, 40, complete=True, state='{"global_step": 4')
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-20")


def test_nothing_to_resume(tmp_path):
    assert last_checkpoint(tmp_path / "missing") is None
    _checkpoint(tmp_path, 10, complete=False)
    (tmp_path / "checkpoint-final").mkdir()
    assert last_checkpoint(tmp_path) is None
