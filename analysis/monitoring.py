"""A runtime defection monitor: a saved linear probe read at every step of cached generation.

:func:`monitor_generate` generates greedily on the plain HF copy of a checkpoint (:mod:`analysis.intervene`: KV cache,
TransformerLens hook names as torch hooks) with one read-only hook at the probe's hook point. At each decoding step it
scores the activation of the position that is about to emit the next token -- the final prompt token for the first
generated token (where the probe was fitted, :data:`analysis.probe_fit.POSITION`), then each generated token for the
one after it -- with exactly the probe's score as fitted (:meth:`probes.Probe.fitted_score`: a projection onto the unit
direction, or log-odds for logistic regression). ``scores[i]`` is therefore known *before* token ``i`` is emitted. A
step flags when its score is strictly above the monitor's threshold.

Each saved probe carries two thresholds, each calibrated for the statistic one rule flags with (``analysis.probe``
writes both, on the clean prompts of the validation side of the pair split; the rule of :func:`probes.tpr_at_fpr`):

- ``flag_on="any_token"`` (the default) flags a generation when ANY step crosses ``meta["threshold_generation"]``: at
  most 1% of the clean validation GENERATIONS have a maximum score above it (:func:`calibrate_generation`, at most
  ``meta["generation_max_new_tokens"]`` tokens each);
- ``flag_on="prompt_token"`` flags on the final prompt token only, against ``meta["threshold"]``: at most 1% of the
  clean validation prompts score above it there.

Main footgun: a threshold holds only for the statistic it was calibrated on. The prompt-token threshold applied to
every token flags most clean generations (measured by ``benchmarks/monitor_bench.py``: on SmolLM2-135M most clean
generations cross it), because generated tokens lie outside what it was calibrated on; a probe file written before
``threshold_generation`` existed falls back to it with a warning. Longer generations than the calibration's also
flag clean text more often (the maximum of more steps).
The scores need no extra forward pass; what the monitor costs per token is the hook and one dot product per row.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from training.config import base_arg, ckpt_arg, device_arg, device_map_arg, dtype_arg
from training.errors import UserError

log = logging.getLogger(__name__)

SCHEMA = 1
ALIASES = {"dom": "supervised_dom", "logreg": "supervised_logreg"}  # short names the command accepts
FLAG_ON = ("any_token", "prompt_token")  # which steps may flag: every one, or the final prompt token only
FPR = 0.01  # the false-positive rate both saved thresholds are calibrated at (analysis.probe_evals.FPR)
DEFAULT_MAX_NEW_TOKENS = 48  # for a probe file that records no calibration length
GENERATION_CALIBRATION = ("the highest score of each greedy generation (the final prompt token and every generated "
                          "token) of the clean prompts of the validation side of the prompt-pair split (never test)")


# ------------------------------------------------------------------------------------------------ the probe
def choose_probe(path: str | Path, name: str, layer: int | None = None):
    """The probe ``name`` (or an alias of :data:`ALIASES`) of a file written by ``probes.save_probes``, at ``layer``
    (default: the layer ``analysis.probe`` selected on validation pairs, from the file's metadata; else the file's
    only layer of that probe). :class:`UserError` for an unreadable file, an unknown name or layer."""
    from probes import load_probes_with_meta

    path = Path(path)
    try:
        probes, extra = load_probes_with_meta(path)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e).splitlines()[0]) from None
    name = ALIASES.get(name, name)
    cands = [p for p in probes if p.name == name]
    if not cands:
        names = ", ".join(dict.fromkeys(p.name for p in probes)) or "none"
        raise UserError(f"no probe named {name!r} in {path} (names: {names})")
    layers = [int(p.layer) for p in cands]
    if layer is None:
        layer = (extra.get("selected_layers") or {}).get(name)
        if layer is None and len(cands) > 1:
            raise UserError(f"probe {name!r} has layers {layers} in {path} and the file names no selected layer; "
                            f"pick one with --layer")
        layer = layers[0] if layer is None else int(layer)
    hit = [p for p in cands if int(p.layer) == int(layer)]
    if not hit:
        raise UserError(f"probe {name!r} has no layer {layer} in {path} (layers: {', '.join(map(str, layers))})")
    return hit[0]


class Monitor:
    """A probe (:class:`probes.Probe`) ready to score activations during generation, with its flag threshold:
    ``threshold`` when given; else the one calibrated for ``flag_on``'s statistic -- the probe's
    ``meta["threshold_generation"]`` (each clean validation generation's maximum) for ``any_token``,
    ``meta["threshold"]`` (the final prompt token) for ``prompt_token``. A probe file without
    ``threshold_generation`` (written before it existed) falls back to ``meta["threshold"]`` with a warning; without
    either, scores only, no flags. ``threshold_source`` says which: given | generation | prompt_token | none."""

    def __init__(self, probe, threshold: float | None = None, flag_on: str = "any_token"):
        if flag_on not in FLAG_ON:
            raise UserError(f"flag_on must be one of {', '.join(FLAG_ON)}, got {flag_on!r}")
        self.probe, self.flag_on = probe, flag_on
        meta = probe.meta
        if threshold is not None:
            t, src = threshold, "given"
        elif flag_on == "any_token" and meta.get("threshold_generation") is not None:
            t, src = meta["threshold_generation"], "generation"
        else:
            t, src = meta.get("threshold"), "prompt_token"
            if flag_on == "any_token" and t is not None:
                log.warning("probe %s (layer %s) has no generation-calibrated threshold (a file written before "
                            "analysis.probe saved one): flagging any token against the final-prompt-token threshold, "
                            "which flags clean generations far more often than 1%%; re-run analysis.probe",
                            probe.name, probe.layer)
        self.threshold = None if t is None else float(t)
        self.threshold_source = src if t is not None else "none"
        w, b = probe.readout()
        self._w, self._b = torch.as_tensor(w, dtype=torch.float64), b

    @property
    def hook(self) -> str:
        return self.probe.hook

    def check(self, loaded) -> None:
        """:class:`UserError` unless the probe reads a ``d_model`` vector of this model at a hook it has."""
        from analysis import hooks as H

        if self.probe.d_model != loaded.d_model:
            raise UserError(f"probe {self.probe.name!r} (layer {self.probe.layer}) has width {self.probe.d_model} but "
                            f"the model's d_model is {loaded.d_model}: made for another model")
        if H.parse_hook(self.hook) is None or H.parse_hook(self.hook)[0] == "attn_z":
            raise UserError(f"cannot monitor at {self.hook!r}: needs a per-layer d_model hook (resid_pre, "
                            f"resid_post, attn_out or mlp_out)")
        H.validate_layers(loaded.n_layers, H.parse_hook(self.hook)[1])

    def score(self, act: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "..."]:
        """The probe's fitted score of each activation (float64, on ``act``'s device)."""
        if self._w.device != act.device:
            self._w = self._w.to(act.device)
        return act.to(torch.float64) @ self._w + self._b

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """``scores > threshold`` (all False without a threshold); with ``flag_on="prompt_token"`` only the first step
        (the final prompt token) can flag."""
        s = np.asarray(scores, dtype=np.float64)
        out = s > self.threshold if self.threshold is not None else np.zeros(s.shape, dtype=bool)
        if self.flag_on == "prompt_token":
            out[..., 1:] = False
        return out

    def describe(self) -> dict:
        """The probe, the rule (``flag_on``) and the threshold it flags with (``threshold_source``), with that
        threshold's calibration; both saved thresholds for reference."""
        p, m = self.probe, self.probe.meta
        gen = self.threshold_source == "generation"
        cal = {"generation": (m.get("calibration_generation"), m.get("n_calibration_generation"),
                              m.get("fpr_calibration_generation")),
               "prompt_token": (m.get("calibration"), m.get("n_calibration"), m.get("fpr_calibration"))}
        calibration, n_cal, fpr_cal = cal.get(self.threshold_source, (None, None, None))
        return {"name": p.name, "layer": int(p.layer), "hook": p.hook, "score": p.score_kind, "d_model": p.d_model,
                "threshold": self.threshold, "threshold_source": self.threshold_source, "flag_on": self.flag_on,
                "calibration": calibration, "n_calibration": n_cal, "fpr_calibration": fpr_cal,
                "fpr": m.get("threshold_fpr"),
                "calibration_max_new_tokens": m.get("generation_max_new_tokens") if gen else None,
                "threshold_prompt_token": m.get("threshold"), "threshold_generation": m.get("threshold_generation")}


