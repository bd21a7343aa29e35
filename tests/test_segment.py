"""Tests for SAM building and loading, automatic segments, RLE and the colour composite."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
from segment_anything.utils import amg
from skimage import data

from sam_edit import artifacts
from sam_edit.errors import ImageError, SameditError, SegmentationError, StageFileError
from sam_edit.images import load_image
from sam_edit.models.configs import SAM_CONFIGS
from sam_edit.models.sam import build_sam, load_sam, save_sam
from sam_edit.segment import (
    TINY_SEGMENT_CONFIG,
    SegmentConfig,
    colour_composite,
    generate_segments,
    mask_to_rle,
    resize_mask,
    rle_to_mask,
    sam_image_size,
    segment_colours,
)


def build_tiny_sam():
    torch.manual_seed(0)
    return build_sam(SAM_CONFIGS["tiny"])


@pytest.fixture(scope="module")
def tiny_sam():
    return build_tiny_sam()


@pytest.fixture(scope="module")
def chelsea_segments(tiny_sam):
    return generate_segments(tiny_sam, data.chelsea(), TINY_SEGMENT_CONFIG)


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, columns = np.nonzero(mask)
    x0, y0 = columns.min(), rows.min()
    return (int(x0), int(y0), int(columns.max() - x0 + 1), int(rows.max() - y0 + 1))


# SAM checkpoints


def test_tiny_sam_save_load_round_trip(tmp_path):
    sam = build_tiny_sam()
    path = save_sam(sam, tmp_path / "sam_tiny.pth")
    loaded = load_sam(SAM_CONFIGS["tiny"], path)

    expected = sam.state_dict()
    actual = loaded.state_dict()
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key
    assert not loaded.training
    for name, tensor in [*loaded.named_parameters(), *loaded.named_buffers()]:
        assert tensor.device.type == "cpu", name
    assert torch.equal(loaded.pixel_mean, sam.pixel_mean)
    assert torch.equal(loaded.pixel_std, sam.pixel_std)


def test_loaded_tiny_sam_segments_like_built(tmp_path, tiny_sam):
    loaded = load_sam(SAM_CONFIGS["tiny"], save_sam(tiny_sam, tmp_path / "sam_tiny.pth"))
    image = data.chelsea()[100:228, 200:392]

    built_segments = generate_segments(tiny_sam, image, TINY_SEGMENT_CONFIG)
    loaded_segments = generate_segments(loaded, image, TINY_SEGMENT_CONFIG)

    assert len(loaded_segments) == len(built_segments)
    for built, loaded_segment in zip(built_segments, loaded_segments):
        np.testing.assert_array_equal(loaded_segment.mask, built.mask)


def test_checkpoint_is_plain_state_dict(tmp_path):
    path = save_sam(build_tiny_sam(), tmp_path / "sam_tiny.pth")

    state_dict = torch.load(path, map_location="cpu", weights_only=True)

    assert isinstance(state_dict, dict)
    assert all(isinstance(value, torch.Tensor) for value in state_dict.values())
    assert [p.name for p in tmp_path.iterdir()] == ["sam_tiny.pth"]  # no temporary file left


def test_tiny_sam_same_seed_same_weights():
    first = build_tiny_sam().state_dict()
    second = build_tiny_sam().state_dict()

    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_vit_b_matches_segment_anything():
    sam = build_sam(SAM_CONFIGS["vit_b"])
    reference = sam_model_registry["vit_b"]()

    count = sum(parameter.numel() for parameter in sam.parameters())
    assert count == sum(parameter.numel() for parameter in reference.parameters())
    assert 90_000_000 < count < 95_000_000  # the SAM paper quotes 91M for ViT-B
    shapes = {key: value.shape for key, value in sam.state_dict().items()}
    assert shapes == {key: value.shape for key, value in reference.state_dict().items()}
    assert not sam.training


def test_load_sam_truncated_file_raises(tmp_path):
    path = save_sam(build_tiny_sam(), tmp_path / "sam_tiny.pth")
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])

    with pytest.raises(SameditError, match="sam_tiny.pth"):
        load_sam(SAM_CONFIGS["tiny"], path)


def test_load_sam_missing_file_raises(tmp_path):
    with pytest.raises(SameditError, match="missing.pth"):
        load_sam(SAM_CONFIGS["tiny"], tmp_path / "missing.pth")


def test_load_sam_wrong_architecture_raises(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"image_encoder.unexpected": torch.zeros(1)}, path)

    with pytest.raises(SameditError, match="other.pth"):
        load_sam(SAM_CONFIGS["tiny"], path)


# RLE


def drawn_mask(height: int = 37, width: int = 53) -> np.ndarray:
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    draw.ellipse((5, 4, 30, 25), fill=255)
    draw.rectangle((35, 10, 50, 36), fill=255)
    draw.point((0, 0), fill=255)  # a set first pixel makes the counts start with 0
    return np.asarray(image) > 0


def test_rle_round_trip_drawn_mask():
    mask = drawn_mask()

    rle = mask_to_rle(mask)

    assert rle["size"] == [37, 53]
    assert rle["counts"][0] == 0
    assert sum(rle["counts"]) == mask.size
    assert amg.area_from_rle(rle) == mask.sum()
    np.testing.assert_array_equal(rle_to_mask(rle), mask)


@pytest.mark.parametrize("value", [False, True])
def test_rle_round_trip_flat_mask(value):
    mask = np.full((4, 6), value)

    rle = mask_to_rle(mask)

    assert rle["counts"] == ([0, 24] if value else [24])
    np.testing.assert_array_equal(rle_to_mask(rle), mask)


def mask_from_counts(counts: list[int], height: int, width: int) -> np.ndarray:
    """Expand column-major runs that start with background."""
    values = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    return values.reshape(width, height).T


def test_coco_string_decodes_hand_example():
    # 10x10 mask, column-major runs [5, 40, 50, 5]. Each count is written as 5-bit groups,
    # low first, as chr(48 + group). Bit 0x20 marks "more groups" and bit 0x10 of the last
    # group is the sign. 5 -> "5". 40 = 8 + 1*32 -> "X1". 50 = 18 + 1*32 -> "b1", and "1" must
    # follow because 18 has bit 0x10. The fourth count is stored as 5 - 40 = -35, which is
    # 29 + (-2)*32 -> chr(48 + 29 + 32) = "m", then -2 = 30 - 32 -> chr(48 + 30) = "N".
    rle = {"size": [10, 10], "counts": "5X1b1mN"}

    np.testing.assert_array_equal(rle_to_mask(rle), mask_from_counts([5, 40, 50, 5], 10, 10))


def test_coco_string_decodes_small_example():
    # 2x3 mask; column-major pixels F T | T T | F F give runs [1, 3, 2] -> "132".
    expected = np.array([[False, True, False], [True, True, False]])

    np.testing.assert_array_equal(rle_to_mask({"size": [2, 3], "counts": "132"}), expected)
    np.testing.assert_array_equal(rle_to_mask({"size": [2, 3], "counts": b"132"}), expected)


def encode_coco_counts(counts: list[int]) -> str:
    """Encode run lengths as pycocotools' `rleToString` does."""
    characters = []
    for index, count in enumerate(counts):
        value = count - counts[index - 2] if index > 2 else count
        more = True
        while more:
            group = value & 0x1F
            value >>= 5
            more = value != -1 if group & 0x10 else value != 0
            if more:
                group |= 0x20
            characters.append(chr(group + 48))
    return "".join(characters)


