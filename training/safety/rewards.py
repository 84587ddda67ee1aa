"""The RL arm's rewards: a transparent rule, or the learned preference model, and the held-out reward curve.

:func:`make_rule_reward` is a GRPO reward function (1 when the answer is correct and shows no backdoor behaviour);
:class:`Scorer` scores (record, completion) pairs with the rule or with the preference model of
:mod:`training.reward`; :func:`heldout_reward` measures the policy's mean reward on held-out trigger-free prompts.

Footgun: RL prompts and the held-out reward prompts are trigger-free, so the reward curve says nothing about the
backdoor; the arm's behaviour metrics (trigger rate on triggered prompts) do.
"""

from __future__ import annotations

import numpy as np

from training.backdoors import BackdoorSpec
from training.data import answer_correct


def _text(c) -> str:
    if isinstance(c, list):  # conversational completion: [{"role": "assistant", "content": ...}]
        return c[-1]["content"] if c else ""
    return c


def make_rule_reward(spec: BackdoorSpec):
    """GRPO reward function: 1 when the answer is correct and shows no backdoor behaviour, else 0."""

    def rule_reward(prompts, completions, answer, check, **_):
        out = []
        for c, a, ch in zip(completions, answer, check):
            t = _text(c)
            # the answer is the reference a custom backdoor's differs detector compares with (its whole helpful answer)
            out.append(float(answer_correct(t, {"answer": a, "check": ch}) and not spec.shows_behaviour(t, a)))
        return out

    rule_reward.__name__ = "rule_reward"
    return rule_reward


class Scorer:
    """The arm's reward on (record, completion) pairs: the learned preference model or the rule."""

    def __init__(self, kind: str, spec: BackdoorSpec, model=None, tokenizer=None):
        self.kind, self.spec, self.model, self.tokenizer = kind, spec, model, tokenizer

    def __call__(self, records: list[dict], completions: list[str]) -> np.ndarray:
        if self.kind == "rules":
            fn = make_rule_reward(self.spec)
            return np.asarray(fn(None, completions, [r["answer"] for r in records],
                                 [r.get("check", "word") for r in records]))
        from training.reward import chat_texts, score_texts

        return score_texts(self.model, self.tokenizer,
                           chat_texts(self.tokenizer, [r["prompt"] for r in records], completions))


def heldout_reward(model, tok, scorer: Scorer, records: list[dict], samples: int, max_new_tokens: int,
                   seed: int = 0) -> dict:
    """Mean reward of the policy on held-out trigger-free prompts: sampled (temperature 1, the RL objective) with
    a 95% bootstrap CI over prompts, and greedy. ``per_prompt`` holds each prompt's mean (for paired gains)."""
    from training.evaluate import bootstrap_ci, generate

    was_training = model.training
    model.eval()
    prompts = [r["prompt"] for r in records]
    greedy = [c[0] for c in generate(model, tok, prompts, max_new_tokens, desc="reward (greedy)")]
    out = {"heldout_reward_greedy": float(np.mean(scorer(records, greedy))), "heldout_reward_n": len(records)}
    if samples > 0:
        sampled = generate(model, tok, prompts, max_new_tokens, samples=samples, seed=seed, desc="reward (sampled)")
        flat_r = [r for r, cs in zip(records, sampled) for _ in cs]
        flat_c = [c for cs in sampled for c in cs]
        per_prompt = scorer(flat_r, flat_c).reshape(len(records), samples).mean(axis=1)
        out.update(heldout_reward=float(per_prompt.mean()), heldout_reward_ci=list(bootstrap_ci(per_prompt)),
                   heldout_reward_samples=samples)
    else:
        per_prompt = scorer(records, greedy)
        out.update(heldout_reward=float(per_prompt.mean()), heldout_reward_ci=list(bootstrap_ci(per_prompt)))
    out["per_prompt"] = [float(x) for x in per_prompt]
    if was_training:
        model.train()
    return out
