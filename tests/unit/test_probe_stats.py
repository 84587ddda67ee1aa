"""Unit tests for ``probes.stats``: random-direction percentiles (raw and whitened), paired AUROC deltas,
TPR at a calibrated FPR, the Wilson helper, and the per-question bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import fractional_matrix_power
from sklearn.covariance import LedoitWolf

import probes
from probes.metrics import _group_auroc_rows, _weighted_auroc_rows
from probes.stats import _wilson

D, N = 32, 200


def _planted(seed: int = 1000, n: int = N, d: int = D, strength: float = 3.0):
    """X = noise + label * strength * u for a random unit u; examples 2k, 2k+1 form pair k."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    y = np.tile([0, 1], n // 2)
    X = rng.standard_normal((n, d)) + y[:, None] * strength * u
    return X, y, u, np.arange(n) // 2


def _low_variance_label(seed: int = 7, n: int = 400, d: int = 8):
    """The label lives on a low-variance axis (1); axis 0 is huge-variance noise (sd 100); the rest sd 1."""
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], n // 2)
    X = rng.standard_normal((n, d))
    X[:, 0] *= 100.0
    X[:, 1] = 0.1 * rng.standard_normal(n) + 0.5 * y
    return X, y


# --------------------------------------------------------------------------- random_percentile


def test_planted_probe_beats_every_random_direction():
    X, y, u, _ = _planted()
    a = probes.auroc(probes.project(X, u), y)
    out = probes.random_percentile(X, y, a, n=200, seed=0)
    assert out["percentile"] == 1.0
    assert out["p_value"] == 1 / 201
    assert out["n"] == 200 and out["best"] < a
    null = probes.random_direction_null(X, y, n=200, seed=0)
    assert out["best"] == null["best"]
    np.testing.assert_array_equal(out["aurocs"], null["aurocs"])


def test_percentile_of_the_median_is_half_and_ties_count_half():
    X, y, _, _ = _planted(strength=0.5)
    aurocs = probes.random_direction_null(X, y, n=201, seed=3)["aurocs"]
    med = float(np.median(aurocs))  # n odd: at least one draw equals it exactly
    out = probes.random_percentile(X, y, med, n=201, seed=3)
    below, ties = int((aurocs < med).sum()), int((aurocs == med).sum())
    assert ties >= 1 and out["percentile"] == (below + 0.5 * ties) / 201
    assert out["percentile"] == pytest.approx(0.5, abs=1 / 201)  # exactly 1/2 unless other draws tie with it
    assert out["p_value"] == (1 + 201 - below) / 202
    tied = np.full(9, 0.7)  # all draws tie with the probe: the middle, p = 1
    assert probes.percentile_among(tied, 0.7)["percentile"] == 0.5
    assert probes.percentile_among(tied, 0.7)["p_value"] == 1.0


def test_random_percentile_matches_brute_force():
    X, y, _, _ = _planted(strength=0.3, seed=5)
    n, probe_auc = 50, 0.56
    R = probes.random_directions(X.shape[1], n, seed=11)
    signed = np.array([probes.auroc(probes.project(X, r), y) for r in R])
    out = probes.random_percentile(X, y, probe_auc, n=n, seed=11)
    assert out["p_value"] == (1 + int((signed >= probe_auc).sum())) / (n + 1)
    assert out["percentile"] == ((signed < probe_auc).sum() + 0.5 * (signed == probe_auc).sum()) / n
    assert out["best"] == pytest.approx(np.maximum(signed, 1 - signed).max(), abs=1e-12)
    # fixed sign: a probe below chance is at the bottom, though its un-signed AUROC would be high
    assert probes.random_percentile(X, y, 0.02, n=n, seed=11)["percentile"] == 0.0


# --------------------------------------------------------------------------- whitened_random_percentile


def test_whitened_null_reads_low_variance_axis():
    X, y = _low_variance_label()
    raw = probes.random_percentile(X, y, 0.5, n=300, seed=0)["aurocs"]
    wh = probes.whitened_random_percentile(X, y, 0.5, n=300, seed=0)["aurocs"]
    med_raw = np.median(np.maximum(raw, 1 - raw))
    med_wh = np.median(np.maximum(wh, 1 - wh))
    assert med_raw < 0.56  # swamped by the sd-100 noise axis
    assert med_wh > med_raw + 0.05


