"""Every command's ``--help`` prints and exits 0 (argparse %-formats help strings: a bare "%" crashes it)."""

from __future__ import annotations

import importlib

import pytest

COMMANDS = ["analysis.ablate", "analysis.compare", "analysis.monitor", "analysis.patch", "analysis.probe",
            "apps.explorer.app", "apps.study", "apps.sweep", "training.backdoor", "training.evaluate",
            "training.import_data", "training.reward", "training.safety"]


@pytest.mark.parametrize("module", COMMANDS)
def test_help_exits_zero(module, capsys):
    assert importlib.import_module(module).main(["--help"]) == 0
    assert "usage:" in capsys.readouterr().out
