"""Ablation with cached generation under hooks (``analysis.intervene``) vs the uncached bridge path it replaced.

Runs ``analysis.ablate`` on a checkpoint at its default settings (prompt pairs, matched and isotropic placebos,
alphas), recording every generation it does (prompts and hooks). Then, in the same process, replays a sample of
those generations both ways -- ours (plain HF copy, KV cache, hooks on its modules) and the baseline (``bridge.hooks``
active, ``generate(use_cache=False)`` on the HF model the bridge wraps, what ``analysis.ablation`` did before) --
and checks that the tokens are identical, prompt for prompt (each replayed to its end and one at a time: the uncached
path cannot stop a row once its label is decided, nor share the blocks below the hooks across generations).
Reported: the whole ablation's wall with ours, the seconds per generation of each path on the replayed sample, their
ratio, and the baseline's projected whole-ablation wall (its seconds per generation times the number of generations;
measured outright when ``--replay 0`` = all).

Usage: ``python benchmarks/ablate_bench.py --ckpt RUN/checkpoints/backdoored --name tiny [--replay 0]``
Writes ``benchmarks/results/ablate/<name>.json``; ``--table`` rewrites ``benchmarks/results/ablate_table.md`` from
every committed cell.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.machine import describe  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "ablate"
TABLE = ROOT / "benchmarks" / "results" / "ablate_table.md"


def run_cell(ckpt: Path, probe: Path | None, name: str, replay: int, n: int | None) -> dict:
    import analysis.intervene as intervene
    from analysis.ablation import AblateConfig, ablate_checkpoint
    from training.evaluate import generate as hf_generate
    from training import layout

    calls: list[dict] = []
    ours = intervene.generate

    def recording(loaded, prompts, fwd_hooks=(), **kw):
        t = time.perf_counter()
        out = ours(loaded, prompts, fwd_hooks, **kw)
        # replayed one generation at a time, both ways, to their end: the uncached path cannot stop rows early
        kw = {k: v for k, v in kw.items() if k not in ("shared", "stop")}
        calls.append({"loaded": loaded, "prompts": prompts, "hooks": list(fwd_hooks), "kw": kw, "out": out,
                      "seconds": time.perf_counter() - t})
        return out

    cfg = AblateConfig(ckpt=str(ckpt), probe=str(probe or layout.analysis_dir(ckpt) / "probes.safetensors"))
    if n:
        cfg.n = n
    out_dir = RESULTS / f"{name}.out"
    cfg.out = str(out_dir)
    intervene.generate = recording
    try:
        t0 = time.perf_counter()
        res = ablate_checkpoint(cfg)
        wall = time.perf_counter() - t0
    finally:
        intervene.generate = ours
    entry = res.results[res.added]

    step = max(1, len(calls) // replay) if replay else 1
    sample = calls[::step][:replay] if replay else calls
    same, ours_s, base_s, n_prompts = 0, 0.0, 0.0, 0
    for c in sample:
        loaded = c["loaded"]
        t = time.perf_counter()
        again = ours(loaded, c["prompts"], c["hooks"], **c["kw"])
        ours_s += time.perf_counter() - t
        t = time.perf_counter()
        with loaded.bridge.hooks(fwd_hooks=c["hooks"]):
            base = hf_generate(loaded.hf_model, loaded.tokenizer, c["prompts"], use_cache=False, **c["kw"])
        base_s += time.perf_counter() - t
        assert all(f[0].startswith(o[0]) for o, f in zip(c["out"], again)), "cached generation is not deterministic"
        same += sum(a == b for a, b in zip(base, again))
        n_prompts += len(base)
    per_ours, per_base = ours_s / len(sample), base_s / len(sample)
    import shutil

    shutil.rmtree(out_dir, ignore_errors=True)
    return {
        "name": name, "ckpt": str(ckpt), "machine": describe(),
        "settings": {"n_pairs": cfg.n, "n_random": cfg.n_random, "n_isotropic": cfg.n_isotropic, "alphas": cfg.alphas,
                     "max_new_tokens": entry["max_new_tokens"], "batch_size": cfg.batch_size,
                     "probe": entry["probe"]["name"], "layer": entry["probe"]["layer"]},
        "generations": len(calls),
        "ours_wall_s": round(wall, 2),
        "ours_generation_s": round(sum(c["seconds"] for c in calls), 2),
        "replayed": len(sample),
        "replayed_prompts": n_prompts,
        "identical_completions": same,
        "ours_s_per_generation": round(per_ours, 4),
        "baseline_s_per_generation": round(per_base, 4),
        "speedup": round(per_base / per_ours, 2),
        "baseline_wall_projected_s": round(wall - sum(c["seconds"] for c in calls) + per_base * len(calls), 1),
        "baseline_measured_outright": not replay or len(sample) == len(calls),
        "summary": {k: entry["summary"][k] for k in ("trigger_rate", "trigger_rate_ablated",
                                                     "trigger_rate_ablated_placebo_matched")},
    }


def table() -> str:
    rows = ["| checkpoint | pairs | generations | ours: whole ablation | baseline (uncached): whole ablation | "
            "speedup per generation | identical completions | machine |", "|---|---|---|---|---|---|---|---|"]
    for f in sorted(RESULTS.glob("*.json")):
        r = json.loads(f.read_text())
        proj = "" if r["baseline_measured_outright"] else f" (projected from {r['replayed']} of {r['generations']})"
        rows.append(f"| {r['name']} | {r['settings']['n_pairs']} | {r['generations']} | {r['ours_wall_s']:.0f} s | "
                    f"{r['baseline_wall_projected_s']:.0f} s{proj} | {r['speedup']:.1f}x | "
                    f"{r['identical_completions']} of {r['replayed_prompts']} | {r['machine']['cpu']}, "
                    f"{r['machine']['torch_threads']} threads |")
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path)
    ap.add_argument("--probe", type=Path, default=None)
    ap.add_argument("--name", default=None)
    ap.add_argument("--replay", type=int, default=0, help="generations replayed both ways (0 = all)")
    ap.add_argument("--n", type=int, default=None, help="prompt pairs (default: analysis.ablate's)")
    ap.add_argument("--table", action="store_true", help="only rewrite the table from the committed cells")
    a = ap.parse_args(argv)
    if not a.table:
        RESULTS.mkdir(parents=True, exist_ok=True)
        cell = run_cell(a.ckpt, a.probe, a.name, a.replay, a.n)
        (RESULTS / f"{a.name}.json").write_text(json.dumps(cell, indent=1) + "\n")
        print(json.dumps({k: cell[k] for k in ("ours_wall_s", "baseline_wall_projected_s", "speedup",
                                                "identical_completions", "replayed_prompts")}))
    TABLE.write_text(table())
    print(TABLE.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
