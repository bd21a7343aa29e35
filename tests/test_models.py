import pytest
import torch
from safetensors.torch import load_file

from sam_edit.errors import ModelNotCachedError, SameditError
from sam_edit.models import loaders, store, tiny
from sam_edit.models.registry import MODELS, get_spec


def test_every_hub_model_is_pinned():
    for spec in MODELS.values():
        if spec.repo_id:
            assert spec.revision, spec.name
            if spec.revision != "main":
                assert len(spec.revision) == 40, spec.name
        else:
            assert spec.url, spec.name
            assert len(spec.sha256) == 64, spec.name


def test_sam_checkpoints_named_by_md5_prefix():
    for name in ("sam-vit-b", "sam-vit-l", "sam-vit-h"):
        spec = get_spec(name)
        assert spec.filename.startswith(f"sam_{spec.variant}_")


def test_unknown_model_lists_known_names():
    with pytest.raises(SameditError, match="known models: .*sd14"):
        get_spec("sd99")


@pytest.mark.parametrize("name", ["sd14", "iclight-fc", "sam-vit-b", "clip-l14"])
def test_offline_missing_model_names_pull_command(name):
    with pytest.raises(ModelNotCachedError) as raised:
        store.resolve(get_spec(name))
    message = str(raised.value)
    assert f"`{name}`" in message
    assert f"samedit models pull {name}" in message
    assert "\n" not in message


def test_cached_sam_file_resolves_without_network(cached_sam_checkpoint):
    assert store.resolve(get_spec("sam-vit-b")) == cached_sam_checkpoint


def test_model_set_from_env(monkeypatch):
    assert loaders.model_set_from_env() == "default"
    monkeypatch.setenv("SAMEDIT_MODELS", "tiny")
    assert loaders.model_set_from_env() == "tiny"
    assert loaders.model_set_from_env("default") == "default"
    with pytest.raises(SameditError, match="`--models`"):
        loaders.model_set_from_env("huge")


def test_tiny_models_are_deterministic(tmp_path):
    first = tiny.tiny_path(get_spec("iclight-fc"), tmp_path / "a")
    second = tiny.tiny_path(get_spec("iclight-fc"), tmp_path / "b")
    one, two = load_file(first), load_file(second)
    assert one.keys() == two.keys()
    assert all(torch.equal(one[key], two[key]) for key in one)


def test_tiny_diffusion_loads_through_loader(cpu):
    models = loaders.load_diffusion("sd14", "tiny", cpu)
    assert models.vae_scale_factor == 8
    assert models.unet.config.in_channels == 4
    assert models.tokenizer("a cat").input_ids == [49406, 320, 2368, 49407]
    assert loaders.model_id("sd14", "tiny") == "tiny/sd14"
    assert loaders.model_id("sd14", "default").startswith("CompVis/stable-diffusion-v1-4@133a221b")


def test_iclight_unet_is_base_plus_offset(cpu):
    models = loaders.load_iclight("tiny", cpu)
    base = loaders.load_diffusion("iclight-base", "tiny", cpu).unet
    loaders.widen_conv_in(base, 8)
    offsets = load_file(loaders.locate("iclight-fc", "tiny"))
    merged = models.unet.state_dict()
    assert models.unet.conv_in.in_channels == 8
    for key, value in base.state_dict().items():
        torch.testing.assert_close(merged[key], value + offsets[key], rtol=0, atol=0)


def test_widened_conv_in_ignores_new_channels(cpu):
    unet = loaders.load_diffusion("sd14", "tiny", cpu).unet
    sample = torch.randn(1, 4, 8, 8)
    before = unet.conv_in(sample)
    loaders.widen_conv_in(unet, 8)
    after = unet.conv_in(torch.cat([sample, torch.randn(1, 4, 8, 8)], dim=1))
    torch.testing.assert_close(before, after)


def test_offsets_must_fit_the_unet(cpu):
    unet = loaders.load_diffusion("sd14", "tiny", cpu).unet
    offsets = {key: torch.zeros_like(value) for key, value in unet.state_dict().items()}
    offsets.pop("conv_in.bias")
    with pytest.raises(SameditError, match="1 weights missing"):
        loaders.merge_offsets(unet, offsets)


def test_tiny_sam_and_clip_load(cpu):
    sam = loaders.load_sam_model("sam-vit-b", "tiny", cpu)
    assert sam.image_encoder.img_size == 64
    clip, processor = loaders.load_clip("tiny", cpu)
    assert processor.tokenizer("a cat").input_ids == [49406, 320, 2368, 49407]
    assert clip.dtype == torch.float32


def test_tiny_score_models_load(cpu):
    from sam_edit.metrics import DEFAULT_METRICS

    models = loaders.load_score_models("tiny", cpu, DEFAULT_METRICS)
    assert models.dino is not None
    assert models.lpips is not None
    assert models.clip_score is not None
    only_pixels = loaders.load_score_models("tiny", cpu, ("psnr_unedit_part",))
    assert only_pixels.dino is None
    assert only_pixels.lpips is None
    assert only_pixels.clip_score is None


def test_metric_models_offline_missing(cpu):
    with pytest.raises(ModelNotCachedError, match="samedit models pull dino-vitb8"):
        loaders.load_score_models("default", cpu, ("structure_distance",))


def test_tiny_controlnet_residuals_are_not_zero(cpu):
    controlnet = loaders.load_controlnet("tiny", cpu)
    down, mid = controlnet(
        torch.randn(1, 4, 8, 8), 500, encoder_hidden_states=torch.randn(1, 77, 32),
        controlnet_cond=torch.rand(1, 3, 64, 64), return_dict=False,
    )
    assert mid.abs().max() > 0
    assert all(residual.abs().max() > 0 for residual in down)
