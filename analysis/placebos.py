"""Placebo directions for the ablation of a probe direction (:mod:`analysis.ablation`): directions that are as salient
as the probe's but carry none of its meaning, so that "removing the probe direction stops the backdoor and the
placebos do not" says something about the probe, not about removing a salient axis.

- :func:`matched_random_directions`: random unit directions among the activations' top principal axes, each with
  exactly the probe direction's variance along the activations;
- :func:`placebo_probes`: the named placebos in a probe file (the parent's and the decoy's difference of means, the
  control questions' contrast directions) at the probe's layer and hook;
- :func:`drop_percentile`: where the probe's ablation drop falls among the placebos'.

Footgun: a random *isotropic* direction is no placebo for a probe direction: it carries ~1/d_model of the variance,
while a probe direction is by construction a salient axis. And for a probe near the top principal axis every
variance-matched direction is near it too (report each direction's cosine to the probe).
"""

from __future__ import annotations

import numpy as np

from analysis.contrast import CONTROL_SETS

# The named placebos: the probe names (in the file :mod:`analysis.probe` writes) each kind takes, in order.
NAMED_PLACEBOS: dict[str, tuple[str, ...]] = {
    "parent": ("parent_supervised_dom",),
    "decoy": ("decoy_supervised_dom",),
    "control_questions": tuple(f"contrast_{s}" for s in CONTROL_SETS),
}
PLACEBO_KINDS = ("random_matched", *NAMED_PLACEBOS, "random_isotropic")
_MATCHED_TAG = 0x6D617463  # tags matched_random_directions' stream (see probes.random_directions)
_MATCHED_TRIES = 50


def placebo_probes(probes: list, probe) -> dict[str, list]:
    """The named placebo directions for ``probe`` in its probe file: kind (:data:`NAMED_PLACEBOS`) -> probes at the
    probe's layer and hook with a finite, non-zero direction of the same size (the first of each name). A kind the
    file lacks is left out; the probe itself is never its own placebo."""
    out = {}
    for kind, names in NAMED_PLACEBOS.items():
        hits = []
        for nm in names:
            same = [p for p in probes if p.name == nm != probe.name and int(p.layer) == int(probe.layer)
                    and p.hook == probe.hook and p.d_model == probe.d_model
                    and np.all(np.isfinite(p.direction)) and np.any(p.direction)]
            hits += same[:1]
        if hits:
            out[kind] = hits
    return out


def _matched_spans(X: np.ndarray, u: np.ndarray, k_max: int) -> tuple:
    """PCA of ``X`` for :func:`matched_random_directions`: ``(Xc, Vt, lam, v, ka, ka_safe, kb)`` -- centred
    activations, principal axes (rows, variance ``lam`` descending, numerical rank only), the probe's variance
    ``v`` (clamped into the spectrum), the size of the span ``a`` is drawn in, of the span whose every axis has
    variance > ``v`` (the fallback), and of the span ``b`` avoids (so ``var(b) <= v``)."""
    X = np.asarray(X, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64).ravel()
    if X.ndim != 2 or X.shape[1] != u.size or X.shape[0] < 2 or u.size < 2 or k_max < 1:
        raise ValueError(f"matched_random_directions: need X (n >= 2, d >= 2) matching u (d,) and k_max >= 1, got "
                         f"{X.shape}, {u.shape}, {k_max}")
    nu = np.linalg.norm(u)
    if not np.isfinite(nu) or nu == 0 or not np.all(np.isfinite(X)):
        raise ValueError("matched_random_directions: u must be non-zero, u and X finite")
    Xc = X - X.mean(0)
    _, s, Vt = np.linalg.svd(Xc, full_matrices=False)
    lam = s ** 2 / len(X)
    r = int((lam > lam[0] * 1e-12).sum()) if lam[0] > 0 else 0
    if r == 0:
        raise ValueError("matched_random_directions: the activations are constant")
    Vt, lam = Vt[:r], lam[:r]
    d = u.size
    v = float(np.mean((Xc @ (u / nu)) ** 2))
    v = min(max(v, lam[-1] if r == d else 0.0), lam[0])  # a unit vector's variance lies in the spectrum
    hi = int((lam > v).sum())  # axes with more variance than the probe (<= d - 1)
    ka_safe = min(max(hi, 1), k_max)
    ka = max(min(max(hi + 1, 2), k_max, r, d - 1), ka_safe)
    return Xc, Vt, lam, v, ka, ka_safe, max(ka, hi)


