import json

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from sam_edit import artifacts
from sam_edit.errors import StageFileError
from sam_edit.images import hash_pixels, load_image
from sam_edit.segment import Segment


@pytest.fixture
def segments(chelsea):
    width, height = chelsea.size
    first = np.zeros((height, width), dtype=bool)
    first[10:50, 20:80] = True
    second = np.zeros((height, width), dtype=bool)
    second[100:300, 0:451] = True
    return [
        Segment(0, second, (0, 100, 451, 200), int(second.sum()), 0.9, 0.96),
        Segment(1, first, (20, 10, 60, 40), int(first.sum()), 0.8, 0.97),
    ]


@pytest.fixture
def other_image(coffee_path):
    return load_image(coffee_path)


def test_masks_round_trip(tmp_path, chelsea, segments):
    path = tmp_path / "cat.masks.json"
    artifacts.write_masks(path, chelsea, segments, {"sam": "tiny/sam-vit-b"}, {"points_per_side": 4})
    read, record = artifacts.read_masks(path, chelsea)
    assert record["format"] == "samedit.masks"
    assert record["version"] == 2
    assert record["image"] == {"pixels_sha256": chelsea.pixels_sha256, "width": 451, "height": 300}
    for original, loaded in zip(segments, read):
        assert np.array_equal(original.mask, loaded.mask)
        assert original.id == loaded.id
        assert original.bbox == loaded.bbox
        assert original.area == loaded.area


def test_masks_for_another_image_rejected(tmp_path, chelsea, segments, other_image):
    path = tmp_path / "cat.masks.json"
    artifacts.write_masks(path, chelsea, segments, {}, {})
    with pytest.raises(StageFileError, match="made for another image"):
        artifacts.read_masks(path, other_image)


def test_amg_list_is_readable(tmp_path, chelsea, segments):
    from sam_edit.segment import mask_to_rle

    records = [{"segmentation": mask_to_rle(s.mask), "area": s.area, "bbox": list(s.bbox),
                "predicted_iou": s.predicted_iou, "stability_score": s.stability_score,
                "point_coords": [[0, 0]], "crop_box": [0, 0, 451, 300]} for s in segments]
    path = tmp_path / "amg.json"
    path.write_text(json.dumps(records))
    read, _ = artifacts.read_masks(path, chelsea)
    assert [s.area for s in read] == [s.area for s in segments]


def test_amg_list_of_wrong_size_rejected(tmp_path, other_image, segments):
    from sam_edit.segment import mask_to_rle

    path = tmp_path / "amg.json"
    path.write_text(json.dumps([{"segmentation": mask_to_rle(segments[0].mask)}]))
    with pytest.raises(StageFileError, match="is 451x300"):
        artifacts.read_masks(path, other_image)


def test_wrong_format_and_bad_json(tmp_path, chelsea):
    path = tmp_path / "x.json"
    path.write_text("{not json")
    with pytest.raises(StageFileError, match="not valid JSON"):
        artifacts.read_masks(path, chelsea)
    path.write_text(json.dumps({"format": "samedit.ranking", "version": 1}))
    with pytest.raises(StageFileError, match="not a samedit.masks file"):
        artifacts.read_masks(path, chelsea)


def test_ranking_round_trip_with_mask_png(tmp_path, chelsea, segments):
    ranking = artifacts.Ranking("cat", {0: 21.5, 1: 18.25}, (0,), segments[0].mask, {})
    path = tmp_path / "cat.rank.json"
    png = artifacts.write_ranking(path, chelsea, ranking, {"clip": "tiny/clip-l14"}, {"select": "best"})
    read = artifacts.read_ranking(path, chelsea)
    assert read.chosen == (0,)
    assert read.scores == {0: 21.5, 1: 18.25}
    assert read.phrase == "cat"
    assert np.array_equal(read.mask, segments[0].mask)
    with Image.open(png) as image:
        assert image.size == (451, 300)
        assert np.array_equal(np.asarray(image.convert("L")) > 127, segments[0].mask)


