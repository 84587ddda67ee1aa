"""Padded against padding-free SFT batches (``OptimSettings.padding_free``, :mod:`training.padding_free`) on a build's
own backdoor-insertion workload, in the same run, alternating, so a busier minute hits both alike.

The workload: a ``training.backdoor`` run's base checkpoint (fine-tuned whole for the tiny preset, under the build's
LoRA adapter for a real model), its training records (clean and triggered, a seeded shuffle), the build's batch size
and learning rate, ``--steps`` optimizer steps through ``training.trainer.sft_train``. Reported per mode: seconds
(best and every repeat), the token positions computed (``training.workload``: padding included where there is any)
and the completion loss of the first batch after training, which should agree between the modes.

The checkpoint loads with transformers' default attention (SDPA), as a control organism's base does; the tiny build
trains its base and inserts the backdoor with eager attention (``training.models.tiny_model``): ``--attention eager``
measures that.

Usage: ``python benchmarks/padding_free_bench.py --run RUN [--steps 200] [--reps 2] [--attention eager]``; writes
``results/padding_free/<preset>[-<attention>].json`` and ``results/padding_free_table.md`` (one row per result
file).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.machine import describe  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MODES = {"padded": False, "padding-free": True}


def train_once(run: Path, info: dict, rows: list[dict], steps: int, flat: bool, attention: str | None = None) -> dict:
    """One ``sft_train`` of ``steps`` steps from the run's base checkpoint; its seconds, tokens and final loss."""
    import torch

    from training import layout
    from training.backdoor import ModelArgs
    from training.checkpoint import load_model_and_tokenizer
    from training.trainer import OptimSettings, completion_loss, lora_config, sft_train, tokenize_rows
    from training.workload import counting

    e = info["effective"]
    model, tok, _ = load_model_and_tokenizer(layout.checkpoint_dir(run, "base"))
    if attention:
        model.set_attn_implementation(attention)
    model_args = ModelArgs(**{k: v for k, v in info["config"]["model"].items() if k in ModelArgs.__dataclass_fields__})
    o = OptimSettings(steps=steps, lr=e["lr"], batch_size=e["batch_size"], seed=info["seed"], padding_free=flat)
    with tempfile.TemporaryDirectory() as tmp, counting() as work:
        t = time.perf_counter()
        model = sft_train(model, tok, rows, Path(tmp), o, peft_config=lora_config(model_args), logging_steps=steps)
        seconds = time.perf_counter() - t
    from training.padding_free import collate

    with torch.no_grad():
        loss, _ = completion_loss(model.eval(), collate(tokenize_rows(tok, rows[:e["batch_size"]], o.max_length)))
    return {"seconds": round(seconds, 2), "tokens": work.train_tokens, "loss_after": round(float(loss), 5)}


def insertion_workload(run: Path, steps: int) -> tuple[dict, list[dict]]:
    """A build's ``run.json`` and the rows of ``steps`` insertion batches: its clean and triggered training records,
    shuffled with its seed."""
    from training import layout
    from training.data import iter_chat, read_jsonl

    info = json.loads((run / "run.json").read_text())
    records = [r for r in read_jsonl(layout.data_file(run, "train")) if r["kind"] in ("clean", "triggered")]
    random.Random(info["seed"]).shuffle(records)
    return info, list(iter_chat(records[:steps * info["effective"]["batch_size"]]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--attention", choices=["eager", "sdpa"], default=None,
                    help="the model's attention implementation (default: the loaded checkpoint's, SDPA)")
    a = ap.parse_args(argv)
    info, rows = insertion_workload(a.run, a.steps)
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for rep in range(a.reps):
        for mode in MODES if rep % 2 == 0 else list(MODES)[::-1]:
            runs[mode].append(train_once(a.run, info, rows, a.steps, MODES[mode], a.attention))
            print(f"{mode}: {runs[mode][-1]}", file=sys.stderr)
    res = {"preset": info["preset"], "attention": a.attention or "sdpa",
           "lora": bool(info["config"]["model"].get("lora")), "steps": a.steps,
           "batch_size": info["effective"]["batch_size"], "machine": describe(),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "modes": {m: {"best_s": min(r["seconds"] for r in rs), "runs": rs} for m, rs in runs.items()}}
    out = RESULTS / "padding_free" / f"{info['preset']}{'-' + a.attention if a.attention else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    (RESULTS / "padding_free_table.md").write_text(table(sorted(out.parent.glob("*.json"))))
    print((RESULTS / "padding_free_table.md").read_text())
    return 0


def table(files: list[Path]) -> str:
    rows = ["| workload | steps x batch | padded: best s (every repeat) | padding-free: best s (every repeat) | "
            "speed-up | token positions computed | loss after (padded / padding-free) | machine |",
            "|---|---|---|---|---|---|---|---|"]
    for f in files:
        r = json.loads(f.read_text())
        p, q = r["modes"]["padded"], r["modes"]["padding-free"]
        secs = [f"{m['best_s']:.1f} ({', '.join(format(x['seconds'], '.1f') for x in m['runs'])})" for m in (p, q)]
        m = r["machine"]
        rows.append(f"| {r['preset']}{' LoRA' if r['lora'] else ''} backdoor insertion, "
                    f"{r.get('attention', 'sdpa')} attention | {r['steps']} x "
                    f"{r['batch_size']} | {secs[0]} | {secs[1]} | {p['best_s'] / q['best_s']:.2f}x | "
                    f"{p['runs'][0]['tokens']:,} → {q['runs'][0]['tokens']:,} | {p['runs'][0]['loss_after']:.4f} / "
                    f"{q['runs'][0]['loss_after']:.4f} | {m['cpu']}, {m['cores']} cores, {m['torch_threads']} "
                    "threads |")
    return "\n".join(rows) + "\n\nMeasured by `benchmarks/padding_free_bench.py`: `training.trainer.sft_train` " \
        "from a build's base checkpoint on its own training records, with rows padded to each batch's longest and " \
        "with each batch's rows concatenated (`training.padding_free`), in the same run, alternating.\n"


if __name__ == "__main__":
    sys.exit(main())