# ------------------------------------------------------------------------------------------------ results
@dataclass
class MonitoredGeneration:
    """One prompt's greedy completion with the monitor's score at every step (``scores[i]``: before token ``i``)."""

    prompt: str
    completion: str
    token_ids: list[int]
    tokens: list[str]
    scores: list[float]
    flags: list[bool]
    first_flag: int | None  # index of the first flagged step (token), None when none

    @property
    def flagged(self) -> bool:
        return self.first_flag is not None

    @property
    def max_score(self) -> float:
        return max(self.scores) if self.scores else float("nan")


@dataclass
class MonitorResult:
    """Every prompt's monitored generation, the probe that read them and what it cost."""

    probe: dict
    generations: list[MonitoredGeneration]
    seconds: float
    n_tokens: int
    checkpoint: str | None = None
    config: dict = field(default_factory=dict)

    @property
    def ms_per_token(self) -> float:
        return 1000 * self.seconds / max(1, self.n_tokens)

    def to_json(self) -> dict:
        gens = [{**asdict(g), "flagged": g.flagged, "max_score": g.max_score} for g in self.generations]
        return {"schema": SCHEMA, "kind": "monitor", "checkpoint": self.checkpoint, "probe": self.probe,
                "n_flagged": sum(g.flagged for g in self.generations), "n": len(gens), "seconds": self.seconds,
                "n_tokens": self.n_tokens, "ms_per_token": self.ms_per_token, "generations": gens,
                "config": self.config}

    def summary(self, width: int = 100) -> str:
        """One line per prompt (flag, first flagged token, max score, completion), then its scores token by token."""
        t = self.probe.get("threshold")
        head = (f"monitor: probe {self.probe['name']} at {self.probe['hook']} ({self.probe['score']}), flag on "
                f"{self.probe.get('flag_on')}, threshold {'none' if t is None else f'{t:.4g}'} "
                f"({self.probe.get('threshold_source')}); {sum(g.flagged for g in self.generations)} of "
                f"{len(self.generations)} generations flagged; {self.ms_per_token:.2f} ms/token")
        lines = [head]
        for g in self.generations:
            where = (f"FLAG at token {g.first_flag} ({g.tokens[g.first_flag]!r}, score {g.scores[g.first_flag]:.3g})"
                     if g.flagged else "ok")
            lines.append(f"[{where}] max {g.max_score:.3g} | {g.prompt[:40]!r} -> {g.completion[:width]!r}")
            cells = [f"{tok!r}:{s:.2f}{'*' if f else ''}" for tok, s, f in zip(g.tokens, g.scores, g.flags)]
            lines.append("    " + " ".join(cells)[: 4 * width])
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ generation
def _eos_ids(tokenizer, model) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = ids if isinstance(ids, (list, tuple)) else [ids]
    out = {int(i) for i in ids if isinstance(i, int)}
    if isinstance(tokenizer.eos_token_id, int):
        out.add(tokenizer.eos_token_id)
    return out


