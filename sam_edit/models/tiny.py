"""The tiny model set: every registry model at toy size with seeded random weights.

Each tiny model is written into the samedit cache in the same layout as the real model's
snapshot (diffusers subfolders, a SAM state-dict `.pth`, an IC-Light offsets file) and is
then loaded through the same loaders. Its images are noise; it exists so that the whole tool
runs offline in seconds and tests can check invariants.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from sam_edit.models import configs, metric_models
from sam_edit.models.registry import MODELS, ModelSpec
from sam_edit.models.vocab import clip_merges_path, write_clip_tokenizer

logger = logging.getLogger(__name__)

TINY_OFFSET_SCALE = 0.01  # IC-Light offsets are small next to the base weights


def seed_for(name: str, part: str) -> int:
    """Fixed seed per model and component, so the tiny set is the same on every machine."""
    return zlib.crc32(f"{name}/{part}".encode())


def tiny_text_config() -> CLIPTextConfig:
    return CLIPTextConfig(**configs.TINY_TEXT_ENCODER)


def build_tiny_unet(name: str, in_channels: int) -> UNet2DConditionModel:
    torch.manual_seed(seed_for(name, "unet"))
    return UNet2DConditionModel(**{**configs.TINY_UNET, "in_channels": in_channels})


def write_tiny_sd(spec: ModelSpec, folder: Path) -> None:
    """Write a diffusers-layout SD folder: unet, vae, text_encoder, tokenizer."""
    build_tiny_unet(spec.name, int(spec.variant)).save_pretrained(folder / "unet")
    torch.manual_seed(seed_for(spec.name, "vae"))
    AutoencoderKL(**configs.TINY_VAE).save_pretrained(folder / "vae")
    torch.manual_seed(seed_for(spec.name, "text_encoder"))
    CLIPTextModel(tiny_text_config()).save_pretrained(folder / "text_encoder")
    write_clip_tokenizer(folder / "tokenizer")


def write_tiny_controlnet(spec: ModelSpec, folder: Path) -> None:
    """Write a ControlNet whose output convolutions are random, so its residuals are not zero.

    A freshly built ControlNet has zero "zero convolutions", which would make the tiny
    ControlNet a no-op at every `--control-scale`.
    """
    torch.manual_seed(seed_for(spec.name, "controlnet"))
    controlnet = ControlNetModel(**configs.TINY_CONTROLNET)
    for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        torch.nn.init.normal_(conv.weight, std=0.1)
    controlnet.save_pretrained(folder)


def write_tiny_iclight(spec: ModelSpec, folder: Path) -> None:
    """Write offsets for every weight of the tiny base UNet with `conv_in` widened to 8 channels."""
    from sam_edit.models.loaders import widen_conv_in  # the same widening the loader applies

    unet = build_tiny_unet("iclight-base", 4)
    widen_conv_in(unet, int(spec.variant))
    generator = torch.Generator().manual_seed(seed_for(spec.name, "offsets"))
    offsets = {
        key: torch.randn(value.shape, generator=generator) * TINY_OFFSET_SCALE
        for key, value in unet.state_dict().items()
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_file(offsets, folder / spec.filename)


def write_tiny_clip(spec: ModelSpec, folder: Path) -> None:
    """Write a CLIPModel and CLIPProcessor folder with the real CLIP vocabulary."""
    metric_models.build_tiny_clip(folder, seed=seed_for(spec.name, "clip"))


def write_tiny_dino(spec: ModelSpec, folder: Path) -> None:
    metric_models.build_tiny_dino(folder, seed=seed_for(spec.name, "dino"))


def write_tiny_squeezenet(spec: ModelSpec, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    metric_models.build_tiny_squeezenet(folder / spec.filename, seed=seed_for(spec.name, "lpips"))


def write_tiny_sam(spec: ModelSpec, folder: Path) -> None:
    from sam_edit.models.sam import build_sam, save_sam

    torch.manual_seed(seed_for(spec.name, "sam"))
    folder.mkdir(parents=True, exist_ok=True)
    save_sam(build_sam(configs.SAM_CONFIGS["tiny"]), folder / spec.filename)


WRITERS = {
    "sd": write_tiny_sd,
    "controlnet": write_tiny_controlnet,
    "iclight": write_tiny_iclight,
    "clip": write_tiny_clip,
    "sam": write_tiny_sam,
    "dino": write_tiny_dino,
    "lpips": write_tiny_squeezenet,
}


def check_buildable(specs: list[ModelSpec], root: Path) -> None:
    """Raise `SameditError` if a model of `specs` is not built under `root` and cannot be.

    Only the SD and CLIP writers read the CLIP merges file from `open_clip_torch`. Every build
    checks for it anyway, because the set as a whole needs the package. A missing package then
    stops the first build instead of one halfway through a command.
    """
    if any(not (root / "tiny" / spec.name).is_dir() for spec in specs):
        clip_merges_path()


def tiny_path(spec: ModelSpec, root: Path) -> Path:
    """Return the tiny model's path under `root`, building it first if it is not there.

    Building needs the package `open_clip_torch`. Without it, `SameditError` is raised before
    anything is built, for every kind of model. The model is built in a temporary folder and
    renamed into place, so concurrent test workers never see a half-written model.
    """
    folder = root / "tiny" / spec.name
    if not folder.is_dir():
        check_buildable([spec], root)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=folder.parent))
        try:
            WRITERS[spec.kind](spec, staging)
            os.rename(staging, folder)
            logger.info("built tiny model %s in %s", spec.name, folder)
        except OSError:
            if not folder.is_dir():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder / spec.filename if spec.filename else folder


def build_all(root: Path) -> list[Path]:
    """Build every tiny model that has a writer; return their paths."""
    return [tiny_path(spec, root) for spec in MODELS.values() if spec.kind in WRITERS]
