"""Device, dtype and offload: decided once per run and passed down to every stage.

Noise is always drawn from a CPU `torch.Generator`, so a seed gives the same image on any
device (the rule diffusers' `randn_tensor` follows).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace

import torch

from sam_edit.errors import SameditError

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
OFFLOADS = ("auto", "none", "model", "sequential")

GIB = 1024**3
# Below this much free CUDA memory, weights stream to the GPU layer by layer (sequential
# offload). From RESIDENT_FROM, every model of a stage stays on the GPU and the VAE runs in
# fp32. Both bounds are design targets; docs/performance.md sets per-method estimates beside them.
SEQUENTIAL_BELOW = 6 * GIB
RESIDENT_FROM = 12 * GIB
SAM_BATCH_SHARE = 0.25  # share of free memory one batch of SAM point prompts may use
SAM_BATCH_MAX = 4 * GIB  # cap, so that SAM on a CPU leaves RAM to other processes
SAM_POINTS_PER_BATCH_MAX = 64  # segment-anything's default `points_per_batch`
SAM_IMAGE_SIZE = 1024  # SAM upsamples every mask to 1024 x 1024 before resizing to the photo


@dataclass(frozen=True)
class MemoryProfile:
    """The memory plan of one run: precision, offload and SAM batch memory, from `plan_profile`."""

    dtype: torch.dtype  # weights and activations of the diffusion models
    offload: str  # "none", "model" (one model on the GPU at a time) or "sequential" (per layer)
    # fp32, or the diffusion dtype with a NaN check and one fp32 retry (`inversion.run_vae`)
    vae_dtype: torch.dtype
    sam_batch_bytes: int  # memory one batch of SAM point prompts may use; sets `points_per_batch`
    attention: str = "sdpa"  # self-attention always runs `F.scaled_dot_product_attention`
    reason: str = ""  # the free memory and the rule that chose this profile

    def describe(self) -> str:
        return (f"dtype={dtype_name(self.dtype)} offload={self.offload} vae={dtype_name(self.vae_dtype)} "
                f"sam_batch={self.sam_batch_bytes / GIB:.2f}GiB attention={self.attention}")


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)


@dataclass(frozen=True)
class Runtime:
    """Device, dtype, offload mode and memory profile of one samedit invocation."""

    device: torch.device
    dtype: torch.dtype  # weights and activations of the diffusion models
    offload: str  # "none", "model" (one model on the GPU at a time) or "sequential" (per layer)
    reason: str = ""  # why this profile was chosen, for `-v` and `doctor`
    profile: MemoryProfile | None = None  # None: every model in `dtype`, default SAM batches

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    @property
    def vae_dtype(self) -> torch.dtype:
        return self.profile.vae_dtype if self.profile is not None else self.dtype

    def describe(self) -> str:
        return f"device={self.device} dtype={self.dtype_name} offload={self.offload}"


def pick_device(requested: str = "auto") -> torch.device:
    """Return the device for `--device`, checking that a requested accelerator exists."""
    if requested not in DEVICES:
        raise SameditError(f"`--device` must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise SameditError("`--device cuda` was requested but PyTorch sees no CUDA device; use `--device cpu`")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise SameditError("`--device mps` was requested but MPS is not available; use `--device cpu`")
    return torch.device(requested)


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """Return the dtype for `--dtype`: fp16 on CUDA and MPS, fp32 on CPU unless asked otherwise."""
    if requested == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if requested not in DTYPES:
        raise SameditError(f"`--dtype` must be one of auto, {', '.join(DTYPES)}, got {requested!r}")
    if device.type == "cpu" and requested == "fp16":
        raise SameditError("`--dtype fp16` is not supported on CPU; use `--dtype fp32` or `--dtype bf16`")
    return DTYPES[requested]


def pick_offload(requested: str, device: torch.device) -> str:
    """Return the offload mode for `--offload`; offloading only means something on CUDA."""
    if requested not in OFFLOADS:
        raise SameditError(f"`--offload` must be one of {', '.join(OFFLOADS)}, got {requested!r}")
    if device.type != "cuda":
        if requested in ("model", "sequential"):
            logger.warning("`--offload %s` has no effect on %s; running without offload", requested, device)
        return "none"
    return "none" if requested == "auto" else requested


def plan_profile(device: torch.device, free_bytes: int, total_bytes: int) -> MemoryProfile:
    """Choose dtype, offload, VAE precision and SAM batch memory from the device's free memory.

    On CUDA the weights are fp16 and attention runs SDPA. From 12 GiB free, every model of a
    stage stays on the GPU and the VAE runs in fp32. From 6 GiB, model CPU offload runs with the
    VAE in fp16 (NaN check, fp32 retry). Below 6 GiB, offload is sequential. Stages load their
    models and release them before the next stage, so SAM and CLIP never share the GPU with the
    UNet. On CPU: fp32, no offload. `free_bytes` and `total_bytes` are device memory on CUDA,
    RAM otherwise.
    """
    sam_batch = int(min(SAM_BATCH_MAX, SAM_BATCH_SHARE * free_bytes))
    memory = f"{free_bytes / GIB:.1f} GiB free of {total_bytes / GIB:.1f} GiB"
    if device.type == "cpu":
        return MemoryProfile(torch.float32, "none", torch.float32, sam_batch, reason=f"CPU ({memory} RAM): fp32, no offload")
    if device.type != "cuda":
        return MemoryProfile(torch.float16, "none", torch.float16, sam_batch,
                             reason=f"{device.type} ({memory}): fp16 with the VAE NaN check, no offload")
    if free_bytes >= RESIDENT_FROM:
        offload, vae_dtype, rule = "none", torch.float32, "at least 12 GiB free: every model of a stage on the GPU, VAE in fp32"
    elif free_bytes >= SEQUENTIAL_BELOW:
        offload, vae_dtype, rule = "model", torch.float16, "6 to 12 GiB free: model CPU offload, VAE fp16 with NaN check and fp32 retry"
    else:
        offload, vae_dtype, rule = "sequential", torch.float16, "under 6 GiB free: sequential CPU offload, VAE fp16 with NaN check and fp32 retry"
    if free_bytes < 2 * GIB:
        rule += "; NOTE: under 2 GiB free, even sequential offload may run out of memory"
    return MemoryProfile(torch.float16, offload, vae_dtype, sam_batch, reason=f"CUDA ({memory}): fp16 weights, {rule}")


def sam_points_per_batch(batch_bytes: int, width: int, height: int) -> int:
    """Return how many SAM point prompts fit in `batch_bytes` for a `width` x `height` SAM input.

    The input is the copy of the photo that SAM segments (at most 1024 px on its longer side).
    segment-anything's automatic mask generator turns each point into 3 float32 mask logits
    at 1024 x 1024 and then at the input's size, and thresholds and run-length encodes them
    there (a bool mask, int16 sums and a shifted copy): about 3 x (4 x 1024^2 + 8 x W x H)
    bytes per point at its peak.
    """
    per_point = 3 * (4 * SAM_IMAGE_SIZE**2 + 8 * width * height)
    return max(1, min(SAM_POINTS_PER_BATCH_MAX, batch_bytes // per_point))


def memory_info(device: torch.device) -> tuple[int, int]:
    """Return (free, total) bytes: device memory on CUDA, RAM otherwise (0, 0 if unknown)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(free), int(total)
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        return int(fields["MemAvailable"].split()[0]) * 1024, int(fields["MemTotal"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0, 0
    return total, total  # NOTE: without /proc/meminfo, all RAM counts as free


def resolve_runtime(device: str = "auto", dtype: str = "auto", offload: str = "auto",
                    memory: tuple[int, int] | None = None) -> Runtime:
    """Decide device, dtype, offload and memory profile once, from the command-line values.

    `--dtype` and `--offload` other than auto override the profile's choice. `memory` is
    (free, total) bytes to plan for in place of the device's own, as benchmarks do to run
    the profile of a smaller card.
    """
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    mode = pick_offload(offload, torch_device)
    planned = plan_profile(torch_device, *(memory or memory_info(torch_device)))
    if torch_device.type == "cuda" and offload == "auto":
        mode = planned.offload
    # An fp32 VAE is the CUDA profile's choice when memory allows; elsewhere the VAE follows --dtype.
    fp32_vae = torch_dtype == torch.float32 or (torch_device.type == "cuda" and planned.vae_dtype == torch.float32)
    vae_dtype = torch.float32 if fp32_vae else torch_dtype
    reason = planned.reason
    if torch_dtype != planned.dtype or mode != planned.offload:
        reason += f"; --dtype {dtype} and --offload {offload} give {dtype_name(torch_dtype)} and offload {mode}"
    profile = replace(planned, dtype=torch_dtype, offload=mode, vae_dtype=vae_dtype, reason=reason)
    runtime = Runtime(torch_device, torch_dtype, mode, reason, profile)
    logger.info("runtime: %s (%s)", runtime.describe(), reason)
    return runtime


CPU = Runtime(torch.device("cpu"), torch.float32, "none", "default")


def make_generator(seed: int) -> torch.Generator:
    """Return a CPU generator: noise drawn from it is the same on every device."""
    return torch.Generator("cpu").manual_seed(seed)


def randn(shape: tuple[int, ...], generator: torch.Generator, runtime: Runtime) -> torch.Tensor:
    """Draw standard normal noise on the CPU, then move it to the runtime's device and dtype."""
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    return noise.to(runtime.device, runtime.dtype)
