"""analysis.ablation's matched placebos without a model: the variance-matched random directions (exact variance, unit
norm, where they lie, seeding), which named placebo probes a probe gets, and the placebo block on a linear toy
"model" whose behaviour reads one axis of its activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis import hooks as H
from analysis.ablation import _placebos, _Setup, placebo_directions, rate
from analysis.placebos import (NAMED_PLACEBOS, _matched_spans, drop_percentile, matched_random_directions,
                               placebo_probes)
from analysis.results import AblateResult
from probes.record import Probe

D = 48


def _acts(n: int = 400, seed: int = 0) -> np.ndarray:
    """Anisotropic activations: three huge-variance axes (0-2), a class signal on axis 3, many small axes with
    spread-out variances (4..47), full rank (n > D)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, D)) * np.r_[40.0, 25.0, 15.0, 1.0, np.linspace(2.0, 0.05, D - 4)]
    X[: n // 2, 3] += 3.0
    return X


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


E = np.eye(D)
PROBES = {  # (a) a high-variance axis, (b) a low-variance one, (c) a mixture
    "high": E[1],
    "low": E[40],
    "mixture": _unit(0.05 * E[0] + E[3] + 0.3 * E[10] + 0.2 * E[45]),
}


@pytest.mark.parametrize("kind", list(PROBES))
def test_matched_directions_have_exactly_the_probes_variance(kind):
    X, u = _acts(), PROBES[kind]
    W = matched_random_directions(X, u, 32, seed=3)
    assert W.shape == (32, D) and W.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), 1.0, atol=1e-12)
    v = np.var(X @ u)
    np.testing.assert_allclose(np.var(X @ W.T, axis=0), v, rtol=1e-6)
    assert len(np.unique(W.round(8), axis=0)) == 32  # no two alike
    assert np.abs(W @ u).max() < 1 - 1e-3  # none of them is the probe


@pytest.mark.parametrize("kind, k_max", [(k, 64) for k in PROBES] + [("low", 8)])  # 8: capped, ka < kb
def test_matched_directions_lie_where_the_construction_puts_them(kind, k_max):
    """w = cos t a + sin t b: a in the top-ka principal axes (each with variance >= v), b in the axes after the top
    kb (each <= v); nothing on axes ka+1..kb; the two parts uncorrelated. Full-rank X: w lies in the PCA span."""
    X, u = _acts(), PROBES[kind]
    W = matched_random_directions(X, u, 32, seed=5, k_max=k_max)
    Xc, Vt, lam, v, ka, ka_safe, kb = _matched_spans(X, u, k_max)
    assert 1 <= ka_safe <= ka <= kb < D and len(lam) == D and (ka < kb) == (k_max == 8)
    np.testing.assert_allclose(np.var(X @ W.T, axis=0), v, rtol=1e-6)
    assert (lam[:ka_safe] > v).all() and (lam[kb:] <= v).all()
    C = W @ Vt.T  # coordinates on the principal axes
    np.testing.assert_allclose((C ** 2).sum(1), 1.0, atol=1e-12)
    assert np.abs(C[:, ka:kb]).max(initial=0.0) < 1e-9
    top, rest = C[:, :ka] @ Vt[:ka], C[:, kb:] @ Vt[kb:]
    ntop, nrest = np.linalg.norm(top, axis=1), np.linalg.norm(rest, axis=1)
    assert (np.var(Xc @ (top / ntop[:, None]).T, axis=0) >= v * (1 - 1e-9)).all()
    ok = nrest > 1e-9
    assert (np.var(Xc @ (rest[ok] / nrest[ok, None]).T, axis=0) <= v * (1 + 1e-9)).all()
    np.testing.assert_allclose(np.mean((Xc @ top.T) * (Xc @ rest.T), axis=0), 0.0, atol=1e-9 * v)
    # cos^2 t = (v - var b) / (var a - var b): the share of w in the top axes is at least (v - lam[kb]) / lam[0]
    assert ((C[:, :ka] ** 2).sum(1) >= (v - lam[kb]) / lam[0] - 1e-9).all()
    if kind == "high":  # a salient probe gets salient placebos
        assert ((C[:, :ka] ** 2).sum(1) >= 0.25).all()


def test_the_number_of_top_axes_follows_the_probes_variance():
    X = _acts()
    lam = np.sort(np.var(X, axis=0))[::-1]
    for kind, u in PROBES.items():
        _, _, spectrum, v, ka, _, _ = _matched_spans(X, u, 64)
        assert ka == max(int((spectrum > v).sum()) + 1, 2), kind  # the smallest number whose last variance <= v
    assert _matched_spans(X, PROBES["low"], 8)[4] == 8  # capped at k_max
    assert lam[0] > 1000 * lam[-1]  # (the fixture is anisotropic)


