"""Command configs: dataclasses parsed with defaults < ``--config file.yaml`` < command-line flags.

Built on ``trl.TrlParser`` (an ``HfArgumentParser``): each field's help text is its one documentation; an
unknown key in the YAML file or on the command line is an error, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from training.errors import UserError


def parse_args(types: list[type], argv: list[str] | None, prog: str) -> tuple:
    """Parse ``argv`` into instances of ``types``; a bad config file is one line + exit code 2."""
    from trl import TrlParser

    parser = TrlParser(dataclass_types=types, prog=f"python -m {prog}")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return tuple(parser.parse_args_and_config(argv))
    except (ValueError, FileNotFoundError, OSError) as e:
        sys.stderr.write(f"{prog}: error: {str(e).splitlines()[0]}\n")
        raise SystemExit(2) from None


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, d: dict):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise UserError(f"unknown config key(s) for {cls.__name__}: {', '.join(sorted(unknown))}")
    return cls(**d)


def run_command(types: list[type], argv: list[str] | None, prog: str, body) -> int:
    """Parse, set up logging, run ``body(*configs)``; bad input → one line and exit code 2 (also in-process)."""
    from training.errors import run_main, setup_logging

    try:
        args = parse_args(types, argv, prog)
    except SystemExit as e:  # argparse / bad config: it already printed its one line
        return int(e.code or 0)
    setup_logging()
    return run_main(lambda: body(*args), prog)
