"""`samedit doctor`: environment, device, versions, chosen runtime and cache state."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from typing import TYPE_CHECKING

from sam_edit import __version__
from sam_edit.cli import common
from sam_edit.cli.models import status
from sam_edit.models.registry import MODELS

if TYPE_CHECKING:
    from sam_edit.runtime import Runtime

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
    import torch

    report = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if report["cuda"]:
        free, total = torch.cuda.mem_get_info()
        report.update(gpu=torch.cuda.get_device_name(), free_bytes=free, total_bytes=total)
    return report


def profile_report(runtime: Runtime) -> dict:
    """Return the memory profile the runtime picked, and why, as a JSON-ready dict."""
    from sam_edit.runtime import GIB, dtype_name, sam_points_per_batch

    profile = runtime.profile
    if profile is None:
        return {}
    return {
        "dtype": dtype_name(profile.dtype),
        "offload": profile.offload,
        "vae_dtype": dtype_name(profile.vae_dtype),
        "attention": profile.attention,
        "sam_batch_gib": round(profile.sam_batch_bytes / GIB, 2),
        "sam_points_per_batch_512px": sam_points_per_batch(profile.sam_batch_bytes, 512, 512),
        "sam_points_per_batch_4000x3000": sam_points_per_batch(profile.sam_batch_bytes, 4000, 3000),
        "reason": profile.reason,
    }


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
    """Print Python, package versions, devices, the memory profile samedit would pick and why, and the cache."""
    from sam_edit.models import store

    run = common.RunOptions(device, dtype, offload, models)
    runtime, model_set = run.runtime(), run.model_set()
    report = {
        "samedit": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions(),
        "devices": device_report(),
        "runtime": {"device": str(runtime.device), "dtype": runtime.dtype_name, "offload": runtime.offload, "reason": runtime.reason},
        "profile": profile_report(runtime),
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
