"""analysis.prefill: the prompt store read off a generation's prompt forward equals the bridge's, on a tiny random
Llama (d_model 64, 2 layers, CPU), and is used only when it holds every activation of the store."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest

from analysis import hooks as H
from analysis.activations import cache_activations
from analysis.intervene import generate
from analysis.load import load_bridge
from analysis.prefill import PrefillCapture
from tests.helpers import PROMPTS, ForwardCounter, bpe_tokenizer, tiny_llama
from training.checkpoint import save_checkpoint

HOOKS = [H.resid_pre(0), H.resid_post(0), H.attn_out(1), H.mlp_out(1), H.attn_z(1), H.resid_post(1)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tok = bpe_tokenizer()
    path = tmp_path_factory.mktemp("prefill") / "a"
    return save_checkpoint(tiny_llama(tok, kv_heads=2), tok, path, stage="backdoored")


@pytest.fixture(scope="module")
def loaded(ckpt):
    return load_bridge(ckpt)


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_capture_equals_the_bridge_and_skips_its_pass(loaded, tmp_path):
    ref = cache_activations(loaded, PROMPTS, tmp_path / "bridge", hooks=HOOKS, batch_size=2, progress=False)
    out = tmp_path / "gen"
    with PrefillCapture(loaded, PROMPTS, HOOKS, out) as cap:
        # batches of 2, longest first, left padded: rows of different lengths share a batch
        generate(loaded, [p["text"] for p in PROMPTS], cap.fwd_hooks(), max_new_tokens=3, batch_size=2,
                 on_batch=cap.on_batch)
        counter = ForwardCounter(loaded)
        store = cache_activations(loaded, PROMPTS, out, hooks=HOOKS, batch_size=2, progress=False, captured=cap)
        counter.close()
    assert counter.n == 0  # the bridge did not run
    assert store.manifest["source"] == "generation" and ref.manifest["source"] == "bridge"
    assert store.manifest["key"] == ref.manifest["key"]  # so either one is reused where the other would be
    assert store.ids == ref.ids and store.manifest["labels"] == ref.manifest["labels"]
    np.testing.assert_array_equal(store.lengths, ref.lengths)
    for h in HOOKS:
        got, want = store.get(h), ref.get(h)
        assert got.shape == want.shape, h
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(), err_msg=h)
    assert _leftovers(tmp_path) == []


def test_incomplete_capture_falls_back_to_the_bridge(loaded, tmp_path):
    out = tmp_path / "gen"
    with PrefillCapture(loaded, PROMPTS, HOOKS, out) as cap:
        # only the first three prompts generated: two are missing from the capture
        generate(loaded, [p["text"] for p in PROMPTS[:3]], cap.fwd_hooks(), max_new_tokens=2, batch_size=2,
                 on_batch=cap.on_batch)
        counter = ForwardCounter(loaded)
        store = cache_activations(loaded, PROMPTS, out, hooks=HOOKS, batch_size=2, progress=False, captured=cap)
        counter.close()
    assert counter.n > 0 and store.manifest["source"] == "bridge"
    assert _leftovers(tmp_path) == []  # the unused capture's files are gone


def test_a_capture_for_other_hooks_or_another_place_is_not_used(loaded, tmp_path):
    texts = [p["text"] for p in PROMPTS]
    with PrefillCapture(loaded, PROMPTS, HOOKS[:2], tmp_path / "gen") as cap:
        generate(loaded, texts, cap.fwd_hooks(), max_new_tokens=1, batch_size=8, on_batch=cap.on_batch)
        other = cache_activations(loaded, PROMPTS, tmp_path / "gen", hooks=HOOKS[:3], progress=False, captured=cap)
        elsewhere = cache_activations(loaded, PROMPTS, tmp_path / "x", hooks=HOOKS[:2], progress=False, captured=cap)
    assert other.manifest["source"] == elsewhere.manifest["source"] == "bridge"
    assert _leftovers(tmp_path) == []


def test_folded_weights_are_never_read_off_the_generation(ckpt, tmp_path):
    folded = load_bridge(ckpt, compatibility_mode=True)
    with PrefillCapture(folded, PROMPTS, HOOKS, tmp_path / "gen") as cap:
        assert not cap.usable and cap.fwd_hooks() == []
    assert not any(tmp_path.iterdir())
