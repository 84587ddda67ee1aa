"""Input conversion and validation shared by the probe modules (private).

Everything in ``probes`` computes in numpy. Public functions accept numpy arrays, anything ``np.asarray``
understands, and torch tensors (detected by duck typing, so this package never imports torch): a tensor is
detached, moved to the CPU and, for floating data, converted to float32 first (numpy has no bfloat16).
"""

from __future__ import annotations

import numpy as np


def _is_tensor(x: object) -> bool:
    return hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy")


def as_float_array(x: object, name: str, ndim: int) -> np.ndarray:
    """``x`` as a finite floating numpy array with ``ndim`` dimensions (dtype kept if already floating)."""
    if _is_tensor(x):
        t = x.detach().cpu()  # type: ignore[attr-defined]
        if t.is_floating_point():
            t = t.float()
        x = t.numpy()
    a = np.asarray(x)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
                                 or a.dtype == np.bool_):
        raise ValueError(f"{name}: expected a numeric array, got dtype {a.dtype}")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimension(s), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return a


def as_labels(y: object, name: str = "labels") -> np.ndarray:
    """Binary labels (bool, or numbers equal to 0/1) as a 1-D bool array."""
    if _is_tensor(y):
        y = y.detach().cpu().numpy()  # type: ignore[attr-defined]
    a = np.asarray(y)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if a.dtype == np.bool_:
        return a
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name}: expected 0/1 or bool labels, got dtype {a.dtype}")
    bad = ~((a == 0) | (a == 1))
    if bad.any():
        raise ValueError(f"{name}: labels must be 0/1 (or bool); found {np.unique(a[bad])[:5].tolist()}")
    return a == 1


def as_groups(g: object, n: int, name: str = "groups") -> np.ndarray:
    """Group ids (any hashable-by-numpy values: ints, strings) as a 1-D array of length ``n``."""
    if _is_tensor(g):
        g = g.detach().cpu().numpy()  # type: ignore[attr-defined]
    a = np.asarray(g)
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {a.shape}")
    return a


def require_both_classes(labels: np.ndarray, what: str) -> tuple[int, int]:
    """(n_pos, n_neg); ValueError if either class is missing."""
    n_pos = int(labels.sum())
    n_neg = int(labels.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        only = "positive (1)" if n_neg == 0 else "negative (0)"
        raise ValueError(
            f"{what}: needs both classes, but all {labels.size} labels are {only}; "
            "AUROC is undefined with one class"
        )
    return n_pos, n_neg
