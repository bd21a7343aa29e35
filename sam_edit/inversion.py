"""VAE and text encoding, DDIM steps in both directions, and DDIM inversion.

Notation (DDIM, Song et al. 2021, eq. 12 with eta = 0): alpha_t is the scheduler's
`alphas_cumprod[t]`; x_0 is the encoded image latent; x_t the latent at timestep t;
eps(x_t, t, c) the UNet's noise prediction for text condition c.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from sam_edit.models.loaders import DiffusionModels

logger = logging.getLogger(__name__)

# A denoiser maps (latents [B, 4, h, w], t, prompt_embeds [B, 77, D]) to noise_pred [B, 4, h, w].
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[dict], None]


@torch.no_grad()
def encode_prompts(models: DiffusionModels, prompts: list[str]) -> torch.Tensor:
    """Return CLIP text embeddings `[len(prompts), 77, D]`; warn when a prompt is cut at 77 tokens."""
    tokenizer = models.tokenizer
    for prompt in prompts:
        ids = tokenizer(prompt).input_ids
        if len(ids) > tokenizer.model_max_length:
            kept = tokenizer.decode(ids[1 : tokenizer.model_max_length - 1])
            logger.warning("prompt is longer than %d CLIP tokens and was cut to: %r", tokenizer.model_max_length, kept)
    tokens = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    input_ids = tokens.input_ids.to(models.runtime.device)
    return models.text_encoder(input_ids)[0].to(models.runtime.dtype)


def run_vae(models: DiffusionModels, function: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
            value: torch.Tensor) -> torch.Tensor:
    """Run the VAE; if fp16/bf16 overflows to NaN or Inf, retry once in fp32."""
    vae = models.vae
    result = function(vae, value.to(vae.device, vae.dtype))
    if torch.isfinite(result).all() or vae.dtype == torch.float32:
        return result
    logger.warning("VAE produced NaN or Inf in %s; retrying in fp32", vae.dtype)
    dtype = vae.dtype
    vae.to(torch.float32)
    try:
        return function(vae, value.float()).to(dtype)
    finally:
        vae.to(dtype)


@torch.no_grad()
def encode_image(models: DiffusionModels, pixels: torch.Tensor, sample_mode: str = "mean") -> torch.Tensor:
    """Encode `[B, 3, H, W]` pixels in [-1, 1] to scaled latents `[B, 4, H/8, W/8]`.

    The PnP Inversion code uses the latent distribution's mean; IC-Light uses its mode (the
    same value for a diagonal Gaussian).
    """
    scaling = models.vae.config.scaling_factor

    def encode(vae, value):
        distribution = vae.encode(value).latent_dist
        return (distribution.mode() if sample_mode == "mode" else distribution.mean) * scaling

    return run_vae(models, encode, pixels).to(models.runtime.dtype)


@torch.no_grad()
def decode_latents(models: DiffusionModels, latents: torch.Tensor) -> torch.Tensor:
    """Decode scaled latents `[B, 4, h, w]` to pixels `[B, 3, 8h, 8w]` in [-1, 1]."""
    scaling = models.vae.config.scaling_factor
    return run_vae(models, lambda vae, value: vae.decode(value / scaling).sample, latents)


def alpha_at(models: DiffusionModels, t: int) -> torch.Tensor:
    """alpha_t, with the scheduler's final alpha for t < 0 (the step below t = 0)."""
    scheduler = models.scheduler
    return scheduler.alphas_cumprod[t] if t >= 0 else scheduler.final_alpha_cumprod


def ddim_inversion_step(models: DiffusionModels, noise_pred: torch.Tensor, t: int, latents: torch.Tensor) -> torch.Tensor:
    """Move x_{t - dt} to x_t with eps(x_{t - dt}, t): DDIM eq. 12 run backwards."""
    step = models.scheduler.config.num_train_timesteps // models.scheduler.num_inference_steps
    alpha_prev, alpha_t = alpha_at(models, t - step), alpha_at(models, t)
    x0 = (latents - (1 - alpha_prev) ** 0.5 * noise_pred) / alpha_prev**0.5  # predicted x_0
    return alpha_t**0.5 * x0 + (1 - alpha_t) ** 0.5 * noise_pred


def ddim_step(models: DiffusionModels, noise_pred: torch.Tensor, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM step x_t -> x_{t - dt} (eta = 0) with diffusers' scheduler."""
    return models.scheduler.step(noise_pred, t, latents, eta=0.0).prev_sample


@torch.no_grad()
def ddim_invert(models: DiffusionModels, denoiser: Denoiser, latents: torch.Tensor, prompt_embeds: torch.Tensor,
                num_steps: int, callback: StepCallback | None = None) -> torch.Tensor:
    """DDIM inversion with the source prompt and guidance 1 (no classifier-free guidance).

    Returns the trajectory `[T+1, 4, h, w]`: index 0 is x_0 (the encoded image), index k the
    latent after k inversion steps, index T the noisiest latent where editing starts.
    """
    models.scheduler.set_timesteps(num_steps)
    trajectory = [latents[0]]
    for i, t in enumerate(models.scheduler.timesteps.flip(0)):  # ascending: 0, 20, ..., 980
        noise_pred = denoiser(latents, t, prompt_embeds)
        latents = ddim_inversion_step(models, noise_pred, int(t), latents)
        trajectory.append(latents[0])
        if callback is not None:
            callback({"stage": "invert", "i": i, "t": int(t), "latents": latents})
    return torch.stack(trajectory)  # [T+1, 4, h, w]
