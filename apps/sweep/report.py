"""The sweep's table, findings and figure, rebuilt from every cell and organism file present in the results directory.

The table has one row per (size, variant, arm, learning-rate scale, optimizer): each seed's trigger rate after the
arm with its Wilson 95% interval, the seeds' mean and range, the red-team rate on attack families the arm never
trained on, and the re-emergence check of the seeds whose backdoor the arm removed. A cost table gives the measured
seconds per organism and per cell and projects the full tiny grid from them. The figure plots the trigger rate after
each arm against parameters (log axis), one line per variant, every seed drawn and the seeds' range as error bars.

Footgun: a variant whose organism is the same computation as normal's (``same_computation_as``) is the normal
organism's measurement, not an independent draw; the table says so, and its line lies on normal's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apps.sweep.config import (CELLS_DIR, FIGURE_HTML, FIGURE_PNG, FINDINGS_MD, HF_SIZES, ORGANISMS_DIR, RUNS_DIR,
                               SIZES, SWEEP_JSON, TABLE_MD)
from apps.sweep.findings import findings

log = logging.getLogger(__name__)
VARIANT_COLORS = {"normal": "#1f77b4", "cot": "#d62728", "distilled_cot": "#2ca02c"}
FULL_TINY_GRID = {"variants": ("normal", "cot", "distilled_cot"), "seeds": 3, "arms": ("sft", "rl", "adversarial")}
# The sweep at the presets' lengths (training.presets: the tiny base, insertion normal / cot, the SFT arm's 300 steps of
# 32 rows for every arm, the reward model), for the projection of the full grid.
GPU_JSON = "gpu.json"  # benchmarks/gpu_bench.py's results
PRESET_LENGTHS = {"base_steps": 2400, "insert_steps": 500, "insert_steps_cot": 800, "arm_steps": 300, "arm_batch": 32,
                  "reward_steps": 200, "reemerge_steps": 300}


def load(results: Path, sub: str) -> list[dict]:
    d = Path(results) / sub
    return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))] if d.exists() else []


def _fmt_rate(r: dict | None) -> str:
    if not r:
        return "–"
    lo, hi = r["ci"]
    return f"{r['rate']:.2f} [{lo:.2f}, {hi:.2f}]"


def _spread(values: list[float]) -> str:
    if not values:
        return "–"
    v = np.asarray(values)
    return f"{v.mean():.2f} ({v.min():.2f}–{v.max():.2f})" if len(v) > 1 else f"{v[0]:.2f}"


def _params(n: int) -> str:
    return f"{n / 1e6:.1f}M"


def _group_key(c: dict) -> tuple:
    return (SIZES.index(c["size"]) if c["size"] in SIZES else len(SIZES), c["size"], c["variant"], c["arm"],
            c["lr_scale"], c["optimizer"])


def _row(cells: list[dict]) -> str:
    c0 = cells[0]
    cells = sorted(cells, key=lambda c: c["seed"])
    ok = [c for c in cells if c.get("status") == "complete"]
    errors = [c for c in cells if c.get("status") == "error"]
    absent = [c for c in cells if c.get("status") == "not_installed"]
    before = [c["before"]["trigger_rate"]["rate"] for c in ok]
    after = [c["after"]["trigger_rate"]["rate"] for c in ok]
    per_seed = "; ".join([f"s{c['seed']} {_fmt_rate(c['after']['trigger_rate'])}" for c in ok] +
                         [f"s{c['seed']} not run: {c.get('error', '?')[:70]}" for c in errors] +
                         [f"s{c['seed']} no backdoor to remove (trigger {_fmt_rate(c['inserted'])} after "
                          f"insertion)" for c in absent])
    held = [c["heldout_redteam_after"] for c in ok if c.get("heldout_redteam_after")]
    held_s = (f"{_spread([h['rate'] for h in held])} (families: {held[0]['families']})" if held
              else "n/a (families not split)")
    re = [c for c in ok if c.get("reemergence")]
    re_s = (f"{len(re)} of {len(ok)} removed; after benign: " +
            "; ".join(f"s{c['seed']} {_fmt_rate(c['reemergence']['after']['trigger_rate'])}" for c in re)
            if re else f"0 of {len(ok)} removed")
    helpful = [c["after"]["helpful_rate"]["rate"] for c in ok if "helpful_rate" in c["after"]]
    same = {c.get("same_computation_as") for c in cells} - {None}
    variant = c0["variant"] + (" (= normal's build)" if same else "")
    return (f"| {c0['size']} ({_params(c0['params'])}) | {variant} | {c0['arm']} | ×{c0['lr_scale']:g}, "
            f"{c0['optimizer']} | {len(ok)} | {_spread(before)} | {per_seed} | {_spread(after)} | {held_s} | {re_s} "
            f"| {_spread(helpful)} |")


def results_table(cells: list[dict]) -> str:
    head = ("| size (params) | variant | arm | lr, optimizer | seeds | trigger before | trigger after, per seed "
            "[Wilson 95%] | after: mean (min–max) | red-team after, held-out families | re-emergence | "
            "helpful after |\n|---|---|---|---|---|---|---|---|---|---|---|")
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault(_group_key(c), []).append(c)
    return "\n".join([head] + [_row(groups[k]) for k in sorted(groups)])


# ------------------------------------------------------------------------------------------------ cost
@dataclass
class SizeCost:
    """Mean CPU seconds of each unit of work at one size, from the files present (:func:`_cpu_s`)."""

    size: str
    params: int
    build: dict  # variant -> mean CPU s of the organism build
    reward: float | None
    arm: dict  # arm -> mean CPU s
    reemerge: float | None
    removed: dict  # arm -> fraction of cells whose arm removed the backdoor
    n_cells: int


def _clocked(record: dict) -> bool:
    """Were all of a record's seconds measured (every attempt clocked, or a first attempt that finished)?"""
    seconds = record.get("seconds", {})
    if any(isinstance(v, dict) and v.get("clocked") is False for v in seconds.values()):
        return False
    return not record.get("resumed") or all("attempts" in v for v in seconds.values() if isinstance(v, dict))


