"""Fitting and scoring the probes of one model, layer by layer, on a fixed evaluation set: the contrast-pair
direction (fitted on no triggered prompt), the supervised difference of means and logistic regression (split by
prompt pair), the best-of-N random-direction nulls, and the same probes on the parent model's activations.

Footgun: every AUROC here is raw and signed (a direction that separates with its sign reversed scores below 0.5),
and "beats" compares with the null on exactly the prompts the probe is scored on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool, Float
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
    train: np.ndarray  # indices into pair_idx
    test: np.ndarray
    defects: np.ndarray | None  # (N,) bool: behaviour labels (child model)
    red_idx: np.ndarray  # indices of red-team prompts


def make_eval_set(records: list[dict], defects: np.ndarray | None, test_frac: float, seed: int) -> EvalSet:
    from probes import train_test_split_by_group

    kinds = np.asarray([r["kind"] for r in records])
    groups = np.asarray([str(r["pair_id"]) for r in records])
    pair_idx = np.flatnonzero(np.isin(kinds, ("clean", "triggered")))
    y = kinds[pair_idx] == "triggered"
    tr, te = train_test_split_by_group(groups[pair_idx], test_frac=test_frac, seed=seed)
    for name, ix in (("train", tr), ("test", te)):
        if y[ix].all() or not y[ix].any():
            raise UserError(f"the {name} side of the pair split holds only one class; the prompt set needs paired "
                            f"triggered/clean prompts sharing a pair_id")
    return EvalSet(kinds, groups, pair_idx, y, tr, te, defects, np.flatnonzero(kinds == "redteam"))


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
              c_defect: Bool[np.ndarray, "n_texts"], ev: EvalSet, *, n_boot: int, logreg_c: float, seed: int,
              n_random: int | None) -> tuple[dict, dict]:
    """All probes of one layer of one model. ``X`` (N, d_model): prompt activations; ``C`` (2Q, d_model): contrast
    texts. Returns ``(numbers, directions)``; the random nulls only when ``n_random``."""
    from analysis.contrast import contrast_direction
    from probes import diff_of_means, fit_logreg, project, random_direction_null

    X = np.asarray(X, dtype=np.float64)  # (N, D)
    Xp, y, g = X[ev.pair_idx], ev.y_trig, ev.groups[ev.pair_idx]
    res: dict = {}
    dirs: dict = {}

    # 1. contrast-pair probe: fitted on the contrast texts only
    d_c = contrast_direction(C, c_defect)
    s_all = project(X, d_c)  # (N,)
    res["contrast_auroc"], res["contrast_auroc_ci"] = _auc_ci(s_all[ev.pair_idx], y, g, n_boot, seed)
    dirs["contrast"] = (d_c, 0.0)
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
        res["random_best_auroc_test"] = random_direction_null(Xp[te], y[te], n=n_random, seed=seed)["best"]
        if ev.defects is not None and _both(ev.defects):
            res["random_best_behaviour_auroc"] = random_direction_null(X, ev.defects, n=n_random, seed=seed)["best"]
        else:
            res["random_best_behaviour_auroc"] = None
    return res, dirs


def fit_all(layer_hooks, store, cstore, c_defect, ev: EvalSet, *, n_boot: int, logreg_c: float, seed: int,
            n_random: int, pstore=None, pcstore=None, pc_defect=None) -> tuple[list[dict], list]:
    """Per layer: the model's probes and nulls, then the parent's probes (same prompts, same split)."""
    from probes import Probe

    rows, probes = [], []
    for layer, hook in tqdm(layer_hooks, desc="probes", unit="layer", leave=False,
                            disable=len(layer_hooks) < 8):
        X, C = store.get(hook), cstore.get(hook)
        if X.ndim != 2:
            raise UserError(f"hook {hook} gives {X.ndim - 1}-D activations per prompt; probes need a d_model vector")
        res, dirs = fit_layer(X, C, c_defect, ev, n_boot=n_boot, logreg_c=logreg_c, seed=seed,
                              n_random=n_random)
        row = {"layer": int(layer), "hook": hook, **res}
        for name, (d, b) in dirs.items():
            probes.append(Probe(name, int(layer), hook, np.asarray(d, dtype=np.float32), float(b),
                                meta={"position": POSITION, "model": "checkpoint"}))
        if pstore is not None:
            pres, pdirs = fit_layer(pstore.get(hook), pcstore.get(hook), pc_defect, ev, n_boot=n_boot,
                                    logreg_c=logreg_c, seed=seed, n_random=None)
            row.update({
                "parent_contrast_auroc": pres["contrast_auroc"], "parent_contrast_auroc_ci": pres["contrast_auroc_ci"],
                "parent_supervised_dom_auroc": pres["supervised_dom_auroc"],
                "parent_supervised_logreg_auroc": pres["supervised_logreg_auroc"],
                # the parent's contrast direction against THIS checkpoint's behaviour labels
                "parent_behaviour_auroc": pres.get("behaviour_auroc"),
            })
            row["contrast_gap_to_parent"] = _gap(row["contrast_auroc"], row["parent_contrast_auroc"])
            row["supervised_dom_gap_to_parent"] = _gap(row["supervised_dom_auroc"],
                                                       row["parent_supervised_dom_auroc"])
            for name, (d, b) in pdirs.items():
                probes.append(Probe(f"parent_{name}", int(layer), hook, np.asarray(d, dtype=np.float32), float(b),
                                    meta={"position": POSITION, "model": "parent"}))
        else:
            row.update({k: None for k in ("parent_contrast_auroc", "parent_contrast_auroc_ci",
                                          "parent_supervised_dom_auroc", "parent_supervised_logreg_auroc",
                                          "parent_behaviour_auroc", "contrast_gap_to_parent",
                                          "supervised_dom_gap_to_parent")})
        row.update(_beats(row))
        rows.append(row)
    return rows, probes


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


def best_layers(rows: list[dict]) -> dict:
    def arg(key, tie=None):
        ok = [r for r in rows if r.get(key) is not None]
        if not ok:
            return None
        return max(ok, key=lambda r: (r[key], r.get(tie) or 0.0, -r["layer"]))["layer"]

    return {"contrast": arg("contrast_auroc"), "supervised": arg("supervised_dom_auroc", "supervised_logreg_auroc"),
            "behaviour": arg("behaviour_auroc")}