def test_ranking_for_another_image_rejected(tmp_path, chelsea, segments, other_image):
    path = tmp_path / "cat.rank.json"
    artifacts.write_ranking(path, chelsea, artifacts.Ranking("cat", {0: 1.0}, (0,), segments[0].mask, {}), {}, {})
    with pytest.raises(StageFileError, match="made for another image"):
        artifacts.read_ranking(path, other_image)


def test_inversion_round_trip_and_rejection(tmp_path, chelsea, other_image):
    latents = torch.randn(5, 4, 8, 5)
    timesteps = torch.tensor([0, 250, 500, 750])
    path = tmp_path / "cat.inv.safetensors"
    artifacts.write_inversion(path, chelsea, latents, timesteps, {"unet": "tiny/sd14"}, {"num_steps": 4})
    read, read_timesteps, record = artifacts.read_inversion(path, chelsea)
    assert torch.equal(read, latents)
    assert torch.equal(read_timesteps, timesteps)
    assert record["models"] == {"unet": "tiny/sd14"}
    assert record["settings"] == {"num_steps": 4}
    with pytest.raises(StageFileError, match="made for another image"):
        artifacts.read_inversion(path, other_image)


def test_corrupt_inversion_file(tmp_path, chelsea):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(StageFileError, match="not a readable inversion file"):
        artifacts.read_inversion(path, chelsea)


def test_model_mismatch_names_flags(tmp_path):
    with pytest.raises(StageFileError, match="SAM model `tiny/sam-vit-b`") as raised:
        artifacts.check_models({"sam": "tiny/sam-vit-b"}, {"sam": "sam_vit_h"}, tmp_path / "m.json")
    assert "`samedit segment`" in str(raised.value)
    assert "--sam-model and --models" in str(raised.value)


# Image identity: the decoded pixels and the size, not the file's bytes ------------------------


def save_copy(path, pixels, **options):
    Image.fromarray(pixels).save(path, format="PNG", **options)
    return load_image(path)


def test_reencoded_image_matches_stage_file(tmp_path, chelsea, segments):
    path = tmp_path / "cat.masks.json"
    artifacts.write_masks(path, chelsea, segments, {}, {})
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "re-saved by another program")
    copy = save_copy(tmp_path / "copy.png", np.asarray(chelsea.image), compress_level=1, pnginfo=info)
    assert copy.sha256 != chelsea.sha256  # other file bytes
    read, _ = artifacts.read_masks(path, copy)
    assert len(read) == len(segments)


def test_changed_pixel_rejected(tmp_path, chelsea, segments):
    path = tmp_path / "cat.masks.json"
    artifacts.write_masks(path, chelsea, segments, {}, {})
    pixels = np.array(chelsea.image)
    pixels[150, 200, 1] ^= 1  # one channel of one pixel, off by one
    with pytest.raises(StageFileError, match="the pixels differ"):
        artifacts.read_masks(path, save_copy(tmp_path / "changed.png", pixels))


def test_pixel_hash_covers_size():
    row = Image.fromarray(np.arange(24, dtype=np.uint8).reshape(1, 8, 3))
    column = Image.fromarray(np.arange(24, dtype=np.uint8).reshape(8, 1, 3))
    assert row.tobytes() == column.tobytes()
    assert hash_pixels(row) != hash_pixels(column)


def test_version_1_file_checked_by_file_bytes(tmp_path, chelsea, segments):
    path = tmp_path / "cat.masks.json"
    artifacts.write_masks(path, chelsea, segments, {}, {})
    record = json.loads(path.read_text())
    record["version"] = 1
    record["image"] = {"sha256": chelsea.sha256, "width": 451, "height": 300}
    path.write_text(json.dumps(record))
    assert len(artifacts.read_masks(path, chelsea)[0]) == len(segments)
    copy = save_copy(tmp_path / "copy.png", np.asarray(chelsea.image), compress_level=1)
    with pytest.raises(StageFileError, match="the file bytes differ"):
        artifacts.read_masks(path, copy)
