"""Every number a study run reports, in one JSON, and the largest difference between two such files: the check that
a refactor changed no result (behaviour rates, probe AUROCs, patching effects, ablation rates, transfer, drift).

Usage::

    python benchmarks/study_numbers.py extract RUN_DIR OUT.json[.gz]
    python benchmarks/study_numbers.py diff BEFORE.json[.gz] AFTER.json[.gz]

Reads the run's files as plain JSON (not through ``analysis.results``), so that it reads runs of any version alike.
Timings, dates, paths and versions are left out: they differ between any two runs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
from pathlib import Path

SKIP = {"seconds", "timing_s", "created", "versions", "computed", "ckpt", "checkpoint_path", "path", "device",
        "attribution_speedup", "exact_info", "config", "parent_info", "analysis_pages", "stored_at", "prompts",
        "activations", "run"}


def _numbers(o, prefix: str, out: dict) -> None:
    """Flatten ``o`` to ``{dotted.path: number, bool or str}``, skipping the keys of :data:`SKIP`."""
    if isinstance(o, dict):
        for k, v in o.items():
            if k not in SKIP:
                _numbers(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(o, list):
        for i, v in enumerate(o):
            _numbers(v, f"{prefix}[{i}]", out)
    elif isinstance(o, (int, float, bool, str)) or o is None:
        out[prefix] = o


def extract(run: Path) -> dict:
    out: dict = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            _numbers({k: v for k, v in d.items() if k not in ("examples",)}, f"metrics.{d.get('checkpoint')}", out)
    for f in sorted((run / "analysis").glob("*/*.json")):
        if f.name in ("probe.json", "patch.json", "ablate.json"):
            _numbers(json.loads(f.read_text()), f"{f.parent.name}/{f.name}", out)
    cmp = run / "compare.json"
    if cmp.exists():
        _numbers(json.loads(cmp.read_text()), "compare.json", out)
    return out


def diff(a: dict, b: dict) -> dict:
    """Keys only in one file, values that differ (numbers: by more than 1e-9), and the largest numeric gap."""
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    changed, worst = [], 0.0
    for k in sorted(set(a) & set(b)):
        x, y = a[k], b[k]
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
            gap = abs(x - y) if math.isfinite(x) and math.isfinite(y) else (0.0 if x == y else math.inf)
            worst = max(worst, gap)
            if gap > 1e-9:
                changed.append((k, x, y))
        elif x != y:
            changed.append((k, x, y))
    return {"n_compared": len(set(a) & set(b)), "only_before": only_a, "only_after": only_b,
            "changed": changed, "max_abs_numeric_difference": worst}


def _read(p: Path) -> dict:
    return json.loads(gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("run", type=Path)
    e.add_argument("out", type=Path)
    d = sub.add_parser("diff")
    d.add_argument("before", type=Path)
    d.add_argument("after", type=Path)
    a = ap.parse_args()
    if a.cmd == "extract":
        nums = extract(a.run)
        text = json.dumps(nums, indent=0, sort_keys=True)
        a.out.write_bytes(gzip.compress(text.encode(), mtime=0)) if a.out.suffix == ".gz" else a.out.write_text(text)
        print(f"{len(nums)} numbers from {a.run} -> {a.out}")
        return 0
    r = diff(_read(a.before), _read(a.after))
    print(json.dumps({k: (v[:40] if isinstance(v, list) else v) for k, v in r.items()}, indent=1))
    return 0 if not (r["changed"] or r["only_before"] or r["only_after"]) else 1


if __name__ == "__main__":
    sys.exit(main())