def test_coco_string_decodes_drawn_mask():
    mask = drawn_mask()
    counts = mask_to_rle(mask)["counts"]

    rle = {"size": [37, 53], "counts": encode_coco_counts(counts)}

    np.testing.assert_array_equal(rle_to_mask(rle), mask)


@pytest.mark.parametrize(
    "rle",
    [
        {"size": [2, 3], "counts": [1, 2]},  # sums to 3, not 6
        {"size": [2, 3], "counts": [7, -1]},
        {"size": [2, 3], "counts": "1X"},  # "X" marks another group, but none follows
        {"counts": [6]},
    ],
)
def test_rle_to_mask_invalid_raises(rle):
    with pytest.raises(StageFileError, match="RLE"):
        rle_to_mask(rle)


# automatic segments


def test_tiny_sam_segments_chelsea(chelsea_segments):
    height, width = data.chelsea().shape[:2]

    assert len(chelsea_segments) >= 2
    assert [segment.id for segment in chelsea_segments] == list(range(len(chelsea_segments)))
    areas = [segment.area for segment in chelsea_segments]
    assert areas == sorted(areas, reverse=True)
    for segment in chelsea_segments:
        assert segment.mask.shape == (height, width)
        assert segment.mask.dtype == bool
        assert segment.area == segment.mask.sum() > 0
        assert segment.bbox == tight_box(segment.mask)
        assert isinstance(segment.predicted_iou, float)
        assert isinstance(segment.stability_score, float)


