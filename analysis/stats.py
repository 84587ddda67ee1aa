"""Small statistics shared by the analyses: a NaN-aware percentile bootstrap of means over pairs, Pearson
correlation, and numpy arrays as strict JSON (NaN/inf -> None)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def bootstrap_mean_ci(x: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, ci_low, ci_high, n)`` over the last axis (pairs), NaN-aware; percentile bootstrap resampling pairs."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    n = finite.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(x, -1) / np.maximum(n, 1), np.nan)
    P = x.shape[-1]
    if P == 0 or n_boot <= 0:
        return mean, np.full_like(mean, np.nan), np.full_like(mean, np.nan), n
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, P, size=(n_boot, P))
    xs = np.where(finite, x, 0.0)
    flat_x = xs.reshape(-1, P)
    flat_f = finite.reshape(-1, P).astype(np.float64)
    lo = np.empty(flat_x.shape[0])
    hi = np.empty(flat_x.shape[0])
    for r in range(flat_x.shape[0]):  # (n_boot, P) per site: memory stays small for big grids
        s = flat_x[r][idx].sum(-1)
        c = flat_f[r][idx].sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(c > 0, s / np.maximum(c, 1), np.nan)
        means = means[np.isfinite(means)]
        if means.size:
            lo[r], hi[r] = np.quantile(means, alpha / 2), np.quantile(means, 1 - alpha / 2)
        else:
            lo[r] = hi[r] = np.nan
    return mean, lo.reshape(mean.shape), hi.reshape(mean.shape), n


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation over entries finite in both; None when undefined (fewer than 3 or a constant)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 3 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def finite_or_none(v) -> float | None:
    """A number as a float, or None when it is missing or not finite (strict JSON has no NaN)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def json_array(a) -> Any:
    """numpy → nested lists with NaN/inf as None (strict JSON)."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        v = float(a)
        return v if math.isfinite(v) else None
    return [json_array(x) for x in a]


def fmt(v, nd: int = 2) -> str:
    """A number for a table or a sentence; a missing one is an em dash, the same everywhere."""
    return "—" if v is None else f"{v:.{nd}f}"
