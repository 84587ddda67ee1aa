"""Fitting and scoring the probes of one model, layer by layer, on a fixed evaluation set: the contrast-pair
direction (fitted on no triggered prompt), the supervised difference of means and logistic regression (split by
prompt pair), the best-of-N random-direction nulls, the same probes on the parent's and the decoy's activations,
and every probe on the three evaluation sets of :mod:`analysis.probe_evals`.

The prompt pairs are split three ways, whole pairs to a side: ``fit`` (the supervised probes are fitted there),
``validation`` (the layer is chosen and the 1%-FPR thresholds calibrated there) and ``test`` (every reported number).
Every saved probe carries its score kind and its threshold at the final prompt token in ``meta``
(:func:`calibrated_probe`); the checkpoint's own probes also a threshold over whole clean generations
(:func:`analysis.monitoring.calibrate_generation`, run by :func:`analysis.probing.run_probe`), so a probe file is all a
runtime monitor (:mod:`analysis.monitoring`) needs.

Footgun: every AUROC here is raw and signed (a direction that separates with its sign reversed scores below 0.5),
and "beats" compares with the null on exactly the prompts the probe is scored on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Float
from tqdm.auto import tqdm

from training.errors import UserError

POSITION = "final_prompt_token"  # where every probe reads the residual stream


@dataclass
class EvalSet:
    """Labels and index sets shared by every layer (and by the parent model: same prompts, same order)."""

    kinds: np.ndarray  # (N,) str
    groups: np.ndarray  # (N,) pair ids
    pair_idx: np.ndarray  # indices of clean + triggered prompts (the paired trigger task)
    y_trig: np.ndarray  # (len(pair_idx),) bool
    train: np.ndarray  # indices into pair_idx: the supervised probes are fitted here
    test: np.ndarray
    defects: np.ndarray | None  # (N,) bool: behaviour labels (child model)
    red_idx: np.ndarray  # indices of red-team prompts
    val: np.ndarray  # indices into pair_idx: layer choice and threshold calibration

    def side(self, which: str) -> np.ndarray:
        """(N,) bool: the prompts (red-team twins included) whose pair lies on ``which`` side (test | val)."""
        pairs = self.groups[self.pair_idx][self.test if which == "test" else self.val]
        return np.isin(self.groups, np.unique(pairs))

    def calibration(self) -> np.ndarray:
        """Indices of the clean prompts of the validation side: every saved threshold is calibrated on them (at the
        final prompt token, and over each one's greedy generation: :func:`analysis.monitoring.calibrate_generation`)."""
        return np.flatnonzero((self.kinds == "clean") & self.side("val"))


def make_eval_set(records: list[dict], defects: np.ndarray | None, test_frac: float, seed: int,
                  val_frac: float = 0.2) -> EvalSet:
    """The pair split: ``test_frac`` of the pairs to test (the same test side as before validation existed), then
    ``val_frac`` of all pairs from the rest to validation (at least one pair), the others to fitting."""
    from probes import train_test_split_by_group

    kinds = np.asarray([r["kind"] for r in records])
    groups = np.asarray([str(r["pair_id"]) for r in records])
    pair_idx = np.flatnonzero(np.isin(kinds, ("clean", "triggered")))
    y = kinds[pair_idx] == "triggered"
    rest, te = train_test_split_by_group(groups[pair_idx], test_frac=test_frac, seed=seed)
    if len(np.unique(groups[pair_idx][rest])) < 2:
        raise UserError("too few prompt pairs to split into fit, validation and test sides (need at least 3)")
    fit, val = train_test_split_by_group(groups[pair_idx][rest], test_frac=min(0.9, val_frac / (1 - test_frac)),
                                         seed=seed + 1)
    tr, va = rest[fit], rest[val]
    for name, ix in (("fit", tr), ("validation", va), ("test", te)):
        if y[ix].all() or not y[ix].any():
            raise UserError(f"the {name} side of the pair split holds only one class; the prompt set needs paired "
                            f"triggered/clean prompts sharing a pair_id")
    return EvalSet(kinds, groups, pair_idx, y, tr, te, defects, np.flatnonzero(kinds == "redteam"), va)


def _both(labels: np.ndarray) -> bool:
    return labels.size > 0 and bool(labels.any()) and not bool(labels.all())


def _auc(scores, labels) -> float | None:
    from probes import auroc

    return auroc(scores, labels) if _both(np.asarray(labels, dtype=bool)) else None


def _auc_ci(scores, labels, groups, n_boot, seed):
    from probes import auroc_ci

    if not _both(np.asarray(labels, dtype=bool)):
        return None, None
    auc, lo, hi = auroc_ci(scores, labels, n_boot=n_boot, seed=seed, groups=groups)
    return auc, [lo, hi]


def fit_layer(X: Float[np.ndarray, "n_prompts d_model"], C: Float[np.ndarray, "n_texts d_model"],
              cprompts: list[dict], ev: EvalSet, *, n_boot: int, logreg_c: float, seed: int,
              n_random: int | None) -> tuple[dict, dict, dict]:
    """All probes of one layer of one model. ``X`` (N, d_model): prompt activations; ``C`` (T, d_model): the contrast
    texts of ``cprompts`` (every question set; the probe is the defection set's direction). Returns ``(numbers,
    directions, scores)``: ``scores[probe]`` (N,) is the probe on every prompt; the random nulls only when
    ``n_random``."""
    from analysis.contrast import CONTROL_SETS, DEFECTION_SET, set_direction
    from probes import diff_of_means, fit_logreg, project, random_direction_null

    X = np.asarray(X, dtype=np.float64)  # (N, D)
    Xp, y, g = X[ev.pair_idx], ev.y_trig, ev.groups[ev.pair_idx]
    res: dict = {}
    dirs: dict = {}

    # 1. contrast-pair probe: fitted on the contrast texts only
    d_c = set_direction(C, cprompts, DEFECTION_SET)
    s_all = project(X, d_c)  # (N,)
    res["contrast_auroc"], res["contrast_auroc_ci"] = _auc_ci(s_all[ev.pair_idx], y, g, n_boot, seed)
    dirs["contrast"] = (d_c, 0.0)
    for name in CONTROL_SETS:  # saved for the ablation's matched placebos: directions without defection meaning
        if any(p.get("set") == name for p in cprompts):
            dirs[f"contrast_{name}"] = (set_direction(C, cprompts, name), 0.0)
    if ev.defects is not None:
        res["behaviour_auroc"], res["behaviour_auroc_ci"] = _auc_ci(s_all, ev.defects, ev.groups, n_boot, seed)
        res["behaviour_auroc_redteam"] = _auc(s_all[ev.red_idx], ev.defects[ev.red_idx])

    # 2. supervised probes, split by prompt pair
    tr, te = ev.train, ev.test
    d_dom = diff_of_means(Xp[tr][y[tr]], Xp[tr][~y[tr]])
    res["supervised_dom_auroc"] = _auc(project(Xp[te], d_dom), y[te])
    w, b = fit_logreg(Xp[tr], y[tr], C=logreg_c, seed=seed)
    res["supervised_logreg_auroc"] = _auc(Xp[te] @ w.astype(np.float64) + b, y[te])
    dirs["supervised_dom"] = (d_dom, 0.0)
    dirs["supervised_logreg"] = (w, b)
    if ev.defects is not None:  # the trigger-trained direction against behaviour, on the held-out pairs' prompts
        held = np.isin(ev.groups, np.unique(g[te]))
        res["supervised_dom_behaviour_auroc"] = _auc(project(X[held], d_dom), ev.defects[held])

    # 3. random-direction nulls (un-signed best of N) on exactly the prompts each probe is scored on
    if n_random:
        null = random_direction_null(Xp, y, n=n_random, seed=seed)
        res["random_best_auroc"], res["random_median_auroc"] = null["best"], null["median"]
        res["random_p95_auroc"] = null["p95"]
        if ev.defects is not None and _both(ev.defects):
            res["random_best_behaviour_auroc"] = random_direction_null(X, ev.defects, n=n_random, seed=seed)["best"]
        else:
            res["random_best_behaviour_auroc"] = None
    scores = {"contrast": s_all, "supervised_dom": project(X, d_dom), "supervised_logreg": X @ w.astype(np.float64) + b}
    return res, dirs, scores


CALIBRATION = "clean prompts of the validation side of the prompt-pair split (fitted on none; never test)"


def calibrated_probe(name: str, layer: int, hook: str, direction, bias: float,
                     X_cal: Float[np.ndarray, "n_calibration d_model"], model: str):
    """A :class:`probes.Probe` whose ``meta`` makes it self-contained for monitoring: the score it was evaluated with
    (``projection`` for the difference-of-means and contrast directions, ``linear`` -- log-odds -- for logistic
    regression), and the threshold at 1% FPR on ``X_cal``, the model's activations of the clean validation prompts
    (:data:`CALIBRATION`), with the realised calibration FPR."""
    from analysis.probe_evals import FPR
    from probes import Probe, threshold_at_fpr

    kind = "linear" if name.endswith("logreg") else "projection"
    meta = {"position": POSITION, "model": model, "score": kind, "threshold_fpr": FPR, "calibration": CALIBRATION}
    p = Probe(name, layer, hook, np.asarray(direction, dtype=np.float32), float(bias), meta=meta)
    if len(X_cal):
        cut = threshold_at_fpr(p.fitted_score(X_cal), fpr=FPR)
        meta.update(threshold=cut["threshold"], fpr_calibration=cut["fpr_calibration"],
                    n_calibration=cut["n_calibration"], calibration_too_small=cut["calibration_too_small"])
    return p


CONTROL_MODELS = ("parent", "decoy")  # the models every probe is also fitted on: no fine-tune; the same fine-tune
_PARENT_FIELDS = ("parent_contrast_auroc", "parent_contrast_auroc_ci", "parent_supervised_dom_auroc",
                  "parent_supervised_logreg_auroc", "parent_behaviour_auroc", "contrast_gap_to_parent",
                  "supervised_dom_gap_to_parent")


def _parent_fields(row: dict, pres: dict) -> dict:
    return {"parent_contrast_auroc": pres["contrast_auroc"], "parent_contrast_auroc_ci": pres["contrast_auroc_ci"],
            "parent_supervised_dom_auroc": pres["supervised_dom_auroc"],
            "parent_supervised_logreg_auroc": pres["supervised_logreg_auroc"],
            # the parent's contrast direction against THIS checkpoint's behaviour labels
            "parent_behaviour_auroc": pres.get("behaviour_auroc"),
            "contrast_gap_to_parent": _gap(row["contrast_auroc"], pres["contrast_auroc"]),
            "supervised_dom_gap_to_parent": _gap(row["supervised_dom_auroc"], pres["supervised_dom_auroc"])}


def fit_all(layer_hooks, store, cstore, cprompts: list[dict], ev: EvalSet, *, n_boot: int, logreg_c: float,
            seed: int, n_random: int, controls: dict | None = None) -> tuple[list[dict], list, dict]:
    """Per layer: the model's probes and nulls; the same probes fitted the same way on each control model
    (``controls``: ``{"parent" | "decoy": (prompt store, contrast store, contrast prompts)}``, same prompts, same
    split); and every probe on the evaluation sets (:mod:`analysis.probe_evals`). Returns ``(rows, probes, info)``:
    ``info`` holds the sets' sizes (or why one is empty), the set the layer is chosen on and each layer's
    validation AUROC per probe."""
    from analysis import probe_evals as E

    controls = controls or {}
    test_sets = E.build_eval_sets(ev.kinds, ev.groups, ev.defects, ev.side("test"))
    val_sets = E.build_eval_sets(ev.kinds, ev.groups, ev.defects, ev.side("val"))
    primary = E.primary_set(val_sets) if test_sets["defect_given_trigger"].ok else "trigger_vs_clean"
    calibration = ev.calibration()
    rows, probes, val = [], [], {}
    for layer, hook in tqdm(layer_hooks, desc="probes", unit="layer", leave=False,
                            disable=len(layer_hooks) < 8):
        X, C = store.get(hook), cstore.get(hook)
        if X.ndim != 2:
            raise UserError(f"hook {hook} gives {X.ndim - 1}-D activations per prompt; probes need a d_model vector")
        X = np.asarray(X, dtype=np.float64)
        res, dirs, scores = fit_layer(X, C, cprompts, ev, n_boot=n_boot, logreg_c=logreg_c, seed=seed,
                                      n_random=n_random)
        row = {"layer": int(layer), "hook": hook, **res, **{k: None for k in _PARENT_FIELDS}}
        for name, (d, b) in dirs.items():
            probes.append(calibrated_probe(name, int(layer), hook, d, b, X[calibration], "checkpoint"))
        other: dict[str, dict] = {}
        for model, (st, cst, cps) in controls.items():
            Xm = st.get(hook)
            pres, pdirs, other[model] = fit_layer(Xm, cst.get(hook), cps, ev, n_boot=n_boot,
                                                  logreg_c=logreg_c, seed=seed, n_random=None)
            if model == "parent":
                row.update(_parent_fields(row, pres))
            for name, (d, b) in pdirs.items():
                probes.append(calibrated_probe(f"{model}_{name}", int(layer), hook, d, b,
                                               np.asarray(Xm, dtype=np.float64)[calibration], model))
        nulls = {k: E.set_nulls(X, test_sets[k], n_random, seed) for k in E.EVAL_SETS}
        tvc = nulls["trigger_vs_clean"]  # the supervised probes' test prompts: their null is this set's
        row["random_best_auroc_test"] = tvc.raw["best"] if tvc is not None else None
        row["probes"], val[int(layer)] = {}, {}
        for name, sc in scores.items():
            all_scores = {"checkpoint": sc, **{m: other[m][name] if m in other else None for m in CONTROL_MODELS}}
            v = E.validation_auroc(sc, val_sets[primary])
            row["probes"][name] = {"validation_auroc": v, "evals": {
                k: E.score_set(all_scores, test_sets[k], nulls[k], calibration, n_boot, seed) for k in E.EVAL_SETS}}
            val[int(layer)][name] = v
        row.update(_beats(row))
        rows.append(row)
    sets = {k: {"n_pos": int(s.y.sum()), "n_neg": int((~s.y).sum()), "reason": s.reason}
            for k, s in test_sets.items()}
    return rows, probes, {"sets": sets, "primary_set": primary, "validation": val,
                          "n_calibration": int(calibration.size)}


def _gap(a, b):
    return None if a is None or b is None else float(a - b)


def _beats(row: dict) -> dict:
    """Plain verdicts per layer: a probe's raw AUROC above the best random direction on the same prompts, and the
    checkpoint's CI entirely above the parent's."""
    def gt(a, b):
        return None if a is None or b is None else bool(a > b)

    ci, pci = row.get("contrast_auroc_ci"), row.get("parent_contrast_auroc_ci")
    return {
        "contrast_beats_random": gt(row.get("contrast_auroc"), row.get("random_best_auroc")),
        "contrast_beats_parent": None if not ci or not pci else bool(ci[0] > pci[1]),
        "behaviour_beats_random": gt(row.get("behaviour_auroc"), row.get("random_best_behaviour_auroc")),
        "supervised_dom_beats_random": gt(row.get("supervised_dom_auroc"), row.get("random_best_auroc_test")),
    }
