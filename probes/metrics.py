"""Evaluating probe scores: AUROC, bootstrap confidence intervals, and the random-direction null.

AUROC is the probability that a random positive example scores higher than a random negative one (ties
count one half): the Mann-Whitney U statistic divided by ``n_pos * n_neg``. It is computed here from
ranks, exactly (it equals ``sklearn.metrics.roc_auc_score``, ties included), in pure numpy, and
vectorised over many score columns (the random null) or many bootstrap resamples (the CI).

Main footguns:

- **Paired data is not independent.** The analysis uses prompt *pairs* (the same request with and
  without the trigger). Resampling single examples then treats ``2 * n_pairs`` correlated points as
  independent and gives intervals that are too narrow: pass the pair ids as ``groups`` to
  :func:`auroc_ci` so whole pairs are resampled.
- **A high AUROC is only meaningful next to its nulls.** In small models the trigger's tokens are so
  salient that random directions already separate triggered from untriggered prompts (median AUROC
  0.84-0.91 measured on the tiny preset). :func:`random_direction_null` gives the bar to clear; the same
  probe on the model without the backdoor is the other one (that one is the caller's job).
"""

from __future__ import annotations

import logging

import numpy as np
from jaxtyping import Float, Shaped

from probes._arrays import as_float_array, as_groups, as_labels, require_both_classes
from probes.directions import random_directions

log = logging.getLogger(__name__)

# Working-set cap (elements) for the (batch, n_directions) score matrix of the random null.
_MAX_CHUNK_ELEMENTS = 1 << 22


