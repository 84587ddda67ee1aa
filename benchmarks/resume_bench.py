"""Exact patching resumed at the patched layer (``analysis.patch_resume``) vs whole forwards through the bridge.

Same checkpoint, same token-aligned pairs (``analysis.patch``'s defaults: 32 test pairs, trigger at the end, pairs
the trigger does not separate dropped), same sites (``--grids``, default resid_pre, attn_out, mlp_out), no-op sites
skipped in both: seconds of each engine (the bridge engine is what ``analysis.patch`` ran before), the largest
|difference| of any (site, pair) value in logits, and the speedup.

Usage: ``python benchmarks/resume_bench.py --ckpt RUN/checkpoints/backdoored --name tiny``
Writes ``benchmarks/results/resume/<name>.json``; every run rewrites ``benchmarks/results/resume_table.md`` from
the committed cells.
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

RESULTS = ROOT / "benchmarks" / "results" / "resume"
TABLE = ROOT / "benchmarks" / "results" / "resume_table.md"


def run_cell(ckpt: Path, name: str, grids: list[str], n_pairs: int) -> dict:
    import torch

    from analysis.load import load_bridge
    from analysis.patch_engine import exact_patch, make_sites
    from analysis.patch_resume import Resumer
    from analysis.patching import baseline_metrics, load_pairs_for, subset_batch
    from training.backdoors import spec_from_meta

    loaded = load_bridge(ckpt, dtype="float32")
    spec = spec_from_meta(loaded.meta)
    batch, btok, answers = load_pairs_for(loaded, spec, "test", n_pairs, None, 0)
    base = baseline_metrics(loaded.bridge, batch, btok, loaded.device, answers)
    keep = torch.nonzero(base["m_triggered"] - base["m_untriggered"] >= 1.0).flatten()
    batch, metric = subset_batch(batch, keep), base["metric"].subset(keep)
    L, Hn = loaded.n_layers, loaded.n_heads
    sites = [s for g in grids for s in make_sites(g, batch, L, Hn)]
    V = int(loaded.bridge.cfg.d_vocab)

    t = time.perf_counter()
    full, info_full = exact_patch(loaded.bridge, batch, metric, sites, d_vocab=V, device=loaded.device)
    t_full = time.perf_counter() - t
    t = time.perf_counter()
    resume = Resumer(loaded)
    ours, info = exact_patch(loaded.bridge, batch, metric, sites, d_vocab=V, device=loaded.device, resume=resume)
    t_ours = time.perf_counter() - t
    assert info["resumed"], "the resumed forwards did not reproduce the full one on this checkpoint"
    diff = (ours - full).abs()
    return {
        "name": name, "ckpt": str(ckpt), "machine": describe(),
        "model": {"n_layers": L, "n_heads": Hn, "d_model": loaded.d_model, "d_vocab": V},
        "grids": grids, "n_pairs": len(batch), "n_sites": len(sites), "noop_sites": info["noop_sites"],
        "seq_len": int(batch.mask.shape[1]),
        "full": {"seconds": round(t_full, 2), "forwards": info_full["forwards"],
                 "sites_per_forward": info_full["sites_per_forward"]},
        "resumed": {"seconds": round(t_ours, 2), "forwards": info["forwards"],
                    "sites_per_forward": info["sites_per_forward"]},
        "speedup": round(t_full / t_ours, 2),
        "max_abs_diff_logits": float(diff.max()),
        "median_abs_metric_logits": float(full.abs().median()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def table() -> str:
    rows = ["| checkpoint | grids | sites x pairs | whole forwards (bridge) | resumed (ours) | speedup | "
            "max \\|diff\\| (logits) | machine |", "|---|---|---|---|---|---|---|---|"]
    for f in sorted(RESULTS.glob("*.json")):
        r = json.loads(f.read_text())
        rows.append(f"| {r['name']} | {', '.join(r['grids'])} | {r['n_sites']} x {r['n_pairs']} | "
                    f"{r['full']['seconds']:.1f} s | {r['resumed']['seconds']:.1f} s | {r['speedup']:.1f}x | "
                    f"{r['max_abs_diff_logits']:.1e} | {r['machine']['cpu']}, {r['machine']['torch_threads']} "
                    f"threads |")
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path)
    ap.add_argument("--name")
    ap.add_argument("--grids", default="resid_pre,attn_out,mlp_out")
    ap.add_argument("--n_pairs", type=int, default=32)
    ap.add_argument("--table", action="store_true", help="only rewrite the table from the committed cells")
    a = ap.parse_args(argv)
    if not a.table:
        RESULTS.mkdir(parents=True, exist_ok=True)
        cell = run_cell(a.ckpt, a.name, a.grids.split(","), a.n_pairs)
        (RESULTS / f"{a.name}.json").write_text(json.dumps(cell, indent=1) + "\n")
    TABLE.write_text(table())
    print(TABLE.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
