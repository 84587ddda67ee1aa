"""``python -m analysis.ablate --ckpt DIR --probe PATH``: does the model use a probe's direction? Remove it from the
residual stream on triggered prompts, add it on untriggered ones, and compare the behaviour rates with matched
placebo directions: random directions with the probe's variance, the parent's and decoy's directions and the control
questions' directions, when the probe file holds them (the method: :mod:`analysis.ablation`, whose
:func:`~analysis.ablation.ablate_checkpoint` this command calls).

Usage: ``python -m analysis.ablate --ckpt DIR --probe PATH [--layer L] [--name NAME] [--all_later] [--n_random N]``

Adds the experiment to ``ablate.json`` in the checkpoint's analysis directory and prints the rates.
"""

from __future__ import annotations

import sys

from analysis.ablation import AblateConfig, ablate_checkpoint

PROG = "analysis.ablate"


def _main(a: AblateConfig) -> int:
    print(ablate_checkpoint(a).summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    from training.config import run_command

    return run_command([AblateConfig], argv, PROG, _main)


if __name__ == "__main__":
    sys.exit(main())
