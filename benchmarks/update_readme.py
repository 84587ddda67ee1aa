"""Splice the committed, script-produced result tables into README.md (numbers are never typed by hand).

Each ``<!-- BEGIN name -->`` … ``<!-- END name -->`` block is replaced by ``benchmarks/results/<name>.md``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()

    def fill(m: re.Match) -> str:
        name = m.group(1)
        src = ROOT / "benchmarks" / "results" / f"{name}.md"
        body = src.read_text().strip() if src.exists() else f"_(not measured yet: run the script that writes {src.name})_"
        return f"<!-- BEGIN {name} -->\n{body}\n<!-- END {name} -->"

    new = re.sub(r"<!-- BEGIN (\S+) -->.*?<!-- END \1 -->", fill, text, flags=re.S)
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
