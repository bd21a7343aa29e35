"""CPU offload of the diffusion models on CUDA, with accelerate's module hooks.

`model` offload keeps one *unit* on the GPU at a time: the UNet with its ControlNet, the text
encoder, or the VAE. Before a module of one unit runs, every other unit moves back to the CPU.
An edit calls the models in no single order (VAE encode, text encoder, UNet for the inversion,
then text encoder, UNet and VAE decode again), so this rule replaces the fixed chain of
accelerate's `cpu_offload_with_hook` that diffusers' `enable_model_cpu_offload` builds. The
UNet and ControlNet share a unit because both run at every step.

`sequential` offload streams the weights of the UNet, ControlNet and text encoder to the GPU
layer by layer (accelerate's `cpu_offload`). The VAE keeps unit offload, because
`inversion.run_vae` reads its device and casts it to fp32 to retry after a NaN.

Both need the `accelerate` package, a dependency of samedit.
NOTE: no CUDA machine has run this module yet; `benchmarks/gpu_check.sh` exercises it.
"""

from __future__ import annotations

import logging
import weakref

import torch

from sam_edit.errors import SameditError

try:
    from accelerate import cpu_offload
    from accelerate.hooks import ModelHook, add_hook_to_module
    from accelerate.utils import send_to_device
except ImportError:  # `attach` raises SameditError
    cpu_offload = None
    ModelHook = object

logger = logging.getLogger(__name__)

SEQUENTIAL_UNITS = ("unet", "text_encoder")  # the VAE stays whole, see the module docstring


class OffloadGroup:
    """The modules that take turns on one device, by unit; models are held by weak reference."""

    def __init__(self, device: torch.device):
        self.device = device
        self.units: dict[str, weakref.WeakSet] = {}
        self.active: str | None = None

    def add(self, module: torch.nn.Module, unit: str) -> None:
        self.units.setdefault(unit, weakref.WeakSet()).add(module)
        if unit == self.active:
            module.to(self.device)

    def activate(self, unit: str) -> None:
        """Move every other unit to the CPU, then `unit` to the device."""
        if unit == self.active:
            return
        for name, modules in self.units.items():
            if name != unit:
                for module in modules:
                    module.to("cpu")
        for module in self.units.get(unit, ()):
            module.to(self.device)
        self.active = unit
        logger.debug("offload: %s on %s", unit, self.device)


_GROUPS: dict[str, OffloadGroup] = {}


def group_for(device: torch.device) -> OffloadGroup:
    return _GROUPS.setdefault(str(device), OffloadGroup(device))


class UnitHook(ModelHook):
    """Before its module's forward pass, put its unit on the device and move the inputs there."""

    def __init__(self, group: OffloadGroup, unit: str):
        super().__init__()
        self.group = group
        self.unit = unit

    def pre_forward(self, module, *args, **kwargs):
        self.group.activate(self.unit)
        return send_to_device(args, self.group.device), send_to_device(kwargs, self.group.device)


def attach(module: torch.nn.Module, device: torch.device, mode: str, unit: str) -> torch.nn.Module:
    """Offload `module` (still on the CPU) to run on `device`; `mode` is "model" or "sequential"."""
    if cpu_offload is None:
        raise SameditError(
            "CPU offload needs the `accelerate` package; install it with `pip install accelerate` "
            "or run with `--offload none`"
        )
    if mode == "sequential" and unit in SEQUENTIAL_UNITS:
        return cpu_offload(module, execution_device=device)
    group = group_for(device)
    # The direct children get the hook too: `AutoencoderKL.encode` calls diffusers' hook with
    # no arguments, so only its encoder's hook moves the pixels to the device.
    for part in (module, *module.children()):
        add_hook_to_module(part, UnitHook(group, unit))
    group.add(module, unit)
    return module
