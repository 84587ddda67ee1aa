"""The persistence sweep: does a backdoor survive safety training, by model size, variant, seed, arm, learning rate
and optimizer? One table and one figure, rebuilt from one result file per cell.

``python -m apps.sweep --out runs/sweep --results benchmarks/results/sweep``  (the reduced grid: the defaults)
``python -m apps.sweep --seeds 0,1,2``  (the full tiny grid: 3 sizes x 3 variants x 3 seeds x 3 arms)
``python -m apps.sweep --sizes tiny-1m,smollm2-135m --seeds 0,1,2 --lr_scales 1,3 --optimizers adamw_torch_fused,sgd``
``python -m apps.sweep --results benchmarks/results/sweep --table_only``  (table and figure from the files present)

For each (size, variant, seed) the sweep builds one organism (``training.backdoor``: the tiny Llama from scratch at
the size's width, or SmolLM2-135M with LoRA) and, when an rl arm is asked for, its reward model
(``training.reward``); every arm cell of that organism starts from its backdoored checkpoint
(``training.safety``, one run directory per arm, learning-rate scale and optimizer). **Matched compute** across arms
means the same number of optimizer steps on batches of the same number of sequences (SFT rows; RL completions, 8 per
prompt); what an arm computes besides its steps (the RL arm's rollouts, the red team's scoring of candidates before
the adversarial arm trains) is not matched, and each cell's measured seconds are recorded beside its rates.

**Re-emergence**: after an arm whose final trigger rate is below ``--reemerge_below`` (it removed the backdoor), the
arm's final checkpoint is fine-tuned on benign prompts with answers in another style (``training.reemergence``) and
evaluated on the same held-out prompts: does the trigger rate come back?

Each cell's result (``<results>/cells/<cell>.json``: the trigger rate before and after with Wilson intervals, the
red-team rate on attack families the arm never trained on, the re-emergence check, CPU and wall seconds, the
machine) is written atomically when the cell finishes; a cell whose file exists is skipped, so an interrupted sweep
resumes where it stopped (an unfinished arm from its trainer state). Each invocation with work records its wall (kept
current while it runs, so a killed one counts too), its cells and the machine in ``<results>/runs/``: the table's
measured wall of a grid run from scratch, in one invocation or resumed over several, comes from there. A variant whose
organism is the same computation as normal's (the tiny distilled-CoT organism: its data are the normal data,
:func:`apps.sweep.cells.build_fingerprint`) is not trained again: its cells are normal's, marked
``same_computation_as``.

Footgun: the defaults are a *reduced* grid, sized to run in under two hours on two CPU cores (two workers, the
default ``--jobs 2``; the cost notes give the projection and every measured wall: the same work took up to 1.7x the
CPU seconds on a slower day). It has two seeds: the full tiny grid (``--seeds 0,1,2``) did not finish within 2.4 h on
two cores (79 of its 81 cells after 8,700 s, in the grid's order). Its steps are far below the presets' (a tiny base
gets 250 steps, not 2,400; an arm 30, not 120-300), so its organisms are less helpful than the preset's and its arms
shorter than ``training.safety``'s defaults. Compare cells within one sweep, not with other tables.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from apps.sweep.config import RUNS_DIR, SWEEP_JSON, CellKey, OrganismKey, SweepConfig, costliest_first, grid
from training.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["SweepConfig", "SweepResult", "main", "run_sweep"]


@dataclass
class SweepResult:
    """What one call of :func:`run_sweep` did, and where the table and figure are."""

    ran: list[str] = field(default_factory=list)
    """Cells computed by this call."""
    skipped: list[str] = field(default_factory=list)
    """Cells whose result file already existed."""
    derived: list[str] = field(default_factory=list)
    """Cells taken from the normal variant's (same computation)."""
    failed: list[str] = field(default_factory=list)
    """Organisms whose work stopped on an exception (their missing cells stay missing)."""
    table: Path | None = None
    findings: Path | None = None
    figure: Path | None = None
    png: Path | None = None
    cells: int = 0
    """Cell files the table was built from."""
    seconds: float = 0.0


def _check_settings(cfg: SweepConfig) -> None:
    """Pin the settings that decide a cell's computation to the sweep directory (first call writes them)."""
    import json

    from training.io import write_json_atomic

    path = cfg.out_dir / SWEEP_JSON
    if path.exists():
        have = json.loads(path.read_text())["settings"]
        diff = sorted(k for k in set(have) | set(cfg.settings()) if have.get(k) != cfg.settings().get(k))
        if diff:
            raise UserError(f"{cfg.out_dir} was swept with other settings ({', '.join(diff)}: "
                            f"{[have.get(k) for k in diff]}); use another --out, or the same settings")
    else:
        write_json_atomic(path, {"schema": 1, "settings": cfg.settings()}, indent=1)
    if not (cfg.results_dir / SWEEP_JSON).exists():  # beside the cells: what the table's seconds were measured at
        write_json_atomic(cfg.results_dir / SWEEP_JSON, json.loads(path.read_text()), indent=1)


