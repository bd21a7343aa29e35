import numpy as np
import pytest
import torch

from sam_edit import stages
from sam_edit.inversion import ddim_inversion_step, ddim_step, encode_image, encode_prompts
from sam_edit.methods.inversion_based import residual_correction
from sam_edit.models import loaders

STEPS = 4


def test_inversion_step_inverts_ddim_step(cpu):
    models = loaders.load_diffusion("sd14", "tiny", cpu)
    models.scheduler.set_timesteps(STEPS)
    latents, noise_pred = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    t = models.scheduler.timesteps[1]
    forward = ddim_inversion_step(models, noise_pred, int(t), latents)
    torch.testing.assert_close(ddim_step(models, noise_pred, t, forward), latents, rtol=1e-5, atol=1e-5)


def test_trajectory_starts_at_encoded_image(chelsea, context, cat_mask, make_request):
    request = make_request("pnp", num_steps=STEPS)
    prepared = stages.prepare(chelsea, request, cat_mask, context)
    trajectory = stages.invert(prepared, request)
    assert trajectory.shape == (STEPS + 1, 4, 5, 8)  # 64x40 working size, latents at 1/8
    torch.testing.assert_close(trajectory[0], encode_image(prepared.models, prepared.pixels)[0])


@pytest.mark.parametrize("method", ["pnp", "iclight-pnp", "residual"])
def test_direct_inversion_ends_on_image_latent(chelsea, context, cat_mask, method, make_request):
    request = make_request(method, num_steps=STEPS)
    prepared = stages.prepare(chelsea, request, cat_mask, context)
    trajectory = stages.invert(prepared, request)
    sources = []
    stages.edit(chelsea, request, prepared, trajectory, callback=lambda state: sources.append(state["latents"][0].clone()))
    for i, source in enumerate(sources):  # the source branch is on the trajectory at every step
        torch.testing.assert_close(source, trajectory[STEPS - i - 1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sources[-1], trajectory[0], rtol=1e-5, atol=1e-5)


def test_plain_p2p_source_leaves_trajectory(chelsea, context, make_request):
    request = make_request("p2p", num_steps=STEPS, guidance_scale=7.5)
    prepared = stages.prepare(chelsea, request, None, context)
    trajectory = stages.invert(prepared, request)
    _, latents, _ = stages.edit(chelsea, request, prepared, trajectory)
    assert not torch.allclose(latents[0], trajectory[0], atol=1e-3)


def test_correction_changes_only_background_by_w_r():
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 6, 6, generator=generator)
    inverted = torch.randn(4, 6, 6, generator=generator)
    background = torch.zeros(1, 1, 6, 6)
    background[..., :, :3] = 1.0
    weight = 0.7
    corrected = residual_correction(latents, inverted, weight, background, direct_inversion=True)
    residual = inverted - latents[0]
    change = corrected[1] - latents[1]
    torch.testing.assert_close(change[..., :3], weight * residual[..., :3], rtol=0, atol=1e-6)
    assert torch.equal(corrected[1][..., 3:], latents[1][..., 3:])
    torch.testing.assert_close(corrected[0], inverted, rtol=0, atol=1e-6)


def test_zero_weight_leaves_target_untouched():
    latents = torch.randn(2, 4, 6, 6)
    inverted = torch.randn(4, 6, 6)
    corrected = residual_correction(latents, inverted, 0.0, torch.ones(1, 1, 6, 6), direct_inversion=False)
    assert torch.equal(corrected, latents)


def test_zero_residual_weight_equals_iclight_pnp(chelsea, context, cat_mask, make_request):
    images = []
    for method, weight in (("residual", 0.0), ("iclight-pnp", None)):
        request = make_request(method, num_steps=STEPS, residual_weight=weight)
        prepared = stages.prepare(chelsea, request, cat_mask, context)
        trajectory = stages.invert(prepared, request)
        images.append(np.asarray(stages.edit(chelsea, request, prepared, trajectory)[0]))
    assert np.array_equal(images[0], images[1])


def test_residual_weight_changes_output(chelsea, context, cat_mask, make_request):
    request = make_request("residual", num_steps=STEPS)
    prepared = stages.prepare(chelsea, request, cat_mask, context)
    trajectory = stages.invert(prepared, request)
    corrected = stages.edit(chelsea, request, prepared, trajectory)[1]
    plain = stages.edit(chelsea, make_request("residual", num_steps=STEPS, residual_weight=0.0), prepared, trajectory)[1]
    assert not torch.equal(corrected[1], plain[1])
    assert torch.equal(corrected[0], plain[0])


def test_long_prompt_warns_with_cut_text(cpu, caplog):
    models = loaders.load_diffusion("sd14", "tiny", cpu)
    embeds = encode_prompts(models, ["cat " * 100])
    assert embeds.shape == (1, 77, 32)
    assert "cut to" in caplog.text