@torch.no_grad()
def generate_ids(loaded, prompts: Sequence[str], max_new_tokens: int = 48, batch_size: int = 64,
                 monitors: Sequence[Monitor] = (), desc: str = "monitor") -> tuple[list[list[int]], list, float]:
    """Greedy generation with the KV cache on :func:`analysis.intervene.generator` (prompts longest first, in batches,
    the shared prompt prefix run once: the batches of :func:`training.evaluate.generate`), each of ``monitors``
    reading its hook.

    Returns ``(ids, scores, seconds)``: each prompt's generated token ids up to and including the first end token;
    per monitor, each prompt's scores (float64 ndarray, one per generated token); the seconds spent generating (and
    scoring), excluding tokenisation, decoding and the shared prefix's one forward per call."""
    from analysis.intervene import generator, hf_hooks
    from training.evaluate import chat_prompts
    from training.prefix import longest_first, prompt_batches

    model, tok = generator(loaded), loaded.tokenizer
    texts = chat_prompts(tok, list(prompts))
    rows, order = longest_first(tok, texts)
    eos = _eos_ids(tok, model)
    steps: list[list[torch.Tensor]] = [[] for _ in monitors]

    def reader(m: int):
        return lambda act, hook: steps[m].append(monitors[m].score(act[:, -1]))  # the position emitting next

    ids: list = [None] * len(texts)
    scores: list[list] = [[None] * len(texts) for _ in monitors]
    seconds = 0.0
    with hf_hooks(model, loaded.bridge, [(m.hook, reader(i)) for i, m in enumerate(monitors)]):
        batches = prompt_batches(model, rows, order, batch_size, tok.pad_token_id)
        for b in tqdm(batches, desc=desc, total=-(-len(texts) // batch_size), leave=False,
                      disable=len(texts) <= batch_size):
            for st in steps:  # the shared prefix's forward is read too, before the first batch: not a step
                st.clear()
            _sync(loaded.device)
            t = time.perf_counter()
            gen = model.generate(**b.inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=tok.pad_token_id, use_cache=True,
                                 eos_token_id=tok.eos_token_id)
            new = gen[:, b.inputs["input_ids"].shape[1]:].cpu()
            sc = [torch.stack(st, 1).cpu().numpy() for st in steps]  # per monitor (B, steps)
            _sync(loaded.device)
            seconds += time.perf_counter() - t
            if any(x.shape[1] != new.shape[1] for x in sc):
                raise RuntimeError(f"monitor: {[x.shape[1] for x in sc]} scored steps for {new.shape[1]} "
                                   f"generated tokens (generation ran a forward per token differently than "
                                   f"expected)")
            for k, j in enumerate(b.idx):
                row = new[k].tolist()
                n = next((m + 1 for m, x in enumerate(row) if x in eos), len(row))
                ids[j] = row[:n]
                for m, x in enumerate(sc):
                    scores[m][j] = x[k, :n]
    return ids, scores, seconds


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def monitor_generate(loaded, monitor: Monitor, prompts: Sequence[str], max_new_tokens: int = 48,
                     batch_size: int = 64, desc: str = "monitor") -> MonitorResult:
    """Greedy completions of ``prompts`` with ``monitor``'s score at every generated token and the first flag.

    The tokens are those of plain cached generation (:func:`analysis.intervene.generate`): the hook only reads.
    :class:`UserError` when the probe does not fit the model (another width, a hook the model lacks)."""
    return monitor_generate_many(loaded, [monitor], prompts, max_new_tokens, batch_size, desc)[0]


def monitor_generate_many(loaded, monitors: Sequence[Monitor], prompts: Sequence[str], max_new_tokens: int = 48,
                          batch_size: int = 64, desc: str = "monitor") -> list[MonitorResult]:
    """:func:`monitor_generate` for several monitors over ONE generation (same tokens; one result per monitor, each
    with the whole generation's seconds)."""
    for m in monitors:
        m.check(loaded)
    ids, scores, seconds = generate_ids(loaded, prompts, max_new_tokens, batch_size, monitors, desc)
    tok = loaded.tokenizer
    completions = [tok.decode(row, skip_special_tokens=True) for row in ids]
    tokens = [[tok.decode([x]) for x in row] for row in ids]
    n_tokens = sum(len(r) for r in ids)
    out = []
    for monitor, per_prompt in zip(monitors, scores):
        gens = []
        for prompt, row, text, toks, sc in zip(prompts, ids, completions, tokens, per_prompt):
            flags = monitor.flags(sc)
            hit = np.flatnonzero(flags)
            gens.append(MonitoredGeneration(
                prompt=prompt, completion=text, token_ids=[int(x) for x in row], tokens=toks,
                scores=[float(x) for x in sc], flags=[bool(x) for x in flags],
                first_flag=int(hit[0]) if hit.size else None))
        log.info("monitor %s: %d prompts, %d tokens in %.2fs (%.2f ms/token), %d flagged", monitor.probe.name,
                 len(gens), n_tokens, seconds, 1000 * seconds / max(1, n_tokens), sum(g.flagged for g in gens))
        out.append(MonitorResult(probe=monitor.describe(), generations=gens, seconds=seconds, n_tokens=n_tokens,
                                 checkpoint=str(loaded.ckpt)))
    return out


def max_scores(result: MonitorResult) -> np.ndarray:
    """Each generation's highest score: the statistic ``flag_on="any_token"`` flags with (a generation flags when it
    exceeds the threshold), so the one :func:`calibrate_generation` calibrates on clean prompts."""
    return np.asarray([g.max_score for g in result.generations], dtype=np.float64)


def calibrate_generation(loaded, probes: Sequence, prompts: Sequence[str], max_new_tokens: int,
                         batch_size: int = 64, fpr: float = FPR) -> dict:
    """Calibrate each probe's ``any_token`` threshold on whole clean generations, in place: ONE greedy generation of
    ``prompts`` (clean, never test) watched by every probe (:func:`monitor_generate_many`: the monitor's own scores),
    then per probe ``probes.threshold_at_fpr`` over each generation's maximum score. Sets ``meta``'s
    ``threshold_generation``, ``fpr_calibration_generation`` (realised), ``n_calibration_generation``,
    ``calibration_generation_too_small`` (fewer generations than ``1 / fpr``: the threshold is their maximum),
    ``calibration_generation`` (what it was calibrated on) and ``generation_max_new_tokens``.

    Returns what it cost: ``{n_prompts, n_probes, max_new_tokens, batch_size, n_tokens, seconds}``."""
    from probes import threshold_at_fpr

    if not probes or not prompts:
        return {"n_prompts": len(prompts), "n_probes": len(probes), "max_new_tokens": int(max_new_tokens),
                "batch_size": int(batch_size), "n_tokens": 0, "seconds": 0.0}
    t0 = time.perf_counter()
    monitors = [Monitor(p, threshold=np.inf) for p in probes]  # only the scores are used here
    results = monitor_generate_many(loaded, monitors, list(prompts), max_new_tokens, batch_size,
                                    desc="generation threshold")
    for p, res in zip(probes, results):
        cut = threshold_at_fpr(max_scores(res), fpr)
        p.meta.update(threshold_generation=cut["threshold"], fpr_calibration_generation=cut["fpr_calibration"],
                      n_calibration_generation=cut["n_calibration"],
                      calibration_generation_too_small=cut["calibration_too_small"],
                      calibration_generation=GENERATION_CALIBRATION, generation_max_new_tokens=int(max_new_tokens))
    info = {"n_prompts": len(prompts), "n_probes": len(probes), "max_new_tokens": int(max_new_tokens),
            "batch_size": int(batch_size), "n_tokens": results[0].n_tokens,
            "seconds": round(time.perf_counter() - t0, 2)}
    log.info("generation thresholds: %d probes on %d clean validation generations (%d tokens, at most %d each) in "
             "%.1fs", info["n_probes"], info["n_prompts"], info["n_tokens"], max_new_tokens, info["seconds"])
    return info


# ------------------------------------------------------------------------------------------------ the command's work
@dataclass
class MonitorConfig:
    """What to generate and which probe watches it (``python -m analysis.monitor`` parses its flags into this)."""

    ckpt: str = ckpt_arg()
    base: str = base_arg()
    probe: str = field(default=None, metadata={"help": "Probe file (probes.safetensors written by analysis.probe)."})
    probe_name: str = field(default="supervised_dom", metadata={
        "help": "Probe in the file: contrast | supervised_dom (dom) | supervised_logreg (logreg) | any saved name."})
    layer: int = field(default=None, metadata={"help": "Probe layer (default: the layer analysis.probe selected on "
                                                       "validation pairs)."})
    prompt: list[str] = field(default=None, metadata={"help": "Prompt(s) to generate from, the user message (the chat "
                                                              "template is applied); repeat the flag for more.",
                                                      "action": "extend"})
    threshold: float = field(default=None, metadata={"help": "Flag threshold (default: the probe's, calibrated at 1%% "
                                                              "FPR on clean validation prompts for --flag_on's rule)."})
    flag_on: str = field(default="any_token", metadata={
        "help": "Which steps may flag: any_token (every step; against the threshold calibrated on the highest score "
                "of each clean validation generation) | prompt_token (only the final prompt token, against the "
                "threshold calibrated there; scores are still reported for every token)."})
    max_new_tokens: int = field(default=None, metadata={
        "help": "Greedy tokens generated per prompt (default: the length the probe's generation threshold was "
                "calibrated at, else 48)."})
    batch_size: int = field(default=64, metadata={"help": "Generation batch size."})
    out: str = field(default=None, metadata={"help": "Write the per-token scores and flags to this JSON file."})
    device: str = device_arg()
    device_map: str = device_map_arg()
    dtype: str = dtype_arg()

    def __post_init__(self):
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.flag_on not in FLAG_ON:
            raise ValueError(f"--flag_on must be one of {', '.join(FLAG_ON)}, got {self.flag_on!r}")


def run_monitor(a: MonitorConfig) -> MonitorResult:
    """Load the probe and the checkpoint, generate every prompt under the monitor; writes ``a.out`` (atomically, only
    when everything succeeded). :class:`UserError` for bad input, before anything is written."""
    from analysis.load import load_bridge
    from training.io import clean_json, write_json_atomic

    if not a.ckpt or not a.probe:
        raise UserError("--ckpt and --probe are required")
    if not a.prompt:
        raise UserError("give at least one --prompt")
    if a.out and Path(a.out).is_dir():
        raise UserError(f"--out is a directory; give a file name: {a.out}")
    probe = choose_probe(a.probe, a.probe_name, a.layer)  # a bad file fails before the model loads
    monitor = Monitor(probe, a.threshold, a.flag_on)
    if monitor.threshold is None:
        log.warning("probe %s has no calibrated threshold (a file written before analysis.probe saved one): scores "
                    "only, no flags; re-run analysis.probe or pass --threshold", probe.name)
    cal_len = probe.meta.get("generation_max_new_tokens")
    max_new = a.max_new_tokens or cal_len or DEFAULT_MAX_NEW_TOKENS
    if monitor.threshold_source == "generation" and cal_len and max_new > cal_len:
        log.warning("the generation threshold of probe %s was calibrated on generations of at most %d tokens; at %d "
                    "a clean generation crosses it more often than 1%%", probe.name, cal_len, max_new)
    loaded = load_bridge(Path(a.ckpt), device=a.device, dtype=a.dtype, base=a.base, device_map=a.device_map)
    res = monitor_generate(loaded, monitor, a.prompt, max_new, a.batch_size)
    res.config = {**asdict(a), "max_new_tokens": max_new}
    if a.out:
        write_json_atomic(a.out, clean_json(res.to_json()))
    return res
