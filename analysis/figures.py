"""Plot functions for probe results: plain data (numpy arrays, lists, dicts) in, ``plotly.graph_objects.Figure`` out.

Nothing here touches a model, so every figure is testable without one. :func:`write_html` writes one standalone
page with plotly.js EMBEDDED (``include_plotlyjs=True``, once per page): it must open offline, on machines with no
internet access, so never ``'cdn'``.

Footgun: an AUROC curve alone over-sells a probe. :func:`auroc_vs_layer` therefore always draws the random-direction
null band (median to best of N) and the chance line, and takes the parent-model curves as first-class series;
callers should pass them whenever they exist.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float
from plotly.subplots import make_subplots

from training.io import write_text_atomic

# one colour per series name prefix, so the same probe has the same colour in every figure
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
NULL_FILL = "rgba(128,128,128,0.25)"


def _clean(values: Sequence[float | None]) -> list[float | None]:
    """None/NaN → None (a gap in the line), everything else a Python float."""
    out = []
    for v in values:
        out.append(None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v))
    return out


def auroc_vs_layer(layers: Sequence[int], curves: Mapping[str, Sequence[float | None]],
                   null_best: Sequence[float] | None = None, null_median: Sequence[float] | None = None,
                   *, null_label: str = "random directions", dashed: Sequence[str] = (),
                   title: str = "AUROC by layer") -> go.Figure:
    """AUROC per layer for each named probe, over the random-direction null band and the 0.5 chance line.

    Args:
        layers: layer indices (x axis).
        curves: series name → AUROC per layer (None/NaN leaves a gap, e.g. no parent model).
        null_best / null_median: best and median (un-signed) AUROC of N random directions per layer; the band
            between them is shaded, the best drawn as a line: the bar a probe has to clear.
        dashed: names of series drawn dashed (e.g. the parent-model nulls).
    """
    x = [int(layer) for layer in layers]
    fig = go.Figure()
    if null_best is not None:
        lo = list(null_median) if null_median is not None else [0.5] * len(x)
        fig.add_trace(go.Scatter(x=x, y=_clean(lo), mode="lines", line=dict(width=0), hoverinfo="skip",
                                 showlegend=False))
        fig.add_trace(go.Scatter(x=x, y=_clean(null_best), mode="lines", fill="tonexty", fillcolor=NULL_FILL,
                                 line=dict(color="grey", width=1), name=f"{null_label}: median–best"))
    for i, (name, ys) in enumerate(curves.items()):
        if len(ys) != len(x):
            raise ValueError(f"curve {name!r} has {len(ys)} values for {len(x)} layers")
        fig.add_trace(go.Scatter(
            x=x, y=_clean(ys), mode="lines+markers", name=name,
            line=dict(color=PALETTE[i % len(PALETTE)], dash="dash" if name in dashed else "solid")))
    fig.add_hline(y=0.5, line=dict(color="black", width=1, dash="dot"), annotation_text="chance",
                  annotation_position="bottom right")
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title="AUROC (raw, signed)",
                      yaxis=dict(range=[-0.02, 1.02]), xaxis=dict(tickmode="array", tickvals=x),
                      template="plotly_white", legend=dict(orientation="h", y=-0.2))
    return fig


def score_distributions(scores: Mapping[str, Float[np.ndarray, "n"]], *, title: str = "Probe scores",
                        xaxis_title: str = "score (projection)", nbins: int = 40) -> go.Figure:
    """Overlaid, normalised histograms of probe scores per group (e.g. clean / triggered / red-team)."""
    fig = go.Figure()
    finite = [np.asarray(v, dtype=np.float64) for v in scores.values() if len(v)]
    lo = min((float(v.min()) for v in finite), default=0.0)
    hi = max((float(v.max()) for v in finite), default=1.0)
    size = (hi - lo) / max(1, nbins) or 1.0
    for i, (name, v) in enumerate(scores.items()):
        v = np.asarray(v, dtype=np.float64)
        if v.size == 0:
            continue
        fig.add_trace(go.Histogram(x=v, name=f"{name} (n={v.size})", opacity=0.55, histnorm="probability",
                                   xbins=dict(start=lo, end=hi + size, size=size),
                                   marker_color=PALETTE[i % len(PALETTE)]))
    fig.update_layout(barmode="overlay", title=title, xaxis_title=xaxis_title, yaxis_title="fraction of group",
                      template="plotly_white", legend=dict(orientation="h", y=-0.2))
    return fig


def pca_2d(X: Float[np.ndarray, "n d_model"]) -> tuple[Float[np.ndarray, "n 2"], Float[np.ndarray, "2"]]:
    """Project centred ``X`` on its top two principal components; returns ``(coords, explained_variance_ratio)``."""
    A = np.asarray(X, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] < 2:
        raise ValueError(f"pca_2d: need a (n >= 2, d) array, got shape {A.shape}")
    A = A - A.mean(axis=0)
    _, s, vt = np.linalg.svd(A, full_matrices=False)
    k = min(2, vt.shape[0])
    coords = A @ vt[:k].T
    if k < 2:
        coords = np.hstack([coords, np.zeros((A.shape[0], 2 - k))])
    var = s ** 2
    ratio = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    return coords, np.pad(ratio, (0, 2 - ratio.size))


def projection_scatter(coords: Float[np.ndarray, "n 2"], colourings: Mapping[str, Sequence], *,
                       hover: Sequence[str] | None = None, x_title: str = "x", y_title: str = "y",
                       title: str = "Activations", height: int | None = None) -> go.Figure:
    """Points at ``coords`` (one row per prompt), one panel per colouring (panel title → one label per row)."""
    coords = np.asarray(coords, dtype=np.float64)
    names = list(colourings)
    fig = make_subplots(rows=1, cols=max(1, len(names)), subplot_titles=[f"coloured by {n}" for n in names])
    colour = 0  # one colour per (panel, category): the same colour never means two things on one page
    for c, name in enumerate(names, start=1):
        labels = np.asarray([str(v) for v in colourings[name]])
        if labels.shape[0] != coords.shape[0]:
            raise ValueError(f"colouring {name!r} has {labels.shape[0]} labels for {coords.shape[0]} rows")
        for cat in sorted(set(labels.tolist())):
            m = labels == cat
            fig.add_trace(go.Scattergl(
                x=coords[m, 0], y=coords[m, 1], mode="markers", name=f"{name}: {cat}", legendgroup=name,
                marker=dict(size=5, opacity=0.7, color=PALETTE[colour % len(PALETTE)]),
                text=None if hover is None else [hover[j] for j in np.flatnonzero(m)],
                hoverinfo="text" if hover is not None else "x+y"), row=1, col=c)
            colour += 1
        fig.update_xaxes(title_text=x_title, row=1, col=c)
        fig.update_yaxes(title_text=y_title, row=1, col=c)
    fig.update_layout(title=title, template="plotly_white", legend=dict(orientation="h", y=-0.25), height=height)
    return fig


def pca_scatter(X: Float[np.ndarray, "n d_model"], colourings: Mapping[str, Sequence], *,
                hover: Sequence[str] | None = None, title: str = "PCA of activations") -> go.Figure:
    """Activations on their top two principal components, one panel per colouring (e.g. trigger, behaviour).

    ``colourings``: panel title → one categorical label per row of ``X`` (strings or bools).
    """
    coords, ratio = pca_2d(X)
    return projection_scatter(coords, colourings, hover=hover, x_title=f"PC1 ({ratio[0]:.0%})",
                              y_title=f"PC2 ({ratio[1]:.0%})", title=title)


def write_html(path: str | os.PathLike, figures: Sequence[go.Figure], *, title: str,
               intro_lines: Sequence[str] = (), table: Sequence[Sequence[str]] | None = None) -> Path:
    """One standalone, OFFLINE page: a title, intro lines, an optional table, then the figures.

    plotly.js is embedded once (``include_plotlyjs=True`` on the first figure), never loaded from a CDN. The
    file is written to a temporary sibling and renamed. ``table``: rows of cell strings, the first row the header.
    """
    path = Path(path)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;"
             "text-align:right}th{background:#f4f4f4}li{margin:2px 0}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if intro_lines:
        parts.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in intro_lines) + "</ul>")
    if table:
        head, *rows = table
        parts.append("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>"
                     + "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                               for r in rows) + "</table>")
    for i, fig in enumerate(figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False}))
    parts.append("</body></html>")
    return write_text_atomic(path, "\n".join(parts))
