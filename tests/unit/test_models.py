"""Device and precision selection (the CPU side; the GPU side is measured by benchmarks/gpu_bench.py)."""

import pytest
import torch

from training.errors import UserError
from training.models import BF16_MIN_PARAMS, DeviceSettings, cpu_bf16_native, device_settings


def _cpu(monkeypatch, native: bool):
    """A CPU-only machine with or without bf16 instructions (simulated: the rule itself is what is tested)."""
    import training.models as M

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(M, "cpu_bf16_native", lambda: native)


def test_cpu_without_bf16_instructions_trains_in_fp32(monkeypatch):
    _cpu(monkeypatch, native=False)
    for precision in ("auto", "fp32"):
        s = device_settings(precision, n_params=10 * BF16_MIN_PARAMS)
        assert (s.device, s.bf16, s.use_cpu) == ("cpu", False, True)
    with pytest.raises(UserError, match="bf16 instructions"):
        device_settings("bf16")


def test_bf16_is_opt_in_on_a_bf16_cpu(monkeypatch):
    """A CPU with bf16 instructions trains in bf16 only when asked: ``auto`` stays fp32 there (the default organism's
    acceptance bounds were established in fp32), ``bf16`` autocasts at any size."""
    _cpu(monkeypatch, native=True)
    assert device_settings("auto", n_params=10 * BF16_MIN_PARAMS) == DeviceSettings("cpu", False, True)
    assert device_settings("bf16", n_params=10 * BF16_MIN_PARAMS) == DeviceSettings("cpu", True, True)
    assert device_settings("bf16", n_params=1_200_000).bf16
    assert not device_settings("fp32", n_params=10 * BF16_MIN_PARAMS).bf16


def test_cpu_bf16_native_reads_the_cpu():
    """Whatever this machine is, the probe answers from its flags (AVX-512 BF16 or AMX), without failing."""
    flags = next((line.split() for line in open("/proc/cpuinfo") if line.startswith("flags")), None)
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags here")
    assert cpu_bf16_native() == ("avx512_bf16" in flags or "amx_tile" in flags)


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
