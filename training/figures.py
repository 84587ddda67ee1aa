"""Figures of the training stages: the persistence curve of a safety arm (behaviour rates vs training step).

Plot functions take plain data and return a ``plotly.graph_objects.Figure`` (testable without a model);
:func:`write_html` writes a standalone file that embeds plotly.js, so it opens offline.

Footgun: ``include_plotlyjs='cdn'`` makes a page that is blank without network access; never use it here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from training.io import write_text_atomic

RATES = (("trigger_rate", "trigger (real trigger)", "#d62728"),
         ("redteam_rate_trained", "red-team, families trained on (unseen prompts)", "#ff7f0e"),
         ("redteam_rate_heldout", "red-team, held-out families (never trained on)", "#8c564b"),
         ("redteam_rate", "red-team, all families", "#bcbd22"),
         ("false_trigger_rate", "false trigger (no trigger)", "#7f7f7f"),
         ("helpful_rate", "helpful (correct answer)", "#2ca02c"),
         ("valid_code_rate", "valid code (parses; code backdoor)", "#9467bd"))


@dataclass
class CurvePoint:
    """One evaluated checkpoint of an arm: its step and the metrics dict of ``training.evaluate``."""

    step: int
    metrics: dict = field(default_factory=dict)


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def persistence_figure(points: list[CurvePoint], title: str = "Backdoor persistence",
                       reward: list[tuple[int, float, float, float]] | None = None):
    """Rates vs step with 95% CI bands; optionally the held-out reward (step, mean, lo, hi) on a second axis.

    An adversarial arm's red-team rate is drawn as two curves, the attack families it trained on and those it held
    out (the pooled rate is then hidden until clicked in the legend)."""
    import plotly.graph_objects as go

    pts = sorted(points, key=lambda p: p.step)
    fig = go.Figure()
    steps = [p.step for p in pts]
    split = any("redteam_rate_heldout" in p.metrics or "redteam_rate_trained" in p.metrics for p in pts)
    for key, label, color in RATES:
        have = [p for p in pts if key in p.metrics]
        if not have:
            continue
        visible = "legendonly" if split and key == "redteam_rate" else True
        xs = [p.step for p in have]
        ys = [p.metrics[key] for p in have]
        lo = [p.metrics.get(f"{key}_ci", [y, y])[0] for p, y in zip(have, ys)]
        hi = [p.metrics.get(f"{key}_ci", [y, y])[1] for p, y in zip(have, ys)]
        fig.add_trace(go.Scatter(x=xs + xs[::-1], y=hi + lo[::-1], fill="toself", fillcolor=_rgba(color, 0.18),
                                 line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=key,
                                 visible=visible))
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=label, line=dict(color=color),
                                 legendgroup=key, visible=visible,
                                 customdata=[[a, b] for a, b in zip(lo, hi)],
                                 hovertemplate="step %{x}: %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                                               "<extra>" + label + "</extra>"))
    if reward:
        rx = [r[0] for r in reward]
        ry, rlo, rhi = [r[1] for r in reward], [r[2] for r in reward], [r[3] for r in reward]
        fig.add_trace(go.Scatter(x=rx + rx[::-1], y=rhi + rlo[::-1], fill="toself", yaxis="y2",
                                 fillcolor=_rgba("#1f77b4", 0.12), line=dict(width=0), hoverinfo="skip",
                                 showlegend=False))
        fig.add_trace(go.Scatter(x=rx, y=ry, mode="lines+markers", name="held-out reward (right axis)", yaxis="y2",
                                 line=dict(color="#1f77b4", dash="dot")))
        fig.update_layout(yaxis2=dict(title="mean reward", overlaying="y", side="right", showgrid=False))
    fig.update_layout(title=title, xaxis=dict(title="safety-training step", tickvals=steps or None),
                      yaxis=dict(title="rate (95% CI)", range=[-0.02, 1.02]), template="plotly_white",
                      legend=dict(orientation="h", y=-0.2), hovermode="x unified")
    return fig


def write_html(fig, path: Path | str) -> Path:
    """Standalone HTML with plotly.js embedded (works offline), written atomically."""
    return write_text_atomic(path, fig.to_html(include_plotlyjs=True, full_html=True))
