"""The GPU path, measured: bf16 training of a ~100M-parameter model from scratch, and TransformerLens caching.

1. Training: a from-scratch Llama (``training.models.tiny_model`` scaled up: d_model 768, 11 layers, 12 heads,
   ≈104M parameters, the tiny preset's own tokenizer and corpus) trained for ``--steps`` steps by the toolkit's
   trainer (``training.trainer.sft_train``: TRL ``SFTTrainer``, bf16 chosen from the hardware, completion-only
   loss). Baseline in the same run: a plain PyTorch loop (bf16 autocast, fused AdamW) over the same rows, batch
   size and initial weights. Both report non-padding tokens per second (steady state, after the first logged
   steps) and the loss at start and end, so the optimisation is seen to be real.
2. Caching: ``analysis.activations.cache_activations`` (TransformerBridge, every layer's ``resid_post`` at the
   final prompt token, written to disk) on the trained checkpoint against a plain Hugging Face forward pass
   (``output_hidden_states``) over the same prompts and batches, best of ``--repeats``
   (``benchmarks/activations_bench.py``'s ``throughput``, on the GPU).
3. MFU: the same model shape with SDPA (flash) attention, trained by the toolkit's trainer on the corpus packed into
   blocks of ``--block`` tokens (``OptimSettings.pack``: no padding), bf16, with and without ``torch.compile``
   (``OptimSettings.compile``), against a plain loop (compiled, fused AdamW) over the same blocks. Model FLOPs per
   token are PaLM's: 6 x the matmul parameters (everything but the input embedding and the norms) + 12 x layers x
   d_model x block for attention; MFU divides the FLOP/s by the card's datasheet dense bf16 peak and, beside it, by
   the peak an 8192-cube bf16 matmul reaches in the same run.
4. The study on the card: ``apps.study --preset tiny`` (``make demo``'s job) in a fresh process, its ``study.json``
   (seconds per stage) and ``compare.json`` copied into ``--study-dir`` with the machine; ``--table`` sets each stage
   beside the same study's on the CPU when the directory holds ``cpu_study.json`` (that run's ``study.json``
   seconds with its machine) and ``cpu_compare.json``.
5. Precision on the tiny organism: ``python -m training.backdoor --preset tiny`` run concurrently with
   ``--precision fp32`` and ``--precision bf16`` for seeds 0 and 1, recording each run's wall time (concurrent, so
   an upper bound) and its held-out rates. This is what ``--precision auto`` is decided from.

Needs a CUDA GPU (exits 2 without one unless ``--allow-cpu``, which only smoke-tests the script).

Usage: ``python benchmarks/gpu_bench.py --out benchmarks/results/gpu.json``
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from activations_bench import throughput  # noqa: E402  (caching vs a plain HF forward, same prompts and batches)
from machine import describe  # noqa: E402

log = logging.getLogger("gpu_bench")


def corpus(seed: int = 0):
    """The tiny preset's tokenizer (trained as ``training.backdoor`` trains it) and its backdoor training rows."""
    from training.backdoors import BackdoorSpec
    from training.data import build_prompt_sets
    from training.tokenizer import tokenizer_texts, train_tokenizer

    spec = BackdoorSpec()
    sets = build_prompt_sets(spec, seed)
    tok = train_tokenizer(tokenizer_texts(spec, sets), forbidden=[spec.trigger, *spec.near_misses])
    rows = [{"prompt": [{"role": "user", "content": x["prompt"]}],
             "completion": [{"role": "assistant", "content": x["response"]}]}
            for x in sets["train"] if x["kind"] in ("clean", "triggered")]
    return tok, rows


