"""The live view's engine: run a typed prompt through a checkpoint, score every token with the stored probes at every
layer, and generate the response under the runtime monitor (:mod:`analysis.monitoring`: the chosen probe at its best
layer scores every generated token as it is produced and flags it against the probe's calibrated threshold).

One job at a time (a lock; a second request while one runs is refused with a message, never queued behind a
frozen page), in a worker thread, with its stage ("loading checkpoint", "scoring tokens", "generating") readable
while it runs so the page can show progress. Loaded models are kept in a small LRU cache: the first prompt on a
checkpoint pays the load (and the bridge/HF parity check of :func:`analysis.load.load_bridge`), later ones do not.
Any failure becomes one line in the job's ``error``; the server keeps serving.

Footgun: the probes were fitted at the *final prompt token* of the chat-formatted prompt; scores at earlier
tokens are shown for orientation only -- the probe's verdict is the last column. Tokenization goes through the
checkpoint's own tokenizer (:func:`analysis.load.encode_prompts`), never ``bridge.to_tokens`` (double BOS).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis.results import PROBE_KINDS, ProbeResult
from apps.explorer.data import RunData
from training.errors import UserError
from training.layout import Checkpoint

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 500
MAX_NEW_TOKENS = 96  # a code completion needs up to ~70 tokens; generation stops at the end token
MAX_CACHED_MODELS = 2
MAX_JOBS_KEPT = 16


@dataclass
class Job:
    id: str
    ckpt_id: str
    probe: str
    text: str
    tag: Any = None  # the caller's label for this run (the page uses its Run-button click count)
    stage: str = "queued"
    started: float = field(default_factory=time.time)
    finished: float | None = None
    result: dict | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.finished is not None

    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started


def check_prompt(text: Any, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """The prompt, or :class:`UserError` for an empty, non-text or over-long one."""
    if not isinstance(text, str) or not text.strip():
        raise UserError("type a prompt first")
    if len(text) > max_chars:
        raise UserError(f"prompt too long: {len(text)} characters (the limit is {max_chars})")
    return text


class LiveRunner:
    """Loads checkpoints on demand (cached), runs one prompt at a time in a worker thread."""

    def __init__(self, run: RunData, *, device: str | None = None, max_new_tokens: int = MAX_NEW_TOKENS,
                 max_chars: int = MAX_PROMPT_CHARS, max_models: int = MAX_CACHED_MODELS):
        self.run = run
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.max_chars = max_chars
        self.max_models = max_models
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._busy = threading.Lock()  # held for the whole job: one generation at a time
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._jobs_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------- jobs
    def submit(self, ckpt_id: Any, text: Any, probe: Any, tag: Any = None) -> Job:
        """Start a job; :class:`UserError` for bad input or while another job runs."""
        text = check_prompt(text, self.max_chars)
        ck = self.run.checkpoint(ckpt_id)
        if ck is None:
            raise UserError("pick a checkpoint of this run")
        if probe not in PROBE_KINDS:
            raise UserError(f"pick a probe ({', '.join(PROBE_KINDS)})")
        if not self._busy.acquire(blocking=False):
            raise UserError("another prompt is running; wait for it to finish (one generation at a time)")
        job = Job(uuid.uuid4().hex, ck.id, probe, text, tag=tag)
        with self._jobs_lock:
            self._jobs[job.id] = job
            while len(self._jobs) > MAX_JOBS_KEPT:
                self._jobs.popitem(last=False)
        threading.Thread(target=self._work, args=(job, ck), name=f"explorer-live-{job.id[:8]}", daemon=True).start()
        return job

    def job(self, job_id: Any) -> Job | None:
        with self._jobs_lock:
            return self._jobs.get(job_id) if isinstance(job_id, str) else None

    @property
    def busy(self) -> bool:
        return self._busy.locked()

    def _work(self, job: Job, ck: Checkpoint) -> None:
        try:
            job.result = self._run(job, ck)
        except UserError as e:
            job.error = str(e)
        except Exception as e:  # noqa: BLE001 - the page shows one line, the server keeps serving
            log.exception("live prompt failed")
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            job.error = f"{type(e).__name__}: {first}" if first else type(e).__name__
        finally:
            job.stage = "error" if job.error else "done"
            job.finished = time.time()
            self._busy.release()

    # ------------------------------------------------------------------------------------------- work
    def _probes_for(self, ck: Checkpoint) -> tuple[list, ProbeResult | None, Checkpoint]:
        """The checkpoint's own probes, else the backdoored checkpoint's (the detector a lab would have)."""
        for source in (ck, self.run.backdoored()):
            if source is None:
                continue
            probes = self.run.probes(source)
            if probes:
                return probes, self.run.probe(source), source
        bd = self.run.backdoored() or ck
        raise UserError(f"no probes for {ck.id}: run {self.run.probe_cmd(bd)}")

    def model(self, ck: Checkpoint):
        """The :class:`~analysis.load.LoadedModel` of a checkpoint, from the cache or freshly loaded (and
        parity-checked). Its generation runs on a plain HF copy (:mod:`analysis.intervene`), loaded on first use.
        """
        from analysis.load import load_bridge

        if ck.id in self._models:
            self._models.move_to_end(ck.id)
            return self._models[ck.id]
        self._models[ck.id] = load_bridge(self.run.file(ck.rel), device=self.device, base=self.run.base)
        while len(self._models) > self.max_models:
            self._models.popitem(last=False)
        return self._models[ck.id]

    def _run(self, job: Job, ck: Checkpoint) -> dict:
        import torch

        from analysis.activations import run_hooks
        from analysis.load import encode_prompts
        from analysis.monitoring import Monitor, monitor_generate

        probes, probe_json, source = self._probes_for(ck)
        chosen = sorted((p for p in probes if p.name == job.probe), key=lambda p: p.layer)
        if not chosen:
            raise UserError(f"{source.id}'s probes.safetensors has no {job.probe!r} probe")
        job.stage = f"loading checkpoint {ck.id}" + ("" if ck.id in self._models else " (first use: loading weights)")
        loaded = self.model(ck)
        if chosen[0].direction.shape[0] != loaded.d_model:
            raise UserError(f"probes of {source.id} have d_model {chosen[0].direction.shape[0]}, "
                            f"{ck.id} has {loaded.d_model}")

        job.stage = "scoring tokens"
        tok = loaded.tokenizer
        ids = encode_prompts(tok, [job.text], chat=True)[0]
        n_ctx = getattr(loaded.bridge.cfg, "n_ctx", None)
        if n_ctx and len(ids) > n_ctx:
            raise UserError(f"prompt is {len(ids)} tokens, more than the model's context ({n_ctx})")
        hooks = list(dict.fromkeys(p.hook for p in chosen))
        x = torch.tensor([ids], device=loaded.device)
        with torch.no_grad():
            cache = run_hooks(loaded, x, torch.ones_like(x), hooks)
        scores = np.stack([p.fitted_score(cache[p.hook][0].float().cpu().numpy()) for p in chosen])  # (L, T)
        del cache
        tokens = [tok.decode([i]) for i in ids]
        kind = "contrast" if job.probe == "contrast" else "supervised"
        best = (probe_json.best_layer if probe_json else {}).get(kind)
        layers = [int(p.layer) for p in chosen]
        if best not in layers:  # no probe.json beside the probes: no best layer to mark
            best = None

        job.stage = "generating response (monitored)"
        watch = next((p for p in chosen if int(p.layer) == best), chosen[len(chosen) // 2])
        monitor = Monitor(watch)
        gen = monitor_generate(loaded, monitor, [job.text], max_new_tokens=self.max_new_tokens, batch_size=1,
                               desc="live").generations[0]
        completion = gen.completion
        shows = None
        try:
            shows = bool(self.run.spec_of(loaded.meta).shows_behaviour(completion))
        except UserError:
            pass
        mon = {"layer": int(watch.layer), "hook": watch.hook, "score": watch.score_kind, "threshold": monitor.threshold,
               "threshold_source": monitor.threshold_source, "tokens": gen.tokens, "scores": gen.scores,
               "flags": gen.flags, "first_flag": gen.first_flag}
        return {"checkpoint": ck.id, "probe": job.probe, "probe_source": source.id, "tokens": tokens,
                "layers": layers, "scores": scores, "best_layer": best, "completion": completion,
                "shows_behaviour": shows, "monitor": mon, "seconds": job.elapsed()}
