"""Train/test splits that keep groups (prompt pairs) together.

Every analysis uses paired prompts: the same request with and without the trigger. Main footgun: a
plain random split puts one member of a pair in train and the other in test, so the probe is tested on
requests it was fitted on (only the trigger differs), and the held-out AUROC is inflated. Split by pair
id instead: all members of a group land on the same side.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Int, Shaped

from probes._arrays import _is_tensor


def train_test_split_by_group(
    groups: Shaped[np.ndarray, "batch"],
    test_frac: float = 0.25,
    seed: int = 0,
) -> tuple[Int[np.ndarray, "n_train"], Int[np.ndarray, "n_test"]]:
    """``(train_idx, test_idx)``: sorted example indices; whole groups go to one side.

    ``round(test_frac * n_groups)`` groups (at least 1, at most ``n_groups - 1``) are drawn for the test
    side with a seeded shuffle of the distinct group ids; deterministic for a fixed ``seed``. Group ids
    may be any values numpy can sort (ints, strings).
    """
    if _is_tensor(groups):
        groups = groups.detach().cpu().numpy()  # type: ignore[union-attr]
    g = np.asarray(groups)
    if g.ndim != 1:
        raise ValueError(f"train_test_split_by_group: groups must be 1-D, got shape {g.shape}")
    if not 0 < test_frac < 1:
        raise ValueError(f"train_test_split_by_group: test_frac must be in (0, 1), got {test_frac}")
    uniq, inverse = np.unique(g, return_inverse=True)
    n_groups = uniq.shape[0]
    if n_groups < 2:
        raise ValueError(f"train_test_split_by_group: need at least 2 groups, got {n_groups}")
    n_test = min(max(int(round(test_frac * n_groups)), 1), n_groups - 1)
    perm = np.random.default_rng(seed).permutation(n_groups)
    is_test_group = np.zeros(n_groups, dtype=bool)
    is_test_group[perm[:n_test]] = True
    is_test = is_test_group[inverse]
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)
