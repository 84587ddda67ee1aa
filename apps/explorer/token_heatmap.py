"""Figures the explorer needs that no analysis module provides: plain data in, ``plotly.graph_objects.Figure`` out.

The explorer reuses the analysis figures wherever they exist (``analysis.figures.auroc_vs_layer`` / ``pca_scatter``,
``analysis.patch_figures.layer_pos_heatmap`` / ``layer_head_heatmap``, ``analysis.compare_figures.behaviour_curves`` /
``auroc_heatmaps`` / ``transfer_matrix`` / ``drift_to_reference`` / ``patching_comparison``); only what they do not
cover lives here:

- :func:`token_score_heatmap`: the live view's per-layer probe score at every prompt token.

Footgun: token strings become axis tick text, which plotly renders as HTML: always pass them through
``analysis.patch_figures.token_label``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float

from analysis.patch_figures import token_label


def token_score_heatmap(scores: Float[np.ndarray, "n_layers n_tokens"], tokens: Sequence[str],
                        layers: Sequence[int], *, best_layer: int | None = None,
                        title: str = "Probe score per layer and token") -> go.Figure:
    """Layer x token heatmap of probe scores (projection / log-odds); the best layer's row is marked ``★``.

    ``layout.meta`` carries ``{"layers", "best_layer", "final_score"}`` (the score at the best layer and the final
    prompt token, the position the probe was fitted at) so a page script or a test can read the number exactly.
    """
    z = np.asarray(scores, dtype=np.float64)
    L, T = z.shape
    ticks = [token_label(t) for t in tokens]
    ylab = [f"★ {layer}" if layer == best_layer else str(layer) for layer in layers]
    lim = float(np.nanmax(np.abs(z))) if z.size else 1.0
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(T)), y=list(range(L)), colorscale="RdBu_r", zmid=0, zmin=-lim, zmax=lim,
        customdata=np.array([ticks] * L, dtype=object),
        hovertemplate="layer %{y}, token %{x} (%{customdata})<br>score %{z:.3f}<extra></extra>",
        colorbar={"title": "score"}))
    final = None
    if best_layer is not None and best_layer in list(layers) and T:
        final = float(z[list(layers).index(best_layer), -1])
    fig.update_layout(title=title, xaxis={"title": "prompt token (the last one is where the probe reads)",
                                          "tickmode": "array", "tickvals": list(range(T)), "ticktext": ticks,
                                          "tickangle": -60},
                      yaxis={"title": "layer", "tickmode": "array", "tickvals": list(range(L)), "ticktext": ylab},
                      height=240 + 30 * L, margin={"b": 120}, template="plotly_white",
                      meta={"layers": [int(x) for x in layers], "best_layer": best_layer, "final_score": final})
    return fig
