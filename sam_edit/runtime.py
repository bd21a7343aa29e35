"""Device, dtype and offload: decided once per run and passed down to every stage.

Noise is always drawn from a CPU `torch.Generator`, so a seed gives the same image on any
device (the rule diffusers' `randn_tensor` follows).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from sam_edit.errors import SameditError

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
OFFLOADS = ("auto", "none", "model", "sequential")


@dataclass(frozen=True)
class Runtime:
    """Where and how models run for one samedit invocation."""

    device: torch.device
    dtype: torch.dtype  # weights and activations of the diffusion models
    offload: str  # "none", "model" (one model on the GPU at a time) or "sequential" (per layer)
    reason: str = ""  # why this profile was chosen, for `-v` and `doctor`

    @property
    def dtype_name(self) -> str:
        return next(name for name, value in DTYPES.items() if value == self.dtype)

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


def resolve_runtime(device: str = "auto", dtype: str = "auto", offload: str = "auto") -> Runtime:
    """Decide device, dtype and offload once, from the command-line values."""
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    mode = pick_offload(offload, torch_device)
    reason = f"--device {device}, --dtype {dtype}, --offload {offload}"
    runtime = Runtime(torch_device, torch_dtype, mode, reason)
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