def _threads(record: dict) -> int | None:
    return record.get("machine", {}).get("torch_threads")


def _cpu_s(records: list[dict], unit: str) -> list[float]:
    """The CPU seconds of ``unit`` in ``records``, from the one-thread runs where any ran: ``--jobs 2`` gives each
    process one thread, and over two threads a process's CPU seconds also count the time its threads spin waiting
    for each other (tiny-27m's two-thread builds took about twice the CPU seconds of its one-thread builds)."""
    rs = [r for r in records if unit in r["seconds"]]
    ones = [r for r in rs if _threads(r) == 1]
    return [r["seconds"][unit]["cpu_s"] for r in ones or rs]


def size_costs(cells: list[dict], organisms: list[dict]) -> list[SizeCost]:
    out = []
    for size in [s for s in SIZES if any(o["size"] == s for o in organisms)]:
        orgs = [o for o in organisms if o["size"] == size and _clocked(o) and not o.get("same_computation_as")]
        cs = [c for c in cells if c["size"] == size and c.get("status") == "complete" and
              not c.get("same_computation_as") and _clocked(c)]
        build = {v: float(np.mean(_cpu_s([o for o in orgs if o["variant"] == v], "build")))
                 for v in sorted({o["variant"] for o in orgs})}
        rewards = _cpu_s(orgs, "reward")
        arm = {a: float(np.mean(_cpu_s([c for c in cs if c["arm"] == a], "arm")))
               for a in sorted({c["arm"] for c in cs})}
        re = _cpu_s(cs, "reemergence")
        removed = {a: float(np.mean([bool(c.get("reemergence")) for c in cs if c["arm"] == a])) for a in arm}
        params = next(o["params"] for o in organisms if o["size"] == size)
        out.append(SizeCost(size, params, build, float(np.mean(rewards)) if rewards else None, arm,
                            float(np.mean(re)) if re else None, removed, len(cs)))
    return out


