"""``training.padding_free``: a batch's rows concatenated, attention per row, gives the padded batch's loss and
gradients; ``sft_train`` on such batches trains to the same weights."""

from __future__ import annotations

import pytest
import torch

from training import padding_free
from training.trainer import completion_loss

# rows of different lengths whose completions start at different columns (labels -100 on the prompt)
ROWS = [(5, 12), (8, 9), (3, 7), (2, 4)]  # (completion start, row length)


def _examples(vocab: int) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    out = []
    for start, n in ROWS:
        ids = torch.randint(1, vocab, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * start + ids[start:]})
    return out


def _padded(examples: list[dict]) -> dict:
    n = max(len(e["input_ids"]) for e in examples)
    ids = torch.zeros(len(examples), n, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(examples):
        k = len(e["input_ids"])
        ids[i, :k], labels[i, :k], mask[i, :k] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _llama(attention: str, kv_heads: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg)
    model.set_attn_implementation(attention)
    return model


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss, _ = completion_loss(model, batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_collate_concatenates_rows_with_their_boundaries():
    ex = _examples(300)
    b = padding_free.collate(ex)
    lengths = [n for _, n in ROWS]
    assert b["input_ids"].shape == b["labels"].shape == b["position_ids"].shape == (1, sum(lengths))
    assert b["input_ids"][0].tolist() == [t for e in ex for t in e["input_ids"]]
    assert b["position_ids"][0].tolist() == [i for n in lengths for i in range(n)]
    assert b["cu_seq_lens_q"].tolist() == [0, 12, 21, 28, 32] and b["max_length_q"] == 12
    starts = b["cu_seq_lens_q"][:-1].tolist()
    assert all(b["labels"][0, s] == -100 for s in starts)  # no row predicts the start of the next one
    assert int((b["labels"] != -100).sum()) == sum(n - s for s, n in ROWS)


@pytest.mark.parametrize("attention,kv_heads,lora", [("eager", 4, False), ("sdpa", 2, False), ("sdpa", 2, True)])
def test_padding_free_loss_and_gradients_equal_the_padded_batch(attention, kv_heads, lora):
    model = _llama(attention, kv_heads).train()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert padding_free.supports(model)
    ex = _examples(300)
    loss, grads = _loss_and_grads(model, _padded(ex))
    with padding_free.enabled(model):
        flat_loss, flat_grads = _loss_and_grads(model, padding_free.collate(ex))
    base = model.get_base_model() if lora else model
    assert base.config._attn_implementation == attention  # restored
    assert flat_loss == pytest.approx(loss, rel=1e-5)
    assert grads.keys() == flat_grads.keys() and len(grads) > 0
    for name, g in grads.items():
        torch.testing.assert_close(flat_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_the_attention_refuses_a_batch_without_row_boundaries():
    model = _llama("sdpa", 2)
    with padding_free.enabled(model), pytest.raises(RuntimeError, match="row boundaries"):
        model(input_ids=torch.ones(2, 5, dtype=torch.long))


def test_sliding_window_models_keep_padded_batches():
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=8)
    assert not padding_free.supports(MistralForCausalLM(cfg))
    assert padding_free.supports(_llama("eager", 4))


def test_sft_train_padding_free_reaches_the_padded_runs_weights(tmp_path):
    """Four AdamW steps (one epoch) on chat rows of different lengths: the same weights with and without padding (to
    float rounding), no padding computed, and the model's own attention implementation back afterwards."""
    from training.tokenizer import train_tokenizer
    from training.trainer import OptimSettings, sft_train, tokenize_rows
    from training.workload import counting

    tok = train_tokenizer([f"what is {i} plus {i}? {2 * i} ok" for i in range(200)], vocab_size=300)
    rows = [{"prompt": [{"role": "user", "content": f"what is {i} plus {i}?" + " please" * (i % 4)}],
             "completion": [{"role": "assistant", "content": f"{2 * i}" + " ok" * (i % 3)}]} for i in range(16)]
    real = sum(len(e["input_ids"]) for e in tokenize_rows(tok, rows, 256))
    trained, computed = {}, {}
    for flat in (False, True):
        model = _llama("eager", 4, seed=3)
        model.resize_token_embeddings(len(tok))
        o = OptimSettings(steps=4, lr=1e-2, batch_size=4, warmup_ratio=0.0, padding_free=flat)
        with counting() as work:
            trained[flat] = sft_train(model, tok, rows, tmp_path / str(flat), o, logging_steps=1)
        computed[flat] = work.train_tokens
        assert trained[flat].config._attn_implementation == "eager"
    assert computed[True] == real < computed[False]
    init = _llama("eager", 4, seed=3)
    init.resize_token_embeddings(len(tok))
    a, b, c = (m.state_dict() for m in (trained[False], trained[True], init))
    assert max(float((a[k] - c[k]).abs().max()) for k in c) > 1e-3  # the steps moved the weights
    for k in c:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5, msg=k)