def matched_random_directions(X: np.ndarray, u: np.ndarray, n: int, seed: int = 0, k_max: int = 64) -> np.ndarray:
    """``(n, d)`` random unit directions, each with exactly the variance of unit ``u`` along the rows of ``X``
    (``var(X @ w) == var(X @ u)`` up to rounding), drawn among the activations' salient axes (float64; reproducible
    from ``seed``).

    PCA of the centred ``X`` (axes ``V``, variances ``lam`` descending); ``v = var(X @ u)``. ``a`` is a Gaussian
    unit vector in the span of the top ``ka`` axes, ``ka`` the smallest number whose last variance is <= ``v``
    (at least 2, at most ``k_max``); a draw with ``var(a) < v`` is redrawn (``a`` falls back to the axes above ``v``
    after 50 tries). ``b`` is a Gaussian unit vector in the span of the axes after the top ``kb = max(ka, #axes
    above v)`` (off the activations' span when there are none), so ``var(b) <= v <= var(a)`` and ``cov(a, b) = 0``
    up to rounding. ``w = cos t a + sin t b`` has variance ``m + R cos(2t - phi)`` (``m = (A+B)/2``,
    ``R cos phi = (A-B)/2``, ``R sin phi = C``: the 2x2 form of ``A = var a``, ``B = var b``, ``C = cov(a, b)``,
    measured on ``X``), so ``2t = phi + arccos((v - m) / R)``, which exists because ``B <= v <= A``.

    Each ``w`` lies in span(top ``ka`` axes) + span(axes after ``kb``), with no component on axes ``ka+1..kb``:
    inside the activations' span unless ``u`` has less variance than all of it. Footgun: for a ``u`` near the top
    axis, every ``w`` is near it as well (only such directions have that much variance); and a ``u`` with no
    variance at all is matched to rounding error only (a relative match is then meaningless).
    """
    if n < 0:
        raise ValueError(f"matched_random_directions: n must be >= 0, got {n}")
    Xc, Vt, lam, v, ka, ka_safe, kb = _matched_spans(X, u, k_max)
    d = Xc.shape[1]
    rng = np.random.default_rng(np.random.SeedSequence([seed, _MATCHED_TAG]))
    G = rng.standard_normal((n, ka))
    for _ in range(_MATCHED_TRIES):  # var(a) from the spectrum: sum g_i^2 lam_i / sum g_i^2
        bad = (G ** 2 @ lam[:ka]) < v * (G ** 2).sum(1)
        if not bad.any():
            break
        G[bad] = rng.standard_normal((int(bad.sum()), ka))
    G[bad, ka_safe:] = 0.0  # still short: only the axes above v (all of them, or the top one, have var >= v)
    a = G @ Vt[:ka]
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    if kb < len(lam):  # b among the remaining axes the activations vary along
        b = rng.standard_normal((n, len(lam) - kb)) @ Vt[kb:]
    else:  # every axis has more variance than u (u is mostly off the activations' span): b off it too
        b = rng.standard_normal((n, d))
        for _ in range(2):  # twice: orthogonal to the axes to rounding
            b -= (b @ Vt.T) @ Vt
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    pa, pb = Xc @ a.T, Xc @ b.T  # (N, n)
    A, B, C = (pa ** 2).mean(0), (pb ** 2).mean(0), (pa * pb).mean(0)
    m, h = (A + B) / 2, (A - B) / 2
    R = np.hypot(h, C)
    cos2 = np.clip(np.divide(v - m, R, out=np.ones_like(R), where=R > 0), -1.0, 1.0)
    t = (np.arctan2(C, h) + np.arccos(cos2)) / 2
    w = np.cos(t)[:, None] * a + np.sin(t)[:, None] * b
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def drop_percentile(probe_drop: float | None, drops) -> float | None:
    """The fraction of placebo ablation drops at least the probe's (ties count half): ~0 when the probe's drop in
    trigger rate exceeds every placebo's, ~0.5 when it is typical of them; None without a drop or placebos."""
    dr = np.asarray([x for x in drops if x is not None], dtype=np.float64)
    if probe_drop is None or not dr.size:
        return None
    tie = np.abs(dr - probe_drop) <= 1e-12
    return float(((dr > probe_drop) & ~tie).sum() + 0.5 * tie.sum()) / dr.size
