import pytest
import torch

from sam_edit.errors import SameditError
from sam_edit.runtime import make_generator, randn, resolve_runtime, CPU


def test_cpu_defaults_to_fp32_without_offload():
    runtime = resolve_runtime("cpu", "auto", "auto")
    assert runtime.device.type == "cpu"
    assert runtime.dtype == torch.float32
    assert runtime.offload == "none"


def test_auto_device_on_cpu_machine():
    if torch.cuda.is_available():
        pytest.skip("machine has CUDA")
    assert resolve_runtime().device.type in ("cpu", "mps")


@pytest.mark.parametrize(
    "device, dtype, offload, message",
    [
        ("tpu", "auto", "auto", "`--device`"),
        ("cpu", "fp8", "auto", "`--dtype`"),
        ("cpu", "fp16", "auto", "not supported on CPU"),
        ("cpu", "auto", "always", "`--offload`"),
    ],
)
def test_invalid_runtime_values(device, dtype, offload, message):
    with pytest.raises(SameditError, match=message):
        resolve_runtime(device, dtype, offload)


def test_cuda_requested_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("machine has CUDA")
    with pytest.raises(SameditError, match="no CUDA device"):
        resolve_runtime("cuda")


def test_bf16_allowed_on_cpu():
    assert resolve_runtime("cpu", "bf16").dtype == torch.bfloat16


def test_same_seed_same_noise():
    first = randn((2, 4, 8, 8), make_generator(7), CPU)
    second = randn((2, 4, 8, 8), make_generator(7), CPU)
    other = randn((2, 4, 8, 8), make_generator(8), CPU)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
