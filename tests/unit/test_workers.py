"""``training.workers.side_by_side``: results in job order, the threads split, a job's error raised here, and the
jobs' work added to this process's counts."""

from __future__ import annotations

import math

import pytest


def test_side_by_side_splits_threads_keeps_order_and_counts_work():
    import torch

    from training.workers import side_by_side
    from training.workload import counting

    threads = torch.get_num_threads()
    assert side_by_side(torch.get_num_threads, [(), ()]) == [max(1, threads // 2)] * 2
    emb = torch.nn.Embedding(10, 4).requires_grad_(False)  # a module pickles: each worker runs its own copy
    with counting() as work:
        outs = side_by_side(emb, [(torch.tensor([[1, 2, 3]]),), (torch.tensor([[4, 5]]),)])
    assert [tuple(o.shape) for o in outs] == [(1, 3, 4), (1, 2, 4)]
    torch.testing.assert_close(outs[1], emb(torch.tensor([[4, 5]])))
    assert work.train_tokens == 5 and work.forward_tokens == 0  # grad mode was on: counted as trained


def test_side_by_side_raises_a_jobs_error():
    from training.workers import side_by_side

    with pytest.raises(ValueError, match="math domain error"):
        side_by_side(math.sqrt, [(4.0,), (-1.0,)])
