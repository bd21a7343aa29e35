"""UNet calls with extra inputs: IC-Light's concatenated foreground latent, ControlNet residuals."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ControlNetModel

from sam_edit.inversion import Denoiser, encode_image
from sam_edit.models.loaders import DiffusionModels


def plain_denoiser(models: DiffusionModels) -> Denoiser:
    def denoise(latents, t, prompt_embeds):
        return models.unet(latents, t, encoder_hidden_states=prompt_embeds).sample

    return denoise


def concat_denoiser(models: DiffusionModels, concat_latents: torch.Tensor) -> Denoiser:
    """IC-Light: the condition latent `[1, 4, h, w]` is concatenated on channels at every call."""

    def denoise(latents, t, prompt_embeds):
        condition = concat_latents.expand(latents.shape[0], -1, -1, -1)
        sample = torch.cat([latents, condition], dim=1)  # [B, 8, h, w]
        return models.unet(sample, t, encoder_hidden_states=prompt_embeds).sample

    return denoise


def control_denoiser(models: DiffusionModels, controlnet: ControlNetModel, control_image: torch.Tensor,
                     scale: float) -> Denoiser:
    """ControlNet: its residuals, scaled by `scale`, are added inside every UNet call.

    `control_image` is `[1, 3, H, W]` in [0, 1], as diffusers' ControlNet pipelines feed it.
    """

    def denoise(latents, t, prompt_embeds):
        condition = control_image.expand(latents.shape[0], -1, -1, -1)
        down, mid = controlnet(
            latents, t, encoder_hidden_states=prompt_embeds, controlnet_cond=condition,
            conditioning_scale=scale, return_dict=False,
        )
        return models.unet(
            latents, t, encoder_hidden_states=prompt_embeds,
            down_block_additional_residuals=down, mid_block_additional_residual=mid,
        ).sample

    return denoise


def mask_tensor(mask: np.ndarray, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Resize an image-size bool mask `[H, W]` to `size` (width, height); return `[1, 1, h, w]` float 0/1."""
    values = torch.from_numpy(mask.astype(np.float32))[None, None]
    resized = F.interpolate(values, size=(size[1], size[0]), mode="bilinear", align_corners=False)
    return (resized >= 0.5).float().to(device)


def latent_mask(pixel_mask: torch.Tensor, scale_factor: int) -> torch.Tensor:
    """Edit mask at latent size: a latent pixel is edited if any pixel of its block is (max-pool)."""
    return F.max_pool2d(pixel_mask, kernel_size=scale_factor)


@torch.no_grad()
def foreground_latents(models: DiffusionModels, pixels: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """IC-Light fc condition: the edit region on flat grey, encoded (mode) and scaled.

    `pixels` is `[1, 3, H, W]` in [-1, 1]; grey 127 is 0 in that range (IC-Light maps x/127 - 1).
    """
    foreground = pixels.to(pixel_mask.device) * pixel_mask  # grey (0) outside the mask
    return encode_image(models, foreground, sample_mode="mode")
