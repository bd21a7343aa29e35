"""InstructPix2Pix (Brooks et al. 2023): edit by a written instruction, with no mask and no inversion.

The UNet takes 8 channels: the noisy latent and the input image's latent concatenated. Each
step combines three noise predictions (InstructPix2Pix, eq. 3; diffusers'
`StableDiffusionInstructPix2PixPipeline` computes the same):

    e = e(z_t, 0, 0) + s_I (e(z_t, c_I, 0) - e(z_t, 0, 0)) + s_T (e(z_t, c_I, c_T) - e(z_t, c_I, 0))

Notation: z_t the latent; c_I the input image's latent (the VAE posterior's mode, not multiplied
by the scaling factor, as InstructPix2Pix was trained); c_T the instruction's text embedding; 0
the empty condition (a zero image latent, the empty prompt); s_T = `guidance_scale`,
s_I = `image_guidance_scale`. With s_T = s_I = 1 the sum is e(z_t, c_I, c_T), so the loop
makes one conditional UNet call per step instead of three. diffusers instead turns guidance off
whenever s_T <= 1, even if s_I > 1; here the formula holds for every pair of scales.

Sampling is deterministic DDIM (eta 0) from noise on the CPU generator, with the shared DDIM
schedule rather than the Euler-ancestral sampler of the model card.
"""

from __future__ import annotations

import torch
from PIL import Image

from sam_edit.images import image_to_tensor, tensor_to_image, working_size
from sam_edit.inversion import StepCallback, ddim_step, decode_latents, encode_prompts, run_vae
from sam_edit.methods.request import EditRequest
from sam_edit.models.loaders import DiffusionModels
from sam_edit.runtime import make_generator, randn


@torch.no_grad()
def encode_condition_image(models: DiffusionModels, pixels: torch.Tensor) -> torch.Tensor:
    """Return c_I `[1, 4, H/8, W/8]`: the posterior mode of `[1, 3, H, W]` pixels in [-1, 1], unscaled."""
    latents = run_vae(models, lambda vae, value: vae.encode(value).latent_dist.mode(), pixels)
    return latents.to(models.runtime.dtype)


@torch.no_grad()
def denoise(models: DiffusionModels, image_latents: torch.Tensor, prompt_embeds: torch.Tensor,
            request: EditRequest, callback: StepCallback | None = None) -> torch.Tensor:
    """Sample z_0 `[1, 4, h, w]` from noise, conditioned on c_I and the instruction.

    `prompt_embeds` is `[2, 77, D]`: (c_T, empty prompt).
    """
    scheduler = models.scheduler
    scheduler.set_timesteps(request.num_steps)
    generator = make_generator(request.seed)
    latents = randn(tuple(image_latents.shape), generator, models.runtime) * scheduler.init_noise_sigma
    single_call = request.guidance_scale == 1 and request.image_guidance_scale == 1
    if single_call:
        image_input, text_input = image_latents, prompt_embeds[:1]  # (c_I, c_T)
    else:  # rows: (c_I, c_T), (c_I, 0), (0, 0)
        image_input = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])
        text_input = prompt_embeds[[0, 1, 1]]
    for i, t in enumerate(scheduler.timesteps):
        latent_input = latents.expand(image_input.shape[0], -1, -1, -1)
        sample = torch.cat([latent_input, image_input], dim=1)  # [B, 8, h, w]
        noise_pred = models.unet(sample, t, encoder_hidden_states=text_input).sample
        if not single_call:
            noise_text, noise_image, noise_uncond = noise_pred.chunk(3)
            noise_pred = (noise_uncond + request.guidance_scale * (noise_text - noise_image)
                          + request.image_guidance_scale * (noise_image - noise_uncond))
        latents = ddim_step(models, noise_pred, t, latents)
        if callback is not None:
            callback({"stage": "edit", "i": i, "t": int(t), "latents": latents})
    return latents


def edit(models: DiffusionModels, image: Image.Image, mask: None, request: EditRequest,
         callback: StepCallback | None = None) -> tuple[Image.Image, dict]:
    """Edit `image` by `request.edit_instruction`; return (image at the input's size, settings).

    `mask` is ignored (InstructPix2Pix edits the whole image); it is there so every non-inversion
    method has the same signature.
    """
    # 1. Encode the input image (c_I) and the instruction (c_T, empty prompt)
    size = working_size(image.size, request.max_side)
    pixels = image_to_tensor(image, size).to(models.runtime.device, models.runtime.dtype)
    image_latents = encode_condition_image(models, pixels)
    prompt_embeds = encode_prompts(models, [request.edit_instruction, ""])

    # 2. Denoise with image and text guidance
    latents = denoise(models, image_latents, prompt_embeds, request, callback)

    # 3. Decode at the input's size
    edited = tensor_to_image(decode_latents(models, latents), size=image.size)
    return edited, {"working_size": list(size)}
