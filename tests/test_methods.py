"""Every editing method behind `samedit edit --method`, and the invariant that defines each one."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sam_edit import artifacts, stages
from sam_edit.cli.app import app
from sam_edit.errors import SameditError
from sam_edit.images import image_to_tensor, read_png_settings
from sam_edit.inversion import encode_image, encode_prompts
from sam_edit.methods import blended, conditioning, everything, inversion_based, ip2p
from sam_edit.methods.registry import INVERSION_METHODS, METHODS
from sam_edit.methods.request import EditRequest
from sam_edit.models import loaders
from sam_edit.models.registry import get_spec

FAST = ["--models", "tiny", "--steps", "2", "--max-side", "64"]


@pytest.fixture(scope="module")
def chelsea_masks(chelsea_path, cache_root, tmp_path_factory):
    """SAM's segments of chelsea (tiny SAM), made once: segmenting costs seconds per run."""
    path = tmp_path_factory.mktemp("masks") / "cat.masks.json"
    with pytest.MonkeyPatch.context() as patch:  # the autouse environment is per test, this is per module
        patch.setenv("SAMEDIT_CACHE_DIR", str(cache_root))
        patch.setenv("HF_HOME", str(cache_root / "hf-home"))
        result = CliRunner().invoke(app, ["segment", str(chelsea_path), "-o", str(path), "--models", "tiny"])
    assert result.exit_code == 0, result.output
    return path


def square_dilation(mask, pixels):
    """Reference dilation for the tests: OR of the mask shifted by every offset in [-k, k]^2."""
    height, width = mask.shape
    padded = np.pad(mask, pixels)
    grown = np.zeros_like(mask)
    for dy in range(2 * pixels + 1):
        for dx in range(2 * pixels + 1):
            grown |= padded[dy : dy + height, dx : dx + width]
    return grown


def pixels_of(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# Every method through the CLI -------------------------------------------------------------------


@pytest.mark.parametrize("method", list(METHODS))
def test_method_edits_chelsea(run, chelsea_path, chelsea_masks, tmp_path, method):
    output = tmp_path / f"{method}.png"
    # --masks skips SAM; CLIP still ranks the segments for the methods that need the edit region.
    result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", "--seed", "1", "--method", method,
                 "--masks", chelsea_masks, "-o", output, *FAST)
    assert result.exit_code == 0, result.output
    with Image.open(output) as image:
        assert image.format == "PNG"
        assert image.size == (451, 300)
    settings = read_png_settings(output)
    assert settings["method"] == method
    assert settings["seed"] == 1
    assert settings["num_steps"] == 2
    assert settings["size"] == [451, 300]
    for field in METHODS[method].options:
        assert field in settings, field
    if METHODS[method].needs_mask:
        assert settings["edit_region"]["segments"] == "sam+clip"


def test_help_lists_every_method(run):
    result = run("edit", "--help")
    assert result.exit_code == 0
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    for name, info in METHODS.items():
        assert f"{name} {info.summary}" in lines, name
    for example in ("--method everything", "--method ip2p", "--method blended", "--method residual"):
        assert example in result.stdout


def test_unknown_method_lists_valid_names(run, chelsea_path, tmp_path):
    result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", "--method", "magic", "-o", tmp_path / "x.png")
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "magic" in message
    assert ", ".join(METHODS) in message


def test_invert_accepts_only_inversion_methods(run, chelsea_path, tmp_path):
    result = run("invert", chelsea_path, "--prompt", "cat", "--method", "ip2p", "-o", tmp_path / "x.safetensors")
    assert result.exit_code == 2
    assert ", ".join(INVERSION_METHODS) in " ".join(result.stderr.split())