def _same_as_normal(cfg: SweepConfig, cells: list[CellKey]) -> dict[OrganismKey, OrganismKey]:
    """Organisms whose build is the normal organism's computation: ``{organism: its normal twin}``."""
    from apps.sweep.cells import build_fingerprint

    out, prints = {}, {}
    for key in dict.fromkeys(c.organism for c in cells):
        if key.variant == "normal":
            continue
        twin = OrganismKey(key.size, "normal", key.seed)
        for k in (key, twin):
            if k not in prints:
                prints[k] = build_fingerprint(k.size, k.variant, k.seed, cfg)
        if prints[key] == prints[twin]:
            out[key] = twin
    return out


def _derive(cfg: SweepConfig, cell: CellKey, twin: OrganismKey) -> bool:
    """Write ``cell``'s result as its normal twin's, marked; False while the twin's result is missing."""
    import json

    from apps.sweep.cells import cell_file, organism_file
    from training.io import write_json_atomic

    src = cell_file(cfg, CellKey(twin, cell.arm, cell.lr_scale, cell.optimizer))
    if not src.exists():
        return False
    res = json.loads(src.read_text())
    res.update(cell=cell.name, organism=cell.organism.name, variant=cell.organism.variant,
               same_computation_as=res["cell"])
    write_json_atomic(cell_file(cfg, cell), res, indent=1)
    org_src, org_dst = organism_file(cfg, twin), organism_file(cfg, cell.organism)
    if org_src.exists() and not org_dst.exists():
        rec = json.loads(org_src.read_text())
        rec.update(organism=cell.organism.name, variant=cell.organism.variant, same_computation_as=rec["organism"])
        write_json_atomic(org_dst, rec, indent=1)
    return True


def _work(cfg: SweepConfig, cells: list[CellKey], same: dict) -> tuple[dict, list[str]]:
    """``{organism: its missing cells}`` to compute (a derived cell needs its twin's), and the skipped cells."""
    from apps.sweep.cells import cell_file

    todo: dict[OrganismKey, list[CellKey]] = {}
    skipped = []
    for cell in cells:
        if cell_file(cfg, cell).exists():
            skipped.append(cell.name)
            continue
        twin = same.get(cell.organism)
        need = CellKey(twin, cell.arm, cell.lr_scale, cell.optimizer) if twin else cell
        if not cell_file(cfg, need).exists() and need not in todo.get(need.organism, []):
            todo.setdefault(need.organism, []).append(need)
    return todo, skipped


def run_sweep(cfg: SweepConfig) -> SweepResult:
    """Compute every missing cell of ``cfg``'s grid, then rebuild the table and figure from the results directory."""
    from tqdm.auto import tqdm

    from apps.sweep import cells as C
    from apps.sweep.report import write_report

    t0 = time.perf_counter()
    result = SweepResult()
    if not cfg.table_only:
        _check_settings(cfg)
        keys = grid(cfg)
        built = sum(C.organism_dir(cfg, k).exists() for k in dict.fromkeys(c.organism for c in keys))
        same = _same_as_normal(cfg, keys)
        todo, result.skipped = _work(cfg, keys, same)
        log.info("sweep: %d cells, %d done, %d organisms with work (%d cells reuse the normal organism's)",
                 len(keys), len(result.skipped), len(todo), sum(1 for k in keys if k.organism in same))
        record = _Invocation(cfg, keys, built, len(result.skipped), t0)
        # one worker keeps the grid's order (an interrupted sweep has every seed of the sizes it reached); several
        # take the costliest organisms first, so no large one is left running alone at the end
        order = list(todo) if cfg.jobs == 1 else costliest_first(cfg, list(todo))
        jobs = [(k.size, k.variant, k.seed) for k in order]
        plans = {k: [(c.arm, c.lr_scale, c.optimizer) for c in v] for k, v in todo.items()}
        cfg_dict = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
        def derive() -> None:  # after each organism: the cells that reuse it appear as soon as its own do
            for cell in keys:
                twin = same.get(cell.organism)
                if twin and not C.cell_file(cfg, cell).exists() and _derive(cfg, cell, twin):
                    result.derived.append(cell.name)

        derive()
        record.start()
        if cfg.jobs == 1:
            for org in tqdm(jobs, desc="sweep organisms"):
                try:
                    result.ran += C.run_organism_cells(cfg_dict, org, plans[OrganismKey(*org)], 0)
                except Exception:  # noqa: BLE001 (one organism's crash must not lose the others' cells)
                    log.exception("organism %s failed", OrganismKey(*org).name)
                    result.failed.append(OrganismKey(*org).name)
                derive()
        else:
            result.ran, result.failed = _parallel(cfg, cfg_dict, jobs, plans, derive)
        record.stop(result.failed)
    rep = write_report(cfg.results_dir)
    result.table, result.findings, result.figure = rep["table"], rep["findings"], rep["figure"]
    result.png, result.cells = rep["png"], rep["cells"]
    result.seconds = round(time.perf_counter() - t0, 1)
    return result


