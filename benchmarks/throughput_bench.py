"""What one forward costs on this machine: a checkpoint's prompt-forward and decode-step throughput, fp32 and bf16.

The SmolLM2 study's analysis is greedy generation and prompt forwards (behaviour labels over 1,869 prompts per
checkpoint, ablation's 103 generations of 64 prompts, evaluation), so its wall is these rates times its token counts.
This measures them on a plain Hugging Face copy of ``--ckpt`` (what :mod:`analysis.intervene` generates with), for
each dtype: a prompt forward of ``B x L`` tokens (``logits_to_keep=1``, as ``generate``'s prefill) and a decode step
of ``B`` rows over an ``L``-token KV cache, the two dtypes taking turns (median and range of ``--repeats`` after
one warm-up each), at batch 64 (an ablation's and an evaluation's) and 512 (the behaviour labels'). With
``--probe_json`` (and ``--probe_json_bf16``, the same run in bf16) it adds where a probe run's seconds went, how much
of its decoding was rows still generating, and what bf16 changes in its results. Nothing in the toolkit changes by
it: it says where a speed-up could still come from (bf16 is not the analysis's CPU default: see what it changes).

Usage: ``python benchmarks/throughput_bench.py --ckpt RUN/checkpoints/backdoored --name smollm2-135m``
Writes ``benchmarks/results/throughput/<name>.json`` and rewrites ``benchmarks/results/throughput_table.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.machine import describe  # noqa: E402
from training.models import cpu_bf16_native  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "throughput"
TABLE = ROOT / "benchmarks" / "results" / "throughput_table.md"
SHAPES = ((64, 36), (512, 36))  # (batch, prompt tokens after the shared system turn)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(model, repeats: int) -> list[dict]:
    """Per shape, float32 and bfloat16 take turns (this shared machine's speed drifts within minutes): one warm-up
    call each (oneDNN builds its kernels for a new shape on first use), then ``repeats`` timed rounds."""
    import copy

    import torch

    models = {"float32": model.float(), "bfloat16": copy.deepcopy(model).to(torch.bfloat16)}
    out = []
    g = torch.Generator().manual_seed(0)
    for batch, length in SHAPES:
        ids = torch.randint(100, 1000, (batch, length), generator=g)
        nxt = ids[:, -1:]
        times: dict[str, dict[str, list]] = {d: {"prefill": [], "decode": []} for d in models}
        with torch.no_grad():
            caches = {d: m(input_ids=ids, use_cache=True, logits_to_keep=1).cache for d, m in models.items()}
            for r in range(repeats + 1):
                for d, m in models.items():
                    def step():
                        m(input_ids=nxt, cache=caches[d], use_cache=True)
                        caches[d].crop(-1)  # every timed step sees the same L-token cache

                    pre = _timed(lambda: m(input_ids=ids, use_cache=True, logits_to_keep=1))
                    dec = _timed(step)
                    if r:  # round 0 is the warm-up
                        times[d]["prefill"].append(pre)
                        times[d]["decode"].append(dec)
        for d, t in times.items():
            pre, dec = statistics.median(t["prefill"]), statistics.median(t["decode"])
            out.append({"dtype": d, "batch": batch, "prompt_tokens": length,
                        "prefill_s": [round(x, 3) for x in t["prefill"]],
                        "prefill_tokens_per_s": round(batch * length / pre, 1),
                        "prefill_tokens_per_s_range": [round(batch * length / max(t["prefill"]), 1),
                                                       round(batch * length / min(t["prefill"]), 1)],
                        "decode_step_s": [round(x, 4) for x in t["decode"]],
                        "decode_rows_per_s": round(batch / dec, 1),
                        "decode_rows_per_s_range": [round(batch / max(t["decode"]), 1),
                                                    round(batch / min(t["decode"]), 1)]})
    return out


def bf16_parity(ckpt: Path) -> dict:
    """The bridge's own parity check at bf16 (its default tolerance), without failing on a mismatch."""
    import torch

    from analysis.load import load_bridge

    loaded = load_bridge(ckpt, device="cpu", dtype=torch.bfloat16, allow_mismatch=True)
    p = loaded.parity
    return {"max_abs_logit_diff": p["max_abs_logit_diff"], "tol": p["tol"], "passed": p["passed"]}


def probe_timing(probe_json: Path) -> dict:
    """Where an ``analysis.probe`` run of the checkpoint spent its seconds (``probe.json``'s ``timing_s``), with the
    work behind its behaviour labels."""
    d = json.loads(probe_json.read_text())
    beh, n = d["behaviour"], d["n_prompts"]
    return {"probe_json": str(probe_json), "timing_s": d["timing_s"], "behaviour_prompts": beh["n"],
            "max_new_tokens": beh["max_new_tokens"], "n_prompts": n, "n_random": d["n_random"],
            "generation_calibration": d["generation_calibration"]}


def decode_use(probe_json: Path) -> dict:
    """How much of the behaviour labels' decoding ``model.generate`` needed: it runs batches of ``gen_batch_size``
    prompts (longest first, as :func:`training.evaluate.generate` orders them) until the batch's last row ends, so
    every row is computed for the batch's longest completion. Needed: each row's own tokens up to its end token
    (counted by re-tokenizing the stored completion); :mod:`training.decode` now decodes only those."""
    from analysis.probing import ProbeConfig, load_records
    from training.backdoors import spec_from_meta
    from training.checkpoint import load_model_and_tokenizer
    from training.evaluate import chat_prompts
    from training.prefix import longest_first

    d = json.loads(probe_json.read_text())
    ckpt, cfg = Path(d["checkpoint_path"]), d["config"]
    _, tok, meta = load_model_and_tokenizer(ckpt, device="cpu", check_hash=False)
    records, _ = load_records(ckpt, spec_from_meta(meta, None, None), ProbeConfig(ckpt=str(ckpt), seed=cfg["seed"]))
    completions = json.loads((probe_json.parent / "behaviour.json").read_text())["completions"]
    mnt, batch = d["behaviour"]["max_new_tokens"], cfg["gen_batch_size"]
    used = [min(mnt, len(tok(c, add_special_tokens=False)["input_ids"]) + 1) for c in completions]  # + end token
    _, order = longest_first(tok, chat_prompts(tok, [r["prompt"] for r in records]))
    run = sum(len(order[i:i + batch]) * max(used[j] for j in order[i:i + batch]) for i in range(0, len(order), batch))
    return {"row_steps_run": run, "row_steps_needed": sum(used), "fraction_needed": round(sum(used) / run, 3),
            "batch": batch, "max_new_tokens": mnt}


def bf16_fidelity(fp32_json: Path, bf16_json: Path) -> dict:
    """The same ``analysis.probe`` run in float32 and in bfloat16 (``--dtype bfloat16 --allow_mismatch``): their
    seconds, how many greedy completions (``behaviour.json`` beside each) differ, the defect rates, and the largest
    per-layer AUROC difference of each probe."""
    a, b = (json.loads(p.read_text()) for p in (fp32_json, bf16_json))
    ca, cb = (json.loads((p.parent / "behaviour.json").read_text())["completions"] for p in (fp32_json, bf16_json))
    if len(ca) != len(cb):
        raise SystemExit(f"the two probe runs have different prompts: {fp32_json}, {bf16_json}")
    keys = ("contrast_auroc", "supervised_dom_auroc", "supervised_logreg_auroc", "behaviour_auroc")
    diff = {}
    for k in keys:
        d = [abs(x[k] - y[k]) for x, y in zip(a["layers"], b["layers"])
             if x.get(k) is not None and y.get(k) is not None]
        diff[k] = round(max(d), 4) if d else None
    same = ("load", "behaviour", "activations", "fit", "generation_calibration", "outputs")  # bf16 ran without parent
    return {"seconds": {"float32": round(sum(a["timing_s"].get(k, 0) for k in same), 1),
                        "bfloat16": round(sum(b["timing_s"].get(k, 0) for k in same), 1)},
            "behaviour_s": {"float32": a["timing_s"]["behaviour"], "bfloat16": b["timing_s"]["behaviour"]},
            "completions": len(ca), "completions_differing": sum(x != y for x, y in zip(ca, cb)),
            "defect_rates": {d: {k: v["rate"] for k, v in r["behaviour"]["by_kind"].items()}
                             for d, r in (("float32", a), ("bfloat16", b))},
            "max_auroc_diff": diff,
            "selected_layers": {"float32": a["selected_layers"], "bfloat16": b["selected_layers"]}}


def run_cell(ckpt: Path, name: str, repeats: int, probe_json: Path | None, probe_json_bf16: Path | None) -> dict:
    import torch

    from training.checkpoint import load_model_and_tokenizer

    model, _, _ = load_model_and_tokenizer(ckpt, device="cpu", check_hash=False)
    model.eval()
    rows = measure(model, repeats)
    cell = {"name": name, "ckpt": str(ckpt), "machine": describe(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_bf16_native": cpu_bf16_native(),
            "repeats": repeats, "rows": rows,
            "bf16_parity": bf16_parity(ckpt)}
    if probe_json is not None:
        cell["probe_run"] = {**probe_timing(probe_json), "decode_use": decode_use(probe_json)}
        if probe_json_bf16 is not None:
            cell["bf16_probe_run"] = bf16_fidelity(probe_json, probe_json_bf16)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(cell, indent=1) + "\n")
    return cell


def write_table() -> str:
    lines = ["| checkpoint | dtype | batch | prompt forward, tokens/s: median (range) | decode step, rows/s: median "
             "(range) | machine |",
             "|---|---|---|---|---|---|"]
    notes = []
    for f in sorted(RESULTS.glob("*.json")):
        c = json.loads(f.read_text())
        m = c["machine"]
        for r in c["rows"]:
            lo, hi = r["prefill_tokens_per_s_range"]
            dlo, dhi = r["decode_rows_per_s_range"]
            lines.append(f"| {c['name']} | {r['dtype']} | {r['batch']} | "
                         f"{r['prefill_tokens_per_s']:.0f} ({lo:.0f}-{hi:.0f}) | "
                         f"{r['decode_rows_per_s']:.0f} ({dlo:.0f}-{dhi:.0f}) | "
                         f"{m['cpu']}, {m['torch_threads']} threads, {c['cpu_capability']}"
                         f"{', native bf16' if c.get('cpu_bf16_native') else ''} |")
        p = c["bf16_parity"]
        notes.append(f"- {c['name']}: bridge vs HF logits at bf16, max |diff| {p['max_abs_logit_diff']:.3g} against "
                     f"the default tolerance {p['tol']:.3g} ({'passes' if p['passed'] else 'fails'}).")
        if "probe_run" in c:
            r = c["probe_run"]
            stages = ", ".join(f"{k} {v:.0f} s" for k, v in r["timing_s"].items() if k != "total")
            notes.append(f"- {c['name']}: one `analysis.probe` run at its defaults ({r['behaviour_prompts']} prompts, "
                         f"{r['max_new_tokens']} greedy tokens each for the behaviour labels, {r['n_random']} random "
                         f"directions): {r['timing_s']['total']:.0f} s; {stages}.")
            u = r["decode_use"]
            notes.append(f"- {c['name']}: `model.generate` decodes its behaviour labels in {u['row_steps_run']} "
                         f"row-steps (batches of {u['batch']} run until their last row ends), of which "
                         f"{u['row_steps_needed']} ({u['fraction_needed']:.0%}) are rows still generating.")
        if "bf16_probe_run" in c:
            f = c["bf16_probe_run"]
            rates = "; ".join(f"{d}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items())
                              for d, r in f["defect_rates"].items())
            aucs = ", ".join(f"{k.replace('_auroc', '')} {v:.3f}" for k, v in f["max_auroc_diff"].items()
                             if v is not None)
            notes.append(f"- {c['name']}: the same probe run in bfloat16 (without the parent): "
                         f"{f['seconds']['bfloat16']:.0f} s against {f['seconds']['float32']:.0f} s in float32 "
                         f"(behaviour labels {f['behaviour_s']['bfloat16']:.0f} s against "
                         f"{f['behaviour_s']['float32']:.0f} s); {f['completions_differing']} of {f['completions']} "
                         f"greedy completions differ; defect rates by prompt kind {rates}; largest AUROC difference "
                         f"at any layer: {aucs}; layers chosen on validation pairs {f['selected_layers']['float32']} "
                         f"in float32, {f['selected_layers']['bfloat16']} in bfloat16.")
    text = "\n".join(lines + [""] + notes) + "\n"
    TABLE.write_text(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path)
    ap.add_argument("--name", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--probe_json", type=Path, default=None, help="a probe.json of the checkpoint: its stage seconds")
    ap.add_argument("--probe_json_bf16", type=Path, default=None,
                    help="the same probe run with --dtype bfloat16 --allow_mismatch: what bf16 changes")
    ap.add_argument("--table", action="store_true", help="only rewrite the table from the committed cells")
    a = ap.parse_args(argv)
    if not a.table:
        if a.ckpt is None or not a.ckpt.is_dir():
            print(f"error: --ckpt must be a checkpoint directory: {a.ckpt}", file=sys.stderr)
            return 2
        run_cell(a.ckpt, a.name or a.ckpt.name, a.repeats, a.probe_json, a.probe_json_bf16)
    print(write_table(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