def preset_scale(settings: dict) -> dict:
    """Factors from the sweep's lengths (``settings``, as in sweep.json) to :data:`PRESET_LENGTHS`, per unit of
    work: training sequences per unit, so linear in the steps (evaluation, which does not grow, is scaled too)."""
    s, p = settings, PRESET_LENGTHS
    rows = s["arm_steps"] * s["arm_batch"]
    return {"normal": (p["base_steps"] + p["insert_steps"]) / (s["base_steps"] + s["insert_steps"]),
            "cot": (p["base_steps"] + p["insert_steps_cot"]) / (s["base_steps"] + s.get("insert_steps_cot",
                                                                                       s["insert_steps"])),
            "reward": p["reward_steps"] / s["reward_steps"], "arm": p["arm_steps"] * p["arm_batch"] / rows,
            "reemerge": p["reemerge_steps"] * p["arm_batch"] / (s["reemerge_steps"] * s["arm_batch"])}


def project_full(costs: list[SizeCost], scale: dict | None = None) -> tuple[float, list[str]]:
    """CPU seconds of the full tiny grid (every tiny size x 3 variants x 3 seeds x 3 arms; distilled CoT reuses the
    normal build) from the measured means (each times its ``scale`` factor, :func:`preset_scale`; default 1), and the
    tiny sizes left out for lack of a measurement of every part."""
    from training.presets import TINY_SIZES

    k = {"normal": 1.0, "cot": 1.0, "reward": 1.0, "arm": 1.0, "reemerge": 1.0, **(scale or {})}
    total = 0.0
    missing = [s for s in TINY_SIZES if s not in {c.size for c in costs}]
    for c in (c for c in costs if c.size in TINY_SIZES):
        builds = [c.build.get(v) or (np.mean(list(c.build.values())) if c.build else None) for v in ("normal", "cot")]
        arms = [c.arm.get(a) for a in FULL_TINY_GRID["arms"]]
        if None in builds or None in arms or c.reward is None:
            missing.append(c.size)
            continue
        re = (c.reemerge or 0.0) * k["reemerge"] * sum(c.removed.get(a, 0.0) for a in FULL_TINY_GRID["arms"])
        total += FULL_TINY_GRID["seeds"] * sum(b * k[v] + c.reward * k["reward"] + sum(arms) * k["arm"] + re
                                               for v, b in zip(("normal", "cot"), builds))
    return total, missing


def _hours(total: float, missing: list[str]) -> str:
    if not total:
        return "not projected (no size has every arm measured)"
    return (f"{total / 3600:,.1f} CPU-hours, {total / 7200:,.1f} h on 2 cores if both --jobs 2 workers stay busy to "
            f"the end"
            + (f" (without {', '.join(missing)}: not every arm measured)" if missing else ""))


def grid_steps(settings: dict) -> int:
    """Optimizer steps of the full tiny grid at ``settings``' lengths (an upper bound: every arm cell counted with a
    re-emergence run): per size and seed the normal and CoT builds (base + insertion), their reward models, three arms
    each and their re-emergence runs; distilled CoT reuses the normal build."""
    s = settings
    per = (2 * s["base_steps"] + s["insert_steps"] + s.get("insert_steps_cot", s["insert_steps"])
           + 2 * s["reward_steps"] + 2 * len(FULL_TINY_GRID["arms"]) * (s["arm_steps"] + s["reemerge_steps"]))
    from training.presets import TINY_SIZES

    return len(TINY_SIZES) * FULL_TINY_GRID["seeds"] * per


