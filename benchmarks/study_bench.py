"""The main job, measured: ``apps.study --preset tiny`` in a fresh process (wall time, peak memory), then the
README's analysis tables generated from the run it wrote (probe per layer, patching, ablation, safety arms).

Usage: ``python benchmarks/study_bench.py [--out runs/demo]``  (reuses nothing: the study starts from scratch)
Writes ``benchmarks/results/study.json`` and ``study_table.md``, ``probe_table.md``, ``patch_table.md``.

``--preset smollm2-135m --study-flags '...'`` times the real model's study instead and writes
``study_smollm2.json``, ``study_smollm2_table.md`` (with each stage's seconds and the ablations) and
``smollm2_patch_table.md``. ``--resume`` continues the study in ``--out`` (one longer than a session); its table
then reports the sum of every stage's seconds, the earlier invocations' included.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402
from pipeline_bench import RESULTS, run_module  # noqa: E402


def ci(x) -> str:
    return f"[{x[0]:.2f}, {x[1]:.2f}]" if x and None not in x else ""


def probe_table(run: Path, ckpt_id: str = "backdoored") -> str:
    p = json.loads((run / "analysis" / ckpt_id / "probe.json").read_text())
    rows = ["| layer | contrast AUROC [95% CI] | parent contrast | behaviour AUROC | supervised DoM | "
            "logistic | parent DoM | best of N random |", "|---|---|---|---|---|---|---|---|"]
    for L in p["layers"]:
        rows.append(f"| {L['layer']} | {L['contrast_auroc']:.2f} {ci(L.get('contrast_auroc_ci'))} | "
                    f"{L.get('parent_contrast_auroc', float('nan')):.2f} | {L['behaviour_auroc']:.2f} | "
                    f"{L['supervised_dom_auroc']:.2f} | {L['supervised_logreg_auroc']:.2f} | "
                    f"{L.get('parent_supervised_dom_auroc', float('nan')):.2f} | {L['random_best_auroc']:.2f} |")
    rows.append(f"\n`analysis.probe` on `{ckpt_id}` ({p['n_random']} random directions; parent = "
                f"`{(p.get('parent') or 'none')}`). Triggered vs untriggered held-out prompts unless named "
                "otherwise; behaviour AUROC uses the model's own greedy defections with near-miss prompts as hard "
                "negatives. AUROC < 0.5 means the direction separates the classes with its sign reversed.")
    return "\n".join(rows)


def patch_table(run: Path, ckpt_id: str = "backdoored") -> str:
    p = json.loads((run / "analysis" / ckpt_id / "patch.json").read_text())
    rows = ["| layer | trigger span | final prompt token | attn_out | mlp_out |", "|---|---|---|---|---|"]
    span, final = p["trigger_span"]["effect"], p["summary"]["final_position_by_layer"]
    for layer in range(len(span)):
        rows.append(f"| {layer} | {span[layer]:.2f} | {final[layer]:.2f} | {p['attn_out']['effect'][layer]:.2f} | "
                    f"{p['mlp_out']['effect'][layer]:.2f} |")
    pear = ", ".join(f"{k} {v:.2f}" for k, v in p["attribution_vs_exact_pearson"].items())
    secs = p["seconds"]
    rows.append(f"\n`analysis.patch` on `{ckpt_id}`: exact activation patching of the residual stream (resid_pre), "
                f"triggered → untriggered, {p['n_pairs']} token-aligned pairs, normalised metric (0 = untriggered, "
                f"1 = triggered). Attribution vs exact Pearson: {pear}; exact {secs['exact']:.1f} s, attribution "
                f"{secs['attribution']:.2f} s on the same grids.")
    return "\n".join(rows)


def ablation_lines(run: Path) -> list[str]:
    """One line per ablated checkpoint: the probe direction's AUROC and what removing / adding it did."""
    lines = []
    for path in sorted((run / "analysis").glob("*/ablate.json")):
        doc = json.loads(path.read_text())
        for r in doc["results"].values():
            s, p = r["summary"], r["probe"]
            lines.append(f"- ablation on `{doc['checkpoint']}` ({p['name']} probe, layer {p['layer']}, AUROC "
                         f"{s['auroc']:.2f}, {r['n_prompts']['triggered']} pairs): trigger rate {s['trigger_rate']:.2f}"
                         f" → {s['trigger_rate_ablated']:.2f} with the direction removed (random-direction placebo "
                         f"{s['trigger_rate_ablated_placebo']:.2f}); adding it to untriggered prompts induces "
                         f"{s['induced_rate_best']:.2f} at alpha {s['induced_alpha_best']:g} (placebo "
                         f"{s['induced_rate_placebo_same_alpha']:.2f})")
    return lines


