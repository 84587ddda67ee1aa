"""How far each stage of a measured study is from this CPU's matmul rate: a floor on its wall from its counted work.

Usage: ``python benchmarks/cpu_floor.py --study runs/s/study.json``  (a study run on this machine; or
``--study benchmarks/results/projection.json --base <its base checkpoint>``: the study that projection recorded)
Writes ``benchmarks/results/cpu_floor.json`` and ``cpu_floor_table.md`` (``--name`` renames both; spliced into
docs/results.md).

It measures P, the best fp32 matmul rate of this CPU on the model's own layer shapes (every ``nn.Linear`` of the
decoder blocks, at 2,048 to 8,192 tokens, all threads, best of repeats), then bounds each stage's compute from the
work ``apps.study`` counted (:mod:`training.workload`):

    FLOPs >= N x (t x tokens trained + 2 x tokens read + 2 x decoded rows)

with N the decoder blocks' matmul weights (no embedding, no LM head, no attention scores: each only adds), and t = 4
per trained token for a LoRA study (forward, and the backward through the frozen weights; its full fine-tune of the
preference model does 6, so 4 stays a bound there) and t = 6 for the tiny preset, whose every stage is a full
fine-tune.
``FLOPs / P`` is then the least time the stage could take on this CPU at this precision, whatever the code did;
``measured / floor`` says how much any rewrite could still win there. It also measures G, the best rate of large
square GEMMs (the shape a BLAS runs fastest), and states how long the bounded stages take at least at G: a floor
that no choice of shapes could lower. The compare stage and the ablations count a
patched forward resumed at a layer, and a prompt forward whose lower blocks were replayed, as whole forwards
(``training.workload``), so their bound is not one: they are shown but kept out of the floor's sum.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402
from pipeline_bench import RESULTS  # noqa: E402
from projection import read_study, stage_seconds  # noqa: E402

OVERCOUNTED = ("probes + patching (compare)", "ablate (")  # stage names whose counts are not lower bounds
TOKENS = (2048, 4096, 8192)
SQUARE = (2048, 4096)  # large square GEMMs: the shape a BLAS runs fastest
TRAIN_WHY = {4: "4N per trained token, a LoRA step", 6: "6N per trained token: every stage of the tiny preset is a "
             "full fine-tune"}


def block_linears(base: Path) -> tuple[int, list[tuple[int, int]]]:
    """The decoder blocks' matmul weights (every ``nn.Linear`` but the LM head) and their distinct shapes, from the
    checkpoint's config alone (built on the meta device: nothing is loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(base)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    head = model.get_output_embeddings()
    lins = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    return sum(m.weight.numel() for m in lins), sorted({(m.in_features, m.out_features) for m in lins})


def matmul_rate(shapes: list[tuple[int, int]], repeats: int = 10) -> dict:
    """Best fp32 GFLOP/s of ``x @ W`` over the shapes and token counts (all threads), per shape and overall."""
    import torch

    per = {}
    for k, n in shapes:
        best = 0.0
        w = torch.randn(k, n)
        for m in TOKENS:
            x = torch.randn(m, k)
            x @ w  # warm-up
            for _ in range(repeats):
                t = time.perf_counter()
                x @ w
                best = max(best, 2 * m * k * n / (time.perf_counter() - t) / 1e9)
        per[f"{k}x{n}"] = round(best, 1)
    return {"per_shape_gflops": per, "best_gflops": max(per.values()), "threads": torch.get_num_threads()}


def gemm_ceiling(repeats: int = 5) -> dict:
    """Best fp32 GFLOP/s of large square GEMMs (all threads): the most favourable shape for this CPU's BLAS, so a
    rate none of the model's smaller matmuls can be expected to beat (the ceiling the floor is checked against)."""
    import torch

    per = {}
    for n in SQUARE:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up
        best = 0.0
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
        per[f"{n}x{n}"] = round(best, 1)
    return {"per_shape_gflops": per, "best_gflops": max(per.values())}


def floor(work: dict, n: int, gflops: float, train_flops: int = 4) -> tuple[float, float]:
    """(FLOPs lower bound, seconds at ``gflops``) of one stage's counted work: the projection's formula at u = 1 with
    no bandwidth bound (each decode step then costs 2N x its rows)."""
    seconds = stage_seconds(work, 1.0, n_params=n, peak=gflops * 1e9, bandwidth=float("inf"),
                            train_flops=train_flops)["total"]
    return seconds * gflops * 1e9, seconds