def test_inversion_with_ip2p_rejected(run, chelsea_path, tmp_path):
    inversion = tmp_path / "cat.inv.safetensors"
    inversion.write_bytes(b"")
    result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", "--method", "ip2p", "--inversion", inversion,
                 "-o", tmp_path / "x.png", *FAST)
    assert result.exit_code == 2
    assert "--inversion" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_inversion_with_ip2p_rejected_in_library(chelsea, context, tmp_path, make_request):
    with pytest.raises(SameditError, match="takes no `--inversion`"):
        stages.run_edit(chelsea, make_request("ip2p"), context, inversion=tmp_path / "cat.inv.safetensors")


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--method", "p2p", "--dilate", "5"], "--dilate"),
        (["--method", "everything", "--reweight", "2"], "--reweight"),
        (["--method", "blended", "--residual-weight", "1"], "--residual-weight"),
        (["--method", "pnp", "--control-scale", "0.5"], "--control-scale"),
        (["--method", "p2p", "--instruction", "make it a tiger"], "--instruction"),
    ],
)
def test_option_of_another_method_rejected(run, chelsea_path, tmp_path, args, flag):
    result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", *args, "-o", tmp_path / "x.png", *FAST)
    assert result.exit_code == 2
    assert flag in result.stderr


# Requests and the registry ----------------------------------------------------------------------


def test_registry_matches_inversion_table():
    assert set(INVERSION_METHODS) == set(inversion_based.METHODS)
    for name, method in inversion_based.METHODS.items():
        assert METHODS[name].needs_mask == method.needs_mask, name
    for name, info in METHODS.items():
        if not info.inversion_based:
            assert name in stages.NOISE_METHODS
            get_spec(info.model)  # raises for an unknown model


@pytest.mark.parametrize("method, in_channels", [("everything", "9"), ("ip2p", "8"), ("blended", "4")])
def test_noise_methods_use_their_unet(method, in_channels):
    assert get_spec(METHODS[method].model).variant == in_channels


@pytest.mark.parametrize("method, steps", [("everything", 20), ("p2p", 50), ("ip2p", 50), ("blended", 50)])
def test_default_steps_per_method(method, steps):
    request = EditRequest(source_words="cat", target_words="tiger", method=method)
    assert request.num_steps == steps
    assert request.settings()["num_steps"] == steps


def test_settings_record_only_own_options():
    settings = EditRequest(source_words="cat", target_words="tiger", method="everything").settings()
    assert settings["dilate"] == 12
    assert "reweight" not in settings
    assert "instruction" not in settings
    settings = EditRequest(source_words="cat", target_words="tiger", method="ip2p").settings()
    assert settings["instruction"] == "turn the cat into tiger"
    assert settings["image_guidance_scale"] == 1.5


@pytest.mark.parametrize(
    "overrides, flag",
    [
        ({"method": "magic"}, "unknown method `magic`"),
        ({"reweight": 0.0}, "`--reweight`"),
        ({"attention_mode": "swap"}, "`--attention-mode`"),
        ({"control_scale": -1.0}, "`--control-scale`"),
        ({"image_guidance_scale": float("nan")}, "`--image-guidance`"),
        ({"dilate": -1}, "`--dilate`"),
        ({"instruction": "  "}, "`--instruction`"),
    ],
)
def test_invalid_request_raises(overrides, flag, make_request):
    with pytest.raises(SameditError, match=flag):
        make_request(overrides.pop("method", "p2p"), **overrides)


# p2p, controlnet ---------------------------------------------------------------------------------


def test_p2p_same_words_keeps_target_on_source(chelsea, context, make_request):
    request = make_request("p2p", target_words="cat", num_steps=4)
    prepared = stages.prepare(chelsea, request, None, context)
    trajectory = stages.invert(prepared, request)
    latents = stages.edit(chelsea, request, prepared, trajectory)[1]
    assert torch.equal(latents[1], latents[0])


def test_reweight_changes_p2p_output(chelsea, context, make_request):
    plain_request, reweighted_request = make_request("p2p", num_steps=4), make_request("p2p", num_steps=4, reweight=2.0)
    prepared = stages.prepare(chelsea, plain_request, None, context)
    trajectory = stages.invert(prepared, plain_request)
    plain = stages.edit(chelsea, plain_request, prepared, trajectory)[1]
    reweighted = stages.edit(chelsea, reweighted_request, prepared, trajectory)[1]
    assert torch.equal(plain[0], reweighted[0])
    assert not torch.equal(plain[1], reweighted[1])


