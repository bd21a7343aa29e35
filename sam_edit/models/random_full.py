"""The `random-full` model set: the released architectures with random weights, for benchmarks only.

Time, UNet evaluations and memory depend on the architecture, not on the weight values, so
these models measure them honestly without a download. They are built in memory with
PyTorch's default initialisation, seeded per model, and never written to disk (a full SD UNet
alone is 3.4 GB in fp32). The tokenizer is the real CLIP vocabulary. Their images are noise.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from sam_edit.models import configs
from sam_edit.models.registry import ModelSpec
from sam_edit.models.tiny import seed_for
from sam_edit.models.vocab import write_clip_tokenizer

logger = logging.getLogger(__name__)


@functools.cache
def clip_tokenizer() -> CLIPTokenizer:
    """Return the real CLIP tokenizer, rebuilt offline (see `sam_edit.models.vocab`)."""
    with tempfile.TemporaryDirectory(prefix="samedit-tokenizer-") as folder:
        return CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(folder)))


def build_unet(name: str, in_channels: int) -> UNet2DConditionModel:
    torch.manual_seed(seed_for(name, "unet"))
    return UNet2DConditionModel(**{**configs.SD15_UNET, "in_channels": in_channels})


def build_diffusion(spec: ModelSpec) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer]:
    """Build the UNet (input channels from the registry), VAE and text encoder of an SD 1.x model."""
    logger.info("building %s at full size with random weights", spec.name)
    unet = build_unet(spec.name, int(spec.variant))
    torch.manual_seed(seed_for(spec.name, "vae"))
    vae = AutoencoderKL(**configs.SD15_VAE)
    torch.manual_seed(seed_for(spec.name, "text_encoder"))
    text_encoder = CLIPTextModel(CLIPTextConfig(**configs.SD15_TEXT_ENCODER))
    return unet, vae, text_encoder, clip_tokenizer()


def build_controlnet() -> ControlNetModel:
    torch.manual_seed(seed_for("controlnet-seg", "controlnet"))
    return ControlNetModel(**configs.SD15_CONTROLNET)


def build_clip() -> tuple[CLIPModel, CLIPProcessor]:
    """Build CLIP ViT-L/14 and its processor (OpenAI's 224 px preprocessing, the PIL backend)."""
    torch.manual_seed(seed_for("clip-l14", "clip"))
    config = CLIPConfig(
        text_config=configs.SD15_TEXT_ENCODER,
        vision_config=configs.CLIP_L14_VISION,
        projection_dim=configs.SD_TEXT_DIM,
    )
    processor = CLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=clip_tokenizer())
    return CLIPModel(config), processor


def build_sam(spec: ModelSpec):
    """Build SAM `vit_b`, `vit_l` or `vit_h` (the registry's variant) with random weights.

    The weights are drawn as for the tiny SAM (`init_random_sam`), so that the automatic mask
    generator finds varied segments and the ranking stage gets a realistic number of crops.
    """
    from sam_edit.models.sam import build_sam as build, init_random_sam

    torch.manual_seed(seed_for(spec.name, "sam"))
    sam = build(configs.SAM_CONFIGS[spec.variant])
    init_random_sam(sam)
    return sam
