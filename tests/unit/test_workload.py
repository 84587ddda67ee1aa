"""``training.workload.counting`` counts what each kind of forward reads, and leaves ``nn.Embedding`` as it was."""

from __future__ import annotations

import torch

from training.workload import counting


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_training_forward_and_decode_are_counted_apart():
    model = _model()
    ids = torch.randint(0, 64, (3, 7))
    original = torch.nn.Embedding.forward
    with counting() as outer:
        model(input_ids=ids, labels=ids).loss.backward()  # autograd records: training tokens
        with counting() as inner, torch.no_grad():
            model(input_ids=ids)  # one forward-only pass over 7 positions per row
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, min_new_tokens=5,
                                 do_sample=False, pad_token_id=0)
    assert out.shape == (3, 12)
    # generate: a 7-position prefill, then 4 one-position decode steps (the 5th token comes from the 4th step)
    assert inner.to_dict() == {"train_tokens": 0, "forward_tokens": 2 * 21, "step_rows": 4 * 3, "steps": 4}
    assert outer.train_tokens == 21 and outer.forward_tokens == inner.forward_tokens
    assert outer.steps == inner.steps
    assert torch.nn.Embedding.forward is original  # restored once the last context exits


def test_nothing_counted_outside_a_context():
    model = _model()
    with counting() as work:
        pass
    with torch.no_grad():
        model(input_ids=torch.randint(0, 64, (2, 5)))
    assert work.to_dict() == {"train_tokens": 0, "forward_tokens": 0, "step_rows": 0, "steps": 0}
