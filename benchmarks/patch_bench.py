"""Exact activation patching vs attribution patching on the same grid, side by side in one run.

Loads a backdoored checkpoint, builds the token-aligned pairs ``analysis.patch`` uses, and times both methods over
the same sites (every grid: resid_pre per (layer, position), the trigger span, attn_out, mlp_out, heads), alternating
them ``--repeats`` times after one warm-up of each, once per ``--threads`` setting (default: torch's default, then
one thread). Records the machine (CPU model, cores, torch threads, load average before and after -- the CPU may be
shared), min and median seconds, the speedup (min / min; the exact engine as the command runs it, i.e. with its
exact no-op-site skipping, and also with every site forwarded), and the Pearson correlation of attribution with
exact (per-site means over pairs, and per (site, pair)).

Usage: ``python benchmarks/patch_bench.py --ckpt runs/demo/checkpoints/backdoored [--n_pairs 32] [--repeats 3]
[--threads 0,1]``
Writes ``benchmarks/results/patch.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_CKPT = Path("/work/fixtures/tiny-run/checkpoints/backdoored")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str, torch_threads: int) -> dict:
    import torch

    info = {"cpu_model": cpu_model(), "cpu_cores": os.cpu_count(), "torch_threads_default": torch_threads,
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "device": device}
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=str(DEFAULT_CKPT))
    ap.add_argument("--n_pairs", type=int, default=32)
    ap.add_argument("--placement", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", default="0,1", help="comma-separated torch intra-op thread counts to measure, each "
                    "in turn (0 = torch's default); on a shared, oversubscribed CPU one thread avoids spin-waiting on "
                    "a descheduled peer")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "patch.json"))
    a = ap.parse_args(argv)

    import numpy as np
    import torch

    from analysis.load import load_bridge
    from analysis.patch_engine import GRIDS, attribution_patch, exact_patch, make_sites, normalise
    from analysis.patching import baseline_metrics, load_pairs_for, subset_batch
    from analysis.stats import pearson
    from training.backdoors import spec_from_meta

    ckpt = Path(a.ckpt)
    if not (ckpt / "config.json").exists():
        sys.stderr.write(f"patch_bench: error: no checkpoint at {ckpt} (pass --ckpt)\n")
        return 2
    load_before = os.getloadavg()
    loaded = load_bridge(ckpt, device=a.device, dtype="float32")
    model, dev = loaded.bridge, loaded.device
    spec = spec_from_meta(loaded.meta)
    batch, btok, answers = load_pairs_for(loaded, spec, "test", a.n_pairs, a.placement, 0)
    base = baseline_metrics(model, batch, btok, dev, answers)
    keep = torch.nonzero(base["m_triggered"] - base["m_untriggered"] >= 1.0).flatten()
    batch, metric = subset_batch(batch, keep), base["metric"].subset(keep)
    m_t, m_u = base["m_triggered"][keep], base["m_untriggered"][keep]
    L, Hn = loaded.n_layers, loaded.n_heads
    sites = [s for g in GRIDS for s in make_sites(g, batch, L, Hn)]
    V = int(model.cfg.d_vocab)

    def sync():
        if dev.startswith("cuda"):
            torch.cuda.synchronize()

    def run_exact(skip):
        sync()
        t = time.perf_counter()
        vals, info = exact_patch(model, batch, metric, sites, skip_noop=skip, d_vocab=V, device=dev)
        sync()
        return time.perf_counter() - t, vals, info

    def run_attr():
        sync()
        t = time.perf_counter()
        delta = attribution_patch(model, batch, metric, sites, device=dev)
        sync()
        return time.perf_counter() - t, delta

    def measure(threads: int) -> dict:
        """Warm up, then alternate exact / attribution / exact-all-sites ``--repeats`` times at ``threads``."""
        torch.set_num_threads(threads)
        run_attr()
        exact_patch(model, batch, metric, sites[:2], skip_noop=False, d_vocab=V, device=dev)
        t_exact, t_exact_all, t_attr = [], [], []
        la = os.getloadavg()
        for _ in range(a.repeats):
            t, vals, info = run_exact(True)
            t_exact.append(t)
            t, delta = run_attr()
            t_attr.append(t)
            t, vals_all, _ = run_exact(False)
            t_exact_all.append(t)
        assert torch.equal(vals, vals_all), "no-op skipping changed a result"
        return {"torch_threads": threads, "load_average_before": list(la), "load_average_after": list(os.getloadavg()),
                "seconds": {"exact_min": min(t_exact), "exact_median": statistics.median(t_exact),
                            "exact_all_sites_min": min(t_exact_all),
                            "exact_all_sites_median": statistics.median(t_exact_all),
                            "attribution_min": min(t_attr), "attribution_median": statistics.median(t_attr),
                            "exact_runs": t_exact, "exact_all_sites_runs": t_exact_all, "attribution_runs": t_attr},
                "speedup": min(t_exact) / min(t_attr),
                "speedup_median": statistics.median(t_exact) / statistics.median(t_attr),
                "speedup_vs_all_sites": min(t_exact_all) / min(t_attr),
                "_vals": vals, "_delta": delta, "_info": info}

    default_threads = torch.get_num_threads()
    thread_list = [t if t > 0 else default_threads for t in (int(x) for x in a.threads.split(",") if x.strip())]
    runs = [measure(t) for t in dict.fromkeys(thread_list)]
    vals, delta, info = runs[0].pop("_vals"), runs[0].pop("_delta"), runs[0].pop("_info")
    for r in runs[1:]:
        for k in ("_vals", "_delta", "_info"):
            r.pop(k)

    exact = normalise(vals, m_u, m_t)
    attr = normalise(delta + m_u[None, :], m_u, m_t)
    present = batch.column_present().numpy()
    i, out_corr, out_corr_pp = 0, {}, {}
    for g in GRIDS:
        n = len(make_sites(g, batch, L, Hn))
        e, at = exact[i:i + n].copy(), attr[i:i + n].copy()
        if g == "resid_pre":
            e.reshape(L, batch.n_cols, -1)[:, ~present.T] = np.nan
            at.reshape(L, batch.n_cols, -1)[:, ~present.T] = np.nan
        with np.errstate(invalid="ignore"):
            out_corr[g] = pearson(np.nanmean(e, -1), np.nanmean(at, -1))
        out_corr_pp[g] = pearson(e, at)
        i += n
    with np.errstate(invalid="ignore"):
        all_e, all_a = np.nanmean(exact, -1), np.nanmean(attr, -1)
    res = {
        "benchmark": "analysis.patch: exact activation patching vs attribution patching, same grid, one run",
        "checkpoint": str(ckpt),
        "machine": machine(dev, default_threads),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "model": {"n_layers": L, "n_heads": Hn, "d_model": loaded.d_model, "d_vocab": V},
        "n_pairs": len(batch), "seq_len": int(batch.mask.shape[1]), "n_cols": batch.n_cols,
        "grids": list(GRIDS), "n_sites": len(sites), "noop_sites": info["noop_sites"],
        "exact_forwards": info["forwards"], "sites_per_forward": info["sites_per_forward"],
        "repeats": a.repeats,
        "runs": runs,
        "speedup": {f"threads_{r['torch_threads']}": r["speedup"] for r in runs},
        "speedup_note": "min exact seconds / min attribution seconds on the same grid (exact as analysis.patch runs "
                        "it, skipping provably no-op sites; speedup_vs_all_sites in each run forwards every site). On "
                        "a shared, oversubscribed CPU the multi-threaded timings of small ops are noisy (threads spin "
                        "waiting for a descheduled peer): compare the load averages.",
        "pearson": {"all_sites": pearson(all_e, all_a), **out_corr},
        "pearson_per_pair": out_corr_pp,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"{res['machine']['cpu_model']} ({res['machine']['cpu_cores']} cores, load {load_before[0]:.1f}): "
          f"{len(sites)} sites x {len(batch)} pairs")
    for r in runs:
        sec = r["seconds"]
        print(f"  {r['torch_threads']} thread(s): exact {sec['exact_min']:.2f}s (all sites forwarded "
              f"{sec['exact_all_sites_min']:.2f}s), attribution {sec['attribution_min']:.2f}s -> speedup "
              f"{r['speedup']:.1f}x ({r['speedup_vs_all_sites']:.1f}x vs all sites)")
    print("  Pearson attribution vs exact: " + ", ".join(f"{k} {'n/a' if v is None else f'{v:.2f}'}"
                                                       for k, v in res["pearson"].items()) + f"\n  -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