def table(r: dict) -> str:
    rows = ["| stage | measured (s) | compute lower bound (TFLOP) | bound / measured (GFLOP/s) | floor at P (s) | "
            "measured / floor |", "|---|---|---|---|---|---|"]
    for name, s in [*r["stages"].items(), ("**stages whose counts are bounds**", {**r["bounded"], "overcounted": 0})]:
        mark = " (counts over-count: not a bound)" if s["overcounted"] else ""
        ratio = f"{s['measured_s'] / s['floor_s']:.1f}x" if s["floor_s"] else ""
        rate = f"{s['tflop'] * 1e3 / s['measured_s']:.0f}" if s["measured_s"] else ""
        rows.append(f"| {name}{mark} | {s['measured_s']:.0f} | {s['tflop']:.1f} | {rate} | {s['floor_s']:.0f} | "
                    f"{ratio} |")
    t = r["bounded"]
    m = r["machine"]
    rows.append(f"\n`benchmarks/cpu_floor.py` on `{r['study']}`: P = {r['matmul']['best_gflops']:.0f} GFLOP/s, the "
                f"best fp32 matmul rate this script measured ({r['measured']}) on the model's block shapes "
                f"({', '.join(f'{k} {v:.0f}' for k, v in r['matmul']['per_shape_gflops'].items())}; "
                f"{r['matmul']['threads']} threads, {m['cpu']}, {m['cores']} cores); N = {r['n_matmul']:,} "
                f"matmul weights in the decoder blocks. Lower bound per stage: N x ({r['train_flops']} x tokens "
                "trained + 2 x tokens read + 2 x decoded rows) FLOPs (no attention, embedding or LM head; "
                f"{TRAIN_WHY[r['train_flops']]}). The compare stage and the ablations count patched and replayed "
                "forwards whole, so theirs are not bounds and stay out of the sum. To fit in its target of "
                f"{r['target_s']:,.0f} s, the stages whose counts are bounds alone need "
                f"{t['tflop'] * 1e3 / r['target_s']:.0f} GFLOP/s sustained.")
    if "ceiling" in r:
        g = r["ceiling"]
        shapes = ", ".join(f"{k} {v:.0f}" for k, v in g["per_shape_gflops"].items())
        rows[-1] += (f" The best rate on a large square GEMM, the most favourable shape for this CPU's BLAS, was "
                     f"G = {g['best_gflops']:.0f} GFLOP/s ({shapes}): at G those stages alone take at least "
                     f"{t['tflop'] * 1e3 / g['best_gflops']:,.0f} s.")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", required=True, help="study.json of a finished apps.study run on this "
                    "machine, or a projection.json that recorded one")
    ap.add_argument("--base", help="checkpoint whose config sizes N (default: the study run's checkpoints/base)")
    ap.add_argument("--name", default="cpu_floor", help="result files' stem: <name>.json and <name>_table.md")
    ap.add_argument("--target_s", type=float, default=3600.0, help="the study's wall-clock target (the SmolLM2 "
                    "study's hour; make demo's 300 s)")
    a = ap.parse_args()
    study = read_study(Path(a.study))
    if study is None:
        print(f"error: {a.study} has no 'work' (a study run before training.workload counted it)", file=sys.stderr)
        return 2
    n, shapes = block_linears(Path(a.base) if a.base else Path(study["path"]).parent / "checkpoints" / "base")
    mm, ceiling = matmul_rate(shapes), gemm_ceiling()
    train_flops = 6 if study.get("args", {}).get("preset") == "tiny" else 4
    seconds = {**study["seconds"].get("earlier_stages", {}), **study["seconds"]["stages"]}
    stages, bounded = {}, {"measured_s": 0.0, "tflop": 0.0, "floor_s": 0.0}
    for name, work in study["work"].items():
        flops, fl = floor(work, n, mm["best_gflops"], train_flops)
        over = any(name.startswith(p) for p in OVERCOUNTED)
        stages[name] = {"measured_s": seconds.get(name, 0.0), "work": work, "tflop": flops / 1e12, "floor_s": fl,
                        "overcounted": over}
        if not over:
            for k, v in (("measured_s", seconds.get(name, 0.0)), ("tflop", flops / 1e12), ("floor_s", fl)):
                bounded[k] += v
    r = {"machine": describe(), "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
         "study": study["path"], "study_args": study.get("args", {}), "n_matmul": n,
         "train_flops": train_flops, "target_s": a.target_s,
         "matmul": mm, "ceiling": ceiling, "stages": stages, "bounded": bounded}
    (RESULTS / f"{a.name}.json").write_text(json.dumps(r, indent=1))
    md = table(r)
    (RESULTS / f"{a.name}_table.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
