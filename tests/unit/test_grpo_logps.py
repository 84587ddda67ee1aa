"""``training.safety.grpo.completion_logps`` gives what TRL's fused LM head gives GRPO: the same per-token
log-probabilities and entropies of the completion tokens (zero on their padding), gradients included."""

from __future__ import annotations

import copy

import pytest
import torch


def _model(vocab: int = 9000):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def _trl(model, ids, mask, n, temperature):
    """TRL's own computation (GRPOTrainer._get_per_token_logps_and_entropies on a text-only batch)."""
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-n] = -100
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    return out.log_probs[:, -n:], out.entropy[:, -n:]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_completion_logps_match_trls_fused_head(temperature):
    from trl.trainer.utils import add_fused_lm_head

    from training.safety.grpo import completion_logps

    ours = _model()
    theirs = copy.deepcopy(ours)
    add_fused_lm_head(theirs, temperature=temperature, outputs=("log_probs", "entropy"))
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 9000, (4, 14), generator=g)  # prompts left padded, completions right padded
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[1, -2:] = 0
    mask[2, :1] = 0
    mask[2, -4:] = 0
    n = 6
    lp, ent = completion_logps(ours, ids, mask, n, temperature, batch_size=3, entropy=True)
    ref_lp, ref_ent = _trl(theirs, ids, mask, n, temperature)
    torch.testing.assert_close(lp, ref_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=1e-5, atol=1e-5)
    assert (lp[1, -2:] == 0).all() and (lp[2, -4:] == 0).all()
    (lp.sum() + ent.sum()).backward()
    (ref_lp.sum() + ref_ent.sum()).backward()
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
