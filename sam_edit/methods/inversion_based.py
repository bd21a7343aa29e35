"""Editing by DDIM inversion and Prompt-to-Prompt, with Direct Inversion and residual correction.

One loop serves six methods, which differ only in the UNet call and two switches:

| method        | UNet call                                    | Direct Inversion | w default |
| ------------- | -------------------------------------------- | ---------------- | --------- |
| `p2p`         | SD 1.4                                       | no               | 0         |
| `pnp`         | SD 1.4                                       | yes              | 0         |
| `controlnet`  | SD 1.5 + segmentation ControlNet residuals   | no               | 0         |
| `iclight`     | IC-Light fc, foreground latent concatenated  | no               | 0         |
| `iclight-pnp` | IC-Light fc, foreground latent concatenated  | yes              | 0         |
| `residual`    | IC-Light fc, foreground latent concatenated  | yes              | 1         |

Notation (the report's Figure 3): x_t^F is the inversion ("forward") trajectory, x_t^S the
source branch, x_t^T the target branch, r_t = x_t^F - x_t^S the residual, w the residual
weight and m_bg the background mask (the complement of the edit mask) at latent size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sam_edit.attention import AttentionControlConfig, PromptToPrompt
from sam_edit.inversion import Denoiser, StepCallback, ddim_step
from sam_edit.methods.request import EditRequest
from sam_edit.models.loaders import DiffusionModels


@dataclass(frozen=True)
class InversionMethod:
    """A row of the table in the module docstring; `sam_edit.methods.registry` has its summary."""

    name: str
    base: str  # "sd14", "sd15" or "iclight": which diffusion model loads
    conditioning: str  # "none", "foreground" (IC-Light) or "control" (ControlNet)
    direct_inversion: bool
    residual_weight: float = 0.0  # default w

    @property
    def needs_mask(self) -> bool:
        # The foreground latent needs the edit mask; so does a nonzero residual weight.
        return self.conditioning == "foreground"


METHODS = {
    method.name: method
    for method in (
        InversionMethod("p2p", "sd14", "none", False),
        InversionMethod("pnp", "sd14", "none", True),
        InversionMethod("controlnet", "sd15", "control", False),
        InversionMethod("iclight", "iclight", "foreground", False),
        InversionMethod("iclight-pnp", "iclight", "foreground", True),
        InversionMethod("residual", "iclight", "foreground", True, 1.0),
    )
}


def guided_noise(denoiser: Denoiser, latents: torch.Tensor, t: torch.Tensor, prompt_embeds: torch.Tensor,
                 guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance for the (source, target) pair in one UNet call.

    `prompt_embeds` is `[4, 77, D]` = (uncond, uncond, source, target); the UNet batch is
    (source uncond, target uncond, source cond, target cond), the layout the attention
    controller expects.
    """
    latent_input = torch.cat([latents, latents])  # [4, 4, h, w]
    noise_uncond, noise_text = denoiser(latent_input, t, prompt_embeds).chunk(2)
    return noise_uncond + guidance_scale * (noise_text - noise_uncond)


def residual_correction(latents: torch.Tensor, inverted: torch.Tensor, weight: float,
                        background: torch.Tensor, direct_inversion: bool) -> torch.Tensor:
    """Apply r_t = x_t^F - x_t^S: the source gets r_t (Direct Inversion), the target w * m_bg * r_t.

    Args:
        latents: `[2, 4, h, w]`, rows (x_t^S, x_t^T) after the DDIM step.
        inverted: `[4, h, w]`, x_t^F at the same timestep.
        weight: w; 0 leaves the target untouched.
        background: `[1, 1, h, w]` float, 1 on the background, 0 on the edit region.
    """
    source, target = latents[0], latents[1]
    residual = inverted - source  # r_t
    if weight != 0.0:
        target = target + weight * background[0] * residual
    if direct_inversion:
        source = source + residual  # back on the inversion trajectory
    return torch.stack([source, target])


@torch.no_grad()
def edit_loop(models: DiffusionModels, denoiser: Denoiser, trajectory: torch.Tensor, prompt_embeds: torch.Tensor,
              controller: PromptToPrompt, method: InversionMethod, request: EditRequest, weight: float,
              background: torch.Tensor, callback: StepCallback | None = None) -> torch.Tensor:
    """Denoise the (source, target) pair from x_T^F; return the final latents `[2, 4, h, w]`."""
    models.scheduler.set_timesteps(request.num_steps)
    latents = trajectory[-1].unsqueeze(0).repeat(2, 1, 1, 1)  # [2, 4, h, w], both from x_T^F
    num_steps = len(models.scheduler.timesteps)
    with controller.attach(models.unet):
        for i, t in enumerate(models.scheduler.timesteps):
            # Prompt-to-Prompt step
            controller.set_step(i)
            noise_pred = guided_noise(denoiser, latents, t, prompt_embeds, request.guidance_scale)
            latents = ddim_step(models, noise_pred, t, latents)
            # Direct Inversion and residual correction
            inverted = trajectory[num_steps - i - 1].to(latents.dtype)
            latents = residual_correction(latents, inverted, weight, background, method.direct_inversion)
            # Local blend
            latents = controller.local_blend(latents, i)
            if callback is not None:
                callback({"stage": "edit", "i": i, "t": int(t), "latents": latents})
    return latents


def attention_controller(models: DiffusionModels, request: EditRequest) -> PromptToPrompt:
    config = AttentionControlConfig(
        cross_replace=request.cross_replace,
        self_replace=request.self_replace,
        blend_threshold=request.blend_threshold,
        mode=request.attention_mode,
        reweight=request.reweight,
    )
    return PromptToPrompt(
        models.tokenizer, request.source_prompt, request.target_prompt,
        request.source_words, request.target_words, request.num_steps, config,
    )