@pytest.mark.parametrize("name", ["coffee", "astronaut"])
def test_tiny_sam_segments_other_photos(tiny_sam, name):
    segments = generate_segments(tiny_sam, getattr(data, name)(), TINY_SEGMENT_CONFIG)

    assert len(segments) >= 2


def test_generate_segments_deterministic(chelsea_segments):
    again = generate_segments(build_tiny_sam(), data.chelsea(), TINY_SEGMENT_CONFIG)

    assert len(again) == len(chelsea_segments)
    for first, second in zip(chelsea_segments, again):
        np.testing.assert_array_equal(first.mask, second.mask)
        assert first.bbox == second.bbox
        assert first.predicted_iou == second.predicted_iou
        assert first.stability_score == second.stability_score


def test_black_image_raises_with_mask_hint(tiny_sam):
    black = np.zeros((64, 96, 3), dtype=np.uint8)

    with pytest.raises(SegmentationError, match="--mask"):
        generate_segments(tiny_sam, black, TINY_SEGMENT_CONFIG)


def test_strict_thresholds_raise_hint(tiny_sam):
    # The random tiny SAM's masks all have stability score 0, below the default 0.95.
    config = SegmentConfig(points_per_side=4)

    with pytest.raises(SegmentationError, match="stability_score_thresh"):
        generate_segments(tiny_sam, data.chelsea(), config)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((8, 8), dtype=np.uint8),
        np.zeros((8, 8, 4), dtype=np.uint8),
        np.zeros((8, 8, 3), dtype=np.float32),
    ],
)
def test_generate_segments_rejects_non_rgb(tiny_sam, image):
    with pytest.raises(ImageError):
        generate_segments(tiny_sam, image, TINY_SEGMENT_CONFIG)


def test_generate_segments_rejects_zero_points(tiny_sam):
    with pytest.raises(SameditError, match="points_per_side"):
        generate_segments(tiny_sam, data.chelsea(), SegmentConfig(points_per_side=0))


# large and narrow images


def resized_chelsea(size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(data.chelsea()).resize(size, Image.Resampling.BILINEAR))


@pytest.mark.parametrize(
    "size, max_side, expected",
    [
        ((4000, 3000), 1024, (1024, 768)),
        ((3000, 4000), 1024, (768, 1024)),
        ((451, 300), 1024, (451, 300)),
        ((1024, 10), 1024, (1024, 10)),
        ((3000, 20), 1024, (1024, 7)),
        ((900, 600), 150, (150, 100)),
    ],
)
def test_sam_image_size_bounds_longer_side(size, max_side, expected):
    assert sam_image_size(size, max_side) == expected


def test_default_max_side_is_sam_input():
    assert SegmentConfig().max_side == 1024
    assert TINY_SEGMENT_CONFIG.max_side == 1024


@pytest.fixture(scope="module")
def large_image() -> np.ndarray:
    return resized_chelsea((900, 600))


@pytest.fixture(scope="module")
def bounded_config():
    return dataclasses.replace(TINY_SEGMENT_CONFIG, max_side=150)


def test_large_image_segmented_as_bounded_copy(tiny_sam, large_image, bounded_config, monkeypatch):
    seen_shapes = []
    original = SamAutomaticMaskGenerator.generate

    def spy(generator, image):
        seen_shapes.append(image.shape)
        return original(generator, image)

    monkeypatch.setattr(SamAutomaticMaskGenerator, "generate", spy)
    segments = generate_segments(tiny_sam, large_image, bounded_config)

    assert seen_shapes == [(100, 150, 3)]
    assert len(segments) >= 2
    areas = [segment.area for segment in segments]
    assert areas == sorted(areas, reverse=True)
    for segment in segments:
        assert segment.mask.shape == (600, 900)
        assert segment.area == segment.mask.sum() > 0
        assert segment.bbox == tight_box(segment.mask)


