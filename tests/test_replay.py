"""Replaying an edit from the settings its PNG records."""

import dataclasses

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from sam_edit import stages
from sam_edit.cli.app import app
from sam_edit.errors import ImageError, StageFileError
from sam_edit.images import load_image, save_png
from sam_edit.methods.request import EditRequest
from sam_edit.rank import RankConfig
from sam_edit.replay import mask_source, model_set_of, read_replay


@pytest.fixture
def tiny(cpu):
    return stages.Context(runtime=cpu, model_set="tiny")


@pytest.fixture
def mask_png(chelsea, tmp_path):
    width, height = chelsea.size
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[60:240, 120:330] = 255
    path = tmp_path / "cat-mask.png"
    Image.fromarray(mask).save(path)
    return path


def edit_and_save(loaded, request, source, context, path):
    edited, settings = stages.run_edit(loaded, request, context, source)
    save_png(edited, path, settings)
    return edited


def test_replay_of_sam_clip_region(chelsea, tiny, tmp_path):
    request = EditRequest("cat", "tiger", method="blended", num_steps=2, max_side=64, seed=5)
    first = edit_and_save(chelsea, request, stages.MaskSource(), tiny, tmp_path / "out.png")

    replay = read_replay(tmp_path / "out.png", chelsea)
    again, _ = stages.run_edit(chelsea, replay.request, tiny, replay.source)

    assert replay.sam_model == "sam-vit-b"
    assert replay.source.rank_config.pick
    assert np.array_equal(np.asarray(again), np.asarray(first))


@pytest.mark.parametrize("method", ["residual", "blended"])
def test_replay_gives_same_pixels(method, chelsea, mask_png, tiny, tmp_path):
    request = EditRequest("cat", "tiger", method=method, caption="a cat on a sofa", num_steps=2, max_side=64,
                          guidance_scale=5.0, seed=3)
    first = edit_and_save(chelsea, request, stages.MaskSource(mask=mask_png), tiny, tmp_path / "out.png")

    replay = read_replay(tmp_path / "out.png", chelsea)
    again, _ = stages.run_edit(chelsea, replay.request, stages.Context(runtime=tiny.runtime, model_set=replay.model_set),
                               replay.source)

    # The PNG records the residual weight the method resolved (1 for residual), not None.
    assert dataclasses.replace(replay.request, residual_weight=None) == request
    assert replay.model_set == "tiny"
    assert np.array_equal(np.asarray(again), np.asarray(first))


def test_replay_rejects_other_image(chelsea, coffee_path, mask_png, tiny, tmp_path):
    request = EditRequest("cat", "tiger", method="p2p", num_steps=1, max_side=64)
    edit_and_save(chelsea, request, stages.MaskSource(mask=mask_png), tiny, tmp_path / "out.png")

    with pytest.raises(StageFileError, match="another image"):
        read_replay(tmp_path / "out.png", load_image(coffee_path))


def test_replay_rejects_png_without_method(chelsea, tmp_path):
    save_png(chelsea.image, tmp_path / "bare.png", {"image_pixels_sha256": chelsea.pixels_sha256})

    with pytest.raises(StageFileError, match="cannot be replayed"):
        read_replay(tmp_path / "bare.png", chelsea)


def test_mask_source_per_origin(tmp_path):
    assert mask_source({"mask": "m.png"})[0].mask.name == "m.png"
    assert mask_source({"rank": "r.json", "chosen": [2]})[0].rank.name == "r.json"
    source, sam_model = mask_source({"segments": "sam+clip", "chosen": [4, 7], "sam_model": "sam-vit-h"})
    assert source.rank_config == RankConfig(pick=(4, 7))
    assert sam_model == "sam-vit-h"
    assert mask_source({"segments": "sam+clip", "chosen": [1], "masks": "m.json"})[0].masks.name == "m.json"


def test_model_set_from_ids():
    assert model_set_of({"unet": "tiny/sd14"}) == "tiny"
    assert model_set_of({"unet": "random-full/sd15"}) == "random-full"
    assert model_set_of({"unet": "CompVis/stable-diffusion-v1-4@abc"}) == "default"


