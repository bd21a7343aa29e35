"""Stage checks that run before any UNet call, inversion-file messages, and the edit-region flags."""

from contextlib import contextmanager

import pytest
import torch
from diffusers import UNet2DConditionModel
from typer.testing import CliRunner

from sam_edit import artifacts, stages
from sam_edit.cli.app import app
from sam_edit.errors import ModelNotCachedError, SameditError, StageFileError, UsageError
from sam_edit.rank import RankConfig
from sam_edit.segment import Segment

# 80 one-token words push "cat" past the 75 word tokens that CLIP's 77-token context holds.
LONG_CAPTION = "a " + "very " * 80 + "fluffy cat on a sofa"


@contextmanager
def count_unet_calls():
    """Count forward calls of every `UNet2DConditionModel`, however it was loaded."""
    calls = []

    def hook(module, args):
        if isinstance(module, UNet2DConditionModel):
            calls.append(module)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


# Word alignment, checked before the inversion ----------------------------------------------------


@pytest.mark.parametrize("method", ["p2p", "residual"])
def test_word_beyond_token_limit_fails_before_unet(chelsea, context, cat_mask_path, make_request, method):
    request = make_request(method, caption=LONG_CAPTION)
    source = stages.MaskSource(mask=cat_mask_path)
    with count_unet_calls() as calls, pytest.raises(SameditError) as raised:
        stages.run_edit(chelsea, request, context, source)
    assert calls == []
    message = str(raised.value)
    assert message.startswith("`--from` 'cat' starts at token")
    assert "shorten `--prompt`" in message
    assert "\n" not in message


def test_word_inside_punctuation_fails_before_unet(chelsea, context, make_request):
    # The regular expression finds "cat" in "cat's"; Prompt-to-Prompt matches whole words only.
    request = make_request("p2p", caption="a cat's toy")
    with count_unet_calls() as calls, pytest.raises(SameditError, match="`--from` 'cat' matches no whole words"):
        stages.run_edit(chelsea, request, context)
    assert calls == []


def test_prepare_checks_alignment(chelsea, context, make_request):
    with count_unet_calls() as calls, pytest.raises(SameditError, match="starts at token"):
        stages.prepare(chelsea, make_request("pnp", caption=LONG_CAPTION), None, context)
    assert calls == []


def test_aligned_words_pass_check(chelsea, context, make_request):
    request = make_request("p2p", caption="a fluffy cat on a sofa", target_words="big tiger")
    with count_unet_calls() as calls:
        prepared = stages.prepare(chelsea, request, None, context)
    assert calls == []
    assert prepared.size == (64, 40)


def test_replace_mode_needs_equal_word_counts(make_request):
    with pytest.raises(UsageError, match="`--attention-mode replace` needs prompts with the same number of words"):
        make_request("p2p", target_words="big tiger", attention_mode="replace")
    assert make_request("p2p", target_words="tiger", attention_mode="replace").attention_mode == "replace"


# Inversion files: mismatches named in flags -------------------------------------------------------


@pytest.fixture
def p2p_inversion(chelsea, context, make_request, tmp_path):
    """A p2p inversion file of chelsea at --max-side 64 and --steps 2, caption "cat"."""
    request = make_request("p2p")
    prepared = stages.prepare(chelsea, request, None, context)
    trajectory = stages.invert(prepared, request)
    path = tmp_path / "cat.inv.safetensors"
    settings = stages.inversion_settings(prepared, request, None)
    timesteps = prepared.models.scheduler.timesteps.flip(0)
    artifacts.write_inversion(path, chelsea, trajectory, timesteps, prepared.model_ids, settings)
    return path


def read_for(path, chelsea, context, request, mask=None):
    prepared = stages.prepare(chelsea, request, mask, context)
    return stages.read_trajectory(path, chelsea, prepared, request, mask)


@pytest.fixture
def chelsea_segments(chelsea, cat_mask):
    """Two fixed segments (the cat box and the rest), so that controlnet needs no SAM run."""
    return [
        Segment(0, cat_mask, (120, 60, 210, 180), int(cat_mask.sum()), 0.9, 0.9),
        Segment(1, ~cat_mask, (0, 0, 451, 300), int((~cat_mask).sum()), 0.9, 0.9),
    ]


# Keys of the recorded settings, which messages must put in terms of flags.
INTERNAL_KEYS = ("method_unet", "conditioning=", "num_steps", "working_size", "mask_sha256", "prompt=")


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"max_side": 128}, "was made at `--max-side 64` (working size 64x40), but this edit uses `--max-side 128` "
                            "(working size 128x88); pass `--max-side 64` or rerun `samedit invert --max-side 128`"),
        ({"num_steps": 3}, "has 2 inversion steps, but this edit uses `--steps 3`; pass `--steps 2`"),
        ({"caption": "a cat on a sofa"}, "pass `--prompt cat` or rerun `samedit invert --prompt 'a cat on a sofa'`"),
        ({"method": "controlnet"}, "is an inversion for `--method p2p`, whose UNet or conditioning differs from "
                                   "`--method controlnet`; edit with `--method` p2p or pnp, or rerun "
                                   "`samedit invert --method controlnet`"),
    ],
)
def test_inversion_mismatch_names_flag(chelsea, context, make_request, p2p_inversion, chelsea_segments,
                                       overrides, expected):
    request = make_request(**({"method": "p2p"} | overrides))
    prepared = stages.prepare(chelsea, request, None, context, chelsea_segments)
    with pytest.raises(StageFileError) as raised:
        stages.read_trajectory(p2p_inversion, chelsea, prepared, request, None)
    message = str(raised.value)
    assert expected in message
    for key in INTERNAL_KEYS:
        assert key not in message


