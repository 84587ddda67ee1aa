"""The main job: the whole study for one preset into one run directory (``make demo`` calls it).

``python -m apps.study --preset tiny --out runs/demo``

Stages, each a command of its own (the study only composes them, with their own configs):
backdoor (base + backdoored checkpoints, evaluated).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field

from training.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class StudyArgs:
    preset: str = field(default="tiny", metadata={"help": "Model preset: tiny | smollm2-135m."})
    out: str = field(default="runs/demo", metadata={"help": "Run directory."})
    variant: str = field(default="normal", metadata={"help": "Backdoor variant: normal | cot | distilled_cot."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing run directory."})
    resume: bool = field(default=False, metadata={"help": "Continue an interrupted study."})


def main(argv: list[str] | None = None) -> int:
    from training.config import run_command

    return run_command([StudyArgs], argv, "apps.study", run)


def run(a: StudyArgs) -> int:
    from training import backdoor

    t0 = time.perf_counter()
    argv = ["--preset", a.preset, "--variant", a.variant, "--out", a.out]
    if a.preset != "tiny":
        argv.append("--lora")
    if a.overwrite:
        argv.append("--overwrite")
    if a.resume:
        argv.append("--resume")
    log.info("stage 1/1: backdoor (%s)", " ".join(argv))
    if backdoor.main(argv) != 0:
        raise UserError("backdoor stage failed (see above)")
    print(f"study complete in {time.perf_counter() - t0:.0f} s: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