def test_controlnet_zero_scale_equals_p2p_on_sd15(chelsea, context, chelsea_masks, make_request):
    request = make_request("controlnet", num_steps=3, control_scale=0.0)
    segments = artifacts.read_masks(chelsea_masks, chelsea)[0]
    controlled = stages.prepare(chelsea, request, None, context, segments)
    plain = dataclasses.replace(
        controlled,
        method=dataclasses.replace(inversion_based.METHODS["p2p"], base="sd15"),
        denoiser=conditioning.plain_denoiser(controlled.models),
    )
    images = []
    for prepared in (controlled, plain):
        trajectory = stages.invert(prepared, request)
        images.append(np.asarray(stages.edit(chelsea, request, prepared, trajectory)[0]))
    assert np.array_equal(images[0], images[1])


def test_controlnet_scale_changes_output(chelsea, context, chelsea_masks, make_request):
    segments = artifacts.read_masks(chelsea_masks, chelsea)[0]
    images = []
    for scale in (0.0, 1.0):
        request = make_request("controlnet", num_steps=3, control_scale=scale)
        prepared = stages.prepare(chelsea, request, None, context, segments)
        trajectory = stages.invert(prepared, request)
        images.append(np.asarray(stages.edit(chelsea, request, prepared, trajectory)[0]))
    assert not np.array_equal(images[0], images[1])


# everything --------------------------------------------------------------------------------------


def test_dilate_mask_is_square_dilation():
    mask = np.zeros((9, 12), dtype=bool)
    mask[4, 5] = True
    mask[0, 11] = True  # at the border: the square is clipped
    for pixels in (0, 1, 2, 3):
        assert np.array_equal(everything.dilate_mask(mask, pixels), square_dilation(mask, pixels)), pixels
    grown = everything.dilate_mask(mask, 2)
    assert grown[2:7, 3:8].all()
    assert not grown[1, 5]
    assert not grown[4, 8]


def test_everything_keeps_pixels_outside_dilated_mask(run, chelsea_path, cat_mask, cat_mask_path, tmp_path):
    output = tmp_path / "everything.png"
    result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", "--method", "everything", "--mask", cat_mask_path,
                 "--dilate", "7", "--seed", "1", "-o", output, *FAST)
    assert result.exit_code == 0, result.output
    source, edited = pixels_of(chelsea_path), pixels_of(output)
    grown = square_dilation(cat_mask, 7)
    assert np.array_equal(edited[~grown], source[~grown])
    assert not np.array_equal(edited[grown], source[grown])
    assert read_png_settings(output)["dilate"] == 7


def test_everything_pick_overrides_ranking(run, chelsea_path, chelsea, chelsea_masks, tmp_path):
    masks = chelsea_masks
    ranked, picked = tmp_path / "ranked.png", tmp_path / "picked.png"
    result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", "--method", "everything", "--masks", masks,
                 "-o", ranked, *FAST)
    assert result.exit_code == 0, result.output
    best = read_png_settings(ranked)["edit_region"]["chosen"]
    pick = 0 if best != [0] else 1
    result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", "--method", "everything", "--masks", masks,
                 "--pick", pick, "--dilate", "0", "-o", picked, *FAST)
    assert result.exit_code == 0, result.output
    assert read_png_settings(picked)["edit_region"]["chosen"] == [pick]
    segment_mask = artifacts.read_masks(masks, chelsea)[0][pick].mask
    assert np.array_equal(pixels_of(picked)[~segment_mask], pixels_of(chelsea_path)[~segment_mask])


# Seeds -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["everything", "blended", "ip2p"])
def test_noise_methods_follow_the_seed(chelsea, context, cat_mask_path, method, make_request):
    source = stages.MaskSource(mask=cat_mask_path)
    first, _ = stages.run_edit(chelsea, make_request(method, seed=1), context, source)
    again, _ = stages.run_edit(chelsea, make_request(method, seed=1), context, source)
    other, _ = stages.run_edit(chelsea, make_request(method, seed=2), context, source)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))


