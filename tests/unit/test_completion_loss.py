"""``training.trainer.completion_loss``: the SFT loss from the completion positions' logits only equals the model's
own loss over every position, gradients included."""

from __future__ import annotations

import pytest
import torch


def _model(vocab: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def _tokenizer():
    from training.tokenizer import train_tokenizer

    return train_tokenizer([f"what is {i} plus {i}? {2 * i} ok" for i in range(200)], vocab_size=300)


def _batch(vocab: int):
    """Right-padded rows whose completions start at different columns (prompts of different lengths)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 7:] = 0
    labels = ids.clone()
    for row, (start, end) in enumerate([(5, 12), (8, 9), (3, 7)]):
        labels[row, :start] = -100
        labels[row, end:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("vocab", [300, 9000])
def test_completion_loss_equals_the_models_own(vocab):
    from training.trainer import completion_loss

    model, batch = _model(vocab), _batch(vocab)
    own = model(**batch).loss
    own.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss, out = completion_loss(model, batch)
    assert out.logits.shape[1] < batch["input_ids"].shape[1] - 1  # the prompt-only columns were skipped
    assert float(loss) == pytest.approx(float(own), rel=1e-6)
    loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-5, atol=1e-7, msg=n)


def test_completion_loss_divides_by_the_given_token_count():
    from training.trainer import completion_loss

    model, batch = _model(300), _batch(300)
    n = int((batch["labels"][:, 1:] != -100).sum())
    mean, _ = completion_loss(model, batch)
    summed, _ = completion_loss(model, batch, num_items_in_batch=2 * n)
    assert float(summed) == pytest.approx(float(mean) / 2, rel=1e-6)


def test_completion_loss_on_a_lora_model():
    from peft import LoraConfig, get_peft_model

    from training.trainer import completion_loss

    model = get_peft_model(_model(9000), LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    batch = _batch(9000)
    loss, out = completion_loss(model, batch)
    assert out.logits.shape[1] < batch["input_ids"].shape[1] - 1
    assert float(loss) == pytest.approx(float(model(**batch).loss), rel=1e-6)


def test_sft_step_is_the_same_with_gradient_accumulation(tmp_path, monkeypatch):
    """One optimizer step on 8 rows equals one on 2 accumulated micro-batches of 4: the loss is divided by the tokens
    of the whole accumulated batch, once (plain SGD, no gradient clipping, which would hide a factor)."""
    from training import trainer
    from training.trainer import OptimSettings, sft_train

    config = trainer.sft_config

    def unclipped(*a, **k):
        cfg = config(*a, **k)
        cfg.max_grad_norm = 0.0
        return cfg

    monkeypatch.setattr(trainer, "sft_config", unclipped)

    tok = _tokenizer()
    rows = [{"prompt": [{"role": "user", "content": f"what is {i} plus {i}?"}],
             "completion": [{"role": "assistant", "content": f"{2 * i}" + " ok" * (i % 3)}]} for i in range(8)]
    trained = {}
    for accum in (1, 2):
        model = _model(len(tok), seed=3)
        o = OptimSettings(steps=1, lr=1.0, batch_size=8 // accum, grad_accum=accum, warmup_ratio=0.0, optim="sgd",
                          schedule="constant")
        trained[accum] = sft_train(model, tok, rows, tmp_path / str(accum), o, logging_steps=1).state_dict()
    init = _model(len(tok), seed=3).state_dict()
    moved = {k: trained[1][k] - init[k] for k in init}
    assert max(float(d.abs().max()) for d in moved.values()) > 1e-3  # the step moved the weights
    for k, d in moved.items():
        torch.testing.assert_close(trained[2][k] - init[k], d, rtol=1e-3, atol=1e-6, msg=k)
