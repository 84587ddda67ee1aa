"""Where an adapter's base is found (training.adapters.base_dir): a directory absolute or relative to the adapter,
a model in the local Hugging Face cache, ``--base``; else one line naming the base and the flag."""

from __future__ import annotations

import json

import pytest

from training import adapters
from training.errors import UserError


def _adapter(d, base_name):
    d.mkdir(parents=True)
    (d / adapters.ADAPTER_CONFIG).write_text(json.dumps({"base_model_name_or_path": base_name, "peft_type": "LORA"}))
    (d / adapters.ADAPTER_WEIGHTS).write_bytes(b"")
    return d


def _model_dir(d):
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    return d


def test_base_found_as_a_directory(tmp_path, monkeypatch):
    base = _model_dir(tmp_path / "models" / "base")
    assert adapters.base_dir(_adapter(tmp_path / "a1", str(base))) == base  # absolute
    a2 = _adapter(tmp_path / "models" / "a2", "../base")
    assert adapters.base_dir(a2).resolve() == base.resolve()  # relative to the adapter
    monkeypatch.chdir(tmp_path)
    assert adapters.base_dir(_adapter(tmp_path / "a3", "models/base")).resolve() == base.resolve()  # to the cwd
    assert adapters.is_adapter(a2) and not adapters.is_adapter(base)


def test_base_found_in_the_local_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--some-org--some-model"
    snap = _model_dir(repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert adapters.base_dir(_adapter(tmp_path / "a", "some-org/some-model")) == snap


def test_missing_base_names_it_and_the_flag(tmp_path):
    a = _adapter(tmp_path / "a", "nobody/nothing")
    with pytest.raises(UserError, match=r"'nobody/nothing'.*--base.*a$"):
        adapters.base_dir(a)
    with pytest.raises(UserError, match="--base has no config.json"):
        adapters.base_dir(a, str(tmp_path))
    assert adapters.base_dir(a, str(_model_dir(tmp_path / "b"))) == tmp_path / "b"


def test_pickled_adapter_is_refused(tmp_path):
    a = _adapter(tmp_path / "a", "x")
    (a / adapters.ADAPTER_WEIGHTS).rename(a / "adapter_model.bin")
    with pytest.raises(UserError, match="pickle"):
        adapters.verify(a)
