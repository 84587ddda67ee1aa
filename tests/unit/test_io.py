"""training.io: atomic writes leave the old file whole on any failure, and keep each writer's exact bytes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from training import io

OBJ = {"a": 1, "b": [0.5, None, "é"], "c": {"d": True}}


def test_json_round_trip_and_exact_bytes(tmp_path):
    p = io.write_json_atomic(tmp_path / "x.json", OBJ)
    assert p == tmp_path / "x.json"
    assert json.loads(p.read_text()) == OBJ
    assert p.read_text() == json.dumps(OBJ, indent=1)  # no trailing newline, ASCII escapes
    io.write_json_atomic(p, OBJ, indent=2)
    assert p.read_text() == json.dumps(OBJ, indent=2)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["x.json"]


def test_json_converts_numpy_paths_and_to_dict(tmp_path):
    class Spec:
        def to_dict(self):
            return {"k": 1}

    p = io.write_json_atomic(tmp_path / "x.json", {"n": np.float32(0.5), "v": np.arange(3), "p": Path("a/b"),
                                                   "s": Spec()})
    assert json.loads(p.read_text()) == {"n": 0.5, "v": [0, 1, 2], "p": "a/b", "s": {"k": 1}}


@pytest.mark.parametrize("bad, err", [({"x": float("nan")}, ValueError), ({"x": math.inf}, ValueError),
                                      ({"x": object()}, TypeError)])
def test_json_failure_leaves_old_file_and_no_temp(tmp_path, bad, err):
    p = tmp_path / "x.json"
    p.write_text("old")
    with pytest.raises(err):
        io.write_json_atomic(p, bad)
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["x.json"]


def test_json_nan_allowed_when_asked(tmp_path):
    p = io.write_json_atomic(tmp_path / "x.json", {"x": float("nan")}, indent=2, allow_nan=True)
    assert p.read_text() == json.dumps({"x": float("nan")}, indent=2)
    assert math.isnan(json.loads(p.read_text())["x"])


def test_parents_created(tmp_path):
    p = io.write_json_atomic(tmp_path / "a" / "b" / "x.json", [1])
    assert json.loads(p.read_text()) == [1]
    assert io.write_text_atomic(tmp_path / "c" / "d.html", "<p>é</p>").read_text(encoding="utf-8") == "<p>é</p>"


def test_failed_rename_removes_hidden_temp_sibling(tmp_path, monkeypatch):
    p = tmp_path / "page.html"
    p.write_text("old")
    seen = []

    def fail(src, dst):
        seen.append((Path(src), Path(dst)))
        assert Path(src).read_text() == "new"
        raise OSError("disk gone")

    monkeypatch.setattr(io.os, "replace", fail)
    with pytest.raises(OSError):
        io.write_text_atomic(p, "new")
    (src, dst), = seen
    assert dst == p and src.parent == tmp_path and src.name.startswith(".page.html.tmp-")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["page.html"]


def test_jsonl_round_trip_and_failure(tmp_path):
    rows = [{"id": "a", "n": 1}, {"id": "b", "t": [True, None]}]
    p = io.write_jsonl_atomic(tmp_path / "d" / "x.jsonl", iter(rows))
    assert p.read_text() == "".join(json.dumps(r) + "\n" for r in rows)
    assert [json.loads(line) for line in p.read_text().splitlines()] == rows
    with pytest.raises(ValueError):
        io.write_jsonl_atomic(p, rows + [{"x": float("nan")}])
    assert [json.loads(line) for line in p.read_text().splitlines()] == rows
    assert [x.name for x in p.parent.iterdir()] == ["x.jsonl"]
    io.write_jsonl_atomic(p, [{"x": float("nan")}], allow_nan=True)
    assert p.read_text() == '{"x": NaN}\n'


def test_clean_json_makes_strict_json():
    out = io.clean_json({1: [float("nan"), np.float64(2.0), (math.inf,)], "p": Path("q"), "a": np.array([1, 2])})
    assert out == {"1": [None, 2.0, [None]], "p": "q", "a": [1, 2]}
    json.dumps(out, allow_nan=False)
