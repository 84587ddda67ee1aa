"""The whole study for an 8B model with LoRA on one H100-class GPU and on eight, projected on paper from measured
inputs: the work each stage of a measured study did (``study.json``'s ``work``, counted by ``training.workload``) and
the throughput measured on a GPU (``benchmarks/results/gpu.json``, ``gpu_mfu.json``).

Usage: ``python benchmarks/projection.py --study runs/s/study.json``  (the SmolLM2 study at its default lengths);
``--study benchmarks/results/projection.json`` re-projects the work an earlier projection recorded.
Writes ``benchmarks/results/projection.json``, ``projection.md`` (docs/results.md) and ``projection_summary.md``
(the paragraph above the table in docs/results.md).

The formula, per stage (N parameters of the target model, P the card's dense bf16 peak, W its memory bandwidth,
u the fraction of P reached):

    t = 4 N x train_tokens / (P u)              LoRA training: forward 2N, backward through the frozen weights 2N
      + 2 N x forward_tokens / (P u)            forward-only passes (scoring, caching, patching, prompts)
      + steps x max(2 N / W, 2 N x rows / (P u))   one-position forwards (decode): each reads all 2N bytes of bf16
                                                 weights at least once, ``rows = step_rows / steps`` rows at a time

On eight cards the training term is divided by eight (data-parallel training via ``torchrun``/``accelerate``);
forward-only passes and generation stay on one card (the analysis runs there). Two values of ``u``, both measured
on an H200 for a 105M model trained by the toolkit: on short padded chat rows (``gpu.json``: launch-bound; a larger
model's kernels are bigger, so this is a floor on u and the wall it gives an upper bound), and on packed
1,024-token blocks under ``torch.compile`` (the lowest model FLOPs utilisation of ``gpu_mfu*.json``'s runs; an 8B
model's larger matmuls should reach at least as much). The study's batching is kept as measured (a GPU fits bigger batches, so fewer decode
steps): one more reason the projection is an upper bound at each u.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_bench import RESULTS  # noqa: E402

TARGET_PARAMS = 8.03e9  # Llama-3.1-8B
H100_PEAK = 989.4e12  # dense bf16 FLOP/s, H100 SXM (the H200 has the same compute)
H100_BANDWIDTH = 3.35e12  # bytes/s, H100 SXM HBM3
CARDS = 8


def short_rows_u(gpu: dict) -> float:
    """Utilisation the toolkit trainer reached on the H200 on short chat rows: steady tokens/s x 6 N over the peak."""
    return gpu["train_toolkit"]["steady_tokens_per_s"] * 6 * gpu["model"]["parameters"] / H100_PEAK


def packed_u(mfus: list[dict]) -> float:
    """The toolkit trainer's model FLOPs utilisation on packed blocks, compiled (``gpu_bench.py``'s MFU part): the
    lowest of the runs given, so the wall it projects is the longest."""
    return min(m["mfu"]["runs"]["toolkit_compiled"]["mfu_datasheet"] for m in mfus)


def stage_seconds(work: dict, u: float, n_params: float = TARGET_PARAMS, cards: int = 1,
                  peak: float = H100_PEAK, bandwidth: float = H100_BANDWIDTH, train_flops: int = 4) -> dict:
    """The formula of the module docstring for one stage's ``work``: seconds per term and in all. ``train_flops``:
    FLOPs per weight per trained token, 4 for a LoRA step (forward, and the backward through the frozen weights), 6
    for a full fine-tune (the weights' gradients too)."""
    flops = peak * u
    train = train_flops * n_params * work["train_tokens"] / flops / cards
    forward = 2 * n_params * work["forward_tokens"] / flops
    rows = work["step_rows"] / work["steps"] if work["steps"] else 0.0
    decode = work["steps"] * max(2 * n_params / bandwidth, 2 * n_params * rows / flops)
    return {"train": train, "forward": forward, "decode": decode, "total": train + forward + decode}


def project(study: dict, gpu: dict, mfus: list[dict]) -> dict:
    """Per stage and in all: measured seconds and work, projected seconds on 1 and ``CARDS`` cards at both u."""
    us = {"short": short_rows_u(gpu), "packed": packed_u(mfus)}
    seconds = {**study["seconds"].get("earlier_stages", {}), **study["seconds"]["stages"]}
    stages = {}
    for name, work in study["work"].items():
        stages[name] = {"measured_s": seconds.get(name), "work": work,
                        "projected_s": {f"{k}_{c}": stage_seconds(work, u, cards=c)["total"]
                                        for k, u in us.items() for c in (1, CARDS)}}
    totals = {f"{k}_{c}": sum(s["projected_s"][f"{k}_{c}"] for s in stages.values()) for k in us for c in (1, CARDS)}
    return {"study": study["path"], "study_args": study.get("args", {}), "u": us, "target_params": TARGET_PARAMS,
            "peak_flops": H100_PEAK, "bandwidth": H100_BANDWIDTH,
            "cards": CARDS, "stages": stages, "totals": totals,
            "measured_total_s": sum(v for v in seconds.values())}


def _h(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min" if s >= 60 else f"{s:.0f} s"


def table(p: dict) -> str:
    u_m, u_a, c = p["u"]["short"], p["u"]["packed"], p["cards"]
    rows = [f"| stage | measured here (s) | tokens trained | tokens read (forward only) | decode steps (rows) | "
            f"1 GPU, u {u_m:.3f} (short rows) | {p['cards']} GPUs, u {u_m:.3f} | 1 GPU, u {u_a:.3f} (packed) | "
            f"{p['cards']} GPUs, u {u_a:.3f} |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in p["stages"].items():
        w, ps = s["work"], s["projected_s"]
        meas = f"{s['measured_s']:.0f}" if s["measured_s"] is not None else "–"
        rows.append(f"| {name} | {meas} | {w['train_tokens']:,} | {w['forward_tokens']:,} | {w['steps']:,} "
                    f"({w['step_rows']:,}) | {_h(ps['short_1'])} | {_h(ps[f'short_{c}'])} | "
                    f"{_h(ps['packed_1'])} | {_h(ps[f'packed_{c}'])} |")
    t = p["totals"]
    rows.append(f"| **whole study** | {p['measured_total_s']:.0f} | | | | {_h(t['short_1'])} | "
                f"{_h(t[f'short_{c}'])} | {_h(t['packed_1'])} | {_h(t[f'packed_{c}'])} |")
    shown = ("preset", "safety_steps", "probe_n", "n_random", "patch_n_pairs", "ablate_n")
    flags = " ".join(f"--{k} {v}" for k, v in p["study_args"].items() if k in shown and v)
    rows.append(f"\nProjected by `benchmarks/projection.py` from `{p['study']}` (`apps.study {flags}`; its seconds and "
                f"work as that run measured them) for an {p['target_params'] / 1e9:.0f}B model "
                f"with LoRA on H100-class cards ({p['peak_flops'] / 1e12:.0f} TFLOP/s bf16, "
                f"{p['bandwidth'] / 1e12:.2f} TB/s): per stage, 4N x tokens trained + 2N x tokens read over P u, plus "
                f"each decode step's max(2N bytes / bandwidth, 2N x rows / P u); training divided over "
                f"{p['cards']} cards, analysis and generation on one. u {u_m:.3f} is what the toolkit trainer reached "
                f"on an H200 for a 105M model on short chat rows (`gpu.json`: launch-bound), a floor for a larger "
                f"model; u {u_a:.3f} its model FLOPs utilisation on packed 1,024-token blocks under torch.compile "
                "(the lower of `gpu_mfu.json` and `gpu_mfu2.json`). The study's CPU batching is kept, so both are upper bounds at their u.")
    return "\n".join(rows)


def summary(p: dict) -> str:
    """The one-paragraph summary above the table: the totals, the formula and its measured inputs in one place."""
    t, w, c = p["totals"], p["stages"], p["cards"]
    tokens = sum(s["work"]["train_tokens"] for s in w.values()), sum(s["work"]["forward_tokens"] for s in w.values())
    steps = sum(s["work"]["steps"] for s in w.values())
    return (f"**An {p['target_params'] / 1e9:.0f}B model, on paper** (`benchmarks/projection.py`): the SmolLM2 "
            f"study's counted work ({tokens[0]:,} tokens trained, {tokens[1]:,} read, {steps:,} decode steps) at "
            "t = (4N·trained + 2N·read)/(P·u) + Σ max(2N/W, 2N·rows/(P·u)) per decode step: "
            f"{_h(t['short_1'])} on one H100, {_h(t[f'short_{c}'])} on {c} at the u = {p['u']['short']:.3f} the "
            f"toolkit trainer reached on an H200 on short chat rows; {_h(t['packed_1'])} and {_h(t[f'packed_{c}'])} "
            f"at the u = {p['u']['packed']:.3f} it reached there on packed 1,024-token blocks (both measured for a "
            "105M model).")


def read_study(path: Path) -> dict | None:
    """A study's args, seconds and counted work with its ``path``: from its ``study.json``, or from a projection
    (``projection.json``) that recorded them (the run itself may be gone); None when it has no counted work."""
    study = json.loads(path.read_text())
    if "stages" in study and "study" in study:
        return {"path": study["study"], "args": study.get("study_args", {}),
                "work": {k: s["work"] for k, s in study["stages"].items()},
                "seconds": {"stages": {k: s["measured_s"] for k, s in study["stages"].items()}}}
    return {**study, "path": str(path)} if "work" in study else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", required=True, help="study.json of a finished apps.study run, or a "
                    "projection.json that recorded one")
    ap.add_argument("--gpu", default=str(RESULTS / "gpu.json"))
    ap.add_argument("--mfu", nargs="+", default=[str(RESULTS / "gpu_mfu.json"), str(RESULTS / "gpu_mfu2.json")])
    a = ap.parse_args()
    study = read_study(Path(a.study))
    if study is None:
        print(f"error: {a.study} has no 'work' (a study run before training.workload counted it)", file=sys.stderr)
        return 2
    p = project(study, json.loads(Path(a.gpu).read_text()), [json.loads(Path(f).read_text()) for f in a.mfu])
    (RESULTS / "projection.json").write_text(json.dumps(p, indent=1))
    md = table(p)
    (RESULTS / "projection.md").write_text(md + "\n")
    (RESULTS / "projection_summary.md").write_text(summary(p) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
