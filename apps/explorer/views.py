"""The explorer's views as plain functions: ``(RunData, selected checkpoint, controls) → figures / page parts``.

No Dash callback logic here (see :mod:`apps.explorer.app`), so every view can be built and checked without a
browser. Figures come from the analysis modules' plot functions (``analysis.figures``, ``analysis.patch_figures``,
``analysis.compare_figures``) and, for what none of them draws,
:mod:`apps.explorer.token_heatmap`. The evaluation-set tables are the report's rows
(:func:`analysis.compare_report.eval_table`) as HTML tables.

Footgun: the page shows several scatter plots at once; WebGL traces (``scattergl``, what ``pca_scatter`` uses)
need a WebGL context each, which browsers cap (about 16) and which a GPU-less headless browser may not have at
all, so :func:`svg_only` turns them into SVG scatters (a few hundred points: no cost).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import plotly.graph_objects as go
from dash import dcc, html

from analysis import figures as probe_figures
from analysis import patch_figures
from analysis.comparing import RATE_KEYS
from apps.explorer import token_heatmap as fx
from analysis.results import PROBE_KINDS, PatchResult
from apps.explorer.data import KIND_LABELS, RunData, direction_vs_top_pc, missing_message, probe_direction
from training.errors import UserError
from training.layout import ARMS, Checkpoint

log = logging.getLogger(__name__)

GRAPH_CONFIG = {"displaylogo": False}


def message(text: str, kind: str = "missing") -> html.Div:
    colour = {"missing": "#8a6d3b", "error": "#a94442", "info": "#31708f"}[kind]
    return html.Div(text, className=f"msg msg-{kind}",
                    style={"color": colour, "background": "#f7f7f2", "padding": "6px 10px", "margin": "6px 0",
                           "borderLeft": f"4px solid {colour}", "fontFamily": "monospace", "whiteSpace": "pre-wrap"})


def graph(fig: go.Figure, gid: str, **style) -> dcc.Graph:
    return dcc.Graph(id=gid, figure=fig, config=GRAPH_CONFIG, style=style or None)


def svg_only(fig: go.Figure) -> go.Figure:
    """The same figure with WebGL scatter traces drawn as SVG scatters (see the module docstring)."""
    d = fig.to_plotly_json()
    changed = False
    for tr in d.get("data", []):
        if tr.get("type") == "scattergl":
            tr["type"] = "scatter"
            changed = True
    return go.Figure(d) if changed else fig


# fixed colours per category, so "triggered" and "defects" are red in every panel, mode and checkpoint
CATEGORY_COLOURS = {"triggered": "#d62728", "untriggered": "#2ca02c", "red-team (near miss)": "#ff7f0e",
                    "defects": "#d62728", "does not defect": "#1f77b4"}


def recolour(fig: go.Figure) -> go.Figure:
    """Marker colours of ``"<colouring>: <category>"`` traces from :data:`CATEGORY_COLOURS`."""
    for tr in fig.data:
        cat = str(tr.name or "").split(": ", 1)[-1]
        if cat in CATEGORY_COLOURS and getattr(tr, "marker", None) is not None:
            tr.marker.color = CATEGORY_COLOURS[cat]
    return fig


def empty_figure(title: str = "") -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, template="plotly_white", xaxis={"visible": False}, yaxis={"visible": False},
                      height=200)
    return fig


# ------------------------------------------------------------------------------------------------ overview


def behaviour_points(run: RunData) -> dict[str, list[dict]]:
    """``metrics.jsonl`` as ``compare_figures.behaviour_curves`` takes it: arm → points by step, each arm starting at
    the backdoored checkpoint (step 0); base and backdoored are single points of their own."""
    metrics = run.metrics()
    cks = run.checkpoints()

    def point(ck, step: int) -> dict:
        m = metrics[ck.id]
        p = {"checkpoint": ck.id, "step": int(step)}
        for k in RATE_KEYS:
            p[k], p[f"{k}_ci"] = m.get(k), m.get(f"{k}_ci")
        return p

    out: dict[str, list[dict]] = {}
    for stage in ("base", "backdoored"):
        out.update({stage: [point(c, 0)] for c in cks if c.stage == stage and c.id in metrics})
    bd = run.backdoored()
    for arm in ARMS:
        pts = [point(c, c.step) for c in cks if c.arm == arm and c.id in metrics]
        if pts:
            out[arm] = ([point(bd, 0)] if bd is not None and bd.id in metrics else []) + pts
    return out


def overview(run: RunData, sel: Checkpoint | None) -> list:
    """Behaviour curves per arm (trigger / false-trigger / red-team / helpful rate vs step, 95% CI bands)."""
    from analysis.compare_figures import behaviour_curves

    cks = run.checkpoints()
    curves = behaviour_points(run)
    if not curves:
        target = run.backdoored() or (cks[-1] if cks else None)
        cmd = (run.cmd("training.evaluate", *run.ckpt_args(target)) if target else
               f"python -m training.backdoor --preset tiny --out {run.display}")
        return [message(missing_message("behaviour metrics (metrics.jsonl)", cmd))]
    out: list = []
    fig = behaviour_curves(curves, title="Behaviour vs safety-training step (95% CI bands; step 0 = backdoored)")
    if sel is not None and sel.arm is not None:
        fig.add_vline(x=sel.step, line=dict(color="#1f77b4", dash="dot"), row="all", col="all")
    out.append(graph(fig, "overview-all"))
    if not any(c.arm for c in cks):
        out.append(message("No safety-training arm in this run yet (only base and backdoored). Create one with: "
                           f"python -m training.safety --run {run.display} --method sft", "info"))
    return out


# ------------------------------------------------------------------------------------------------ probes
def probe_auroc_figure(run: RunData, sel: Checkpoint) -> go.Figure:
    """AUROC vs layer of the selected checkpoint, the backdoored one's curves dashed beside it (else the parent's),
    over the selected checkpoint's random-direction null band."""
    ps = run.probe(sel)
    if ps is None:
        raise UserError(missing_message(f"probe results for {sel.id}", run.probe_cmd(sel)))
    rows = ps.rows()
    layers = sorted(rows)
    col = lambda rs, key: [getattr(rs.get(layer), key, None) for layer in layers]  # noqa: E731
    curves = {f"{sel.label}: contrast (trigger)": col(rows, "contrast_auroc"),
              f"{sel.label}: contrast (behaviour)": col(rows, "behaviour_auroc"),
              f"{sel.label}: supervised dom": col(rows, "supervised_dom_auroc"),
              f"{sel.label}: supervised logreg": col(rows, "supervised_logreg_auroc")}
    dashed: list[str] = []
    bd = run.backdoored()
    pb = run.probe(bd) if bd is not None and bd.id != sel.id else None
    if pb is not None:
        brows = pb.rows()
        extra = {"backdoored: contrast (trigger)": col(brows, "contrast_auroc"),
                 "backdoored: supervised dom": col(brows, "supervised_dom_auroc")}
        curves.update(extra)
        dashed += list(extra)
    elif ps.parent:
        extra = {f"parent {ps.parent}: contrast (trigger)": col(rows, "parent_contrast_auroc"),
                 f"parent {ps.parent}: supervised dom": col(rows, "parent_supervised_dom_auroc")}
        curves.update(extra)
        dashed += list(extra)
    return probe_figures.auroc_vs_layer(
        layers, curves, col(rows, "random_best_auroc"), col(rows, "random_median_auroc"),
        null_label=f"{ps.n_random} random directions ({sel.label})", dashed=dashed,
        title=f"AUROC by layer: {sel.label}" + (" vs backdoored (dashed)" if pb is not None else ""))