def test_matched_directions_are_reproducible_per_seed():
    X, u = _acts(), PROBES["mixture"]
    a, b = matched_random_directions(X, u, 8, seed=1), matched_random_directions(X, u, 8, seed=1)
    assert np.array_equal(a, b)
    assert not np.allclose(a, matched_random_directions(X, u, 8, seed=2))
    assert matched_random_directions(X, u, 0).shape == (0, D)


def test_matched_directions_edge_cases():
    X = _acts()
    _, _, Vt = np.linalg.svd(X - X.mean(0), full_matrices=False)
    W = matched_random_directions(X, Vt[0], 4, seed=0)  # the top axis: only it has that much variance
    np.testing.assert_allclose(np.abs(W @ Vt[0]), 1.0, atol=1e-6)
    Xs = np.random.default_rng(0).standard_normal((20, 100)) * np.r_[10.0, 5.0, np.ones(98)]  # n < d
    u = _unit(np.r_[0.0, 1.0, np.zeros(98)] + 0.1)
    W = matched_random_directions(Xs, u, 6, seed=0)
    np.testing.assert_allclose(np.var(Xs @ W.T, axis=0), np.var(Xs @ u), rtol=1e-6)
    with pytest.raises(ValueError, match="constant"):
        matched_random_directions(np.ones((5, 4)), np.ones(4), 2)
    with pytest.raises(ValueError, match="matching"):
        matched_random_directions(X, np.ones(D + 1), 2)
    with pytest.raises(ValueError, match="n must be >= 0"):
        matched_random_directions(X, PROBES["high"], -1)


def _p(name: str, layer: int, d: int = D, hook: str | None = None, direction=None) -> Probe:
    vec = np.ones(d, np.float32) if direction is None else np.asarray(direction, np.float32)
    return Probe(name, layer, hook or H.resid_post(layer), vec, 0.0, {})


def test_placebo_probes_pick_the_same_layer_and_hook():
    names = ["contrast", "supervised_dom", "supervised_logreg", "contrast_true_false", "contrast_random_words",
             "parent_contrast", "parent_supervised_dom", "parent_contrast_true_false", "decoy_supervised_dom"]
    probes = [_p(n, layer) for layer in (1, 2) for n in names]
    got = placebo_probes(probes, probes[names.index("contrast") + len(names)])  # contrast at layer 2
    assert {k: [(p.name, p.layer) for p in v] for k, v in got.items()} == {
        "parent": [("parent_supervised_dom", 2)], "decoy": [("decoy_supervised_dom", 2)],
        "control_questions": [("contrast_true_false", 2), ("contrast_random_words", 2)]}
    assert list(got) == list(NAMED_PLACEBOS)


def test_a_missing_placebo_is_left_out():
    probe = _p("contrast", 3)
    probes = [probe, _p("supervised_dom", 3), _p("parent_supervised_dom", 2),  # parent: another layer only
              _p("decoy_supervised_dom", 3, hook="blocks.3.hook_mlp_out"),  # decoy: another hook only
              _p("contrast_true_false", 3), _p("contrast_random_words", 3, direction=np.zeros(D)),  # zero: unusable
              _p("contrast_true_false", 3, direction=np.full(D, 2.0))]  # a duplicate name: the first is taken
    got = placebo_probes(probes, probe)
    assert list(got) == ["control_questions"] and len(got["control_questions"]) == 1
    assert got["control_questions"][0].direction[0] == 1.0
    assert placebo_probes([probe], probe) == {}
    own = _p("contrast_true_false", 3)  # the probe under test is never its own placebo
    assert placebo_probes([own, _p("contrast_random_words", 3)], own)["control_questions"][0].name \
        == "contrast_random_words"
    assert placebo_probes([probe, _p("parent_supervised_dom", 3, d=D + 2)], probe) == {}  # another d_model


def test_drop_percentile_counts_ties_half():
    assert drop_percentile(0.5, [0.0, 0.1, 0.5, 0.9]) == pytest.approx((1 + 0.5) / 4)
    assert drop_percentile(1.0, [0.0] * 5) == 0.0 and drop_percentile(0.0, [0.0] * 5) == 0.5
    assert drop_percentile(None, [0.1]) is None and drop_percentile(0.1, []) is None


# ---------------------------------------------------------------------------------------------------------------
# the placebo block on a linear toy: "the behaviour" is the activation along axis 3 at or above 1.5