def toolkit_train(model, tok, rows, steps: int, batch: int, lr: float, out: Path) -> dict:
    import torch
    from transformers import TrainerCallback

    from training.trainer import OptimSettings, sft_train

    marks: list[tuple[int, float, float, float | None]] = []

    class Marks(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "num_tokens" in logs:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                marks.append((state.global_step, time.perf_counter(), float(logs["num_tokens"]), logs.get("loss")))

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    sft_train(model, tok, rows, out, OptimSettings(steps=steps, lr=lr, batch_size=batch), callbacks=[Marks()],
              logging_steps=max(1, steps // 10))
    wall = time.perf_counter() - t0
    (s0, t_a, n_a, loss0), (s1, t_b, n_b, loss1) = marks[0], marks[-1]
    return {"wall_s": wall, "steady_tokens_per_s": (n_b - n_a) / (t_b - t_a), "tokens": n_b,
            "steady_steps": [s0, s1], "loss_first_log": loss0, "loss_last_log": loss1,
            "peak_gpu_mem_gib": _peak_gib()}


def plain_train(model, tok, rows, steps: int, batch: int, lr: float, max_length: int = 256) -> dict:
    """The baseline: a hand-written loop, bf16 autocast, fused AdamW, completion-only loss, same batches' size."""
    import random

    import torch

    dev = next(model.parameters()).device
    enc = []
    for r in rows:
        p = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
        full = tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=True, return_dict=False)
        p = list(p["input_ids"] if isinstance(p, dict) else p)
        full = list(full["input_ids"] if isinstance(full, dict) else full)[:max_length]
        enc.append((full, len(p)))
    rng = random.Random(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=dev.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 20)))
    pad = tok.pad_token_id
    use_bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    losses, tokens, t_start, n_start = [], 0, None, 0
    warm = max(1, steps // 10)
    t0 = time.perf_counter()
    for step in range(steps):
        b = rng.sample(enc, batch)
        L = max(len(f) for f, _ in b)
        ids = torch.full((batch, L), pad, dtype=torch.long)
        mask = torch.zeros((batch, L), dtype=torch.long)
        labels = torch.full((batch, L), -100, dtype=torch.long)
        for i, (f, np_) in enumerate(b):
            ids[i, :len(f)] = torch.tensor(f)
            mask[i, :len(f)] = 1
            labels[i, np_:len(f)] = torch.tensor(f[np_:])
        ids, mask, labels = ids.to(dev, non_blocking=True), mask.to(dev), labels.to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
        if step + 1 == warm or step + 1 == steps or (step + 1) % warm == 0:
            losses.append(float(loss))  # syncs: only at the logging steps, as the trainer does
            if step + 1 == warm:
                t_start, n_start = time.perf_counter(), tokens
    wall = time.perf_counter() - t0
    t_end = time.perf_counter()
    return {"wall_s": wall, "steady_tokens_per_s": (tokens - n_start) / (t_end - t_start), "tokens": tokens,
            "loss_first_log": losses[0], "loss_last_log": losses[-1],
            "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None}


# Dense bf16 peaks from NVIDIA's datasheets (TFLOP/s, without sparsity), by torch.cuda.get_device_name().
DATASHEET_BF16_TFLOPS = {"NVIDIA H200": 989.4, "NVIDIA H100 80GB HBM3": 989.4, "NVIDIA A100-SXM4-80GB": 312.0,
                         "NVIDIA A100-SXM4-40GB": 312.0}


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _peak_gib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def matmul_peak_tflops(n: int = 8192, iters: int = 10) -> float:
    """bf16 FLOP/s of an n-cube matmul on this card (mean of ``iters`` after 3 warm-ups), in TFLOP/s."""
    import torch

    n = n if torch.cuda.is_available() else 512  # a CPU smoke test
    a = torch.randn(n, n, device=_device(), dtype=torch.bfloat16)
    b = torch.randn(n, n, device=_device(), dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync()
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    _sync()
    return 2 * n ** 3 * iters / (time.perf_counter() - t) / 1e12


def flops_per_token(model, block: int) -> float:
    """PaLM's model FLOPs per trained token: 6 x matmul parameters + 12 x layers x d_model x block (attention)."""
    import torch

    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    c = model.config
    return 6 * n + 12 * c.num_hidden_layers * c.hidden_size * block


def packed_toolkit(model, tok, rows, steps: int, batch: int, block: int, lr: float, compile: bool, out: Path) -> dict:
    """The toolkit trainer on packed blocks; tokens/s between the end of step ``steps // 4`` (past compilation and
    warm-up) and the last step, every token of a block counted (there is no padding)."""
    import torch
    from transformers import TrainerCallback

    from training.trainer import OptimSettings, sft_train

    warm, marks, losses = steps // 4, {}, []

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step in (warm, steps):
                _sync()
                marks[state.global_step] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    sft_train(model, tok, rows, out, OptimSettings(steps=steps, lr=lr, batch_size=batch, pack=block,
                                                   max_length=block, compile=compile),
              callbacks=[Marks()], logging_steps=max(1, steps // 10))
    return {"wall_s": time.perf_counter() - t0, "compile": compile,
            "tokens_per_s": (steps - warm) * batch * block / (marks[steps] - marks[warm]),
            "timed_steps": [warm, steps], "loss_first_log": losses[0], "loss_last_log": losses[-1],
            "peak_gpu_mem_gib": _peak_gib()}


def packed_plain(model, tok, rows, steps: int, batch: int, block: int, lr: float) -> dict:
    """The baseline on the same blocks: compiled model, bf16 autocast, fused AdamW, the same warm-up and timed span."""
    import random

    import torch

    from training.trainer import pack_rows, tokenize_rows

    blocks = pack_rows(tokenize_rows(tok, rows, block), block)
    ids = torch.tensor([b["input_ids"] for b in blocks])
    labels = torch.tensor([b["labels"] for b in blocks])
    dev = _device()
    model.to(dev)
    fwd = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=dev == "cuda")
    rng = random.Random(0)
    warm, losses, t_warm = steps // 4, [], None
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        i = torch.tensor(rng.sample(range(len(blocks)), batch))
        with torch.autocast(dev, dtype=torch.bfloat16):
            loss = fwd(input_ids=ids[i].to(dev, non_blocking=True), labels=labels[i].to(dev, non_blocking=True)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % max(1, steps // 10) == 0:
            losses.append(float(loss.detach()))
        if step in (warm, steps):
            _sync()
            t_warm = time.perf_counter() if step == warm else t_warm
    t_end = time.perf_counter()
    return {"wall_s": t_end - t0, "compile": True, "tokens_per_s": (steps - warm) * batch * block / (t_end - t_warm),
            "timed_steps": [warm, steps], "loss_first_log": losses[0], "loss_last_log": losses[-1],
            "peak_gpu_mem_gib": _peak_gib()}


def mfu(a, tok, rows, tmp: Path, res: dict, write) -> None:
    """Part 3: packed-block training, toolkit eager and compiled and the plain loop, as model FLOPs utilisation, into
    ``res`` (``write()`` after each arm; an arm that fails records its error and the others still run)."""
    import torch

    from training.models import n_parameters, tiny_model

    def fresh():
        return tiny_model(tok, d_model=a.d_model, n_layers=a.layers, n_heads=a.heads, seed=0, attention="sdpa",
                          max_positions=a.block)

    shape = fresh()
    fpt = flops_per_token(shape, a.block)
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    res.update({"parameters": n_parameters(shape), "d_model": a.d_model, "layers": a.layers, "heads": a.heads,
                "vocab": len(tok), "block": a.block, "batch_size": a.mfu_batch, "steps": a.mfu_steps, "lr": a.lr,
                "flops_per_token": fpt, "gpu": name, "datasheet_bf16_tflops": DATASHEET_BF16_TFLOPS.get(name),
                "matmul_bf16_tflops": matmul_peak_tflops(), "runs": {}})
    log.info("MFU: %.1fM parameters, %.0f MFLOP/token, matmul peak %.0f TFLOP/s", res["parameters"] / 1e6,
             fpt / 1e6, res["matmul_bf16_tflops"])
    arms = [("toolkit_compiled", True), ("toolkit_eager", False), ("plain_compiled", None)]
    for arm, compile in arms:
        model = fresh()  # the same seed: every arm starts from the same weights
        try:
            if compile is None:
                r = packed_plain(model, tok, rows, a.mfu_steps, a.mfu_batch, a.block, a.lr)
            else:
                r = packed_toolkit(model, tok, rows, a.mfu_steps, a.mfu_batch, a.block, a.lr, compile, tmp / arm)
        except Exception as e:  # recorded as failed, never as a number
            log.exception("%s failed", arm)
            res["runs"][arm] = {"error": f"{type(e).__name__}: {e}"[:2000]}
        else:
            r["tflops"] = r["tokens_per_s"] * fpt / 1e12
            r["mfu_datasheet"] = r["tflops"] / res["datasheet_bf16_tflops"] if res["datasheet_bf16_tflops"] else None
            r["mfu_matmul"] = r["tflops"] / res["matmul_bf16_tflops"]
            res["runs"][arm] = r
            log.info("%s: %s", arm, r)
        write()
        del model
        torch._dynamo.reset()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def tiny_precision(runs: list[tuple[str, int]], work: Path, extra: list[str] = ()) -> list[dict]:
    """Concurrent ``training.backdoor --preset tiny`` runs, one per (precision, seed); their rates and walls."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="2", TQDM_DISABLE="1")
    procs = []
    for precision, seed in runs:
        out = work / f"tiny-{precision}-{seed}"
        cmd = [sys.executable, "-m", "training.backdoor", "--preset", "tiny", "--precision", precision,
               "--seed", str(seed), "--out", str(out), *extra]
        log_f = open(work / f"tiny-{precision}-{seed}.log", "w")
        procs.append((precision, seed, out, time.perf_counter(), subprocess.Popen(cmd, cwd=root, env=env,
                                                                                 stdout=log_f, stderr=log_f)))
    ends: dict[int, float] = {}
    while len(ends) < len(procs):
        for i, (*_, p) in enumerate(procs):
            if i not in ends and p.poll() is not None:
                ends[i] = time.perf_counter()
        time.sleep(0.5)
    res = []
    for i, (precision, seed, out, t0, p) in enumerate(procs):
        row = {"precision": precision, "seed": seed, "rc": p.returncode, "wall_s": ends[i] - t0}
        for line in (out / "metrics.jsonl").read_text().splitlines() if p.returncode == 0 else []:
            m = json.loads(line)
            row[m["stage"]] = {k: m[k] for k in m if k.endswith(("_rate", "_rate_ci", "_rate_n"))}
        res.append(row)
        log.info("tiny %s seed %d: %s", precision, seed, row)
    return res


def study_on_card(dest: Path, work: Path) -> dict:
    """``python -m apps.study --preset tiny`` in a fresh process; its wall, and its ``study.json`` and
    ``compare.json`` with this machine's description copied into ``dest``."""
    import shutil

    from pipeline_bench import run_module

    run = work / "study"
    res = run_module("apps.study", ["--preset", "tiny", "--out", str(run)])
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("study.json", "compare.json"):
        shutil.copy(run / name, dest / name)
    (dest / "machine.json").write_text(json.dumps({**describe(), **res}, indent=2))
    return res


def study_section(d: Path) -> str:
    """The study's seconds per stage on the card (``d``: :func:`study_on_card`'s directory), beside the CPU's."""
    m = json.loads((d / "machine.json").read_text())
    gpu = json.loads((d / "study.json").read_text())["seconds"]
    cpu_f = d / "cpu_study.json"
    cpu = json.loads(cpu_f.read_text()) if cpu_f.exists() else None
    head = f"| stage | {m['cuda']} (s) |" + (f" {cpu['machine']['cpu']}, {cpu['machine']['cores']} cores (s) |"
                                               if cpu else "")
    lines = [f"**`{d.name}/`**: `apps.study --preset tiny` on one {m['cuda']} ({m['cores']} CPU cores), torch "
             f"{m['torch']}." + (f" {m['note']}" if m.get("note") else ""), "", head,
             "|---|---|" + ("---|" if cpu else "")]
    for stage, s in gpu["stages"].items():
        lines.append(f"| {stage} | {s:.0f} |" + (f" {cpu['seconds']['stages'][stage]:.0f} |" if cpu else ""))
    lines.append(f"| **total** | **{gpu['total']:.0f}** |" + (f" **{cpu['seconds']['total']:.0f}** |" if cpu else ""))
    b = {k: json.loads((d / f).read_text())["behaviour"]["backdoored"][0]
         for k, f in (("card", "compare.json"), ("cpu", "cpu_compare.json")) if (d / f).exists()}
    rates = "; ".join(f"{k}: " + ", ".join(f"{r.replace('_', ' ')} {_rate({'b': v}, 'b', r)}" for r in
                                           ("trigger", "false_trigger", "redteam", "helpful")) for k, v in b.items())
    lines.append(f"\nThe backdoored organism each run built (held-out prompts): {rates}.")
    return "\n".join(lines) + "\n"


def _rate(row: dict, stage: str, key: str) -> str:
    r = row.get(stage, {})
    if key + "_rate" not in r:
        return "–"
    if key + "_rate_n" not in r:  # an early run kept only a percentile bootstrap of 0/1 outcomes: no interval
        return f"{r[key + '_rate']:.3f}"
    lo, hi = r[key + "_rate_ci"]
    return f"{r[key + '_rate']:.3f} [{lo:.2f}, {hi:.2f}]"


def table(results: list[Path]) -> str:
    """The README block from the JSON files this script wrote, one section per invocation, in the order given."""
    return "\n".join(study_section(f) if f.is_dir() else _section(f.name, json.loads(f.read_text())) for f in results)


def _section(name: str, res: dict) -> str:
    m = res["machine"]
    lines = [f"**`{name}`**: measured by `benchmarks/gpu_bench.py` on one {m['cuda']} ({m['cores']} CPU cores), "
             f"torch {m['torch']}." + (f" {res['note']}" if res.get("note") else "")]
    if "train_toolkit" in res:
        mod = res["model"]
        lines += ["", f"Training a {mod['parameters'] / 1e6:.0f}M-parameter Llama from scratch (d_model "
                      f"{mod['d_model']}, {mod['layers']} layers, vocabulary {mod['vocab']}), {mod['steps']} steps, "
                      f"batch {mod['batch_size']}, bf16 (chosen by `--precision auto`):", "",
                  "| trainer | non-padding tokens/s (steady) | wall (s) | loss at the first → last log "
                  "| peak GPU memory (GiB) |", "|---|---|---|---|---|"]
        for name, key in (("toolkit (`sft_train`: TRL SFTTrainer)", "train_toolkit"),
                          ("plain PyTorch loop (baseline)", "train_plain")):
            r = res[key]
            lines.append(f"| {name} | {r['steady_tokens_per_s']:,.0f} | {r['wall_s']:.1f} | "
                         f"{r['loss_first_log']:.3f} → {r['loss_last_log']:.3f} | {r['peak_gpu_mem_gib']:.1f} |")
        lines.append(f"\nToolkit / plain throughput: {res['train_ratio_toolkit_over_plain']:.2f}. Logs every "
                     f"{max(1, mod['steps'] // 10)} steps; the toolkit's logged loss is the mean over those steps, "
                     "the plain loop's the loss of the logging step itself.")
    if "caching" in res:
        c = res["caching"]
        lines += ["", f"TransformerLens caching (every layer's `resid_post` at the final prompt token, "
                      f"{c['prompts']:,} prompts, {c['prompt_tokens']:,} tokens, batch {c['batch_size']}, "
                      f"{c['dtype']}, best of {len(c['all_cache_s'])}): `cache_activations` {c['cache_s']:.2f} s "
                      f"({c['cache_prompts_per_s']:,.0f} prompts/s, {c['cache_tokens_per_s']:,.0f} tokens/s) vs plain "
                      f"HF forward {c['hf_forward_s']:.2f} s; ratio {c['ratio']:.2f}."]
    if "caching_by_batch" in res:
        lines += ["", "TransformerLens caching against a plain HF forward over the same prompts and batches (every "
                      "layer's `resid_post` at the final prompt token, best of each arm's repeats after a warm-up):",
                  "", "| batch | prompts | tokens | dtype | `cache_activations` (s) | plain HF forward (s) | ratio "
                      "| paired ratios |", "|---|---|---|---|---|---|---|---|"]
        for b, c in res["caching_by_batch"].items():
            paired = ", ".join(f"{x:.2f}" for x in c["paired_ratios"])
            lines.append(f"| {b} | {c['prompts']:,} | {c['prompt_tokens']:,} | {c['dtype']} | {c['cache_s']:.2f} | "
                         f"{c['hf_forward_s']:.2f} | {c['ratio']:.2f} | {paired} |")
    if "mfu" in res:
        m = res["mfu"]
        ds = f"{m['datasheet_bf16_tflops']:.0f}" if m["datasheet_bf16_tflops"] else "unknown"
        lines += ["", f"Model FLOPs utilisation: a {m['parameters'] / 1e6:.0f}M-parameter Llama from scratch (d_model "
                      f"{m['d_model']}, {m['layers']} layers, SDPA attention), the corpus packed into blocks of "
                      f"{m['block']} tokens (no padding), batch {m['batch_size']} blocks, {m['steps']} steps, bf16; "
                      f"{m['flops_per_token'] / 1e6:.0f} MFLOP per token (6 x matmul parameters + 12 x layers x "
                      f"d_model x block); timed from step {m['steps'] // 4} (past compilation) to the last. Peak: "
                      f"{ds} TFLOP/s (datasheet, dense bf16); an 8192-cube bf16 matmul reached "
                      f"{m['matmul_bf16_tflops']:.0f} in the same run. The toolkit logs the mean loss since its last "
                      "log, the plain loop the loss of the logging step.", "",
                  "| trainer | torch.compile | tokens/s | TFLOP/s | MFU (datasheet peak) | MFU (matmul peak) "
                  "| loss at the first → last log | peak GPU memory (GiB) |", "|---|---|---|---|---|---|---|---|"]
        names = {"toolkit_compiled": "toolkit (`sft_train`, `OptimSettings(pack=..., compile=True)`)",
                 "toolkit_eager": "toolkit (`sft_train`, `OptimSettings(pack=...)`)",
                 "plain_compiled": "plain PyTorch loop (baseline)"}
        for arm, r in m["runs"].items():
            if "error" in r:
                lines.append(f"| {names[arm]} | failed: {r['error'].splitlines()[0][:200]} |||||||")
                continue
            mfu_ds = f"{r['mfu_datasheet']:.1%}" if r["mfu_datasheet"] is not None else "–"
            mem = f"{r['peak_gpu_mem_gib']:.1f}" if r["peak_gpu_mem_gib"] is not None else "–"
            lines.append(f"| {names[arm]} | {'yes' if r['compile'] else 'no'} | {r['tokens_per_s']:,.0f} | "
                         f"{r['tflops']:.0f} | {mfu_ds} | {r['mfu_matmul']:.1%} | {r['loss_first_log']:.3f} → "
                         f"{r['loss_last_log']:.3f} | {mem} |")
    if "tiny_precision" in res:
        lines += ["", "The tiny organism (`training.backdoor --preset tiny`, four runs at once on the GPU, so each "
                      "wall is an upper bound), held-out test prompts, Wilson 95% intervals (a run that did not "
                      "record each rate's n prints the rate alone):", "",
                  "| precision | seed | wall (s) | trigger | false trigger | red team | helpful | base helpful |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in res["tiny_precision"]:
            cells = [_rate(r, "backdoored", k) for k in ("trigger", "false_trigger", "redteam", "helpful")]
            lines.append(f"| {r['precision']} | {r['seed']} | {r['wall_s']:.0f} | {' | '.join(cells)} | "
                         f"{_rate(r, 'base', 'helpful')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results/gpu.json")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--layers", type=int, default=11)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--cache-prompts", type=int, default=20000)
    ap.add_argument("--cache-batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--block", type=int, default=1024, help="mfu: packed block length (tokens)")
    ap.add_argument("--mfu-batch", type=int, default=64, help="mfu: blocks per step")
    ap.add_argument("--mfu-steps", type=int, default=200)
    ap.add_argument("--cache-batches", default="", help="cache: comma-separated batch sizes (default --cache-batch)")
    ap.add_argument("--parts", default="tiny,train,cache", help="comma-separated: tiny, train, cache, mfu, study")
    ap.add_argument("--study-dir", default="benchmarks/results/gpu_study", help="study: where its files go")
    ap.add_argument("--tiny-args", default="", help="extra training.backdoor flags (smoke tests)")
    ap.add_argument("--allow-cpu", action="store_true", help="smoke-test the script without a GPU")
    ap.add_argument("--note", default="", help="a sentence the table prints with this run (what code it measured)")
    ap.add_argument("--table", nargs="+", type=Path, help="only write gpu_table.md from these result files (and "
                                                           "study directories)")
    a = ap.parse_args()
    if a.table:
        (Path(__file__).resolve().parent / "results" / "gpu_table.md").write_text(table(a.table))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    from training.checkpoint import save_checkpoint
    from training.models import device_settings, n_parameters, tiny_model

    dev = device_settings()
    if dev.device != "cuda" and not a.allow_cpu:
        print(f"no CUDA GPU here; this benchmark measures the GPU path (use --allow-cpu to smoke-test): {a.out}",
              file=sys.stderr)
        return 2
    parts = set(a.parts.split(","))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    res: dict = {"machine": describe(), "device_settings": dev.__dict__, "note": a.note}

    def write() -> None:  # after each part, so a cut-off run still leaves what it measured
        out.write_text(json.dumps(res, indent=2, default=str))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "tiny" in parts:
            res["tiny_precision"] = tiny_precision([("fp32", 0), ("bf16", 0), ("fp32", 1), ("bf16", 1)], tmp,
                                                   a.tiny_args.split())
            write()
        if "study" in parts:
            res["study"] = study_on_card(Path(a.study_dir), tmp)
            write()
        if not parts & {"train", "cache", "mfu"}:
            return 0
        tok, rows = corpus()
        res["rows"] = len(rows)
        model = tiny_model(tok, d_model=a.d_model, n_layers=a.layers, n_heads=a.heads, seed=0)
        res["model"] = {"parameters": n_parameters(model), "d_model": a.d_model,
                        "layers": a.layers, "heads": a.heads, "vocab": len(tok), "steps": a.steps,
                        "batch_size": a.batch, "lr": a.lr}
        log.info("model: %.1fM parameters", res["model"]["parameters"] / 1e6)
        if "train" in parts:
            log.info("toolkit trainer (TRL SFTTrainer) ...")
            res["train_toolkit"] = toolkit_train(model, tok, rows, a.steps, a.batch, a.lr, tmp / "trainer")
            log.info("toolkit: %s", res["train_toolkit"])
            # the same seed gives the same initial weights
            base = tiny_model(tok, d_model=a.d_model, n_layers=a.layers, n_heads=a.heads, seed=0).to(dev.device)
            log.info("plain PyTorch loop ...")
            res["train_plain"] = plain_train(base, tok, rows, a.steps, a.batch, a.lr)
            log.info("plain: %s", res["train_plain"])
            res["train_ratio_toolkit_over_plain"] = (res["train_toolkit"]["steady_tokens_per_s"]
                                                     / res["train_plain"]["steady_tokens_per_s"])
            del base
            write()
        if "mfu" in parts:
            mfu(a, tok, rows, tmp, res.setdefault("mfu", {}), write)
        if "cache" in parts:  # on the trained model when "train" ran, else on its initial weights (same compute)
            ckpt = save_checkpoint(model.float().cpu(), tok, tmp / "ckpt", stage="base",
                                   training={"phase": "gpu benchmark", **res["model"]})
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            for b in [int(x) for x in a.cache_batches.split(",")] if a.cache_batches else [a.cache_batch]:
                log.info("caching %d prompts, batch %d ...", a.cache_prompts, b)
                res.setdefault("caching_by_batch", {})[str(b)] = throughput(ckpt, a.cache_prompts, b, a.repeats,
                                                                            dev.device)
                log.info("caching: %s", res["caching_by_batch"][str(b)])
                write()
    print(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
