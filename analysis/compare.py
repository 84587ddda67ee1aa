"""``python -m analysis.compare --run runs/x`` (or ``--ckpt A --ckpt B ...``): every checkpoint of a run side by
side -- does the backdoor survive safety training, and does what the probes and patching see move with it? (The
comparison: :mod:`analysis.comparing`, whose :func:`~analysis.comparing.run_compare` this command calls.)

Writes ``<run>/compare.json`` and ``<run>/report.html`` and prints the summary.
"""

from __future__ import annotations

import sys

from analysis.comparing import CompareConfig, run_compare
from training import layout

PROG = "analysis.compare"


def _merge_repeated(argv: list[str], flag: str) -> list[str]:
    """``--ckpt A --ckpt B`` → ``--ckpt A B`` (the parser's list fields take one flag with several values)."""
    vals, rest, i = [], [], 0
    while i < len(argv):
        x = argv[i]
        if x == flag:
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                vals.append(argv[i])
                i += 1
            continue
        if x.startswith(flag + "="):
            vals.append(x.split("=", 1)[1])
        else:
            rest.append(x)
        i += 1
    return rest + ([flag, *vals] if vals else [])


def _main(a: CompareConfig) -> int:
    cmp = run_compare(a)
    out, c = cmp.stored_at.parent, cmp.computed
    lines = [f"{len(cmp.checkpoints)} checkpoints ({', '.join(x['id'] for x in cmp.checkpoints)}); computed: "
             f"probe {c['probe'] or 'none'}, patch {c['patch'] or 'none'}; {c['seconds']['total']:.1f} s"]
    lines += ["  " + s for s in cmp.summary]
    lines.append(f"  -> {out / layout.COMPARE_JSON}" + ("" if a.no_html else f", {out / layout.REPORT_HTML}"))
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    from training.config import run_command

    argv = _merge_repeated(list(sys.argv[1:] if argv is None else argv), "--ckpt")
    return run_command([CompareConfig], argv, PROG, _main)


if __name__ == "__main__":
    sys.exit(main())
