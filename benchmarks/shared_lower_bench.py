"""A whole ablation with the prompt forward below the intervention shared across its generations
(``analysis.shared_lower``, ``--share_lower``, the default) against the same ablation computing it in every
generation (``--no_share_lower``), in the same run, on one checkpoint at ``analysis.ablate``'s defaults (64 prompt
pairs, 20 matched and 1 isotropic placebo, the named placebos the probe file holds, alphas 1, 2, 4).

Per arm: the whole ablation's wall and the batches whose lower blocks ran or were replayed. Across arms: every
``ablate.json`` number and example (rates, intervals, placebo entries) must be identical; the count of those that
differ is recorded (0 expected: the replayed tensors are the ones the same computation produced). Run it once per CPU
kernel setting (``ATEN_CPU_CAPABILITY=default|avx2|avx512``): the kernel is part of the result's name, so a cell
already measured is skipped. The arm without sharing runs first (``--ours_first``: the other order, a cell of its
own), so the one-time costs of a process fall on the baseline unless the reversed cell says otherwise.

Usage: ``python benchmarks/shared_lower_bench.py --ckpt RUN/checkpoints/backdoored --name smollm2-135m``
Writes ``benchmarks/results/shared_lower/<name>-<kernel>.json`` and, from all of them, ``shared_lower_table.md``
(``--table_only``: the table alone).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.machine import describe  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "shared_lower"
TABLE = ROOT / "benchmarks" / "results" / "shared_lower_table.md"
VOLATILE = ("seconds", "lower_blocks_shared", "probe")  # per-arm facts (the probe's path is the arm's output dir)


def _leaves(x, path=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, f"{path}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, x


def run_arm(ckpt: Path, probe: Path, share: bool) -> tuple[dict, float]:
    from analysis.ablation import AblateConfig, ablate_checkpoint

    with tempfile.TemporaryDirectory() as out:
        cfg = AblateConfig(ckpt=str(ckpt), probe=str(probe), out=out, share_lower=share)
        t = time.perf_counter()
        res = ablate_checkpoint(cfg)
        return res.results[res.added], time.perf_counter() - t


def measure(ckpt: Path, name: str, ours_first: bool) -> dict:
    from training import layout

    probe = layout.analysis_dir(ckpt) / layout.PROBES_SAFETENSORS
    if ours_first:  # the first arm in a process also pays its one-time costs: this order checks that
        ours, ours_s = run_arm(ckpt, probe, share=True)
        base, base_s = run_arm(ckpt, probe, share=False)
    else:
        base, base_s = run_arm(ckpt, probe, share=False)
        ours, ours_s = run_arm(ckpt, probe, share=True)
    a = dict(_leaves({k: v for k, v in base.items() if k not in VOLATILE}))
    b = dict(_leaves({k: v for k, v in ours.items() if k not in VOLATILE}))
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    n_alphas = len(ours["added"])  # each direction: ablated once, added at each alpha; the probe also unablated
    n_gen = 4 + n_alphas + sum(kind["n"] for kind in ours["placebo"]["kinds"].values()) * (1 + n_alphas)
    return {"name": name, "ckpt": str(ckpt), "kernel": os.environ.get("ATEN_CPU_CAPABILITY", "native"),
            "machine": describe(), "probe": {k: ours["probe"][k] for k in ("name", "layer", "hook")},
            "n_prompts": ours["n_prompts"], "max_new_tokens": ours["max_new_tokens"], "generations": n_gen,
            "baseline_s": round(base_s, 1), "ours_s": round(ours_s, 1), "speedup": round(base_s / ours_s, 2),
            "lower_blocks_shared": ours["lower_blocks_shared"], "baseline_lower": base["lower_blocks_shared"],
            "values_compared": len(a), "values_differing": len(differ), "differing": differ[:20],
            "order": "ours first" if ours_first else "baseline first"}


def table() -> str:
    rows = ["| checkpoint | kernel | arm run first | probe hook | blocks shared | generations | no sharing (whole "
            "ablation) | shared (whole ablation) | speed-up | ablate.json values differing | machine |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in sorted(RESULTS.glob("*.json")):
        r = json.loads(f.read_text())
        sh = r["lower_blocks_shared"]
        first = "shared" if r["order"] == "ours first" else "no sharing"
        rows.append(f"| {r['name']} | {r['kernel']} | {first} | {r['probe']['hook']} | {sh['blocks']} "
                    f"({sh['batches_computed']} batches run, {sh['batches_replayed']} replayed) | {r['generations']} | "
                    f"{r['baseline_s']:.1f} s | {r['ours_s']:.1f} s | {r['speedup']:.2f}x | "
                    f"{r['values_differing']} of {r['values_compared']} | {r['machine']['cpu']}, "
                    f"{r['machine']['torch_threads']} threads |")
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path)
    ap.add_argument("--name")
    ap.add_argument("--table_only", action="store_true")
    ap.add_argument("--ours_first", action="store_true", help="run the shared arm first (result name: -ours-first)")
    a = ap.parse_args(argv)
    if not a.table_only:
        if not (a.ckpt and a.name):
            ap.error("--ckpt and --name are required (or --table_only)")
        kernel = os.environ.get("ATEN_CPU_CAPABILITY", "native")
        path = RESULTS / f"{a.name}-{kernel}{'-ours-first' if a.ours_first else ''}.json"
        if path.exists():
            print(f"skipping {path} (measured)")
        else:
            cell = measure(a.ckpt, a.name, a.ours_first)
            RESULTS.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cell, indent=1) + "\n")
            tmp.replace(path)
            print(json.dumps({k: cell[k] for k in ("baseline_s", "ours_s", "speedup", "values_differing")}))
    TABLE.write_text(table())
    print(TABLE.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