def test_inversion_shared_by_same_unet(chelsea, context, make_request, p2p_inversion):
    trajectory = read_for(p2p_inversion, chelsea, context, make_request("pnp"))
    assert trajectory.shape == (3, 4, 5, 8)


def test_inversion_with_other_mask_names_flags(chelsea, context, make_request, cat_mask, tmp_path):
    request = make_request("residual")
    prepared = stages.prepare(chelsea, request, cat_mask, context)
    path = tmp_path / "cat.inv.safetensors"
    timesteps = prepared.models.scheduler.timesteps.flip(0)
    artifacts.write_inversion(path, chelsea, stages.invert(prepared, request), timesteps, prepared.model_ids,
                              stages.inversion_settings(prepared, request, cat_mask))
    with pytest.raises(StageFileError, match="made with another edit mask") as raised:
        read_for(path, chelsea, context, request, ~cat_mask)
    assert "`--mask` or `--rank`" in str(raised.value)
    assert "mask_sha256" not in str(raised.value)


# --mask and --rank together ------------------------------------------------------------------------


def test_mask_and_rank_together_rejected(tmp_path):
    with pytest.raises(UsageError) as raised:
        stages.MaskSource(mask=tmp_path / "cat-mask.png", rank=tmp_path / "cat.rank.json")
    assert "`--mask" in str(raised.value)
    assert "`--rank" in str(raised.value)
    assert stages.MaskSource(mask=tmp_path / "cat-mask.png", masks=tmp_path / "cat.masks.json").mask is not None


def test_cli_mask_and_rank_exit_2(chelsea_path, cat_mask_path, tmp_path):
    rank = tmp_path / "cat.rank.json"
    rank.write_text("{}")
    output = tmp_path / "out.png"
    result = CliRunner().invoke(app, [str(arg) for arg in (
        "edit", chelsea_path, "--from", "cat", "--to", "tiger", "--mask", cat_mask_path, "--rank", rank,
        "-o", output, "--models", "tiny", "--steps", "2", "--max-side", "64")], prog_name="samedit")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--mask" in lines[0]
    assert "--rank" in lines[0]
    assert not output.exists()


# Missing models ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "source_flags", "expected"), [
    ("residual", {}, ["sam-vit-b", "clip-l14", "iclight-base", "iclight-fc"]),
    ("residual", {"mask": "cat-mask.png"}, ["iclight-base", "iclight-fc"]),
    ("controlnet", {}, ["sam-vit-b", "sd15", "controlnet-seg"]),
    ("blended", {"masks": "cat.masks.json"}, ["clip-l14", "sd15"]),
    ("ip2p", {}, ["ip2p"]),
])
def test_edit_names_every_missing_model(chelsea, cpu, make_request, tmp_path, method, source_flags, expected):
    source = stages.MaskSource(**{flag: tmp_path / name for flag, name in source_flags.items()})
    context = stages.Context(runtime=cpu, model_set="default")

    with pytest.raises(ModelNotCachedError) as raised:
        stages.run_edit(chelsea, make_request(method), context, source)

    message = str(raised.value)
    for name in expected:
        assert f"`{name}`" in message
    assert "samedit models pull " + " ".join(expected) in message


def test_invert_names_every_missing_model(chelsea_path, tmp_path):
    result = CliRunner().invoke(app, [str(arg) for arg in (
        "invert", chelsea_path, "--prompt", "a cat", "--from", "cat", "--method", "residual",
        "-o", tmp_path / "cat.inv.safetensors")], prog_name="samedit")

    assert result.exit_code == 1
    assert "samedit models pull sam-vit-b clip-l14 iclight-base iclight-fc" in result.stderr


def test_word_beyond_token_limit_exits_2(run, chelsea_path, tmp_path):
    caption = "a photo of " + "a very long sofa " * 20 + "with a cat"
    result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", "--method", "p2p", "--prompt", caption,
                 "-o", tmp_path / "out.png", "--models", "tiny", "--steps", "1", "--max-side", "64")

    assert result.exit_code == 2
    assert "starts at token" in result.stderr


def test_unused_region_flags_warn(chelsea, context, make_request, cat_mask_path, tmp_path, caplog):
    stages.run_edit(chelsea, make_request("p2p", num_steps=1), context,
                    stages.MaskSource(mask=cat_mask_path, masks=tmp_path / "unused.masks.json"))

    assert "ignores --mask and --rank" in caplog.text
    assert "does not read --masks" in caplog.text


def test_same_words_warn(chelsea, context, make_request, caplog):
    stages.run_edit(chelsea, make_request("p2p", target_words="Cat", num_steps=1), context)

    assert "the edit has nothing to change" in caplog.text


@pytest.mark.parametrize("flag", ["mask", "rank"])
def test_pick_with_region_file_rejected(tmp_path, flag):
    with pytest.raises(UsageError, match="`--pick`"):
        stages.MaskSource(**{flag: tmp_path / "region"}, rank_config=RankConfig(pick=(1,)))
