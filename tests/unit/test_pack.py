"""``training.trainer.pack_rows`` and ``sft_train`` on packed blocks (``OptimSettings.pack``)."""

from __future__ import annotations

import pytest

from training.backdoors import BackdoorSpec
from training.data import build_prompt_sets


@pytest.fixture(scope="module")
def corpus():
    from training.tokenizer import tokenizer_texts, train_tokenizer

    spec = BackdoorSpec()
    sets = build_prompt_sets(spec, 0)
    tok = train_tokenizer(tokenizer_texts(spec, sets), forbidden=[spec.trigger, *spec.near_misses])
    rows = [{"prompt": [{"role": "user", "content": x["prompt"]}],
             "completion": [{"role": "assistant", "content": x["response"]}]}
            for x in sets["train"][:400] if x["kind"] in ("clean", "triggered")]
    return tok, rows


def test_pack_rows_cuts_the_concatenation_into_whole_blocks(corpus):
    from training.trainer import pack_rows, tokenize_rows

    tok, rows = corpus
    ex = tokenize_rows(tok, rows, 256)
    ids = [t for r in ex for t in r["input_ids"]]
    labels = [t for r in ex for t in r["labels"]]
    blocks = pack_rows(ex, 128)
    assert len(blocks) == len(ids) // 128
    assert all(len(b["input_ids"]) == len(b["labels"]) == 128 for b in blocks)
    assert [t for b in blocks for t in b["input_ids"]] == ids[:len(blocks) * 128]
    assert [t for b in blocks for t in b["labels"]] == labels[:len(blocks) * 128]
    assert pack_rows(ex[:1], 10_000) == []


def test_sft_train_on_packed_blocks_lowers_the_loss(corpus, tmp_path):
    import torch

    from training.models import tiny_model
    from training.trainer import (
        OptimSettings,
        _collate_blocks,
        pack_rows,
        sft_train,
        tokenize_rows,
    )

    tok, rows = corpus
    blocks = pack_rows(tokenize_rows(tok, rows, 256), 128)
    batch = _collate_blocks(blocks[:8])
    assert set(batch) == {"input_ids", "labels"} and batch["input_ids"].shape == (8, 128)
    model = tiny_model(tok, d_model=32, n_layers=1, n_heads=2, attention="sdpa")
    with torch.no_grad():
        before = float(model(**batch).loss)
        # no mask on a block is the causal mask: same loss as an explicit all-ones mask
        masked = float(model(**batch, attention_mask=torch.ones_like(batch["input_ids"])).loss)
    assert before == pytest.approx(masked, rel=1e-5)
    model = sft_train(model, tok, rows, tmp_path / "t", OptimSettings(steps=30, lr=3e-3, batch_size=8, pack=128),
                      logging_steps=10)
    with torch.no_grad():
        after = float(model.cpu()(**batch).loss)
    assert after < 0.8 * before


def test_sft_train_refuses_rows_too_few_for_one_block(corpus, tmp_path):
    from training.errors import UserError
    from training.models import tiny_model
    from training.trainer import OptimSettings, sft_train

    tok, rows = corpus
    with pytest.raises(UserError, match="no whole packed block"):
        sft_train(tiny_model(tok, d_model=16, n_layers=1, n_heads=1), tok, rows[:2], tmp_path / "t",
                  OptimSettings(steps=1, lr=1e-3, batch_size=2, pack=100_000))