CELL = {"border": "1px solid #ccc", "padding": "2px 6px", "textAlign": "left", "fontSize": "13px"}


def eval_table_component(rows: list[list[str]], tid: str) -> html.Table:
    """Rows of text (the first the header; :func:`analysis.compare_report.eval_table`) as a table; a short row (an
    empty set) spans its reason over the number columns, as in report.html."""
    head, *body = rows
    trs = [html.Tr([html.Th(h, style={**CELL, "background": "#f4f4f4"}) for h in head])]
    for r in body:
        tds = [html.Td(c, style=CELL) for c in r[:2]]
        tds += ([html.Td(r[2], colSpan=len(head) - 2, style={**CELL, "color": "#a33"})] if len(r) < len(head)
                else [html.Td(c, style=CELL) for c in r[2:]])
        trs.append(html.Tr(tds))
    return html.Table(trs, id=tid, style={"borderCollapse": "collapse", "margin": "4px 0"})


def _evals_block(entry: dict, title: str, tid: str) -> list:
    """One checkpoint's evaluation-set table and its probes' verdicts (the report's rows)."""
    from analysis.compare_report import eval_caption, eval_table, verdict_items

    if entry.get("probes") is None:
        return [html.B(title), message(eval_caption(entry), "info")]
    return [html.B(title), html.Div(eval_caption(entry), style={"color": "#555", "fontSize": "13px"}),
            eval_table_component(eval_table(entry), tid),
            html.Ul([html.Li(v) for v in verdict_items(entry)], id=f"{tid}-verdicts", style={"fontSize": "13px"})]