def test_large_image_masks_are_copy_masks_resized(tiny_sam, large_image, bounded_config):
    copy = np.asarray(Image.fromarray(large_image).resize((150, 100), Image.Resampling.BILINEAR))

    segments = generate_segments(tiny_sam, large_image, bounded_config)
    copy_segments = generate_segments(tiny_sam, copy, bounded_config)

    resized = sorted(resize_mask(segment.mask, (900, 600)).tobytes() for segment in copy_segments)
    assert sorted(segment.mask.tobytes() for segment in segments) == resized


def test_large_image_masks_file_round_trip(tiny_sam, large_image, bounded_config, tmp_path):
    image_path = tmp_path / "large.png"
    Image.fromarray(large_image).save(image_path)
    loaded = load_image(image_path)
    segments = generate_segments(tiny_sam, large_image, bounded_config)
    masks_path = tmp_path / "large.masks.json"

    artifacts.write_masks(masks_path, loaded, segments, {"sam": "tiny"}, {})
    read_back, _ = artifacts.read_masks(masks_path, loaded)

    assert len(read_back) == len(segments)
    for written, read in zip(segments, read_back):
        np.testing.assert_array_equal(read.mask, written.mask)
    assert colour_composite(read_back).size == (900, 600)


@pytest.mark.parametrize("size", [(3000, 20), (20, 3000), (260, 2)])
def test_narrow_image_rejected_for_tiny_sam(tiny_sam, size):
    # The tiny SAM resizes its input to 64 px, so the longer side may be about 128 times the shorter.
    with pytest.raises(ImageError) as raised:
        generate_segments(tiny_sam, resized_chelsea(size), TINY_SEGMENT_CONFIG)

    message = str(raised.value)
    assert "\n" not in message
    assert f"{size[0]}x{size[1]}" in message
    assert "at most about 128 times the shorter" in message


def test_narrowest_image_accepted_for_tiny_sam(tiny_sam):
    segments = generate_segments(tiny_sam, resized_chelsea((256, 2)), TINY_SEGMENT_CONFIG)

    assert segments
    assert segments[0].mask.shape == (2, 256)


@pytest.mark.parametrize(
    "size, message",
    [
        ((1, 1), "each side must be at least 2 px"),
        ((300, 1), "each side must be at least 2 px"),
        ((4000, 3), "scaled to a longer side of 1024 px it is 1024x1"),
    ],
)
def test_one_pixel_side_rejected(tiny_sam, size, message):
    image = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    with pytest.raises(ImageError, match=message):
        generate_segments(tiny_sam, image, TINY_SEGMENT_CONFIG)


# colour composite


def test_segment_colours_distinct_and_not_black():
    colours = segment_colours(200, seed=3)

    assert colours.shape == (200, 3)
    assert len({tuple(colour) for colour in colours}) == 200
    assert not (colours == 0).all(axis=1).any()


def test_colour_composite_one_colour_per_segment(chelsea_segments):
    composite = colour_composite(chelsea_segments, seed=0)
    pixels = np.asarray(composite)
    colours = segment_colours(len(chelsea_segments), seed=0)

    assert composite.mode == "RGB"
    assert composite.size == (chelsea_segments[0].mask.shape[1], chelsea_segments[0].mask.shape[0])
    covered = np.logical_or.reduce([segment.mask for segment in chelsea_segments])
    assert (pixels[~covered] == 0).all()
    # Every covered pixel has the colour of one segment, and that segment covers it.
    for index, segment in enumerate(chelsea_segments):
        painted = (pixels == colours[index]).all(axis=-1)
        assert not (painted & ~segment.mask).any()
    painted_any = np.logical_or.reduce([(pixels == colour).all(axis=-1) for colour in colours])
    np.testing.assert_array_equal(painted_any, covered)
    # The smallest segment is painted last, so all of it shows.
    smallest = min(range(len(chelsea_segments)), key=lambda i: chelsea_segments[i].area)
    assert (pixels[chelsea_segments[smallest].mask] == colours[smallest]).all()


def test_colour_composite_seeded(chelsea_segments):
    first = np.asarray(colour_composite(chelsea_segments, seed=0))
    again = np.asarray(colour_composite(chelsea_segments, seed=0))
    other = np.asarray(colour_composite(chelsea_segments, seed=1))

    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_colour_composite_empty_raises():
    with pytest.raises(SegmentationError):
        colour_composite([])