def study_table(run: Path, timing: dict, command: str = "`make demo` (`apps.study --preset tiny`)",
                detail: bool = False) -> str:
    """Behaviour curves, compare.json's summary and the seconds per stage; ``detail`` adds every ablation."""
    cmp = json.loads((run / "compare.json").read_text())
    rows = ["| curve | checkpoint | trigger rate | false-trigger rate | red-team rate | helpful rate |",
            "|---|---|---|---|---|---|"]
    for arm, pts in cmp["behaviour"].items():
        for pt in pts:
            rows.append(f"| {arm} | {pt['checkpoint']} | {pt['trigger_rate']:.2f} {ci(pt.get('trigger_rate_ci'))} | "
                        f"{pt['false_trigger_rate']:.2f} {ci(pt.get('false_trigger_rate_ci'))} | "
                        f"{pt['redteam_rate']:.2f} {ci(pt.get('redteam_rate_ci'))} | "
                        f"{pt['helpful_rate']:.2f} {ci(pt.get('helpful_rate_ci'))} |")
    abl = run / "analysis" / "backdoored" / "ablate.json"
    m = describe()
    secs = json.loads((run / "study.json").read_text())["seconds"]
    stages = {**secs.get("earlier_stages", {}), **secs["stages"]}
    wall = f"{timing['wall_s']:.0f} s wall, peak RSS {timing['peak_rss_mib']:.0f} MiB"
    if secs.get("earlier_stages"):  # resumed: earlier invocations (some cut off by a session's end) did the rest
        wall = (f"{sum(stages.values()):.0f} s over its stages, run in several invocations (`--resume`; the last: "
                f"{wall})")
    rows.append(f"\n{command}: {wall} on {m['cpu']} ({m['cores']} cores). Summary from compare.json:")
    rows += [f"- {s}" for s in cmp.get("summary", [])]
    if detail:
        rows += ablation_lines(run)
    elif abl.exists():
        rows.append(f"- ablation (analysis.ablate on backdoored): see `{abl.relative_to(run)}`")
    rows.append("- seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in stages.items())
                + f"; {sum(stages.values()):.0f} s in all")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--skip-run", action="store_true", help="only regenerate the tables from --out")
    ap.add_argument("--preset", default="tiny", help="smollm2-135m: the real model's study (its own result files)")
    ap.add_argument("--study-flags", default="", help="extra apps.study flags, recorded with the result, e.g. "
                                                      "'--safety_steps 10 --patch_n_pairs 8'")
    ap.add_argument("--resume", action="store_true", help="continue the study in --out (a study longer than a "
                    "session); the table sums every stage's seconds")
    a = ap.parse_args()
    run = Path(a.out)
    tag = "" if a.preset == "tiny" else f"_{a.preset.split('-')[0]}"  # smollm2-135m -> study_smollm2.json
    timing_file = RESULTS / f"study{tag}.json"
    if a.skip_run:
        rec = json.loads(timing_file.read_text())
        timing, flags = rec["timing"], rec.get("flags", "")
    else:
        flags = a.study_flags
        timing = run_module("apps.study", ["--preset", a.preset, "--out", str(run),
                                           "--resume" if a.resume else "--overwrite", *flags.split()])
        timing_file.write_text(json.dumps({"machine": describe(), "timing": timing, "run": str(run), "flags": flags},
                                          indent=2))
    if tag:
        command = "`" + " ".join(["python -m apps.study --preset", a.preset, *flags.split()]) + "`"
        (RESULTS / f"study{tag}_table.md").write_text(study_table(run, timing, command, detail=True) + "\n")
        (RESULTS / f"{tag[1:]}_patch_table.md").write_text(patch_table(run) + "\n")
    else:
        (RESULTS / "study_table.md").write_text(study_table(run, timing) + "\n")
        (RESULTS / "probe_table.md").write_text(probe_table(run) + "\n")
        (RESULTS / "patch_table.md").write_text(patch_table(run) + "\n")
    print(f"study: {timing['wall_s']} s; tables written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
