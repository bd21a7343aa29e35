"""`samedit doctor`: environment, device, versions, chosen runtime and cache state."""

from __future__ import annotations

import json
import platform
from importlib import metadata

import torch

from sam_edit import __version__
from sam_edit.cli import common
from sam_edit.cli.models import status
from sam_edit.models import loaders, store
from sam_edit.models.registry import MODELS
from sam_edit.runtime import resolve_runtime

PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "segment-anything", "torchmetrics",
            "huggingface_hub", "accelerate", "typer")


def versions() -> dict:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def device_report() -> dict:
    report = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if report["cuda"]:
        free, total = torch.cuda.mem_get_info()
        report.update(gpu=torch.cuda.get_device_name(), free_bytes=free, total_bytes=total)
    return report


@common.handle_errors
def doctor(
    device: common.Device = "auto",
    dtype: common.Dtype = "auto",
    offload: common.Offload = "auto",
    models: common.Models = None,
    json_output: common.JsonOutput = False,
    quiet: common.Quiet = False,
    verbose: common.Verbose = False,
) -> None:
    """Print what samedit sees: Python, packages, devices, the runtime it would pick, the cache."""
    runtime = resolve_runtime(device, dtype, offload)
    model_set = loaders.model_set_from_env(models)
    report = {
        "samedit": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions(),
        "devices": device_report(),
        "runtime": {"device": str(runtime.device), "dtype": runtime.dtype_name, "offload": runtime.offload, "reason": runtime.reason},
        "cache": str(store.cache_dir()),
        "offline": store.is_offline(),
        "models": {name: status(name, model_set)["state"] for name in MODELS},
    }
    if json_output:
        common.stdout.print(json.dumps(report, indent=1))
        return
    for key, value in report.items():
        if isinstance(value, dict):
            common.stdout.print(f"{key}:")
            for inner_key, inner_value in value.items():
                common.stdout.print(f"  {inner_key}: {inner_value}")
        else:
            common.stdout.print(f"{key}: {value}")