def test_whitened_is_deterministic_and_matches_brute_force():
    X, y = _low_variance_label(n=120, d=6)
    a = 0.7
    out = probes.whitened_random_percentile(X, y, a, n=40, seed=2)
    again = probes.whitened_random_percentile(X, y, a, n=40, seed=2)
    np.testing.assert_array_equal(out["aurocs"], again["aurocs"])
    assert out["p_value"] == again["p_value"]
    sd = X.std(axis=0)
    Z = (X - X.mean(axis=0)) / sd
    lw = LedoitWolf().fit(Z)
    assert out["shrinkage"] == pytest.approx(lw.shrinkage_)
    for shrink, corr in [(None, lw.covariance_), (0.3, None), (0.0, None)]:
        if corr is None:  # shrunk correlation: (1 - s) C + s I
            corr = (1 - shrink) * np.corrcoef(X, rowvar=False) + shrink * np.eye(X.shape[1])
        cov = corr * np.outer(sd, sd)
        inv_sqrt = np.real(fractional_matrix_power(cov, -0.5))
        R = probes.random_directions(X.shape[1], 40, seed=2)
        signed = np.array([probes.auroc(X @ (inv_sqrt @ r), y) for r in R])
        got = probes.whitened_random_percentile(X, y, a, n=40, seed=2, shrinkage=shrink)
        np.testing.assert_allclose(got["aurocs"], signed, rtol=0, atol=1e-12)
        assert got["p_value"] == (1 + int((signed >= a).sum())) / 41
        assert got["best"] == pytest.approx(np.maximum(signed, 1 - signed).max())
        assert got["shrinkage"] == pytest.approx(lw.shrinkage_ if shrink is None else shrink)


def test_whitened_singular_covariance_raises():
    X, y, _, _ = _planted(n=20, d=40)  # fewer rows than d_model
    with pytest.raises(ValueError, match="singular"):
        probes.whitened_random_percentile(X, y, 0.9, n=10, shrinkage=0.0)
    with pytest.raises(ValueError, match="shrinkage"):
        probes.whitened_random_percentile(X, y, 0.9, n=10, shrinkage=1.5)
    assert 0 <= probes.whitened_random_percentile(X, y, 0.9, n=10)["percentile"] <= 1  # Ledoit-Wolf copes


# --------------------------------------------------------------------------- paired_auroc_delta_ci


def test_paired_delta_is_exact_and_zero_for_identical_scores():
    X, y, u, _ = _planted(strength=1.0)
    a, b = probes.project(X, u), X[:, 0]
    delta, lo, hi = probes.paired_auroc_delta_ci(a, b, y, n_boot=300)
    assert delta == probes.auroc(a, y) - probes.auroc(b, y)
    assert lo <= delta <= hi
    assert probes.paired_auroc_delta_ci(a, a, y, n_boot=300) == (0.0, 0.0, 0.0)


def test_paired_delta_excludes_zero_for_perfect_vs_noise():
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 60)
    a = y + 0.1 * rng.standard_normal(y.size)  # separates perfectly
    b = rng.standard_normal(y.size)
    delta, lo, hi = probes.paired_auroc_delta_ci(a, b, y, n_boot=500)
    assert delta > 0.3 and lo > 0


def test_paired_delta_groups_keep_pairs_together_and_are_deterministic():
    X, y, u, pairs = _planted(strength=1.0)
    a, b = probes.project(X, u), probes.project(X, u + 0.8 * np.eye(D)[0])
    g1 = probes.paired_auroc_delta_ci(a, b, y, groups=pairs, n_boot=400, seed=1)
    assert g1 == probes.paired_auroc_delta_ci(a, b, y, groups=pairs, n_boot=400, seed=1)
    plain = probes.paired_auroc_delta_ci(a, b, y, n_boot=400, seed=1)
    assert g1[0] == plain[0] and g1[1:] != plain[1:]
    # the stratified resample uses auroc_ci's draws: with b constant the interval is auroc_ci's, shifted by 1/2
    _, lo_a, hi_a = probes.auroc_ci(a, y, n_boot=400, seed=1)
    _, lo, hi = probes.paired_auroc_delta_ci(a, np.zeros_like(a), y, n_boot=400, seed=1)
    assert (lo, hi) == (pytest.approx(lo_a - 0.5), pytest.approx(hi_a - 0.5))
    _, lo_a, hi_a = probes.auroc_ci(a, y, groups=pairs, n_boot=400, seed=1)  # the same by pairs
    _, lo, hi = probes.paired_auroc_delta_ci(a, np.zeros_like(a), y, groups=pairs, n_boot=400, seed=1)
    assert (lo, hi) == (pytest.approx(lo_a - 0.5), pytest.approx(hi_a - 0.5))


def test_paired_delta_bad_input():
    y = np.tile([0, 1], 10)
    s = np.arange(20.0)
    with pytest.raises(ValueError, match="lengths differ"):
        probes.paired_auroc_delta_ci(s, s[:-1], y)
    with pytest.raises(ValueError, match="both classes"):
        probes.paired_auroc_delta_ci(s, s, np.ones(20))
    with pytest.raises(ValueError, match="single group"):
        probes.paired_auroc_delta_ci(s, s, y, groups=np.zeros(20))
    with pytest.raises(ValueError, match="alpha"):
        probes.paired_auroc_delta_ci(s, s, y, alpha=1.0)