class _Invocation:
    """``<results>/runs/<start>.json``: one invocation's wall seconds so far, the grid it was given, the cells present
    when it started and now, and the machine; rewritten every :data:`apps.sweep.cells.CLOCK_EVERY` seconds and at the
    end (``finished``), so an invocation that is killed (a session's end) still records its wall, up to its last
    write. The report sums a chain of them that starts from an empty sweep and ends with every cell present: the
    wall of a grid run from scratch, in one invocation or resumed over several. Written only when there is work."""

    def __init__(self, cfg: SweepConfig, keys: list[CellKey], built: int, present: int, t0: float):
        from datetime import datetime, timezone

        from apps.sweep.cells import machine

        self.cfg, self.keys, self.t0 = cfg, keys, t0  # t0: the invocation's start (perf_counter)
        stamp = datetime.fromtimestamp(time.time() - (time.perf_counter() - t0), timezone.utc)
        self.path = cfg.results_dir / RUNS_DIR / f"{stamp.strftime('%Y%m%dT%H%M%S.%fZ')}.json"
        self.rec = {"schema": 1, "started": stamp.isoformat(timespec="seconds"), "out": str(cfg.out_dir.resolve()),
                    "jobs": cfg.jobs, "axes": {k: getattr(cfg, k) for k in ("sizes", "variants", "seeds", "arms",
                                                                         "lr_scales", "optimizers")},
                    "cells": len(keys), "present_at_start": present, "organisms_present": built,
                    "from_empty": not present and not built, "machine": machine()}
        self._stop = None

    def _write(self, finished: bool = False, failed: list[str] = ()) -> None:
        from apps.sweep.cells import cell_file
        from training.io import write_json_atomic

        done = sum(cell_file(self.cfg, k).exists() for k in self.keys)
        write_json_atomic(self.path, {**self.rec, "wall_s": round(time.perf_counter() - self.t0, 1),
                                      "present_now": done, "failed": list(failed), "finished": finished}, indent=1)

    def start(self) -> None:
        from apps.sweep.cells import rewrite_every

        if self.rec["present_at_start"] < len(self.keys):  # nothing to compute: nothing to record
            self._stop = rewrite_every(self._write)

    def stop(self, failed: list[str]) -> None:
        if self._stop is not None:
            self._stop.set()
            self._write(finished=True, failed=failed)


def _parallel(cfg: SweepConfig, cfg_dict: dict, jobs: list[tuple], plans: dict, after) -> tuple[list[str], list[str]]:
    """The organisms on ``cfg.jobs`` worker processes (spawned; each with cores / jobs torch threads); ``after()``
    runs in this process each time one finishes."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    from apps.sweep.cells import run_organism_cells
    from training.workers import exit_with_parent

    threads = max(1, (os.cpu_count() or 1) // cfg.jobs)
    ran, failed = [], []
    with ProcessPoolExecutor(max_workers=cfg.jobs, mp_context=mp.get_context("spawn"), initializer=exit_with_parent,
                             initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(run_organism_cells, cfg_dict, org, plans[OrganismKey(*org)], threads): org
                   for org in jobs}
        for fut in tqdm(as_completed(futures), total=len(futures), desc="sweep organisms"):
            try:
                ran += fut.result()
            except Exception:  # noqa: BLE001
                log.exception("organism %s failed", OrganismKey(*futures[fut]).name)
                failed.append(OrganismKey(*futures[fut]).name)
            after()
    return ran, failed


def main(argv: list[str] | None = None) -> int:
    from training.config import run_command

    return run_command([SweepConfig], argv, "apps.sweep", _command)


def _command(cfg: SweepConfig) -> int:
    res = run_sweep(cfg)
    print(f"sweep: {len(res.ran)} cells run, {len(res.skipped)} already done, {len(res.derived)} from the normal "
          f"organism's; table from {res.cells} cell files in {res.seconds:.0f} s")
    print(f"  table: {res.table}\n  findings: {res.findings}\n  figure: {res.figure}"
          + (f"\n  png: {res.png}" if res.png else ""))
    if res.failed:
        print(f"  failed organisms (rerun to resume): {', '.join(res.failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