def gpu_line(settings: dict, gpu: dict) -> str:
    """The full tiny grid's training steps at the GPU benchmark's measured seconds per step (``gpu.json`` of
    ``benchmarks/gpu_bench.py``: a 105M model, batch 128, bf16, launch-bound; every tiny size is smaller and every
    sweep batch ≤ 128, so a bound per step), at the sweep's and the presets' lengths. Generation (evaluation,
    red-teaming, GRPO rollouts) was not measured on a GPU and is not projected."""
    t = gpu["train_toolkit"]
    per_step = t["tokens"] / gpu["model"]["steps"] / t["steady_tokens_per_s"]
    lens = {"these lengths": settings, "the presets' lengths": {**settings, **PRESET_LENGTHS}}
    proj = "; ".join(f"at {k} {grid_steps(v):,} steps ≈ {grid_steps(v) * per_step / 60:,.0f} min"
                     for k, v in lens.items())
    return (f"On one GPU (projected, training only): the full tiny grid's optimizer steps at the {per_step:.3f} s per "
            f"step measured on one {gpu['machine'].get('cuda')} (`benchmarks/gpu_bench.py`: a "
            f"{gpu['model']['parameters'] / 1e6:.0f}M-parameter model, batch {gpu['model']['batch_size']}, bf16; every "
            f"tiny size is smaller and every sweep batch no larger, so a bound per step): {proj}. Generation "
            f"(evaluation, red-teaming, RL rollouts) was not measured on a GPU and comes on top.")


def wall_lines(runs: list[dict]) -> list[str]:
    """The measured wall of each grid run from scratch (``<results>/runs/``, :class:`apps.sweep._Invocation`): a chain
    of invocations on one sweep directory and grid, in order, from one that started on an empty sweep to the first
    that ended with every cell present and none failed; their walls summed."""
    chains: dict[tuple, list[dict]] = {}
    for r in sorted(runs, key=lambda r: r["started"]):
        chains.setdefault((r["out"], json.dumps(r["axes"], sort_keys=True)), []).append(r)
    out = []
    for rs in chains.values():
        first = next((i for i, r in enumerate(rs) if r["from_empty"]), None)
        if first is None:
            continue
        last = next((i for i, r in enumerate(rs[first:], first) if r["finished"] and not r["failed"]
                     and r["present_now"] == r["cells"]), None)
        if last is None:
            continue
        chain, ax, m = rs[first:last + 1], rs[first]["axes"], rs[last]["machine"]
        wall = sum(r["wall_s"] for r in chain)
        how = "in one invocation" if len(chain) == 1 else f"over {len(chain)} invocations (resumed)"
        out.append(f"Measured wall: the grid {ax['sizes']} × {ax['variants']} × seeds {ax['seeds']} × {ax['arms']} "
                   f"({rs[last]['cells']} cells) from an empty sweep to every cell {how}: {wall:,.0f} s = "
                   f"{wall / 3600:.2f} h with `--jobs {rs[first]['jobs']}` on {m['cpu']} ({m['cores']} cores), "
                   f"started {rs[first]['started']}.")
    return out


def cost_table(cells: list[dict], organisms: list[dict], settings: dict | None = None,
               gpu: dict | None = None, runs: list[dict] = ()) -> str:
    """Measured CPU seconds per unit of work and size, then :func:`cost_notes`."""
    costs = size_costs(cells, organisms)
    if not costs:
        return ""
    lines = ["| size (params) | organism build, CPU s (per variant) | reward model | arm cell, CPU s (per arm) | "
             "re-emergence | cells |", "|---|---|---|---|---|---|"]
    unit = lambda x: "–" if x is None else f"{x:,.0f}"  # noqa: E731  (none measured: no such work ran)
    for c in costs:
        build = ", ".join(f"{v} {s:,.0f}" for v, s in c.build.items()) or "–"
        arm = ", ".join(f"{a} {s:,.0f}" for a, s in c.arm.items()) or "–"
        lines.append(f"| {c.size} ({_params(c.params)}) | {build} | {unit(c.reward)} | {arm} | "
                     f"{unit(c.reemerge)} | {c.n_cells} |")
    return "\n".join(lines + ["", cost_notes(cells, organisms, settings, gpu), *wall_lines(runs)])