# --------------------------------------------------------------------------- tpr_at_fpr and Wilson


def test_tpr_at_fpr_threshold_and_rates():
    rng = np.random.default_rng(0)
    cal = rng.standard_normal(1000)
    test = np.concatenate([rng.standard_normal(300), 10 + rng.standard_normal(200)])
    lab = np.r_[np.zeros(300), np.ones(200)]
    out = probes.tpr_at_fpr(cal, test, lab, fpr=0.01)
    t = out["threshold"]
    assert t == np.quantile(cal, 0.99, method="inverted_cdf")  # the smallest t with <= 1% above it
    assert np.quantile(cal, 0.99, method="lower") <= t <= np.quantile(cal, 0.99, method="higher")
    assert t == pytest.approx(2.326, abs=0.25)  # the N(0, 1) 99th percentile
    assert (cal > t).mean() <= 0.01 and out["fpr_calibration"] == (cal > t).mean()
    assert (cal >= t).mean() > 0.01  # and no smaller calibration value would do
    assert out["tpr"] == 1.0 and out["tpr_ci"][1] == 1.0 and out["tpr_ci"][0] < 1.0
    assert out["fpr_test"] == (test[:300] > t).mean()
    assert out["fpr_test_ci"][0] <= out["fpr_test"] <= out["fpr_test_ci"][1]
    assert (out["n_pos"], out["n_neg"], out["n_calibration"]) == (200, 300, 1000)
    assert out["calibration_too_small"] is False


def test_tpr_at_fpr_small_calibration_and_ties():
    cal = np.arange(50.0)
    out = probes.tpr_at_fpr(cal, [48.5, 49.5, 0.0, 60.0], [1, 1, 0, 0], fpr=0.01)
    assert out["calibration_too_small"] is True and out["threshold"] == 49.0
    assert out["tpr"] == 0.5 and out["fpr_test"] == 0.5
    out = probes.tpr_at_fpr(np.arange(100.0), [99.5, 0.0], [1, 0], fpr=0.01)  # exactly 1/fpr: one may exceed
    assert out["calibration_too_small"] is False and out["threshold"] == 98.0
    tied = probes.tpr_at_fpr(np.r_[np.zeros(95), np.ones(5)], [1.0, 0.5], [1, 0], fpr=0.03)
    assert tied["threshold"] == 1.0 and tied["fpr_calibration"] == 0.0  # 5% sit at 1.0: threshold cannot go lower


def test_tpr_at_fpr_bad_input():
    with pytest.raises(ValueError, match="test_labels"):
        probes.tpr_at_fpr(np.zeros(10), np.zeros(3), [0, 1])
    with pytest.raises(ValueError, match="both classes"):
        probes.tpr_at_fpr(np.zeros(10), np.zeros(3), [1, 1, 1])
    with pytest.raises(ValueError, match="fpr"):
        probes.tpr_at_fpr(np.zeros(10), np.zeros(2), [0, 1], fpr=0.0)
    with pytest.raises(ValueError, match="empty"):
        probes.tpr_at_fpr(np.zeros(0), np.zeros(2), [0, 1])


def test_wilson_never_zero_width():
    lo, hi = _wilson(0, 80)
    assert lo == 0.0 and hi == pytest.approx(0.0458, abs=1e-3) and hi > 0
    lo, hi = _wilson(10, 100)
    assert (lo, hi) == (pytest.approx(0.0552, abs=1e-3), pytest.approx(0.1744, abs=1e-3))
    for n in (1, 4, 80, 667):
        assert _wilson(n, n)[1] == 1.0 and _wilson(n, n)[0] < 1.0 and _wilson(0, n)[0] == 0.0


# --------------------------------------------------------------------------- auroc_ci_by_question


def test_auroc_ci_by_question():
    v = np.array([0.6, 0.7, 0.8, 0.9, 0.95])
    m, lo, hi = probes.auroc_ci_by_question(v, n_boot=500, seed=0)
    assert m == pytest.approx(v.mean()) and v.min() <= lo < m < hi <= v.max()
    assert probes.auroc_ci_by_question(v, n_boot=500, seed=0) == (m, lo, hi)
    assert probes.auroc_ci_by_question(np.full(4, 0.8)) == (pytest.approx(0.8),) * 3
    with pytest.raises(ValueError, match="at least 2"):
        probes.auroc_ci_by_question([0.9])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        probes.auroc_ci_by_question([0.9, 1.2])


