"""One clear line and exit code 2 for bad input.

Every command raises :class:`UserError` for input the user can fix (a missing path, an unknown preset, a
hash mismatch ...). :func:`run_main` turns it into a single line on stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

log = logging.getLogger(__name__)


class UserError(Exception):
    """Bad input: reported as one line naming the problem (and the path), exit code 2."""


def run_main(fn: Callable[[], int | None], prog: str) -> int:
    """Run a command body; map :class:`UserError` (and argparse's exit) to one line + exit code 2."""
    try:
        rc = fn()
    except UserError as e:
        sys.stderr.write(f"{prog}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    return int(rc or 0)


def setup_logging(level: int = logging.INFO) -> None:
    """Plain logging for commands (library code only logs; commands decide where it goes)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "transformers.modeling_utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
