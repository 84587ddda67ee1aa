"""Independent work side by side on one machine: spawned worker processes, each with its share of the threads,
ended with their parent.

Footgun: a killed parent (``kill``, a closed session) does not take its spawned workers with it; they would go on
training and writing into the run directory beside the workers of the run the user starts again to resume it, so
every worker watches its parent (:func:`exit_with_parent`). And never oversubscribe with multi-threaded workers: a
torch process with two threads beside other busy processes on two cores waits at OpenMP barriers for a descheduled
thread (``tests/conftest.py``); more workers than threads are only started with one thread each.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

log = logging.getLogger(__name__)


def exit_with_parent(parent: int, every: float = 1.0) -> None:
    """Worker initializer: end this worker once ``parent`` is gone (a daemon thread checks every ``every`` seconds
    that this process's parent is still ``parent``)."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        log.warning("process %d is gone: worker %d stops", parent, os.getpid())
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _start(parent: int, threads: int) -> None:
    import torch

    from training.errors import setup_logging

    exit_with_parent(parent)
    torch.set_num_threads(threads)
    setup_logging()


def _counted(fn: Callable, count: bool, *args):
    """``fn(*args)`` and, if ``count``, the work it did (:mod:`training.workload`)."""
    if not count:
        return fn(*args), None
    from training.workload import counting

    with counting() as work:
        return fn(*args), work


def side_by_side(fn: Callable, jobs: list[tuple]) -> list:
    """``fn(*job)`` for every job at once, one spawned process each, this process's torch threads split evenly
    among them (one each when there are fewer threads than jobs); the results in job order. A job's exception is
    raised here once every job has ended (the others finish their own outputs). ``fn`` must be importable. The jobs'
    work is added to this process's open counts (:mod:`training.workload`)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, wait

    import torch

    from training import workload

    threads = max(1, torch.get_num_threads() // len(jobs))
    log.info("%d jobs side by side, %d thread%s each", len(jobs), threads, "" if threads == 1 else "s")
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=mp.get_context("spawn"), initializer=_start,
                             initargs=(os.getpid(), threads)) as pool:
        futures = [pool.submit(_counted, fn, workload.active(), *job) for job in jobs]
        wait(futures)
    results = []
    for f in futures:
        out, work = f.result()
        if work is not None:
            workload.add(work)
        results.append(out)
    return results
