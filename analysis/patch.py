"""``python -m analysis.patch --ckpt DIR``: where does the backdoor live? Exact activation patching and attribution
patching on token-aligned prompt pairs (the method: :mod:`analysis.patch_engine`; the analysis of one checkpoint:
:func:`analysis.patching.patch_checkpoint`, which this command calls).

Usage: ``python -m analysis.patch --ckpt DIR [--n_pairs 32] [--placement end] [--direction denoise]``

Writes ``patch.json`` and ``patch.html`` to ``<run>/analysis/<checkpoint-id>/`` and prints a summary.
"""

from __future__ import annotations

import sys

from analysis.patching import PatchConfig, format_summary, patch_checkpoint

PROG = "analysis.patch"


def _main(a: PatchConfig) -> int:
    res = patch_checkpoint(a)
    print(format_summary(res.to_json(), res.stored_at.parent))
    return 0


def main(argv: list[str] | None = None) -> int:
    from training.config import run_command

    return run_command([PatchConfig], argv, PROG, _main)


if __name__ == "__main__":
    sys.exit(main())