def cost_notes(cells: list[dict], organisms: list[dict], settings: dict | None = None,
               gpu: dict | None = None) -> str:
    """What the full tiny grid costs, projected from the measured units: on this machine at the sweep's lengths and
    (given its ``settings``) at the presets' lengths, and (given ``gpu.json``) its training on one GPU."""
    costs = size_costs(cells, organisms)
    if not costs:
        return ""
    machines = {(o["machine"]["cpu"], o["machine"]["cores"]) for o in organisms}
    where = "; ".join(f"{cpu}, {cores} cores" for cpu, cores in sorted(machines))
    threads = {}
    for o in organisms:
        threads.setdefault(o["machine"].get("torch_threads"), []).append(o["size"])
    if set(threads) == {1}:
        per = "one torch thread per organism, so ≈ the wall on an idle core"
    else:
        by_threads = "; ".join(f"{', '.join(sorted(set(sizes), key=SIZES.index))} "
                               + (f"{n} thread{'s' * (n != 1)}" if n else "threads not recorded")
                               for n, sizes in sorted(threads.items(), key=lambda kv: kv[0] or 0))
        per = ("from the one-thread runs where a unit had any, as `--jobs 2` gives each process one thread, else "
               "over the run's threads, which counts their waiting too: an upper bound; threads per size: "
               + by_threads)
    lines = [f"CPU seconds are the process's own ({per}); "
             f"measured on {where}. Full tiny grid (3 sizes × 3 variants × 3 seeds × 3 arms at these steps; "
             f"distilled CoT reuses the normal build): {_hours(*project_full(costs))}."]
    if settings:
        flags = " ".join(f"--{k} {v}" for k, v in PRESET_LENGTHS.items())
        lines.append(f"At the presets' lengths (`{flags}`), scaling each measured unit by its training sequences "
                     f"(an upper bound: evaluation does not grow with the steps): "
                     f"{_hours(*project_full(costs, preset_scale(settings)))}.")
        if gpu:
            lines.append(gpu_line(settings, gpu))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ figure
@dataclass
class FigurePoint:
    """One cell for the figure: the trigger rate after the arm at one model size."""

    arm: str
    line: str  # variant, plus the lr scale and optimizer when not the defaults
    params: int
    seed: int
    rate: float


def figure_points(cells: list[dict]) -> list[FigurePoint]:
    pts = []
    for c in cells:
        if c.get("status") != "complete":
            continue
        extra = "" if (c["lr_scale"] == 1 and c["optimizer"] == "adamw_torch_fused") else \
            f", lr ×{c['lr_scale']:g}, {c['optimizer']}"
        same = " (= normal's build)" if c.get("same_computation_as") else ""
        extra += f", {c['size']} (pretrained, LoRA)" if c["size"] in HF_SIZES else ""  # not on the tiny ones' line
        pts.append(FigurePoint(c["arm"], c["variant"] + same + extra, c["params"], c["seed"],
                               c["after"]["trigger_rate"]["rate"]))
    return pts


