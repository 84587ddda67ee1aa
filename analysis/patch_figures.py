"""Figures of a patching result: plain data in, ``plotly.graph_objects.Figure`` out, and one offline HTML page.

Every plot function takes numpy arrays / lists (the grids of ``patch.json``) and returns a figure, so it is testable
without a model. :func:`write_patch_html` renders ``patch.json`` into ``patch.html`` with plotly.js embedded once
(``include_plotlyjs=True``; never a CDN: the page must work offline).

Footgun: plotly renders axis tick text as a subset of HTML, so token strings such as ``<|end|>`` must be escaped
(and whitespace tokens made visible) before they become tick labels -- :func:`token_label` does both.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from training.io import write_text_atomic

COLORSCALE = "RdBu_r"  # blue < 0 < red, white at 0 (zmid=0)


def token_label(tok: str | None) -> str:
    """A token as a tick label: HTML-escaped, spaces as ``␣``, newlines as ``↵``, empty as ``∅``."""
    if tok is None:
        return ""
    if tok == "":
        return "∅"
    t = tok.replace("\n", "↵").replace("\t", "⇥")
    if t.strip() == "":
        t = t.replace(" ", "␣")
    elif t.startswith(" "):
        t = "␣" + t[1:]
    return html.escape(t, quote=False)


def _arr(x) -> np.ndarray:
    """Nested lists (None = missing) or arrays as float64 with NaN."""
    return np.array(x, dtype=np.float64)  # numpy maps None to NaN for a float dtype


def _ci_text(effect: np.ndarray, lo: np.ndarray | None, hi: np.ndarray | None) -> np.ndarray:
    lo = np.full_like(effect, np.nan) if lo is None else lo
    hi = np.full_like(effect, np.nan) if hi is None else hi

    def f(e, a, b):
        if not np.isfinite(e):
            return "n/a"
        ci = f" [{a:.2f}, {b:.2f}]" if np.isfinite(a) and np.isfinite(b) else ""
        return f"{e:.3f}{ci}"

    return np.vectorize(f, otypes=[object])(effect, lo, hi)


def layer_pos_heatmap(effect, tokens: Sequence[str | None], *, ci_low=None, ci_high=None,
                      trigger_columns: Sequence[int] = (), final_columns: Sequence[int] = (),
                      title: str = "resid_pre: effect of patching one (layer, position)") -> go.Figure:
    """Layer x position heatmap of normalised effects (``effect``: ``(n_layers, n_cols)``), tokens on the x axis.

    Trigger columns get a ``▲`` prefix, the final prompt token a ``▶``.
    """
    e = _arr(effect)
    lo, hi = (None if ci_low is None else _arr(ci_low)), (None if ci_high is None else _arr(ci_high))
    L, P = e.shape
    ticks = []
    for c in range(P):
        mark = "▲" if c in set(trigger_columns) else ("▶" if c in set(final_columns) else "")
        ticks.append(f"{mark}{token_label(tokens[c] if c < len(tokens) else None)}")
    hover = _ci_text(e, lo, hi)
    fig = go.Figure(go.Heatmap(
        z=e, x=list(range(P)), y=list(range(L)), colorscale=COLORSCALE, zmid=0, zmin=min(-1.0, np.nanmin(e, initial=0)),
        zmax=max(1.0, np.nanmax(e, initial=0)), customdata=np.stack([hover, np.array([ticks] * L, dtype=object)], -1),
        hovertemplate="layer %{y}, pos %{x} (%{customdata[1]})<br>effect %{customdata[0]}<extra></extra>",
        colorbar={"title": "effect"}))
    fig.update_layout(title=title, xaxis={"title": "position (trigger-anchored column)", "tickmode": "array",
                                          "tickvals": list(range(P)), "ticktext": ticks, "tickangle": -60},
                      yaxis={"title": "layer (resid_pre)", "dtick": 1}, height=260 + 28 * L, margin={"b": 120})
    return fig


def layer_head_heatmap(effect, *, ci_low=None, ci_high=None,
                       title: str = "heads (hook_z, all positions): effect of patching one head") -> go.Figure:
    """Layer x head heatmap of normalised effects (``effect``: ``(n_layers, n_heads)``)."""
    e = _arr(effect)
    lo, hi = (None if ci_low is None else _arr(ci_low)), (None if ci_high is None else _arr(ci_high))
    L, Hn = e.shape
    fig = go.Figure(go.Heatmap(
        z=e, x=list(range(Hn)), y=list(range(L)), colorscale=COLORSCALE, zmid=0,
        zmin=min(-1.0, np.nanmin(e, initial=0)), zmax=max(1.0, np.nanmax(e, initial=0)),
        customdata=_ci_text(e, lo, hi), hovertemplate="L%{y}H%{x}<br>effect %{customdata}<extra></extra>",
        colorbar={"title": "effect"}))
    fig.update_layout(title=title, xaxis={"title": "head", "dtick": 1}, yaxis={"title": "layer", "dtick": 1},
                      height=240 + 28 * L)
    return fig


def component_bars(components: dict[str, dict], title: str = "per-layer components (all positions)") -> go.Figure:
    """Grouped bars per layer, one series per component: ``{"attn_out": {"effect": [...], "ci_low": [...],
    "ci_high": [...]}, "mlp_out": {...}, ...}`` (CIs optional)."""
    fig = go.Figure()
    for name, d in components.items():
        e = _arr(d["effect"])
        err = None
        if d.get("ci_low") is not None and d.get("ci_high") is not None:
            lo, hi = _arr(d["ci_low"]), _arr(d["ci_high"])
            err = {"type": "data", "symmetric": False, "array": np.nan_to_num(hi - e),
                   "arrayminus": np.nan_to_num(e - lo)}
        fig.add_trace(go.Bar(name=name, x=list(range(len(e))), y=e, error_y=err))
    fig.update_layout(title=title, barmode="group", xaxis={"title": "layer", "dtick": 1},
                      yaxis={"title": "effect (0 = untriggered, 1 = triggered)"}, height=380)
    return fig


def layer_profile(series: dict[str, Sequence[float | None]], threshold: float | None = 0.8,
                  title: str = "where the trigger's information is, by layer") -> go.Figure:
    """Lines of effect vs layer (e.g. the whole trigger span vs the final token), with the restore threshold."""
    fig = go.Figure()
    n = 0
    for name, ys in series.items():
        y = _arr(list(ys))
        n = max(n, len(y))
        fig.add_trace(go.Scatter(name=name, x=list(range(len(y))), y=y, mode="lines+markers"))
    if threshold is not None and n:
        fig.add_hline(y=threshold, line_dash="dot", annotation_text=f"{threshold}")
    fig.update_layout(title=title, xaxis={"title": "layer (resid_pre)", "dtick": 1}, yaxis={"title": "effect"},
                      height=360)
    return fig


def attribution_scatter(exact: dict[str, np.ndarray], attribution: dict[str, np.ndarray],
                        pearson: dict[str, float | None] | None = None,
                        title: str = "attribution patching vs exact patching (per site, mean over pairs)") -> go.Figure:
    """Scatter of attribution vs exact site effects, one series per grid, with the y = x line."""
    fig = go.Figure()
    lo, hi = 0.0, 1.0
    for g in exact:
        if g not in attribution:
            continue
        x, y = _arr(exact[g]).ravel(), _arr(attribution[g]).ravel()
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.any():
            lo, hi = min(lo, x[ok].min(), y[ok].min()), max(hi, x[ok].max(), y[ok].max())
        r = (pearson or {}).get(g)
        fig.add_trace(go.Scatter(name=f"{g} (r = {r:.2f})" if r is not None else g, x=x[ok], y=y[ok], mode="markers"))
    fig.add_trace(go.Scatter(name="y = x", x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot", "color": "gray"}))
    fig.update_layout(title=title, xaxis={"title": "exact effect"}, yaxis={"title": "attribution estimate"},
                      height=420)
    return fig


def patch_figures(data: dict) -> list[tuple[str, go.Figure]]:
    """The figures of a ``patch.json`` dict, titled, in page order."""
    figs: list[tuple[str, go.Figure]] = []
    s = data.get("summary", {})
    pos = data.get("positions", {})
    prof = {}
    if "trigger_span_by_layer" in s:
        prof["whole trigger span"] = s["trigger_span_by_layer"]
    if "final_position_by_layer" in s:
        prof["final prompt token"] = s["final_position_by_layer"]
    if prof:
        thr = s.get("threshold", 0.8)
        if s.get("importance") == "1 - effect":  # noising: a site matters when the effect DROPS below 1 - thr
            thr = 1.0 - thr
        figs.append(("Layer profile", layer_profile(prof, thr)))
    if "resid_pre" in data:
        r = data["resid_pre"]
        figs.append(("Residual stream (exact)", layer_pos_heatmap(
            r["effect"], data["tokens"], ci_low=r.get("ci_low"), ci_high=r.get("ci_high"),
            trigger_columns=pos.get("trigger_columns", ()), final_columns=pos.get("final_columns", ()))))
    if "heads" in data:
        h = data["heads"]
        figs.append(("Heads (exact)", layer_head_heatmap(h["effect"], ci_low=h.get("ci_low"),
                                                         ci_high=h.get("ci_high"))))
    comps = {g: data[g] for g in ("attn_out", "mlp_out", "trigger_span") if g in data}
    if comps:
        figs.append(("Components (exact)", component_bars(comps)))
    att = data.get("attribution") or {}
    if "resid_pre" in att:
        figs.append(("Residual stream (attribution)", layer_pos_heatmap(
            att["resid_pre"]["effect"], data["tokens"], trigger_columns=pos.get("trigger_columns", ()),
            final_columns=pos.get("final_columns", ()), title="resid_pre: attribution-patching estimate")))
    if "heads" in att:
        figs.append(("Heads (attribution)", layer_head_heatmap(att["heads"]["effect"],
                                                               title="heads: attribution-patching estimate")))
    ex = {g: data[g]["effect"] for g in att if g in data}
    if ex:
        figs.append(("Attribution vs exact", attribution_scatter(
            ex, {g: att[g]["effect"] for g in ex}, data.get("attribution_vs_exact_pearson"))))
    return figs


def _summary_html(data: dict) -> str:
    s = data.get("summary", {})
    m = data.get("metric", {})
    rows = [("checkpoint", data.get("checkpoint", "")), ("pairs", f"{data.get('n_pairs')} "
                                                                   f"({data.get('n_pairs_dropped', 0)} dropped)"),
            ("direction", m.get("direction", "")), ("behaviour token", repr(m.get("behaviour_token", {}).get("text"))),
            ("filler", ", ".join(repr(f) for f in data.get("fillers", []))),
            ("metric (mean logit diff)", f"triggered {m.get('m_triggered_mean', float('nan')):.2f}, untriggered "
                                         f"{m.get('m_untriggered_mean', float('nan')):.2f}, original clean "
                                         f"{m.get('m_original_clean_mean', float('nan')):.2f}")]
    if "trigger_span_layers_restoring" in s:
        what = "removes" if s.get("importance") == "1 - effect" else "restores"
        rows.append((f"patching the trigger span {what} ≥ {s.get('threshold')}",
                     f"layers {s['trigger_span_layers_restoring'] or 'none'}"))
    if "attribution_vs_exact_pearson" in data:
        rows.append(("attribution vs exact (Pearson)", ", ".join(
            f"{g}: {'n/a' if v is None else f'{v:.2f}'}" for g, v in data["attribution_vs_exact_pearson"].items())))
    sec = data.get("seconds", {})
    if "exact" in sec and "attribution" in sec:
        rows.append(("seconds", f"exact {sec['exact']:.2f}, attribution {sec['attribution']:.2f}"))
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table class='summary'>{body}</table>"


def write_patch_html(data: dict, path: str | Path) -> Path:
    """``patch.html``: summary table and every figure; plotly.js embedded once (offline)."""
    path = Path(path)
    parts = []
    for i, (name, fig) in enumerate(patch_figures(data)):
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    title = f"Activation patching — {html.escape(str(data.get('checkpoint', '')))}"
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
            "<style>body{font-family:sans-serif;margin:1.5em;max-width:1200px}"
            "table.summary th{text-align:left;padding-right:1em}</style></head><body>"
            f"<h1>{title}</h1><p>Effect 0 = untriggered run, 1 = triggered run (normalised logit difference "
            "between the behaviour's first token and the normal answer's first token at the final prompt token).</p>"
            f"{_summary_html(data)}{''.join(parts)}</body></html>")
    return write_text_atomic(path, page)
