"""Tests for SAM building and loading, automatic segments, RLE and the colour composite."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from segment_anything import sam_model_registry
from segment_anything.utils import amg
from skimage import data

from sam_edit.errors import ImageError, SameditError, SegmentationError, StageFileError
from sam_edit.models.configs import SAM_CONFIGS
from sam_edit.models.sam import build_sam, load_sam, save_sam
from sam_edit.segment import (
    TINY_SEGMENT_CONFIG,
    SegmentConfig,
    colour_composite,
    generate_segments,
    mask_to_rle,
    rle_to_mask,
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