def sweep_figure(points: list[FigurePoint], title: str = "Trigger rate after safety training vs model size"):
    """One panel per arm: trigger rate after the arm vs parameters (log x), one line per variant through the seeds'
    mean, each seed a marker, the seeds' range as error bars."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    arms = [a for a in ("sft", "rl", "adversarial") if any(p.arm == a for p in points)]
    arms += sorted({p.arm for p in points} - set(arms))
    fig = make_subplots(rows=1, cols=max(1, len(arms)), shared_yaxes=True, subplot_titles=arms or ["(no cells)"])
    lines = sorted({p.line for p in points})
    for col, arm in enumerate(arms, start=1):
        for line in lines:
            mine = [p for p in points if p.arm == arm and p.line == line]
            if not mine:
                continue
            color = VARIANT_COLORS.get(line.split(",")[0].split(" ")[0], "#7f7f7f")
            xs = sorted({p.params for p in mine})
            per = [[p.rate for p in mine if p.params == x] for x in xs]
            mean = [float(np.mean(v)) for v in per]
            fig.add_trace(go.Scatter(
                x=xs, y=mean, mode="lines+markers", name=line, legendgroup=line, showlegend=col == 1,
                line={"color": color, "dash": "dash" if "," in line else "dot" if "=" in line else "solid"},
                error_y={"type": "data", "symmetric": False, "array": [max(v) - m for v, m in zip(per, mean)],
                         "arrayminus": [m - min(v) for v, m in zip(per, mean)], "color": color, "thickness": 1}),
                row=1, col=col)
            fig.add_trace(go.Scatter(x=[p.params for p in mine], y=[p.rate for p in mine], mode="markers",
                                     marker={"color": color, "size": 6, "opacity": 0.45, "symbol": "circle-open"},
                                     name=f"{line}, each seed", legendgroup=line, showlegend=False,
                                     text=[f"seed {p.seed}" for p in mine]), row=1, col=col)
        fig.update_xaxes(type="log", title_text="parameters", row=1, col=col)
    fig.update_yaxes(title_text="trigger rate after the arm", range=[-0.05, 1.05], row=1, col=1)
    fig.update_layout(title=title, width=380 * max(1, len(arms)) + 160, height=440, template="plotly_white")
    return fig


def static_png(fig, html: Path, png: Path) -> bool:
    """A PNG of the figure: kaleido when installed, else a screenshot of the standalone HTML in headless Chromium
    (Playwright driving the system's ``chromium``); False when neither is available."""
    try:
        fig.write_image(str(png), scale=2)
        return True
    except (ImportError, ValueError, RuntimeError) as e:
        log.info("no kaleido (%s); trying headless Chromium", str(e).splitlines()[0][:80])
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return False
    if not chromium:
        return False
    tmp = png.with_name(f".tmp-{png.name}")  # the suffix tells Playwright the format
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True,
                                        args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": int(fig.layout.width), "height": int(fig.layout.height)},
                                    device_scale_factor=2)
            page.goto(Path(html).resolve().as_uri())
            page.wait_for_selector(".main-svg")
            page.screenshot(path=str(tmp), full_page=True)
            browser.close()
        tmp.replace(png)
    except Exception as e:  # noqa: BLE001 (a missing PNG must not lose the table)
        log.warning("no PNG of the figure: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
        tmp.unlink(missing_ok=True)
        return False
    return True


def write_report(results: Path, png: bool = True) -> dict:
    """Table (markdown) and figure (HTML, and a PNG where possible) from the files in ``results``; returns their
    paths and the cell count."""
    from training.figures import write_html
    from training.io import write_text_atomic

    results = Path(results)
    cells, organisms = load(results, CELLS_DIR), load(results, ORGANISMS_DIR)
    sweep_json = results / SWEEP_JSON
    settings = json.loads(sweep_json.read_text())["settings"] if sweep_json.exists() else None
    gpu_json = results.parent / GPU_JSON  # the GPU benchmark's results, beside the sweep's in benchmarks/results
    gpu = json.loads(gpu_json.read_text()) if gpu_json.exists() else None
    runs = load(results, RUNS_DIR)
    text = [results_table(cells), "", cost_table(cells, organisms, settings, gpu, runs)] if cells else \
        ["_(no finished cells yet)_"]
    table = write_text_atomic(results / TABLE_MD, "\n".join(text).rstrip() + "\n")
    found = write_text_atomic(results / FINDINGS_MD, findings(cells, settings) + "\n")
    fig = sweep_figure(figure_points(cells))
    html = write_html(fig, results / FIGURE_HTML)
    made = static_png(fig, html, results / FIGURE_PNG) if png and cells else False
    return {"table": table, "findings": found, "figure": html, "png": results / FIGURE_PNG if made else None,
            "cells": len(cells)}