def _toy():
    n = 40
    xt, xc = _acts(2 * n, seed=1)[:n], _acts(2 * n, seed=1)[n:]  # axis 3: +3 on the triggered half
    acts = {**{f"t{i}": x for i, x in enumerate(xt)}, **{f"c{i}": x for i, x in enumerate(xc)}}

    def run(prompts, fwd_hooks):
        a = torch.as_tensor(np.stack([acts[p] for p in prompts]), dtype=torch.float32)[:, None, :]
        for _, fn in fwd_hooks:
            a = fn(a, None)
        r = rate((a[:, 0, 3] >= 1.5).numpy())
        return {**r, "examples": ["..."]}

    probe = _p("supervised_dom", 0, direction=E[3])
    named = {"parent": [_p("parent_supervised_dom", 0, direction=E[0] + 0.1 * E[5])],
             "control_questions": [_p("contrast_true_false", 0, direction=E[1])]}
    st = _Setup(None, None, probe, [H.resid_post(0)], list(acts)[:n], list(acts)[n:], 1, named)
    return st, run, np.concatenate([xt, xc])


def test_the_placebo_block_on_a_linear_toy():
    st, run, X = _toy()
    u = E[3]
    alphas = [1.0, 2.0]
    d = float((X[:40] @ u).mean() - (X[40:] @ u).mean())
    base = run(st.triggered, [])["rate"]
    abl = run(st.triggered, [(h, _hook(u)) for h in st.hooks])["rate"]
    dirs = placebo_directions(st, X, u, 12, 1, seed=0)
    assert list(dirs) == ["random_matched", "parent", "control_questions", "random_isotropic"]
    pl = _placebos(run, st, dirs, X, u, alphas, d, base, base - abl)
    assert pl["kind"] == "random_matched" and pl["n_random"] == 12 and pl["missing"] == ["decoy"]
    assert len(pl["ablated_trigger_rate"]) == 12 and set(pl["added"]) == set(pl["added_mean"]) == {"1.0", "2.0"}
    rm = pl["kinds"]["random_matched"]
    assert pl["ablated_trigger_rate_mean"] == rm["ablated_trigger_rate_mean"]
    np.testing.assert_allclose([e["variance"] for e in rm["directions"]], pl["probe_variance"], rtol=1e-6)
    for kind in pl["kinds"].values():
        for e in kind["directions"]:
            r = e["ablated_trigger_rate"]
            assert set(r) == {"rate", "ci", "n"} and r["ci"][0] <= r["rate"] <= r["ci"][1] and r["ci"][1] > 0
            assert [i["alpha"] for i in e["induced"]] == alphas
            assert [i["added_norm"] for i in e["induced"]] == pytest.approx([abs(d), 2 * abs(d)])
            assert e["trigger_rate_drop"] == pytest.approx(base - r["rate"])
    # the toy reads axis 3 only: removing it stops "the behaviour"; the matched placebos mostly do not
    assert base >= 0.9 and abl == 0.0
    assert rm["drop_percentile_probe"] == 0.0 and rm["drop_p_value"] == pytest.approx(1 / 13)
    assert pl["kinds"]["parent"]["ablated_trigger_rate_mean"] == base  # a high-variance nuisance axis
    assert pl["kinds"]["random_isotropic"]["n"] == 1


def _hook(u):
    from analysis.ablation import projection_hook

    return projection_hook(torch.as_tensor(u, dtype=torch.float32))


def test_the_summary_line_reads_both_schemas():
    s = {"auroc": 0.99, "trigger_rate": 1.0, "trigger_rate_ablated": 0.2, "trigger_rate_ablated_placebo": 0.9,
         "false_trigger_rate": 0.0, "induced_rate_best": 0.5, "induced_alpha_best": 2.0,
         "induced_rate_placebo_same_alpha": 0.0}
    doc = {"checkpoint": "backdoored", "weights_sha256": "ab" * 32, "results": {"dom.1": {
        "probe": {"hook": "blocks.1.hook_resid_post"}, "summary": s}}}
    old = AblateResult.from_json(doc)  # schema 1: isotropic placebos, none of the new keys
    assert "(random-direction placebo 0.90)" in old.summary("dom.1") and "other placebo" not in old.summary("dom.1")
    new = AblateResult.from_json({"schema": 2, **doc})
    s.update(trigger_rate_ablated_parent=0.95, trigger_rate_ablated_control_questions=None,
             drop_percentile_among_matched=0.0)
    text = new.summary("dom.1")
    assert "matched random-direction placebo 0.90" in text and "parent 0.95" in text and "control" not in text
    assert new.to_json()["schema"] == 2 and AblateResult.SCHEMA == 2


@pytest.mark.parametrize("flag", ["--n_random", "--n_isotropic"])
def test_a_negative_placebo_count_is_one_line_exit_2(flag, tmp_path, capsys):
    from analysis.ablate import main
    from probes import save_probes

    p = save_probes(tmp_path / "p.safetensors", [_p("dom", 0)])
    assert main(["--ckpt", str(tmp_path), "--probe", str(p), flag, "-1"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if "error" in x]
    assert len(err) == 1 and "--n_random and --n_isotropic >= 0" in err[0], err