# blended -----------------------------------------------------------------------------------------


def blended_inputs(chelsea, cpu, cat_mask):
    models = loaders.load_diffusion("sd15", "tiny", cpu)
    pixels = image_to_tensor(chelsea.image, (64, 40))
    source_latents = encode_image(models, pixels)  # [1, 4, 5, 8]
    pixel_mask = conditioning.mask_tensor(cat_mask, (64, 40), cpu.device)
    mask_latents = conditioning.latent_mask(pixel_mask, models.vae_scale_factor) > 0.5
    prompt_embeds = encode_prompts(models, ["", "tiger"])
    return models, source_latents, mask_latents, prompt_embeds


def test_blended_final_latent_outside_mask_is_source(chelsea, cpu, cat_mask, make_request):
    models, source_latents, mask_latents, prompt_embeds = blended_inputs(chelsea, cpu, cat_mask)
    latents = blended.denoise(models, source_latents, mask_latents, prompt_embeds, make_request("blended", num_steps=4))
    background = ~mask_latents.expand_as(latents)
    assert background.any()
    assert (~background).any()
    assert torch.equal(latents[background], source_latents[background])
    assert not torch.equal(latents[~background], source_latents[~background])


@pytest.mark.parametrize("steps, first", [(4, 1), (8, 2), (50, 12)])
def test_blended_skips_first_quarter(chelsea, cpu, cat_mask, steps, first, make_request):
    assert blended.first_step(steps) == first
    if steps > 8:
        return
    models, source_latents, mask_latents, prompt_embeds = blended_inputs(chelsea, cpu, cat_mask)
    steps_run = []
    request = make_request("blended", num_steps=steps)
    blended.denoise(models, source_latents, mask_latents, prompt_embeds, request, lambda state: steps_run.append(state["i"]))
    assert steps_run == list(range(first, steps))


# ip2p --------------------------------------------------------------------------------------------


def count_unet_calls(models):
    batch_sizes = []
    models.unet.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    return batch_sizes


@pytest.mark.parametrize("guidance, image_guidance, batch", [(1.0, 1.0, 1), (7.5, 1.5, 3), (1.0, 1.5, 3), (7.5, 1.0, 3)])
def test_ip2p_unet_calls_per_step(chelsea, cpu, guidance, image_guidance, batch, make_request):
    models = loaders.load_diffusion("ip2p", "tiny", cpu)
    assert models.unet.config.in_channels == 8
    batch_sizes = count_unet_calls(models)
    request = make_request("ip2p", num_steps=3, guidance_scale=guidance, image_guidance_scale=image_guidance)
    edited, _ = ip2p.edit(models, chelsea.image, None, request)
    assert edited.size == chelsea.size
    assert batch_sizes == [batch] * 3


def test_ip2p_image_latent_is_unscaled_mode(chelsea, cpu):
    models = loaders.load_diffusion("ip2p", "tiny", cpu)
    pixels = image_to_tensor(chelsea.image, (64, 40))
    expected = models.vae.encode(pixels).latent_dist.mode()
    torch.testing.assert_close(ip2p.encode_condition_image(models, pixels), expected, rtol=0, atol=0)


def test_ip2p_instruction(run, chelsea_path, tmp_path, make_request):
    output = tmp_path / "ip2p.png"
    result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", "--method", "ip2p",
                 "--instruction", "make the cat a tiger", "--image-guidance", "1.2", "-o", output, *FAST)
    assert result.exit_code == 0, result.output
    settings = read_png_settings(output)
    assert settings["instruction"] == "make the cat a tiger"
    assert settings["image_guidance_scale"] == 1.2
    assert make_request("ip2p").edit_instruction == "turn the cat into tiger"


def test_readme_lists_every_method():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name in METHODS:
        assert f"| `{name}` |" in readme, name