def test_replay_accepts_reencoded_input(chelsea, mask_png, tiny, tmp_path):
    request = EditRequest("cat", "tiger", method="p2p", num_steps=1, max_side=64)
    edit_and_save(chelsea, request, stages.MaskSource(mask=mask_png), tiny, tmp_path / "out.png")
    copy = tmp_path / "copy.png"
    chelsea.image.save(copy, compress_level=1)

    assert read_replay(tmp_path / "out.png", load_image(copy)).request.method == "p2p"


# samedit edit --replay ---------------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args], prog_name="samedit")


def test_cli_replay_same_pixels(chelsea_path, mask_png, tmp_path):
    first = invoke("edit", chelsea_path, "--from", "cat", "--to", "tiger", "--method", "iclight", "--mask", mask_png,
                   "--models", "tiny", "--steps", "2", "--max-side", "64", "-o", tmp_path / "out.png")
    assert first.exit_code == 0, first.output

    again = invoke("edit", chelsea_path, "--replay", tmp_path / "out.png", "-o", tmp_path / "again.png")

    assert again.exit_code == 0, again.output
    assert again.stdout.strip() == str(tmp_path / "again.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")), np.asarray(Image.open(tmp_path / "out.png")))


def test_cli_replay_rejects_edit_flags(chelsea_path, tmp_path):
    result = invoke("edit", chelsea_path, "--replay", tmp_path / "out.png", "--guidance", "3", "--from", "dog")

    assert result.exit_code == 2
    assert "--guidance" in result.stderr
    assert "--from" in result.stderr


def test_cli_replay_keeps_its_input(chelsea_path, mask_png, tmp_path):
    first = invoke("edit", chelsea_path, "--from", "cat", "--to", "tiger", "--method", "p2p", "--models", "tiny",
                   "--steps", "1", "--max-side", "64", "-o", tmp_path / "out.png")
    assert first.exit_code == 0, first.output

    result = invoke("edit", chelsea_path, "--replay", tmp_path / "out.png", "-o", tmp_path / "out.png", "--overwrite")

    assert result.exit_code == 1
    assert "out.png" in result.stderr


def test_cli_edit_needs_words_without_replay(chelsea_path, tmp_path):
    result = invoke("edit", chelsea_path, "--to", "tiger", "-o", tmp_path / "out.png")

    assert result.exit_code == 2
    assert "--from" in result.stderr


def test_cli_replay_from_another_folder(chelsea_path, mask_png, tmp_path, monkeypatch):
    monkeypatch.chdir(mask_png.parent)
    first = invoke("edit", chelsea_path, "--from", "cat", "--to", "tiger", "--method", "iclight", "--mask",
                   mask_png.name, "--models", "tiny", "--steps", "1", "--max-side", "64", "-o", tmp_path / "out.png")
    assert first.exit_code == 0, first.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    again = invoke("edit", chelsea_path, "--replay", tmp_path / "out.png", "-o", tmp_path / "again.png")

    assert again.exit_code == 0, again.output


def test_replay_rejects_changed_mask_file(chelsea, mask_png, tiny, tmp_path):
    request = EditRequest("cat", "tiger", method="iclight", num_steps=1, max_side=64)
    edit_and_save(chelsea, request, stages.MaskSource(mask=mask_png), tiny, tmp_path / "out.png")
    Image.fromarray(255 - np.asarray(Image.open(mask_png))).save(mask_png)

    with pytest.raises(StageFileError, match="now gives another edit mask"):
        read_replay(tmp_path / "out.png", chelsea)


@pytest.mark.parametrize(("text", "message"), [
    ("not json", "not JSON"),
    ("[1, 2]", "a JSON list"),
])
def test_damaged_settings_one_error(chelsea, tmp_path, text, message):
    path = tmp_path / "damaged.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("samedit", text)
    chelsea.image.save(path, pnginfo=info)

    with pytest.raises(ImageError, match=message):
        read_replay(path, chelsea)


@pytest.mark.parametrize(("field", "value"), [("source_words", None), ("seed", "abc"), ("num_steps", -1)])
def test_invalid_recorded_field_names_png(chelsea, tmp_path, field, value):
    settings = {"image_pixels_sha256": chelsea.pixels_sha256, "method": "p2p", "source_words": "cat",
                "target_words": "tiger", field: value}
    save_png(chelsea.image, tmp_path / "bad.png", settings)

    with pytest.raises(StageFileError, match="cannot be replayed"):
        read_replay(tmp_path / "bad.png", chelsea)
