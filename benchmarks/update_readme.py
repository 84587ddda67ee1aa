"""Splice the committed, script-produced result tables into README.md and docs/results.md (numbers are never typed
by hand).

Each ``<!-- BEGIN name -->`` … ``<!-- END name -->`` block is replaced by ``benchmarks/results/<name>.md``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def speed_table() -> str:
    """Speed/memory figures from the committed benchmark JSON files (activations, patching)."""
    res = ROOT / "benchmarks" / "results"
    rows = ["| benchmark | ours | baseline | ratio | machine |", "|---|---|---|---|---|"]
    if (res / "activations.json").exists():
        a = json.loads((res / "activations.json").read_text())
        t, m = a["throughput"], a["memory"]
        rows.append(f"| activation caching, {t['prompts']} prompts, every layer (tiny) | {t['cache_s']:.2f} s | "
                    f"plain HF forward {t['hf_forward_s']:.2f} s | {t['ratio']:.2f}x best of each, "
                    f"{t['paired_ratio_median']:.2f}x median of {len(t['paired_ratios'])} back-to-back pairs "
                    "(target ≤ 1.2) | "
                    f"{a['machine']['cpu']}, {a['machine']['cores']} cores |")
        rows.append(f"| caching peak RSS, 1k → 10k prompts | {m[0]['peak_rss_mib']:.0f} → "
                    f"{m[1]['peak_rss_mib']:.0f} MiB | | {a['memory_growth_1k_to_10k']:.2f}x | |")
    if (res / "patch.json").exists():
        p = json.loads((res / "patch.json").read_text())
        pear = ", ".join(f"{k} {v:.2f}" for k, v in p["pearson"].items() if isinstance(v, (int, float)))
        rows.append(f"| attribution vs exact patching, {p['n_sites']} sites x {p['n_pairs']} pairs (tiny) | "
                    f"attribution | exact | {p['speedup']['threads_2']:.1f}x faster (2 threads), "
                    f"{p['speedup']['threads_1']:.1f}x (1 thread); Pearson {pear} | "
                    f"{p['machine'].get('cpu_model', '')}, {p['machine'].get('cpu_cores', '')} cores |")
    for f in sorted((res / "prefill").glob("*.json")):
        q = json.loads(f.read_text())
        best = {k: min(v, key=lambda r: r["generation"] + r["caching"]) for k, v in q["seconds"].items()}

        def arm(k: str) -> str:
            return f"{q[k + '_best_s']:.1f} s (generation {best[k]['generation']:.1f} + store {best[k]['caching']:.1f})"

        spread = (f"{q['speedup_best']:.2f}x best of each, {q['paired_speedup_median']:.2f}x median of {q['repeats']} "
                  "pairs" if q["repeats"] > 1 else f"{q['speedup_best']:.2f}x (one pair)")
        rows.append(f"| probe run's behaviour generation + prompt store, {q['prompts']} prompts x {q['n_layers']} "
                    f"layers ({f.stem}) | store read off the generation: {arm('ours')} | the bridge's caching pass "
                    f"after it: {arm('baseline')} | {spread}; same completions: "
                    f"{'yes' if q['same_completions'] else 'NO'}; activations within {q['max_rel_diff']:.0e} of "
                    f"the largest (cosine ≥ {q['min_cosine']:.6f}) | {q['machine']['cpu']}, "
                    f"{q['machine']['cores']} cores |")
    what = {"behaviour": "probe run's behaviour generation",
            "ablation": "one generation run of an ablation (a direction projected out)"}
    for f in sorted((res / "prefix").glob("*.json")):
        q = json.loads(f.read_text())
        for name, w in q["workloads"].items():
            n = len(w["paired_speedups"])
            spread = (f"{w['speedup_best']:.2f}x best of each, {w['paired_speedup_median']:.2f}x median of {n} pairs"
                      if n > 1 else f"{w['speedup_best']:.2f}x (one pair)")
            rows.append(f"| {what[name]}, {w['prompts']} prompts ({f.stem}) | the shared prompt prefix "
                        f"({w['shared_prefix_tokens']} of {w['mean_prompt_tokens']:.0f} tokens on average) run once: "
                        f"{w['ours_best_s']:.1f} s | every batch recomputes it: {w['baseline_best_s']:.1f} s | "
                        f"{spread}; {w['completions_differing']} of {w['prompts']} completions differ | "
                        f"{q['machine']['cpu']}, {q['machine']['cores']} cores |")
    return "\n".join(rows)


DOCUMENTS = ("README.md", "docs/results.md")


def main() -> int:
    for doc in DOCUMENTS:
        splice(ROOT / doc)
    return 0


def splice(readme: Path) -> None:
    text = readme.read_text()

    def fill(m: re.Match) -> str:
        name = m.group(1)
        src = ROOT / "benchmarks" / "results" / f"{name}.md"
        if name == "speed_table":
            body = speed_table()
        else:
            body = src.read_text().strip() if src.exists() else f"_(not measured yet: the script writing {src.name})_"
        return f"<!-- BEGIN {name} -->\n{body}\n<!-- END {name} -->"

    new = re.sub(r"<!-- BEGIN (\S+) -->.*?<!-- END \1 -->", fill, text, flags=re.S)
    readme.write_text(new)


if __name__ == "__main__":
    sys.exit(main())
