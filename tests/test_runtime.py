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


# Memory profile ----------------------------------------------------------------------------------

from dataclasses import replace  # noqa: E402

from sam_edit.models.offload import OffloadGroup  # noqa: E402
from sam_edit.runtime import GIB, plan_profile, sam_points_per_batch  # noqa: E402

CUDA = torch.device("cuda")  # a device object only; nothing runs on it


def test_profile_8gb_card_uses_model_offload():
    profile = plan_profile(CUDA, int(7.5 * GIB), 8 * GIB)
    assert profile.dtype == torch.float16
    assert profile.offload == "model"
    assert profile.vae_dtype == torch.float16  # with the NaN check and fp32 retry
    assert profile.attention == "sdpa"
    assert profile.sam_batch_bytes == int(0.25 * 7.5 * GIB)
    assert "7.5 GiB free" in profile.reason
    assert "model CPU offload" in profile.reason


def test_profile_5gb_card_uses_sequential_offload():
    profile = plan_profile(CUDA, 5 * GIB, 6 * GIB)
    assert profile.offload == "sequential"
    assert profile.dtype == torch.float16
    assert "NOTE" not in profile.reason


def test_profile_24gb_card_keeps_models_on_gpu():
    profile = plan_profile(CUDA, 23 * GIB, 24 * GIB)
    assert profile.offload == "none"
    assert profile.dtype == torch.float16
    assert profile.vae_dtype == torch.float32
    assert profile.sam_batch_bytes == 4 * GIB  # capped


@pytest.mark.parametrize("free_gib, offload", [(5.99, "sequential"), (6, "model"), (11.99, "model"), (12, "none")])
def test_profile_thresholds(free_gib, offload):
    assert plan_profile(CUDA, int(free_gib * GIB), 24 * GIB).offload == offload


def test_profile_warns_under_2gb():
    assert "NOTE" in plan_profile(CUDA, GIB, 2 * GIB).reason


def test_profile_cpu():
    profile = plan_profile(torch.device("cpu"), 16 * GIB, 32 * GIB)
    assert (profile.dtype, profile.offload, profile.vae_dtype) == (torch.float32, "none", torch.float32)
    assert profile.reason.startswith("CPU")


def test_resolve_runtime_carries_profile():
    runtime = resolve_runtime("cpu", memory=(8 * GIB, 8 * GIB))
    assert runtime.profile is not None
    assert runtime.profile.sam_batch_bytes == 2 * GIB
    assert runtime.vae_dtype == torch.float32
    assert "CPU (8.0 GiB free" in runtime.reason


def test_vae_follows_requested_dtype_on_cpu():
    runtime = resolve_runtime("cpu", "bf16")
    assert runtime.vae_dtype == torch.bfloat16
    assert "--dtype bf16" in runtime.reason


def test_sam_points_per_batch_fits_budget():
    budget = int(0.25 * 7.5 * GIB)
    assert sam_points_per_batch(budget, 512, 512) == 64  # segment-anything's default
    large = sam_points_per_batch(budget, 4000, 3000)
    assert 1 <= large < 64
    per_point = 3 * (4 * 1024**2 + 8 * 4000 * 3000)
    assert large * per_point <= budget < (large + 1) * per_point
    assert sam_points_per_batch(1, 4000, 3000) == 1


def test_segment_config_takes_profile_batch():
    from sam_edit import stages

    runtime = resolve_runtime("cpu", memory=(8 * GIB, 8 * GIB))
    context = stages.Context(runtime=runtime)
    assert stages.segment_config(context, (512, 512)).points_per_batch == 64
    # SAM segments a copy of at most 1024 px, so the batch is sized for 1024x768, not 4000x3000.
    small = resolve_runtime("cpu", memory=(3 * GIB, 3 * GIB))
    fitted = stages.segment_config(replace(context, runtime=small), (4000, 3000)).points_per_batch
    assert fitted == sam_points_per_batch(small.profile.sam_batch_bytes, 1024, 768)
    assert fitted < 64
    assert stages.segment_config(replace(context, runtime=CPU), (4000, 3000)).points_per_batch == 64


class FakeModel:
    """Records where `OffloadGroup` moves it."""

    def __init__(self):
        self.device = "cpu"

    def to(self, device):
        self.device = str(device)
        return self


def test_offload_group_keeps_one_unit_on_device():
    group = OffloadGroup(torch.device("meta"))
    unet, controlnet, vae, text_encoder = FakeModel(), FakeModel(), FakeModel(), FakeModel()
    group.add(unet, "unet")
    group.add(controlnet, "unet")
    group.add(vae, "vae")
    group.add(text_encoder, "text_encoder")
    assert {model.device for model in (unet, controlnet, vae, text_encoder)} == {"cpu"}

    group.activate("unet")
    assert (unet.device, controlnet.device, vae.device, text_encoder.device) == ("meta", "meta", "cpu", "cpu")
    group.activate("vae")
    assert (unet.device, controlnet.device, vae.device, text_encoder.device) == ("cpu", "cpu", "meta", "cpu")


def test_offload_group_holds_models_weakly():
    group = OffloadGroup(torch.device("meta"))
    group.add(FakeModel(), "unet")
    assert len(group.units["unet"]) == 0