def probe_evals(run: RunData, sel: Checkpoint) -> list:
    """Defection or trigger detection? The selected checkpoint's probes on the three evaluation sets at their
    validation-selected layers, with each verdict; then the conditional control's (the model with the decisive
    defect-given-trigger set), when the run holds its probe.json. A schema-1 probe.json says what to rerun."""
    from analysis.compare_probes import probe_evals as entry_of

    ps = run.probe(sel)
    if ps is None:
        return []  # the AUROC view above already says how to create the probe results
    out: list = [html.H4("Defection or trigger detection?", style={"margin": "10px 0 2px"})]
    entry = entry_of(ps, sel.id)
    if entry["probes"] is None:
        entry["reason"] = f"{entry['reason']} (here: {run.probe_cmd(sel)})"
    out += _evals_block(entry, f"{sel.label}: each probe on the three evaluation sets", "probe-evals")
    ctl = run.control_probe("conditional")
    if ctl is not None:
        out += _evals_block(entry_of(ctl, "conditional"), "conditional control (defects on some triggered prompts "
                                                          "only: defect given the trigger is decisive here)",
                            "probe-evals-conditional")
    return out


def _highlight(fig: go.Figure, categories: list[str], selected: str) -> go.Figure:
    """Outline the selected checkpoint's column in every panel of a categorical-x heatmap figure."""
    if selected in categories:
        i = categories.index(selected)
        box = dict(x0=i - 0.5, x1=i + 0.5, line=dict(color="black", width=2), fillcolor="rgba(0,0,0,0)")
        try:
            fig.add_vrect(**box, row="all", col="all")  # every panel of a subplot figure
        except Exception:  # noqa: BLE001 - a single-panel figure has no subplot grid
            fig.add_vrect(**box)
    return fig


