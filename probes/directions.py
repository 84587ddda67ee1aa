"""Linear probe directions: difference of means, logistic regression, random directions, projection.

A linear probe reads a concept off an activation vector ``x`` (one residual-stream vector, ``d_model``
entries) as a score ``x @ direction (+ bias)``. Two ways to get the direction from labelled activations:

- **difference of means**: ``mean(pos) - mean(neg)``. No fitting, no hyper-parameters, hard to overfit;
  the direction used by MacDiarmid et al. for contrast-pair probes.
- **logistic regression** (scikit-learn): a discriminative fit; it also uses the covariance of the data,
  so it can find a direction that difference of means misses, and it can overfit when ``d_model`` is
  large next to the number of examples (lower ``C`` to regularise more).

Main footgun: a direction has no meaningful length or offset by itself. Scores from different
directions, layers or models are comparable only through rank statistics (AUROC), and the *sign*
matters: a contrast direction can separate the classes perfectly with the sign reversed (AUROC near 0).
Report the raw (signed) AUROC, never silently flip it. And a high AUROC says the classes are linearly
separable in the activations, not that the model uses that direction: compare with the random-direction
null (:func:`probes.random_direction_null`) and with the same probe on a model without the backdoor.
"""

from __future__ import annotations

import logging

import numpy as np
from jaxtyping import Float, Shaped

from probes._arrays import as_float_array, as_labels, require_both_classes

log = logging.getLogger(__name__)

_RANDOM_DIRECTIONS_TAG = 0x51EE9  # separates the random-direction stream from other uses of the same seed


def diff_of_means(
    pos: Float[np.ndarray, "n_pos d_model"],
    neg: Float[np.ndarray, "n_neg d_model"],
    normalize: bool = False,
) -> Float[np.ndarray, "d_model"]:
    """``mean(pos) - mean(neg)`` as float32 (averaged in float64); unit length if ``normalize``.

    Not normalised by default: its length (the distance between the class means) is itself informative.
    """
    p = as_float_array(pos, "pos", 2)
    n = as_float_array(neg, "neg", 2)
    if p.shape[0] == 0 or n.shape[0] == 0:
        raise ValueError(f"diff_of_means: need at least one example per side, got {p.shape[0]} pos, {n.shape[0]} neg")
    if p.shape[1] != n.shape[1]:
        raise ValueError(f"diff_of_means: pos has d_model {p.shape[1]} but neg has {n.shape[1]}")
    d = p.mean(axis=0, dtype=np.float64) - n.mean(axis=0, dtype=np.float64)
    if normalize:
        norm = np.linalg.norm(d)
        if norm == 0:
            raise ValueError("diff_of_means: the class means are identical; cannot normalise a zero direction")
        d = d / norm
    return d.astype(np.float32)


def fit_logreg(
    X: Float[np.ndarray, "batch d_model"],
    y: Shaped[np.ndarray, "batch"],
    C: float = 1.0,
    seed: int = 0,
    standardize: bool = True,
    max_iter: int = 2000,
) -> tuple[Float[np.ndarray, "d_model"], float]:
    """L2 logistic regression (scikit-learn, lbfgs); returns ``(direction, bias)`` in the ORIGINAL space.

    ``X @ direction + bias`` is the classifier's decision function (log-odds of class 1) on raw
    activations. With ``standardize`` the fit runs on z-scored features (so ``C`` means the same thing at
    every layer, whatever the residual-stream scale) and the weights are mapped back:
    ``w_raw = w / sd``, ``b_raw = b - sum(w * mu / sd)``. Constant features get ``sd = 1``.
    ``direction`` is float32 and not normalised; ``bias`` a Python float.
    """
    from sklearn.linear_model import LogisticRegression  # lazy: sklearn is slow to import

    Xa = as_float_array(X, "X", 2).astype(np.float64)
    ya = as_labels(y, "y")
    if ya.shape[0] != Xa.shape[0]:
        raise ValueError(f"fit_logreg: X has {Xa.shape[0]} rows but y has {ya.shape[0]} labels")
    require_both_classes(ya, "fit_logreg")
    if standardize:
        mu = Xa.mean(axis=0)
        sd = Xa.std(axis=0)
        sd[sd == 0] = 1.0
        Z = (Xa - mu) / sd
    else:
        mu, sd, Z = np.zeros(Xa.shape[1]), np.ones(Xa.shape[1]), Xa
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    clf.fit(Z, ya.astype(np.int64))
    if clf.n_iter_[0] >= max_iter:
        log.warning("fit_logreg: lbfgs hit max_iter=%d without converging (raise max_iter or lower C)", max_iter)
    w = clf.coef_[0] / sd
    b = float(clf.intercept_[0] - np.dot(clf.coef_[0], mu / sd))
    return w.astype(np.float32), b


def unit(direction: Float[np.ndarray, "d_model"]) -> Float[np.ndarray, "d_model"]:
    """``direction / ||direction||`` (float64); ValueError for a zero vector."""
    d = as_float_array(direction, "direction", 1).astype(np.float64)
    norm = np.linalg.norm(d)
    if norm == 0:
        raise ValueError("direction has zero length")
    return d / norm


def project(
    X: Float[np.ndarray, "batch d_model"],
    direction: Float[np.ndarray, "d_model"],
) -> Float[np.ndarray, "batch"]:
    """Scalar projection of each row onto ``direction``: ``X @ (direction / ||direction||)`` (float64)."""
    Xa = as_float_array(X, "X", 2)
    u = unit(direction)
    if Xa.shape[1] != u.shape[0]:
        raise ValueError(f"project: X has d_model {Xa.shape[1]} but direction has {u.shape[0]}")
    return Xa.astype(np.float64) @ u


def cosine_similarity(a: Float[np.ndarray, "d_model"], b: Float[np.ndarray, "d_model"]) -> float:
    """Cosine of the angle between two directions (signed)."""
    ua, ub = unit(a), unit(b)
    if ua.shape != ub.shape:
        raise ValueError(f"cosine_similarity: shapes differ: {ua.shape} vs {ub.shape}")
    return float(ua @ ub)


def random_directions(d_model: int, n: int, seed: int = 0) -> Float[np.ndarray, "n d_model"]:
    """``n`` random unit directions (isotropic Gaussian, normalised; float64), reproducible from ``seed``.

    :func:`probes.random_direction_null` draws its directions with this function and the same seed, so a
    null result can be traced back to the exact direction. The random stream is tagged
    (``SeedSequence([seed, tag])``), so it never coincides with ``np.random.default_rng(seed)`` draws the
    caller made elsewhere: with an untagged stream, data planted with seed 0 and a null drawn with seed 0
    share their first Gaussian vector, and "random" direction 0 is the planted direction.
    """
    if d_model < 1 or n < 1:
        raise ValueError(f"random_directions: need d_model >= 1 and n >= 1, got {d_model}, {n}")
    R = np.random.default_rng(np.random.SeedSequence([seed, _RANDOM_DIRECTIONS_TAG])).standard_normal((n, d_model))
    R /= np.linalg.norm(R, axis=1, keepdims=True)
    return R