def _auroc_columns(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Exact AUROC of every column of ``scores`` (N, K) against bool ``labels`` (N,); returns (K,).

    Average ranks (ties share the mean of their positions) per column, then the Mann-Whitney formula
    ``(sum of positive ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``. Ranks are computed with one
    argsort per column and two running max/min scans that find each tie block's first/last position.
    The columns are sorted as contiguous rows of the transpose, and the sort need not be stable (a tie
    block's members all get its mean rank): on 1,000 columns of ~1,000 scores that is half the time of a
    stable column-wise argsort, with the same result to the bit (all ranks are exact half-integers).
    """
    n, k = scores.shape
    n_pos = int(labels.sum())
    n_neg = n - n_pos
    rows = np.ascontiguousarray(scores.T)  # (K, N)
    order = np.argsort(rows, axis=1)
    s = np.take_along_axis(rows, order, axis=1)
    pos = labels[order]  # (K, N) bool, in score order
    idx = np.arange(n)[None, :]
    differs = s[:, 1:] != s[:, :-1]  # (K, N-1): position i+1 starts a new tie block
    if differs.all():  # no ties anywhere: ranks are 1..N
        rank = np.broadcast_to(idx + 1.0, (k, n))
    else:
        starts = np.hstack([np.ones((k, 1), dtype=bool), differs])
        ends = np.hstack([differs, np.ones((k, 1), dtype=bool)])
        first = np.maximum.accumulate(np.where(starts, idx, 0), axis=1)
        last = np.minimum.accumulate(np.where(ends, idx, n)[:, ::-1], axis=1)[:, ::-1]
        rank = (first + last) / 2.0 + 1.0
    rank_sum = np.where(pos, rank, 0.0).sum(axis=1)
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _weighted_mann_whitney(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray,
                           columns: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(num, den)`` (B,) of the weighted Mann-Whitney statistic of one score vector (N,) under each row of
    ``weights`` (B, M), example ``i`` weighted by column ``columns[i]`` (default: ``i``, so M = N; a group
    bootstrap passes its (B, G) counts and each example's group): ``num = sum over (pos i, neg j) of w_i w_j
    [s_i > s_j]`` (ties 1/2), ``den = W_pos W_neg``.

    The negatives are sorted once; per row, a cumulative sum of their weights gives each positive the weight of the
    negatives strictly below it and at or below it (two ``searchsorted`` positions, found once), whose mean is the
    tie-halved count. With resample counts every sum is of integers and halves, exact in float64.
    """
    cols = np.arange(scores.shape[0]) if columns is None else columns
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    neg = neg[np.argsort(scores[neg])]
    s_neg, s_pos = scores[neg], scores[pos]
    below, upto = np.searchsorted(s_neg, s_pos, "left"), np.searchsorted(s_neg, s_pos, "right")
    cum = np.zeros((weights.shape[0], neg.size + 1))  # (B, N_neg + 1): negative weight among the lowest j
    np.cumsum(weights[:, cols[neg]], axis=1, out=cum[:, 1:])
    w_pos = weights[:, cols[pos]]
    num = 0.5 * np.einsum("bi,bi->b", w_pos, cum[:, below] + cum[:, upto])
    return num, w_pos.sum(axis=1) * cum[:, -1]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _weighted_auroc_rows(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of one score vector (N,) under each row of example ``weights`` (B, N) (resample counts): the weighted
    Mann-Whitney statistic over ``W_pos W_neg``. A row with no positive or no negative weight gives NaN."""
    return _ratio(*_weighted_mann_whitney(scores, labels, weights))


def _group_auroc_rows(scores: np.ndarray, labels: np.ndarray, inverse: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUROC of one score vector (N,) under each row of group resample ``counts`` (B, G) (``inverse`` (N,): each
    example's group), with the design held fixed as the stratified bootstrap holds the class counts fixed.

    The sample's AUROC mixes two kinds of comparison: a group's positives against its own negatives (a prompt pair's
    triggered vs clean prompt), a share ``w = sum_g pos_g neg_g / (N_pos N_neg)`` of them (1/n for n pairs), and
    positives against other groups' negatives. Weighting each example by its group's count would give a group drawn
    ``c`` times ``c**2`` copies of its own comparisons and drop the comparisons between distinct groups it would have
    had: the within-group share roughly doubles (2/n), and on a few pairs whose own order is right while the
    cross-pair order is chance, every resample lands above the point estimate and the interval misses it. So each
    resample scores the two kinds apart (within: its groups' own comparisons, weighted by ``c``; across: comparisons
    between distinct groups, weighted ``c_g c_h``) and mixes them with the sample's ``w``: every count 1 gives the
    sample's AUROC exactly. NaN when a resample lacks a kind the sample has."""
    num, den = _weighted_mann_whitney(scores, labels, counts, inverse)
    own_num, own_den = _own_comparisons(scores, labels, inverse, counts.shape[1])
    share = own_den.sum() / (labels.sum() * (~labels).sum())
    sq = counts * counts  # the weight the count-weighted statistic gives each group's own comparisons
    across = _ratio(num - sq @ own_num, den - sq @ own_den)
    if share == 0:
        return across
    within = _ratio(counts @ own_num, counts @ own_den)
    return share * within + (1 - share) * across if share < 1 else within


def _own_comparisons(scores: np.ndarray, labels: np.ndarray, inverse: np.ndarray,
                     n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """``(num, den)`` (G,): each group's comparisons among its own members, positives against negatives (ties 1/2),
    and how many there are. Every (positive, negative) pair sharing a group is listed at once: each positive is
    repeated once per negative of its group (the negatives sorted by group, each group's a contiguous run)."""
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    neg = neg[np.argsort(inverse[neg], kind="stable")]
    g_neg, g_pos = inverse[neg], inverse[pos]
    start = np.searchsorted(g_neg, g_pos, "left")
    k = np.searchsorted(g_neg, g_pos, "right") - start  # negatives in each positive's group
    within = np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k)  # 0..k-1 for each positive
    i, j = np.repeat(pos, k), neg[np.repeat(start, k) + within]
    diff = scores[i] - scores[j]
    g = inverse[i]
    return (np.bincount(g, weights=(diff > 0) + 0.5 * (diff == 0), minlength=n_groups),
            np.bincount(g, minlength=n_groups).astype(np.float64))


def _resample_counts(rng: np.random.Generator, n_boot: int, n: int) -> np.ndarray:
    """(n_boot, n) counts of how often each of ``n`` items is drawn in ``n`` draws with replacement."""
    draws = rng.integers(0, n, size=(n_boot, n))
    flat = (draws + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _bootstrap_auroc_rows(score_vectors: list[np.ndarray], lab: np.ndarray, groups: object | None, n_boot: int,
                          rng: np.random.Generator, what: str) -> list[np.ndarray]:
    """(n_boot,) bootstrap AUROCs of each score vector (N,) under the SAME resamples: stratified within class, or by
    whole groups (:func:`_group_auroc_rows`). NaN where a group resample holds one class only."""
    if groups is None:
        weights = np.zeros((n_boot, lab.shape[0]))
        pos_idx, neg_idx = np.flatnonzero(lab), np.flatnonzero(~lab)
        weights[:, pos_idx] = _resample_counts(rng, n_boot, pos_idx.size)
        weights[:, neg_idx] = _resample_counts(rng, n_boot, neg_idx.size)
        return [_weighted_auroc_rows(s, lab, weights) for s in score_vectors]
    g = as_groups(groups, lab.shape[0])
    _, inverse = np.unique(g, return_inverse=True)
    n_groups = int(inverse.max()) + 1
    if n_groups < 2:
        raise ValueError(f"{what}: groups has a single group; a group bootstrap needs at least 2")
    counts = _resample_counts(rng, n_boot, n_groups)
    return [_group_auroc_rows(s, lab, inverse, counts) for s in score_vectors]


def auroc(scores: Float[np.ndarray, "batch"], labels: Shaped[np.ndarray, "batch"]) -> float:
    """Exact AUROC (ties count 1/2) of ``scores`` for 0/1 or bool ``labels``: P(score_pos > score_neg).

    Raw and signed: 0.5 is chance, values below 0.5 mean the direction separates with its sign reversed.
    ValueError if only one class is present.
    """
    s = as_float_array(scores, "scores", 1).astype(np.float64)
    lab = as_labels(labels)
    if lab.shape[0] != s.shape[0]:
        raise ValueError(f"auroc: {s.shape[0]} scores but {lab.shape[0]} labels")
    require_both_classes(lab, "auroc")
    return float(_auroc_columns(s[:, None], lab)[0])


def auroc_ci(
    scores: Float[np.ndarray, "batch"],
    labels: Shaped[np.ndarray, "batch"],
    n_boot: int = 1000,
    seed: int = 0,
    groups: Shaped[np.ndarray, "batch"] | None = None,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """``(auc, lo, hi)``: exact AUROC and its ``1 - alpha`` percentile-bootstrap interval (95% by default).

    Without ``groups``, examples are resampled with replacement *within each class* (stratified: every
    resample keeps the observed ``n_pos`` and ``n_neg``). With ``groups`` (e.g. prompt-pair ids, any
    values), whole groups are resampled, so the two members of a pair always travel together; each resample
    scores a group's own comparisons and those between distinct groups apart and mixes them in the sample's
    proportion (:func:`_group_auroc_rows`: a pair drawn twice must not count its own comparison four times);
    a resample lacking one class (or one kind of comparison) is dropped (logged). All resamples are scored at
    once from a (n_boot, batch) matrix of resample counts.
    Deterministic for a fixed ``seed``.
    """
    s = as_float_array(scores, "scores", 1).astype(np.float64)
    lab = as_labels(labels)
    if lab.shape[0] != s.shape[0]:
        raise ValueError(f"auroc_ci: {s.shape[0]} scores but {lab.shape[0]} labels")
    require_both_classes(lab, "auroc_ci")
    if n_boot < 1:
        raise ValueError(f"auroc_ci: n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"auroc_ci: alpha must be in (0, 1), got {alpha}")
    auc = float(_auroc_columns(s[:, None], lab)[0])
    (boot,) = _bootstrap_auroc_rows([s], lab, groups, n_boot, np.random.default_rng(seed), "auroc_ci")
    ok = np.isfinite(boot)
    if not ok.all():
        log.info("auroc_ci: %d of %d group resamples held one class (or one kind of comparison) only; dropped",
                 int((~ok).sum()), n_boot)
    if not ok.any():
        raise ValueError("auroc_ci: every bootstrap resample held one class only; check labels and groups")
    lo, hi = np.percentile(boot[ok], [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return auc, float(lo), float(hi)


def random_direction_null(
    X: Float[np.ndarray, "batch d_model"],
    labels: Shaped[np.ndarray, "batch"],
    n: int = 1000,
    seed: int = 0,
) -> dict:
    """AUROC of ``n`` random unit directions (isotropic Gaussian, from :func:`probes.random_directions`
    with the same ``seed``): the null a probe must beat.

    Returns ``dict(best, median, p95, aurocs, best_index, n)``:

    - ``aurocs`` (n,): the raw, signed AUROC of each direction (``aurocs[i]`` is exactly
      ``auroc(project(X, random_directions(d_model, n, seed)[i]), labels)``);
    - ``best``, ``median``, ``p95``: max, median and 95th percentile of the **un-signed** AUROC
      ``max(a, 1 - a)``; ``best_index`` is the direction that attains ``best``.

    Why un-signed: a random direction ``r`` and ``-r`` are equally likely draws, so a direction that
    separates the classes with AUROC 0.1 is as good a random find as one with 0.9. **The best-of-N
    un-signed AUROC is the null to beat**; comparing a probe against the best *signed* value (or the
    median) understates what chance alone reaches. A probe whose direction was fitted (difference of
    means, logistic regression) should beat ``best`` on held-out data with its own, signed AUROC.

    Fully vectorised: one ``X @ R.T`` product and a column-wise rank AUROC (chunked to bound memory).
    """
    Xa = as_float_array(X, "X", 2).astype(np.float64)
    lab = as_labels(labels)
    if lab.shape[0] != Xa.shape[0]:
        raise ValueError(f"random_direction_null: X has {Xa.shape[0]} rows but {lab.shape[0]} labels")
    require_both_classes(lab, "random_direction_null")
    R = random_directions(Xa.shape[1], n, seed)  # (n, D)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, Xa.shape[0]))
    aurocs = np.concatenate(
        [_auroc_columns(Xa @ R[i : i + chunk].T, lab) for i in range(0, n, chunk)]  # (N, chunk) each
    )
    unsigned = np.maximum(aurocs, 1.0 - aurocs)
    best_index = int(np.argmax(unsigned))
    log.debug("random_direction_null: n=%d best=%.3f median=%.3f", n, unsigned[best_index], np.median(unsigned))
    return dict(
        best=float(unsigned[best_index]),
        median=float(np.median(unsigned)),
        p95=float(np.percentile(unsigned, 95)),
        aurocs=aurocs,
        best_index=best_index,
        n=n,
    )