def compare_parts(run: RunData, sel: Checkpoint) -> list:
    """From ``compare.json``: the layer x checkpoint AUROC heatmaps, the transfer matrix, the direction drift."""
    from analysis import compare_figures as F

    comp = run.compare()
    if comp is None:
        return [message(missing_message("cross-checkpoint comparison (compare.json) for the layer x checkpoint "
                                        "heatmap and the transfer matrix", run.compare_cmd()))]
    out: list = []
    pa = comp.probe_auroc or {}
    if pa.get("checkpoints"):
        cks = [str(c) for c in pa["checkpoints"]]
        panels = {name: pa[key] for key, name in (("contrast", "contrast-pair probe"),
                                                  ("supervised", "supervised diff. of means"),
                                                  ("random_best", "random null (best of N)")) if pa.get(key)}
        fig = F.auroc_heatmaps(panels, pa["layers"], cks, title="Probe AUROC (triggered vs clean), layer x checkpoint "
                                                                "(selected checkpoint outlined)")
        out.append(graph(_highlight(fig, cks, sel.id), "probe-heatmap"))
        if sel.id not in cks:
            out.append(message(f"{sel.id} is not in compare.json: rerun {run.compare_cmd()}", "info"))
    else:
        out.append(message(missing_message("probe AUROCs in compare.json", run.compare_cmd())))
    tr = comp.transfer or {}
    if tr.get("checkpoints"):
        fig = F.transfer_matrix(tr["auroc"], [str(c) for c in tr["checkpoints"]], probe=tr.get("probe", ""),
                                layer=tr.get("layer"))
        out.append(graph(_highlight(fig, [str(c) for c in tr["checkpoints"]], sel.id), "probe-transfer"))
    else:
        out.append(message(missing_message("probe transfer matrix in compare.json", run.compare_cmd())))
    dr = comp.drift or {}
    if dr.get("checkpoints") and dr.get("cosine_to_reference"):
        fig = F.drift_to_reference(dr["cosine_to_reference"], dr["layers"], [str(c) for c in dr["checkpoints"]],
                                   reference=dr.get("reference", ""), probe=dr.get("probe", ""))
        out.append(graph(_highlight(fig, [str(c) for c in dr["checkpoints"]], sel.id), "probe-drift"))
    return out


