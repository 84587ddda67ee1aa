"""``benchmarks/cpu_floor.py``: the block weights it sizes N by, and the bound its table states."""

from __future__ import annotations

import pytest

from tests.helpers import benchmark_module


@pytest.fixture(scope="module")
def cf():
    return benchmark_module("cpu_floor")


def test_block_weights_leave_out_embedding_and_head(cf, tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, tie_word_embeddings=False).save_pretrained(tmp_path)
    n, shapes = cf.block_linears(tmp_path)
    per_layer = 64 * 64 * 2 + 64 * 32 * 2 + 64 * 256 * 3  # q, o; k, v (2 of 4 heads); gate, up, down
    assert n == 3 * per_layer
    assert shapes == [(64, 32), (64, 64), (64, 256), (256, 64)]


def test_floor_is_the_stated_formula(cf):
    work = {"train_tokens": 1000, "forward_tokens": 3000, "step_rows": 500, "steps": 10}
    flops, seconds = cf.floor(work, 10**6, 100.0)
    assert flops == 10**6 * (4 * 1000 + 2 * 3000 + 2 * 500)
    assert seconds == pytest.approx(flops / 1e11)
    full, _ = cf.floor(work, 10**6, 100.0, train_flops=6)  # a full fine-tune also computes the weights' gradients
    assert full == 10**6 * (6 * 1000 + 2 * 3000 + 2 * 500)


def test_table_states_the_floor_at_the_gemm_ceiling(cf):
    bounded = {"measured_s": 100.0, "tflop": 7.0, "floor_s": 70.0}
    r = {"stages": {"backdoor": {**bounded, "overcounted": False}}, "bounded": bounded, "study": "s/study.json",
         "measured": "today", "machine": {"cpu": "cpu", "cores": 2}, "n_matmul": 10, "train_flops": 6,
         "target_s": 35.0, "matmul": {"best_gflops": 100.0, "per_shape_gflops": {"8x8": 100.0}, "threads": 2},
         "ceiling": {"best_gflops": 140.0, "per_shape_gflops": {"2048x2048": 140.0}}}
    md = cf.table(r)
    assert "alone need 200 GFLOP/s sustained" in md  # 7 TFLOP in 35 s
    assert "G = 140 GFLOP/s (2048x2048 140): at G those stages alone take at least 50 s." in md
    del r["ceiling"]  # a result file written before G was measured
    assert "G =" not in cf.table(r)
