"""Edit Everything (Xie et al. 2023, arXiv 2304.14006): inpaint the chosen segment with the target prompt.

SAM segments the photo and CLIP ranks the segments against `--from` (both in `sam_edit.stages`,
which hands this module the chosen mask). Here the mask grows by `dilate` pixels, SD 1.5
inpainting fills it at the working size with the target prompt, and the result is pasted into
the input through the grown mask at the input's own resolution.

Notation: x is the input image, m the edit mask at the input's size, m+ = m grown by k pixels
(Chebyshev distance: cv2.dilate with a (2k+1) x (2k+1) kernel of ones), y the inpainted image
resized to the input's size. The output is m+ * y + (1 - m+) * x, so every pixel outside m+ is
the input's own.

The inpainting loop is the one of diffusers' `StableDiffusionInpaintPipeline` at strength 1:
the 9-channel UNet gets the noisy latent, the mask at latent size and the latent of the image
with the mask blanked. It is written out rather than calling that pipeline for two reasons.
The pipeline finds its device through an `execution_device` on accelerate hooks, which
samedit's CPU offload hooks do not carry. It also rewrites a scheduler's `steps_offset` to 1,
while every samedit method shares one DDIM schedule.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sam_edit.images import image_to_tensor, tensor_to_image, working_size
from sam_edit.inversion import StepCallback, ddim_step, decode_latents, encode_image, encode_prompts
from sam_edit.methods.request import EditRequest
from sam_edit.models.loaders import DiffusionModels
from sam_edit.runtime import make_generator, randn


def dilate_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a `[H, W]` bool mask by `pixels` in every direction (square neighbourhood); `[H, W]` bool."""
    if pixels == 0:
        return mask.copy()
    grown = torch.from_numpy(mask.astype(np.float32))[None, None]  # [1, 1, H, W]
    # A square max filter is separable: one pass along rows, one along columns.
    size = 2 * pixels + 1
    grown = F.max_pool2d(grown, kernel_size=(1, size), stride=1, padding=(0, pixels))
    grown = F.max_pool2d(grown, kernel_size=(size, 1), stride=1, padding=(pixels, 0))
    return grown[0, 0].numpy() > 0.5


def working_mask(mask: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Shrink a `[H, W]` bool mask to `size` (width, height); return `[1, 1, h, w]` float, 1 = inpaint.

    A working pixel is inpainted if any input pixel it covers is, so the inpainted region
    contains the whole grown mask and the paste-back never shows an un-inpainted rim.
    """
    values = torch.from_numpy(mask.astype(np.float32))[None, None]  # [1, 1, H, W]
    return F.adaptive_max_pool2d(values, (size[1], size[0]))  # [1, 1, h, w] in {0, 1}


@torch.no_grad()
def inpaint(models: DiffusionModels, pixels: torch.Tensor, pixel_mask: torch.Tensor, prompt_embeds: torch.Tensor,
            request: EditRequest, callback: StepCallback | None = None) -> torch.Tensor:
    """Fill the mask from noise on the CPU generator; return the final latent `[1, 4, h, w]`.

    Args:
        pixels: `[1, 3, H, W]` in [-1, 1] at the working size.
        pixel_mask: `[1, 1, H, W]` float in {0, 1}, 1 = inpaint.
        prompt_embeds: `[2, 77, D]`, (empty prompt, target prompt).
    """
    scheduler = models.scheduler
    scheduler.set_timesteps(request.num_steps)
    # UNet channels 4..8: the mask at latent size (nearest) and the latent of the blanked image
    masked_latents = encode_image(models, pixels * (pixel_mask < 0.5))  # [1, 4, h, w]
    mask_latents = F.interpolate(pixel_mask, size=masked_latents.shape[-2:]).to(masked_latents)  # [1, 1, h, w]
    condition = torch.cat([mask_latents, masked_latents], dim=1).repeat(2, 1, 1, 1)  # [2, 5, h, w]

    latents = randn(tuple(masked_latents.shape), make_generator(request.seed), models.runtime)
    latents = latents * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        sample = torch.cat([torch.cat([latents, latents]), condition], dim=1)  # [2, 9, h, w]
        noise_uncond, noise_text = models.unet(sample, t, encoder_hidden_states=prompt_embeds).sample.chunk(2)
        noise_pred = noise_uncond + request.guidance_scale * (noise_text - noise_uncond)
        latents = ddim_step(models, noise_pred, t, latents)
        if callback is not None:
            callback({"stage": "edit", "i": i, "t": int(t), "latents": latents})
    return latents


def edit(models: DiffusionModels, image: Image.Image, mask: np.ndarray, request: EditRequest,
         callback: StepCallback | None = None) -> tuple[Image.Image, dict]:
    """Inpaint the grown edit mask of `image` with the target prompt; return (image, settings).

    Args:
        models: SD 1.5 inpainting (UNet with 9 input channels: latent, mask, masked-image latent).
        image: the input photo, RGB.
        mask: `[H, W]` bool at the image's size, True = edit.

    Returns the edited image at the input's size and the settings this edit adds to the PNG.
    """
    # 1. Grow the mask at the input's size
    grown = dilate_mask(mask, request.dilate)

    # 2. Image, mask and prompts at the working size
    size = working_size(image.size, request.max_side)
    pixels = image_to_tensor(image, size).to(models.runtime.device, models.runtime.dtype)
    pixel_mask = working_mask(grown, size).to(pixels)
    prompt_embeds = encode_prompts(models, ["", request.target_prompt])

    # 3. Inpaint with the target prompt
    latents = inpaint(models, pixels, pixel_mask, prompt_embeds, request, callback)

    # 4. Decode at the input's size and paste into the input through the grown mask
    inpainted = np.asarray(tensor_to_image(decode_latents(models, latents), size=image.size))
    # NOTE: the paste-back has a hard edge, as in Edit Everything; no feathering.
    edited = np.where(grown[..., None], inpainted, np.asarray(image))
    settings = {"working_size": list(size), "inpainted_pixels": int(grown.sum())}
    return Image.fromarray(edited, "RGB"), settings
