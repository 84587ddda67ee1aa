"""TRL's ``GRPOTrainer`` scoring only the completions' positions through the LM head off GPU.

GRPO needs the log-probability (and, for its logs, the entropy) of each sampled completion token under the policy,
the policy before the step and the reference. TRL computes them with its fused LM head, which on a GPU (Triton)
scores only the completion tokens, in tiles; elsewhere it scores every position of prompt and completion. Off GPU,
:func:`completion_logps` asks the model for the logits of the completion's positions only (``logits_to_keep``), as
TRL did before its fused head, with the same values (``tests/unit/test_grpo_logps.py`` compares them with TRL's).
"""

from __future__ import annotations

import torch


def completion_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int, temperature: float,
                     batch_size: int | None = None, entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probabilities ``(rows, n)`` of the last ``n`` tokens of ``input_ids`` (the completions, left
    aligned after their prompts) under the model's logits divided by ``temperature``, and their distributions'
    entropies with ``entropy``; zero where ``attention_mask`` is (a completion's padding), as TRL's are. Rows run in
    chunks of ``batch_size``."""
    logps, ents = [], []
    step = batch_size or len(input_ids)
    for s in range(0, len(input_ids), step):
        ids, mask = input_ids[s:s + step], attention_mask[s:s + step]
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=n + 1, use_cache=False).logits
        lsm = (logits[:, :-1].float() / temperature).log_softmax(-1)
        pad = mask[:, -n:] == 0
        logps.append(lsm.gather(-1, ids[:, -n:, None]).squeeze(-1).masked_fill(pad, 0.0))
        if entropy:
            ents.append((-(lsm.exp() * lsm).sum(-1)).masked_fill(pad, 0.0))
    return torch.cat(logps), (torch.cat(ents) if entropy else None)


def grpo_trainer_class():
    """``GRPOTrainer`` whose log-probabilities come from :func:`completion_logps` on a CPU (text-only, no MoE
    auxiliary loss, a model that takes ``logits_to_keep``); TRL's own path elsewhere."""
    from trl import GRPOTrainer

    from training.trainer import accepts_logits_to_keep

    class _GRPOTrainer(GRPOTrainer):
        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                               batch_size=None, compute_entropy=False, compute_aux_loss=False,
                                               **extra):
            if (input_ids.device.type != "cpu" or compute_aux_loss or any(v is not None for v in extra.values())
                    or not accepts_logits_to_keep(model)):
                return super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss,
                    **extra)
            logps, ents = completion_logps(model, input_ids, attention_mask, logits_to_keep, self.temperature,
                                           batch_size, compute_entropy)
            return logps, ents, None

    return _GRPOTrainer
