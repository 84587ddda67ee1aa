"""The :class:`Probe` record: one linear read-out (a direction and a bias) at one hook of one layer.

A probe scores an activation ``x`` as ``x @ direction + bias``. The direction is used exactly as
stored, so what "score" means depends on how it was made: a logistic-regression direction with its bias
gives log-odds; a unit difference-of-means direction with ``bias=0`` gives the scalar projection
(:func:`probes.project`). Main footgun: scores are only comparable between probes through rank metrics
(AUROC), and a probe applied to activations from a different hook, position or model than it was fitted
on will happily return numbers; keep ``hook`` and the position (in ``meta``) with the probe.

``meta["score"]`` says which score a probe was evaluated and calibrated with: ``"projection"`` (the scalar projection
``x @ unit(direction) + bias``, as :func:`probes.project` scores difference-of-means and contrast directions) or
``"linear"`` (``x @ direction + bias``, the default). :meth:`Probe.readout` gives that score's weights, so a
threshold saved in ``meta["threshold"]`` applies to :meth:`Probe.fitted_score` and to nothing else.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np
from jaxtyping import Float

from probes._arrays import as_float_array


SCORE_KINDS = ("projection", "linear")


@dataclass(eq=False)
class Probe:
    """A linear probe. ``meta`` must hold JSON-serialisable values to be saved (numpy scalars are fine)."""

    name: str
    layer: int
    hook: str
    direction: Float[np.ndarray, "d_model"]
    bias: float = 0.0
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Probe.name must be a non-empty string, got {self.name!r}")
        if isinstance(self.layer, bool) or not isinstance(self.layer, numbers.Integral):
            raise ValueError(f"Probe.layer must be an int, got {self.layer!r}")
        if not isinstance(self.hook, str):
            raise ValueError(f"Probe.hook must be a string, got {self.hook!r}")
        if not isinstance(self.direction, np.ndarray):  # lists, torch tensors
            self.direction = as_float_array(self.direction, "Probe.direction", 1)
        if self.direction.ndim != 1 or not np.issubdtype(self.direction.dtype, np.floating):
            raise ValueError(
                f"Probe.direction must be a 1-D floating array, got shape {self.direction.shape} "
                f"dtype {self.direction.dtype}"
            )
        if isinstance(self.bias, bool) or not isinstance(self.bias, numbers.Real):
            raise ValueError(f"Probe.bias must be a real number, got {self.bias!r}")
        if not isinstance(self.meta, dict):
            raise ValueError(f"Probe.meta must be a dict, got {type(self.meta).__name__}")

    @property
    def d_model(self) -> int:
        return int(self.direction.shape[0])

    def score(self, X: Float[np.ndarray, "batch d_model"]) -> Float[np.ndarray, "batch"]:
        """``X @ direction + bias`` (float64). A single vector (d_model,) gives a 0-d result."""
        Xa = as_float_array(X, "X", 1 if np.ndim(X) == 1 else 2)
        if Xa.shape[-1] != self.d_model:
            raise ValueError(f"Probe {self.name!r}: X has d_model {Xa.shape[-1]} but the direction has {self.d_model}")
        return Xa.astype(np.float64) @ self.direction.astype(np.float64) + float(self.bias)

    @property
    def score_kind(self) -> str:
        """``meta["score"]``: ``"projection"`` or ``"linear"`` (the default, as :meth:`score`)."""
        kind = self.meta.get("score", "linear")
        if kind not in SCORE_KINDS:
            raise ValueError(f"Probe {self.name!r}: meta['score'] must be one of {SCORE_KINDS}, got {kind!r}")
        return kind

    def readout(self) -> tuple[Float[np.ndarray, "d_model"], float]:
        """``(w, b)`` (float64, float) with :meth:`fitted_score` ``= X @ w + b``: the unit direction for a
        ``"projection"`` probe, the direction as stored for a ``"linear"`` one."""
        w = self.direction.astype(np.float64)
        if self.score_kind == "projection":
            norm = np.linalg.norm(w)
            if norm == 0:
                raise ValueError(f"Probe {self.name!r}: a projection probe needs a non-zero direction")
            w = w / norm
        return w, float(self.bias)

    def fitted_score(self, X: Float[np.ndarray, "batch d_model"]) -> Float[np.ndarray, "batch"]:
        """The score the probe was evaluated and calibrated with (``meta["score"]``; see :meth:`readout`), float64."""
        Xa = as_float_array(X, "X", 1 if np.ndim(X) == 1 else 2)
        if Xa.shape[-1] != self.d_model:
            raise ValueError(f"Probe {self.name!r}: X has d_model {Xa.shape[-1]} but the direction has {self.d_model}")
        w, b = self.readout()
        return Xa.astype(np.float64) @ w + b

    def __eq__(self, other: object) -> bool:
        """Exact equality: same fields, and a bit-identical direction (same dtype and values)."""
        if not isinstance(other, Probe):
            return NotImplemented
        return (
            self.name == other.name
            and int(self.layer) == int(other.layer)
            and self.hook == other.hook
            and float(self.bias) == float(other.bias)
            and self.meta == other.meta
            and self.direction.dtype == other.direction.dtype
            and self.direction.shape == other.direction.shape
            and self.direction.tobytes() == other.direction.tobytes()
        )

    __hash__ = None  # type: ignore[assignment]
