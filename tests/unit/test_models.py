"""Device and precision selection (the CPU side; the GPU side is measured by benchmarks/gpu_bench.py)."""

import pytest
import torch

from training.errors import UserError
from training.models import BF16_MIN_PARAMS, device_settings


def test_cpu_trains_in_fp32_without_a_flag():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    for precision in ("auto", "fp32"):
        s = device_settings(precision, n_params=10 * BF16_MIN_PARAMS)
        assert (s.device, s.bf16, s.use_cpu) == ("cpu", False, True)


def test_bf16_without_a_bf16_gpu_is_a_user_error():
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        pytest.skip("a bf16 GPU is visible")
    with pytest.raises(UserError, match="bf16"):
        device_settings("bf16")


def test_unknown_precision_is_a_user_error():
    with pytest.raises(UserError, match="unknown precision 'fp8'"):
        device_settings("fp8")


def test_auto_precision_rule_on_a_bf16_gpu(monkeypatch):
    """Simulated device capability (the rule itself is what is tested): bf16 from BF16_MIN_PARAMS up."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert device_settings("auto", n_params=BF16_MIN_PARAMS).bf16
    assert device_settings("auto", n_params=None).bf16
    assert not device_settings("auto", n_params=1_200_000).bf16
    assert device_settings("bf16", n_params=1_200_000).bf16
    assert not device_settings("fp32", n_params=10 * BF16_MIN_PARAMS).bf16
    assert device_settings("fp32").device == "cuda"
