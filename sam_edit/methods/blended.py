"""Blended Latent Diffusion (Avrahami et al. 2023): regenerate the edit region, keep the background latent.

Notation (the paper's Algorithm 1): z_init is the encoded source latent, m the edit mask at
latent size, t_0 > t_1 > ... > t_{T-1} the DDIM timesteps, k = int(0.25 T) the first step that
runs, and noise(z, t) the forward diffusion q(z_t | z_0) with fresh Gaussian noise.

    z = noise(z_init, t_k)
    for i = k .. T-1:
        z_fg = DDIM step of z from t_i to t_{i+1}, text guidance on the target prompt
        z = m * z_fg + (1 - m) * noise(z_init, t_{i+1})      (z_init itself after the last step)

The start is noise(z_init, t_k), as in the paper and its SDXL script. The SD 2 script starts
from pure noise. The background is noised to t_{i+1}, the level z_fg has just reached (the SD 2
script uses t_i). After the last step the background is z_init itself, so the final latent
equals z_init exactly outside m. No pixels are pasted back after decoding, as in the paper.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sam_edit.images import image_to_tensor, tensor_to_image, working_size
from sam_edit.inversion import StepCallback, ddim_step, decode_latents, encode_image, encode_prompts
from sam_edit.methods import conditioning
from sam_edit.methods.request import EditRequest
from sam_edit.models.loaders import DiffusionModels
from sam_edit.runtime import make_generator, randn

BLEND_START = 0.25  # share of the T steps skipped (the scripts' `blending_start_percentage`)


def first_step(num_steps: int) -> int:
    """Return k, the index of the first timestep that runs."""
    return int(BLEND_START * num_steps)


@torch.no_grad()
def denoise(models: DiffusionModels, source_latents: torch.Tensor, mask_latents: torch.Tensor,
            prompt_embeds: torch.Tensor, request: EditRequest, callback: StepCallback | None = None) -> torch.Tensor:
    """Run the loop in the module docstring; return the final latent `[1, 4, h, w]`.

    Args:
        source_latents: z_init `[1, 4, h, w]`, scaled.
        mask_latents: m `[1, 1, h, w]` bool, True = edit.
        prompt_embeds: `[2, 77, D]`, (empty prompt, target prompt).
    """
    scheduler = models.scheduler
    scheduler.set_timesteps(request.num_steps)
    timesteps = scheduler.timesteps
    generator = make_generator(request.seed)

    def noised(t):  # noise(z_init, t)
        noise = randn(tuple(source_latents.shape), generator, models.runtime)
        return scheduler.add_noise(source_latents, noise, t.reshape(1))

    k = first_step(request.num_steps)
    latents = noised(timesteps[k])
    for i in range(k, len(timesteps)):
        t = timesteps[i]
        # Text-guided step of the whole latent
        latent_input = torch.cat([latents, latents])  # [2, 4, h, w]
        noise_pred = models.unet(latent_input, t, encoder_hidden_states=prompt_embeds).sample
        noise_uncond, noise_text = noise_pred.chunk(2)
        noise_pred = noise_uncond + request.guidance_scale * (noise_text - noise_uncond)
        latents = ddim_step(models, noise_pred, t, latents)  # z_fg at t_{i+1}
        # Background blend
        background = noised(timesteps[i + 1]) if i + 1 < len(timesteps) else source_latents
        latents = torch.where(mask_latents, latents, background)
        if callback is not None:
            callback({"stage": "edit", "i": i, "t": int(t), "latents": latents})
    return latents


def edit(models: DiffusionModels, image: Image.Image, mask: np.ndarray, request: EditRequest,
         callback: StepCallback | None = None) -> tuple[Image.Image, dict]:
    """Regenerate the edit region of `image` with the target prompt; return (image, settings).

    `mask` is `[H, W]` bool at the image's size, True = edit.
    """
    # 1. Encode the source (z_init) and shrink the mask to latent size (m)
    size = working_size(image.size, request.max_side)
    pixels = image_to_tensor(image, size).to(models.runtime.device, models.runtime.dtype)
    source_latents = encode_image(models, pixels)  # [1, 4, h, w], VAE mean x scaling factor
    pixel_mask = conditioning.mask_tensor(mask, size, models.runtime.device)
    # A latent pixel is edited if any pixel of its 8x8 block is, so m covers the whole mask.
    mask_latents = conditioning.latent_mask(pixel_mask, models.vae_scale_factor) > 0.5  # [1, 1, h, w]

    # 2. Encode the target prompt for classifier-free guidance
    prompt_embeds = encode_prompts(models, ["", request.target_prompt])

    # 3. Denoise from noise(z_init, t_k), blending the noised background in after every step
    latents = denoise(models, source_latents, mask_latents, prompt_embeds, request, callback)

    # 4. Decode at the input's size
    edited = tensor_to_image(decode_latents(models, latents), size=image.size)
    return edited, {"working_size": list(size), "blend_start": BLEND_START,
                    "first_step": first_step(request.num_steps)}