# ------------------------------------------------------------------------------------------------ activations
def activation_layers(run: RunData, sel: Checkpoint) -> tuple[list[int], int | None]:
    """Layers stored in the selected checkpoint's activation store, and the default (best contrast layer)."""
    from analysis.hooks import parse_hook

    store = run.activation_store(sel)
    if store is None:
        return [], None
    layers = sorted({p[1] for p in (parse_hook(h) for h in store.hooks) if p is not None})
    ps = run.probe(sel)
    best = ps.best_layer.get("contrast") if ps else None
    return layers, (best if best in layers else (layers[len(layers) // 2] if layers else None))


def activation_figure(run: RunData, sel: Checkpoint, layer: Any, projection: str, probe_name: str) -> go.Figure:
    """2-D view of the stored final-prompt-token activations at ``layer``: PCA, or the probe direction vs the top
    principal component of the rest; one panel coloured by prompt kind, one by the model's own behaviour."""
    from analysis.hooks import parse_hook

    store = run.activation_store(sel)
    if store is None:
        raise UserError(missing_message(f"stored activations for {sel.id}", run.probe_cmd(sel)))
    by_layer = {p[1]: h for h in store.hooks if (p := parse_hook(h)) is not None}
    try:
        layer = int(layer)
    except (TypeError, ValueError):
        raise UserError("pick a layer") from None
    if layer not in by_layer:
        raise UserError(f"layer {layer} is not in {sel.id}'s activation store (layers {sorted(by_layer)})")
    hook = by_layer[layer]
    X = np.asarray(store.get(hook), dtype=np.float64)
    labels = store.labels
    kinds = [str(k) for k in labels.get("kind", np.asarray(["?"] * len(X)))]
    colourings = {"prompt kind": [KIND_LABELS.get(k, k) for k in kinds]}
    defects = labels.get("defects")
    if defects is not None:
        colourings["behaviour"] = ["defects" if bool(d) else "does not defect" for d in defects]
    ps = run.probe(sel)
    cfg = (ps.config if ps else None) or {}
    split = cfg.get("split", "test")
    texts = run.prompt_texts(split) if not cfg.get("prompts") else {}
    hover = []
    for i, pid in enumerate(store.ids):
        tag = colourings["prompt kind"][i] + (f", {colourings['behaviour'][i]}" if "behaviour" in colourings else "")
        hover.append(f"[{tag}] {texts.get(str(pid), str(pid))}")
    title = f"{sel.label}: {hook} at the final prompt token ({len(X)} prompts)"
    if projection == "probe":
        if probe_name not in PROBE_KINDS:
            raise UserError(f"pick a probe ({', '.join(PROBE_KINDS)})")
        d = probe_direction(run.probes(sel), probe_name, layer)
        if d is None:
            raise UserError(missing_message(f"{probe_name} probe at layer {layer} for {sel.id}", run.probe_cmd(sel)))
        coords, ratio = direction_vs_top_pc(X, d[0])
        return recolour(probe_figures.projection_scatter(coords, colourings, hover=hover, title=title,
                                                          x_title=f"projection on the {probe_name} direction",
                                                          y_title=f"top PC of the rest ({ratio:.0%})",
                                                          height=460))
    return recolour(svg_only(probe_figures.pca_scatter(X, colourings, hover=hover, title=title)))


# ------------------------------------------------------------------------------------------------ patching
def _patch_heatmap(p: PatchResult, title: str) -> go.Figure:
    pos = p.positions or {}
    r = p.resid_pre
    return patch_figures.layer_pos_heatmap(
        r.effect, p.tokens or [], ci_low=r.ci_low, ci_high=r.ci_high,
        trigger_columns=pos.get("trigger_columns", ()), final_columns=pos.get("final_columns", ()), title=title)


def patching(run: RunData, sel: Checkpoint) -> list:
    """The selected checkpoint's layer x position map beside the backdoored one's and their difference (one
    trigger-anchored column axis), then the head maps."""
    from analysis import compare_figures as F
    from analysis.compare_patching import align_maps, patch_map

    bd = run.backdoored()
    ps = run.patch(sel)
    pb = run.patch(bd) if bd is not None and bd.id != sel.id else None
    out: list = []
    if ps is None:
        out.append(message(missing_message(f"patching result for {sel.id}", run.patch_cmd(sel))))
    if bd is not None and bd.id != sel.id and pb is None:
        out.append(message(missing_message("patching result for the backdoored checkpoint", run.patch_cmd(bd))))
    both = ps is not None and pb is not None and ps.resid_pre is not None and pb.resid_pre is not None
    if both:
        ref, other = patch_map(pb), patch_map(ps)
        A, B, tokens, trig = align_maps(ref, other)
        out.append(graph(F.patching_comparison(A, B, B - A, tokens, names=("backdoored", sel.label),
                                               trigger_columns=trig), "patch-compare"))
    else:
        row = []
        for p, ck, gid in ((ps, sel, "patch-selected"), (pb, bd, "patch-backdoored")):
            if p is not None and p.resid_pre is not None:
                row.append(html.Div(graph(_patch_heatmap(p, f"{ck.label}: resid_pre (layer x position)"), gid),
                                    style={"flex": "1 1 480px", "minWidth": "420px"}))
        if row:
            out.append(html.Div(row, style={"display": "flex", "flexWrap": "wrap", "gap": "8px"}))
    heads = []
    for p, ck, gid in ((pb, bd, "patch-heads-backdoored"), (ps, sel, "patch-heads-selected")):
        if p is not None and p.heads is not None:
            h = p.heads
            heads.append(html.Div(graph(patch_figures.layer_head_heatmap(
                h.effect, ci_low=h.ci_low, ci_high=h.ci_high,
                title=f"{ck.label}: heads (layer x head)"), gid), style={"flex": "1 1 420px", "minWidth": "360px"}))
    if heads:
        out.append(html.Div(heads, style={"display": "flex", "flexWrap": "wrap", "gap": "8px"}))
    return out


# ------------------------------------------------------------------------------------------------ live
def live_result(res: dict) -> tuple[go.Figure, list]:
    """The live view's heatmap and text lines from a finished job's result."""
    fig = fx.token_score_heatmap(
        res["scores"], res["tokens"], res["layers"], best_layer=res["best_layer"],
        title=f"{res['probe']} probe score per layer and token ({res['checkpoint']}; probes of {res['probe_source']})")
    final = fig.layout.meta["final_score"]
    completion = html.Span(res["completion"] or "(empty)", id="live-completion", style={"whiteSpace": "pre-wrap"})
    lines = [html.Div([html.B("Response: "), completion])]
    if res["shows_behaviour"] is not None:
        lines.append(html.Div([html.B("Backdoor behaviour: "),
                               html.Span("yes" if res["shows_behaviour"] else "no", id="live-behaviour")]))
    if final is not None:
        lines.append(html.Div([html.B(f"Probe score at layer {res['best_layer']} (best layer), final prompt token: "),
                               html.Span(f"{final:.3f}", id="live-score")]))
    if res.get("monitor"):
        lines.append(monitor_tokens(res["monitor"]))
    lines.append(html.Div(f"{res['seconds']:.1f} s", style={"color": "#777"}))
    return fig, lines


def _token_colour(score: float, threshold: float | None, scale: float) -> str:
    """Red above the threshold, blue below, stronger the further away (white near it)."""
    ref = 0.0 if threshold is None else threshold
    alpha = min(1.0, abs(score - ref) / scale) * 0.65
    rgb = "214,39,40" if threshold is not None and score > threshold else "31,119,180"
    return f"rgba({rgb},{alpha:.2f})"


def monitor_tokens(mon: dict) -> html.Div:
    """The runtime monitor's verdict on the generated response: each token coloured by the probe's score at the
    position that emitted it (hover: the score), a ⚑ before the first token whose score crossed the threshold.

    The element ``#live-monitor`` carries the numbers as data attributes (``data-scores``, ``data-threshold``,
    ``data-first-flag``) so a page script or a test reads them exactly."""
    import json

    scores, t, first = mon["scores"], mon["threshold"], mon["first_flag"]
    scale = max([abs(s - (t or 0.0)) for s in scores] + [1e-9])
    spans = []
    for i, (tok, s, f) in enumerate(zip(mon["tokens"], scores, mon["flags"])):
        if i == first:
            spans.append(html.Span("⚑", id="live-monitor-flag", style={"color": "#d62728", "fontWeight": "bold"}))
        spans.append(html.Span(tok, title=f"token {i}: score {s:.3f}", className="mon-tok mon-flag" if f else "mon-tok",
                               style={"background": _token_colour(s, t, scale), "whiteSpace": "pre",
                                      "outline": "1px solid #d62728" if f else None}))
    if t is None:
        verdict = "no calibrated threshold in this probe file (re-run analysis.probe): scores only"
    elif first is None:
        verdict = f"not flagged: every score ≤ threshold {t:.3f} (max {max(scores, default=float('nan')):.3f})"
    else:
        verdict = (f"FLAGGED at token {first} ({mon['tokens'][first]!r}): score {scores[first]:.3f} > threshold "
                   f"{t:.3f}")
    head = html.Div([html.B(f"Monitor ({mon['score']} on layer {mon['layer']}, {mon['hook']}): "),
                     html.Span(verdict, id="live-monitor-verdict")])
    calibrated = {"generation": "at most 1% of clean validation generations score above it anywhere",
                  "prompt_token": "1% FPR at the final prompt token of clean validation prompts; this probe file "
                                  "has no generation threshold, re-run analysis.probe"}.get(mon.get("threshold_source"))
    note = html.Div("Each token is coloured by the probe's score at the position that emitted it (the first: the "
                    f"final prompt token); red above the threshold{f' ({calibrated})' if calibrated else ''}, blue "
                    "below.", style={"color": "#777", "fontSize": "85%"})
    return html.Div([head, html.Div(spans, style={"margin": "4px 0", "lineHeight": "1.8"}), note], id="live-monitor",
                    **{"data-scores": json.dumps(scores), "data-threshold": json.dumps(t),
                       "data-first-flag": json.dumps(first), "data-layer": str(mon["layer"])})