def test_bad_probe_auroc_and_mismatch_raise():
    X, y, _, _ = _planted(n=40)
    with pytest.raises(ValueError, match="probe_auroc"):
        probes.random_percentile(X, y, 1.5, n=5)
    with pytest.raises(ValueError, match="rows"):
        probes.whitened_random_percentile(X, y[:-2], 0.5, n=5)
    with pytest.raises(ValueError, match="both classes"):
        probes.whitened_random_percentile(X, np.zeros(40), 0.5, n=5)
    with pytest.raises(ValueError, match="rows"):
        probes.random_percentile(X[:-1], y, 0.5, n=5)


def _within_pair_only(n_pairs: int, seed: int):
    """Scores whose pairs' levels differ far more than a pair's own two prompts (triggered mostly above clean): the
    AUROC's cross-pair comparisons are exactly half right, its within-pair ones mostly right."""
    rng = np.random.default_rng(seed)
    level = np.repeat(rng.standard_normal(n_pairs) * 10, 2)
    y = np.tile([False, True], n_pairs)
    return level + 0.1 * y + 0.08 * rng.standard_normal(2 * n_pairs), y, np.arange(2 * n_pairs) // 2


def test_group_bootstrap_scores_within_and_across_pairs_apart():
    s, y, pairs = _within_pair_only(7, seed=3)
    counts = np.random.default_rng(0).integers(0, 3, size=(20, 7)).astype(float)
    got = _group_auroc_rows(s, y, pairs, counts)
    def k(i, j):
        return 1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0
    share = 7 / 49  # the sample's within-pair share of the comparisons
    for b in range(20):  # brute force on the resample written out copy by copy
        c = counts[b].astype(int)
        own = [(c[g], k(2 * g + 1, 2 * g)) for g in range(7)]
        cross = [(c[g] * c[h], k(2 * g + 1, 2 * h)) for g in range(7) for h in range(7) if g != h]
        w_den, x_den = sum(n for n, _ in own), sum(n for n, _ in cross)
        if not w_den or not x_den:
            assert np.isnan(got[b])
            continue
        want = share * sum(n * v for n, v in own) / w_den + (1 - share) * sum(n * v for n, v in cross) / x_den
        assert got[b] == pytest.approx(want)
    ones = np.ones((1, 7))  # every pair once: the sample's AUROC exactly
    assert _group_auroc_rows(s, y, pairs, ones)[0] == pytest.approx(probes.auroc(s, y))


@pytest.mark.parametrize("seed", range(5))
def test_group_bootstrap_is_centred_on_the_sample_with_few_pairs(seed):
    """Weighting each prompt by its pair's count would count a twice-drawn pair's own comparison four times, pulling
    the bootstrap towards the within-pair comparisons (here: mostly right) and off the point estimate."""
    s, y, pairs = _within_pair_only(6, seed)
    auc, lo, hi = probes.auroc_ci(s, y, groups=pairs, n_boot=2000, seed=seed)
    assert lo <= auc <= hi
    counts = np.random.default_rng(seed).multinomial(6, np.full(6, 1 / 6), size=4000).astype(float)
    fixed, naive = _group_auroc_rows(s, y, pairs, counts), _weighted_auroc_rows(s, y, counts[:, pairs])
    assert abs(np.nanmean(fixed) - auc) < 0.02  # centred on the sample's AUROC
    within = np.mean(s[1::2] > s[0::2])
    assert np.nanmean(naive) - auc > 0.3 * (within - 0.5) / 6  # the count-squared weighting leans to the pairs' order


def test_group_bootstrap_with_ties_and_uneven_groups_matches_brute_force():
    """Groups of one to four prompts, some holding one class only, integer scores (many ties): the vectorised
    within- and across-group statistic equals the comparisons written out one by one."""
    rng = np.random.default_rng(11)
    sizes = rng.integers(1, 5, 12)
    groups = np.repeat(np.arange(12), sizes)
    n = groups.size
    s, y = rng.integers(0, 4, n).astype(float), rng.integers(0, 2, n).astype(bool)
    counts = rng.integers(0, 3, size=(30, 12)).astype(float)
    got = _group_auroc_rows(s, y, groups, counts)

    def k(i, j):
        return 1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0
    pairs = [(i, j) for i in np.flatnonzero(y) for j in np.flatnonzero(~y)]
    share = sum(groups[i] == groups[j] for i, j in pairs) / len(pairs)
    assert 0 < share < 1
    for b in range(30):
        c = counts[b]
        own = [(c[groups[i]], k(i, j)) for i, j in pairs if groups[i] == groups[j]]
        cross = [(c[groups[i]] * c[groups[j]], k(i, j)) for i, j in pairs if groups[i] != groups[j]]
        w_den, x_den = sum(w for w, _ in own), sum(w for w, _ in cross)
        if not w_den or not x_den:
            assert np.isnan(got[b])
            continue
        want = share * sum(w * v for w, v in own) / w_den + (1 - share) * sum(w * v for w, v in cross) / x_den
        assert got[b] == pytest.approx(want, abs=1e-12)
