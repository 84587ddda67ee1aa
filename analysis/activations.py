"""Cache chosen hook points at chosen token positions for a prompt set, streamed to an on-disk store.

One forward pass per batch through the bridge (:func:`run_hooks`: ``run_with_cache(names_filter=hooks)``, stopped just
past the deepest requested hook), the requested positions gathered out of each cached ``(batch, pos, ...)`` tensor,
and written straight into a memory-mapped ``.npy`` file per (hook, position) -- nothing accumulates in memory, so
peak memory is one batch whatever the number of prompts. The store is written into a temporary sibling directory
and renamed into place at the end, so a crash never leaves a store that looks complete; ``manifest.json`` (present
only in a complete store) records the checkpoint's ``weights_sha256``, prompt ids, labels, hooks, positions, dtypes
and shapes. A second call with the same checkpoint hash, hooks, positions, prompts and tokenization reuses the store
without any forward pass; a new checkpoint hash rebuilds it. A probe run's prompt store is instead read off its
behaviour generation's prompt forward where that is the same computation (:mod:`analysis.prefill`).

Positions: ``"final"`` (default) is the final prompt token -- the token just before the assistant's first
response token, i.e. the last token of the chat-formatted prompt. A list of negative offsets counts back from
the end of the prompt (``-1`` = final prompt token, ``-2`` the one before ...). ``"all"`` keeps every prompt
token, left-aligned and NaN-padded to the longest prompt: ``(n_prompts, max_len, ...)``; meant for short lists.

Footgun: batches are right-padded (see :mod:`analysis.load`), so the final prompt token is at ``length - 1`` of
each row, not at ``-1``; the gather uses :func:`analysis.load.final_prompt_positions`. Prompts are processed
longest-first to minimise padding and written back to their original row, so ``store.get(h)[i]`` belongs to
``store.ids[i]``.

Index mapping to plain Hugging Face ``output_hidden_states``: ``resid_pre(l) == hidden_states[l]`` and
``resid_post(l) == hidden_states[l + 1]`` for ``l < n_layers - 1``; HF's last entry is after the final norm.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Float
from tqdm.auto import tqdm
from transformer_lens.model_bridge.exceptions import StopAtLayerException

from analysis import hooks as H
from analysis.load import (
    PADDING_SIDE,
    LoadedModel,
    encode_prompts,
    final_prompt_positions,
    hf_forward_kwargs,
    pad_batch,
    pad_id,
)
from training.checkpoint import versions
from training.errors import UserError
from training.evaluate import auto_batch_size
from training.io import write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LENGTHS_FILE = "lengths.npy"
SCHEMA = 1
RESERVED_KEYS = ("id", "text")
STORE_DTYPES = ("float32", "float16")


# ---------------------------------------------------------------------------------------------------------------
# positions


def normalize_positions(positions: str | int | Sequence[int]) -> str | list[int]:
    """``"final"`` -> ``[-1]``; ``"all"`` stays; an int or a list of negative offsets -> sorted-unique list."""
    if isinstance(positions, str):
        if positions == "final":
            return [-1]
        if positions == "all":
            return "all"
        raise UserError(f"unknown positions: {positions!r} (use 'final', 'all' or negative offsets like [-1, -2])")
    if isinstance(positions, int) and not isinstance(positions, bool):
        positions = [positions]
    out = []
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, int) or p >= 0:
            raise UserError(f"position offsets must be negative integers (-1 = final prompt token), got {p!r}")
        out.append(int(p))
    if not out:
        raise UserError("no positions given")
    return sorted(set(out), reverse=True)


def position_key(position: str | int) -> str:
    """File-name key of one position: ``"all"`` or ``"pos-1"``, ``"pos-2"`` ..."""
    if position == "all":
        return "all"
    if position == "final":
        position = -1
    return f"pos{int(position)}"


# ---------------------------------------------------------------------------------------------------------------
# the store


class ActivationStore:
    """A complete on-disk activation store (memory-mapped ``.npy`` per hook and position, plus ``manifest.json``)."""

    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest

    @classmethod
    def open(cls, out_dir: Path | str) -> "ActivationStore":
        out_dir = Path(out_dir)
        p = out_dir / MANIFEST
        if not p.exists():
            raise UserError(f"not an activation store (no {MANIFEST}): {out_dir}")
        try:
            manifest = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"unreadable {MANIFEST} ({e}): {p}") from None
        if manifest.get("schema") != SCHEMA:
            raise UserError(f"activation store schema {manifest.get('schema')} != {SCHEMA}: {out_dir}")
        return cls(out_dir, manifest)

    # -- metadata
    @property
    def ids(self) -> list:
        return list(self.manifest["key"]["ids"])

    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["key"]["hooks"])

    @property
    def positions(self) -> str | list[int]:
        return self.manifest["key"]["positions"]

    @property
    def weights_sha256(self) -> str:
        return self.manifest["key"]["weights_sha256"]

    @property
    def labels(self) -> dict[str, np.ndarray]:
        """Label column -> array over prompts (object dtype where values are mixed or missing)."""
        return {col: np.asarray(values) for col, values in self.manifest["labels"].items()}

    @property
    def lengths(self) -> np.ndarray:
        """Prompt lengths in tokens, ``(n_prompts,)``."""
        return np.load(self.path / LENGTHS_FILE)

    def __len__(self) -> int:
        return len(self.manifest["key"]["ids"])

    def get(self, hook: str, position: str | int | None = None) -> np.ndarray:
        """Memory-mapped (read-only) activations of ``hook`` at ``position``.

        Shapes: ``(n_prompts, d_model)`` for residual/attn_out/mlp_out hooks at one position,
        ``(n_prompts, n_heads, d_head)`` for ``attn.hook_z``; with positions ``"all"`` a ``max_len`` axis follows
        ``n_prompts`` (NaN beyond each prompt's length). ``position`` defaults to the final prompt token (or
        ``"all"`` in an all-positions store).
        """
        files = self.manifest["files"]
        if hook not in files:
            raise UserError(f"hook not in activation store: {hook} (stored: {', '.join(files)})")
        if position is None:
            position = "all" if self.positions == "all" else (-1 if -1 in self.positions else self.positions[0])
        key = position_key(position)
        if key not in files[hook]:
            raise UserError(f"position {position!r} not in activation store (stored: {self.positions})")
        return np.load(self.path / files[hook][key], mmap_mode="r")


# ---------------------------------------------------------------------------------------------------------------
# batching shared by the bridge cache and the plain-HF baseline


def _length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Index batches, longest prompts first (least padding; the peak-memory batch comes first: fail fast)."""
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _iter_batches(rows: Sequence[Sequence[int]], batch_size: int, pad_token_id: int, side: str, device
                  ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    for idx in _length_sorted_batches([len(r) for r in rows], batch_size):
        ids, mask = pad_batch([rows[i] for i in idx], pad_token_id, side)
        yield idx, ids.to(device), mask.to(device)


def _texts_sha256(texts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()


def check_prompts(prompts: Sequence[dict]) -> tuple[list, list[str], dict[str, list]]:
    """``(ids, texts, label columns)`` of prompt dicts (see :func:`cache_activations`), checked."""
    if not prompts:
        raise UserError("no prompts to cache")
    ids, texts, cols = [], [], {}
    for i, p in enumerate(prompts):
        if not isinstance(p, dict) or "id" not in p or "text" not in p:
            raise UserError(f"prompt {i} needs 'id' and 'text' fields")
        if not isinstance(p["text"], str):
            raise UserError(f"prompt {p['id']!r}: 'text' must be a string")
        ids.append(p["id"])
        texts.append(p["text"])
        for k in p:
            if k not in RESERVED_KEYS:
                cols.setdefault(k, None)
    if len(set(map(json.dumps, ids))) != len(ids):
        raise UserError("prompt ids are not unique")
    labels = {c: [p.get(c) for p in prompts] for c in cols}
    try:
        ids, labels = json.loads(json.dumps(ids)), json.loads(json.dumps(labels))
    except (TypeError, ValueError) as e:
        raise UserError(f"prompt ids and labels must be JSON values ({e})") from None
    return ids, texts, labels


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished ``tmp`` store to ``out`` (an old store is renamed aside first, then removed)."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


# ---------------------------------------------------------------------------------------------------------------
# caching


# Caching batches at most this many prompts (None: from free memory). On an H200 caching cost 1.37x a plain forward
# at batch 256 and 0.96x at 2048 (benchmarks/results/gpu_cache.json); on a CPU, 64 (benchmarks/activations_bench.py).
CACHE_MAX_BATCH = {"cpu": 64, "cuda": 2048}


def cache_activations(loaded: LoadedModel, prompts: list[dict], out_dir: Path | str,
                      hooks: Sequence[str] | None = None, positions: str | Sequence[int] = "final",
                      batch_size: int | None = None, progress: bool = True, *, chat: bool = True,
                      add_special_tokens: bool | None = None, store_dtype: str = "float32",
                      padding_side: str = PADDING_SIDE, reuse: Sequence[Path] = (),
                      captured=None) -> ActivationStore:
    """Cache ``hooks`` at ``positions`` for every prompt into ``out_dir``; reuse a matching store.

    (Long, on purpose: half of it is this docstring; the rest is one pass in order — reuse check, batches, atomic
    store — whose pieces share every local.)

    Args:
        loaded: from :func:`analysis.load.load_bridge`.
        prompts: dicts with ``"id"`` (unique), ``"text"`` (the user request) and any label fields
            (``triggered``, ``pair_id``, ``split``, ``kind`` ...), kept as label columns.
        out_dir: store directory (replaced atomically when rebuilt).
        hooks: hook names (from :mod:`analysis.hooks`); default ``resid_post`` of every layer.
        positions: ``"final"``, ``"all"`` or negative offsets from the end of the prompt (-1 = final token).
        batch_size: prompts per forward; None: as many as fit a share of the free memory, at most
            :data:`CACHE_MAX_BATCH` (64 on a CPU, 2048 on a GPU).
        chat: wrap each text as a user turn with the chat template (False: texts are used verbatim).
        add_special_tokens: None = off when the tokenizer has a chat template, else on (see ``encode_prompts``).
        store_dtype: ``"float32"`` (default) or ``"float16"``.
        padding_side: ``"right"`` (default) or ``"left"``; activations are the same either way.
        reuse: other store directories that may hold these very activations (same key: weights, hooks, positions,
            prompts, tokenization, dtypes); when ``out_dir`` has none, the first match is linked into it (hard
            links, else copies) with this call's labels instead of running the model again.
        captured: a :class:`analysis.prefill.PrefillCapture` that read these very activations off a generation's
            prompt forward; when it holds all of them (same key) they are stored instead of running the bridge.

    Returns the :class:`ActivationStore`; ``store.get(hook)`` is ``(n_prompts, d_model)`` for residual hooks.
    """
    out = Path(out_dir)
    bridge = loaded.bridge
    ids, texts, labels = check_prompts(prompts)
    hooks = list(dict.fromkeys(hooks)) if hooks is not None else H.hooks_for("resid_post", range(loaded.n_layers))
    if not hooks:
        raise UserError("no hooks to cache")
    H.validate_hooks(bridge, hooks)
    positions = normalize_positions(positions)
    if store_dtype not in STORE_DTYPES:
        raise UserError(f"store_dtype must be one of {STORE_DTYPES}, got {store_dtype!r}")
    key = store_key(loaded, hooks, positions, ids, texts, chat, add_special_tokens, store_dtype)

    existing = _matching_store(out, key)
    if existing is not None:
        if existing.manifest["labels"] != labels:
            existing.manifest["labels"] = labels
            write_json_atomic(out / MANIFEST, existing.manifest, allow_nan=True)
            log.info("activation store %s: labels updated (activations reused)", out)
        else:
            log.info("reusing activation store %s (same checkpoint, hooks, positions, prompts)", out)
        return existing
    if out.exists() and not (out / MANIFEST).exists() and any(out.iterdir()):
        raise UserError(f"refusing to replace a non-empty directory that is not an activation store: {out}")
    for other in reuse:
        if Path(other).resolve() != out.resolve() and (found := _matching_store(Path(other), key)) is not None:
            return _link_store(found, out, labels)
    if captured is not None and captured.complete(key, out):
        log.info("activation store %s: read off the generation's prompt forward (no second pass)", out)
        return captured.finish(labels)

    tok = loaded.tokenizer
    rows = encode_prompts(tok, texts, chat=chat, add_special_tokens=add_special_tokens)
    lengths = np.asarray([len(r) for r in rows], dtype=np.int64)
    n_ctx = getattr(bridge.cfg, "n_ctx", None)
    if n_ctx and lengths.max() > n_ctx:
        i = int(lengths.argmax())
        raise UserError(f"prompt {ids[i]!r} has {lengths[i]} tokens, more than the model's context ({n_ctx})")
    if positions != "all" and lengths.min() < -min(positions):
        i = int(lengths.argmin())
        raise UserError(f"prompt {ids[i]!r} has {lengths[i]} tokens; position {min(positions)} does not exist")

    n = len(rows)
    max_len = int(lengths.max())
    if batch_size is None:
        batch_size = auto_batch_size(loaded.hf_model, max_len, loaded.device, caps=CACHE_MAX_BATCH)
    pos_keys = ["all"] if positions == "all" else [position_key(p) for p in positions]
    log.info("caching %d prompts x %d hooks x %d positions -> %s", n, len(hooks), len(pos_keys), out)
    writer = StoreWriter(out, hooks, pos_keys, n, store_dtype)
    try:
        bar = tqdm(total=n, unit="prompt", desc="activations", disable=not progress)
        pending = None  # the previous batch's activations on their way to the host
        with torch.no_grad():
            for idx, input_ids, mask in _iter_batches(rows, batch_size, pad_id(tok), padding_side, loaded.device):
                cache = run_hooks(loaded, input_ids, mask, hooks)
                if positions == "all":
                    for h in hooks:
                        writer.put_all(h, cache[h], mask, idx, max_len)
                else:
                    final = final_prompt_positions(mask)  # (B,)
                    rows_b = torch.arange(len(idx), device=final.device)
                    staged = _to_host([cache[h][rows_b, final + 1 + p] for h in hooks for p in positions])
                    if pending is not None:  # written while the device runs this batch
                        _write_staged(writer, hooks, pos_keys, *pending)
                    pending = (idx, staged)
                del cache
                bar.update(len(idx))
            if pending is not None:
                _write_staged(writer, hooks, pos_keys, *pending)
        bar.close()
        tokenization = {"chat": bool(chat), "add_special_tokens": add_special_tokens, "padding_side": padding_side}
        return writer.finish(lengths, manifest(loaded, key, labels, tokenization, source="bridge"))
    except BaseException:
        writer.abort()
        raise


def store_key(loaded: LoadedModel, hooks: list[str], positions, ids: list, texts: Sequence[str], chat: bool,
              add_special_tokens: bool | None, store_dtype: str) -> dict:
    """What a store's activations depend on: a store is reused only when all of it is unchanged."""
    return {
        "weights_sha256": loaded.weights_sha256, "hooks": hooks, "positions": positions, "ids": ids,
        "texts_sha256": _texts_sha256(texts), "chat": bool(chat), "add_special_tokens": add_special_tokens,
        "weight_processing": loaded.weight_processing, "model_dtype": str(loaded.dtype).removeprefix("torch."),
        "store_dtype": store_dtype,
    }


def manifest(loaded: LoadedModel, key: dict, labels: dict, tokenization: dict, source: str) -> dict:
    """A store's ``manifest.json`` less its files and shapes (:meth:`StoreWriter.finish` adds those). ``source``:
    what ran the prompts (``"bridge"``, or ``"generation"``: the prompt forward of a plain HF copy's generation)."""
    return {
        "schema": SCHEMA, "key": key, "labels": labels, "dtype": key["store_dtype"], "n_prompts": len(key["ids"]),
        "tokenization": tokenization, "source": source,
        "model": {"ckpt": str(loaded.ckpt), "n_layers": loaded.n_layers, "d_model": loaded.d_model,
                  "n_heads": loaded.n_heads, "device": loaded.device, "parity": loaded.parity,
                  "adapter": loaded.adapter},
        "versions": versions(),
    }


class StoreWriter:
    """A store being written: one memory-mapped ``.npy`` per (hook, position) in a temporary sibling of ``out``,
    filled batch by batch (:meth:`put`); :meth:`finish` adds the lengths and the manifest and renames it into place,
    :meth:`abort` removes it -- a crash never leaves a store that looks complete."""

    def __init__(self, out: Path, hooks: Sequence[str], pos_keys: Sequence[str], n: int, store_dtype: str):
        self.out, self.n = Path(out), n
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        self.dtype = np.dtype(store_dtype)
        self.files = {h: {k: f"{h}.{k}.npy" for k in pos_keys} for h in hooks}
        self.shapes: dict[str, dict[str, list[int]]] = {}
        self.mms: dict[tuple[str, str], np.memmap] = {}

    def _memmap(self, hook: str, key: str, shape: tuple) -> np.memmap:
        mm = self.mms.get((hook, key))
        if mm is None:  # created at the first batch: the trailing shape comes from the activation itself
            mm = np.lib.format.open_memmap(self.tmp / self.files[hook][key], mode="w+", dtype=self.dtype, shape=shape)
            self.mms[(hook, key)] = mm
            self.shapes.setdefault(hook, {})[key] = list(shape)
        return mm

    def put(self, hook: str, key: str, idx, act: torch.Tensor) -> None:
        """The prompts ``idx`` at one position: ``act`` is ``(len(idx), ...)``."""
        vals = act.float().cpu().numpy()
        self._memmap(hook, key, (self.n, *vals.shape[1:]))[idx] = vals

    def put_all(self, hook: str, act: torch.Tensor, mask: torch.Tensor, idx, max_len: int) -> None:
        """Every prompt token, left-aligned, NaN after the prompt's end."""
        vals = act.float().cpu().numpy()  # (B, T, ...)
        m = mask.bool().cpu().numpy()
        mm = self._memmap(hook, "all", (self.n, max_len, *vals.shape[2:]))
        for b, i in enumerate(idx):
            row = np.full((max_len, *vals.shape[2:]), np.nan, dtype=self.dtype)
            real = vals[b][m[b]]
            row[:len(real)] = real
            mm[i] = row

    def finish(self, lengths: np.ndarray, manifest: dict) -> ActivationStore:
        for mm in self.mms.values():
            mm.flush()
        self.mms.clear()
        np.save(self.tmp / LENGTHS_FILE, lengths)
        write_json_atomic(self.tmp / MANIFEST, {**manifest, "files": self.files, "shapes": self.shapes},
                          allow_nan=True)
        _replace_dir(self.tmp, self.out)
        return ActivationStore.open(self.out)

    def abort(self) -> None:
        self.mms.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def run_hooks(loaded: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              hooks: Sequence[str]) -> dict[str, torch.Tensor]:
    """The bridge's activations at ``hooks`` on one batch (``run_with_cache``'s dict), from a forward stopped just past
    the deepest of them (:func:`analysis.hooks.stop_point`): what lies above, the final norm and the unembedding over
    every position at least, cannot change them."""
    bridge = loaded.bridge
    stop = H.stop_point(hooks, loaded.n_layers)
    with bridge.hooks(fwd_hooks=[(stop, _stop_forward)] if stop in bridge.hook_dict else []):
        _, cache = bridge.run_with_cache(input_ids, attention_mask=attention_mask, names_filter=list(hooks),
                                         return_cache_object=False, return_type=None)
    return cache


def _to_host(acts: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.cuda.Event | None]:
    """Start copying ``acts`` to (pinned) host memory without waiting; the event marks when they have landed.

    Footgun: on a GPU, a blocking ``.cpu()`` per hook made every batch wait for its forward and the forward of the
    next batch wait for the store's writes (676 MB for 20k prompts x 11 layers x 768 floats); staged this way the
    writes of one batch overlap the next batch's forward. On a CPU nothing is copied and the event is None."""
    if not acts or acts[0].device.type != "cuda":
        return [a.float() for a in acts], None
    host = [a.float().to("cpu", non_blocking=True) for a in acts]
    done = torch.cuda.Event()
    done.record()
    return host, done


def _write_staged(writer: "StoreWriter", hooks: Sequence[str], pos_keys: Sequence[str], idx,
                  staged: tuple[list[torch.Tensor], torch.cuda.Event | None]) -> None:
    """Write one batch's :func:`_to_host` activations (ordered hook-major, then position) once they have landed."""
    acts, done = staged
    if done is not None:
        done.synchronize()
    it = iter(acts)
    for h in hooks:
        for k in pos_keys:
            writer.put(h, k, idx, next(it))


def _stop_forward(tensor, hook):
    """Ends the forward here; ``run_with_cache`` catches it (as for its own ``stop_at_layer``), its cache filled."""
    raise StopAtLayerException(tensor)


def _link_store(src: ActivationStore, out: Path, labels: dict) -> ActivationStore:
    """A copy of the store ``src`` at ``out`` with ``labels`` (its arrays hard-linked where the file system allows:
    stores are written once and never modified, so the two share the bytes safely)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        names = [f for per in src.manifest["files"].values() for f in per.values()] + [LENGTHS_FILE]
        for f in names:
            try:
                os.link(src.path / f, tmp / f)
            except OSError:
                shutil.copy2(src.path / f, tmp / f)
        write_json_atomic(tmp / MANIFEST, {**src.manifest, "labels": labels, "reused_from": str(src.path)},
                          allow_nan=True)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("activation store %s: the same activations as %s (linked, not recomputed)", out, src.path)
    return ActivationStore.open(out)


def _matching_store(out: Path, key: dict) -> ActivationStore | None:
    if not (out / MANIFEST).exists():
        return None
    try:
        store = ActivationStore.open(out)
    except UserError as e:
        log.info("rebuilding activation store (%s)", e)
        return None
    old = store.manifest.get("key", {})
    if old != json.loads(json.dumps(key)):
        changed = sorted(k for k in set(old) | set(key) if old.get(k) != json.loads(json.dumps(key.get(k))))
        log.info("rebuilding activation store %s (changed: %s)", out, ", ".join(changed))
        return None
    missing = [f for per in store.manifest["files"].values() for f in per.values() if not (out / f).exists()]
    if missing or not (out / LENGTHS_FILE).exists():
        log.info("rebuilding activation store %s (files missing)", out)
        return None
    return store


# ---------------------------------------------------------------------------------------------------------------
# plain-HF baseline (the benchmark's yardstick: caching should cost within ~1.3x of this)


def hf_forward_hidden_states(model, tokenizer, texts: Sequence[str], batch_size: int = 32, *, chat: bool = True,
                             add_special_tokens: bool | None = None, padding_side: str = PADDING_SIDE,
                             progress: bool = False) -> Float[np.ndarray, "n_prompts n_layers_plus_1 d_model"]:
    """Plain Hugging Face forward passes (``output_hidden_states=True``) over the same batches as
    :func:`cache_activations`; returns every hidden state at the final prompt token, in input order.

    Index mapping: ``[:, l] == resid_pre(l)``; ``[:, l + 1] == resid_post(l)`` for ``l < n_layers - 1``; the
    last entry is after the final norm. Note that a model already wrapped by a bridge runs through the bridge's
    components (and eager attention); load a fresh model for a clean baseline.
    """
    device = next(model.parameters()).device
    rows = encode_prompts(tokenizer, texts, chat=chat, add_special_tokens=add_special_tokens)
    out: np.ndarray | None = None
    bar = tqdm(total=len(rows), unit="prompt", desc="hf forward", disable=not progress)
    with torch.no_grad():
        for idx, input_ids, mask in _iter_batches(rows, batch_size, pad_id(tokenizer), padding_side, device):
            hs = model(**hf_forward_kwargs(model, input_ids, mask), output_hidden_states=True).hidden_states
            final = final_prompt_positions(mask)
            b = torch.arange(len(idx), device=final.device)
            vals = torch.stack([h[b, final] for h in hs], dim=1).float().cpu().numpy()  # (B, L+1, D)
            if out is None:
                out = np.empty((len(rows), *vals.shape[1:]), dtype=np.float32)
            out[idx] = vals
            bar.update(len(idx))
    bar.close()
    return out
