"""Tests for CLIP ranking of segments, segment choice, the edit mask and the preview."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from sam_edit.errors import SameditError, SegmentationError
from sam_edit.models.configs import TINY_CLIP_VISION, TINY_TEXT_ENCODER
from sam_edit.models.vocab import write_clip_tokenizer
from sam_edit.rank import (
    RankConfig,
    choose_segments,
    draw_preview,
    edit_mask,
    score_segments,
)
from sam_edit.segment import Segment, mask_to_bbox

HEIGHT, WIDTH = 48, 64


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A seeded tiny CLIP with the real CLIP vocabulary, and its processor."""
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=TINY_TEXT_ENCODER, vision_config=TINY_CLIP_VISION, projection_dim=32
    )
    model = CLIPModel(config).eval()
    folder = write_clip_tokenizer(tmp_path_factory.mktemp("clip_tokenizer"))
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8))


def make_segment(index: int, box: tuple[int, int, int, int], hole: bool = False) -> Segment:
    x0, y0, x1, y1 = box
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[y0:y1, x0:x1] = True
    if hole:
        mask[(y0 + y1) // 2, (x0 + x1) // 2] = False
    return Segment(
        id=index,
        mask=mask,
        bbox=mask_to_bbox(mask),
        area=int(mask.sum()),
        predicted_iou=0.9,
        stability_score=0.95,
    )


@pytest.fixture(scope="module")
def segments():
    boxes = [(0, 0, 40, 30), (20, 10, 64, 48), (5, 30, 25, 48), (50, 2, 60, 9)]
    holes = [True, False, True, False]
    return [
        make_segment(index, box, hole=hole) for index, (box, hole) in enumerate(zip(boxes, holes))
    ]


@pytest.fixture(scope="module")
def scores(clip, image, segments):
    model, processor = clip
    return score_segments(model, processor, image, segments, "a photo of a cat")


def reference_score(model, processor, image: Image.Image, segment: Segment, phrase: str) -> float:
    """Score one segment through `CLIPModel.forward`, building the crop by hand."""
    pixels = np.asarray(image)
    rows, columns = np.nonzero(segment.mask)
    top, bottom, left, right = rows.min(), rows.max() + 1, columns.min(), columns.max() + 1
    crop = np.where(segment.mask[top:bottom, left:right, None], pixels[top:bottom, left:right], 255)
    side = max(bottom - top, right - left)
    square = np.full((side, side, 3), 255, dtype=np.uint8)
    offset_y, offset_x = (side - (bottom - top)) // 2, (side - (right - left)) // 2
    square[offset_y : offset_y + bottom - top, offset_x : offset_x + right - left] = crop

    inputs = processor(
        text=[phrase], images=[Image.fromarray(square)], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        outputs = model(**inputs)
        # logits_per_image = exp(logit_scale) * cosine(image_embeds, text_embeds)
        return float(outputs.logits_per_image[0, 0] / model.logit_scale.exp() * 100)


# scores


def test_scores_shape_and_range(scores, segments):
    assert scores.shape == (len(segments),)
    assert scores.dtype == np.float32
    assert np.all(np.abs(scores) <= 100)


def test_scores_deterministic(clip, image, segments, scores):
    model, processor = clip

    again = score_segments(model, processor, image, segments, "a photo of a cat")

    np.testing.assert_array_equal(again, scores)


def test_scores_independent_of_batch_size(clip, image, segments, scores):
    model, processor = clip

    one_at_a_time = score_segments(
        model, processor, image, segments, "a photo of a cat", batch_size=1
    )

    np.testing.assert_allclose(one_at_a_time, scores, atol=1e-4)


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_score_matches_model_forward(clip, image, segments, scores, index):
    model, processor = clip

    expected = reference_score(model, processor, image, segments[index], "a photo of a cat")

    assert scores[index] == pytest.approx(expected, abs=1e-3)


def test_scores_depend_on_phrase(clip, image, segments, scores):
    model, processor = clip

    other = score_segments(model, processor, image, segments, "a red bicycle")

    assert not np.allclose(other, scores)


def test_scores_depend_on_fill(clip, image, segments, scores):
    model, processor = clip

    black = score_segments(model, processor, image, segments, "a photo of a cat", fill=(0, 0, 0))

    # Segments 0 and 2 have a hole, so the fill shows inside their crops.
    assert black[0] != pytest.approx(scores[0], abs=1e-4)
    assert black[2] != pytest.approx(scores[2], abs=1e-4)


@pytest.mark.parametrize("phrase", ["", "   "])
def test_empty_phrase_raises(clip, image, segments, phrase):
    model, processor = clip

    with pytest.raises(SameditError, match="empty"):
        score_segments(model, processor, image, segments, phrase)


def test_image_size_mismatch_raises(clip, segments):
    model, processor = clip

    with pytest.raises(SameditError, match="64x48"):
        score_segments(model, processor, Image.new("RGB", (32, 32)), segments, "cat")


# choice


def test_best_picks_argmax(segments):
    scores = np.array([10.0, 30.0, 20.0, 5.0], dtype=np.float32)

    assert choose_segments(scores, segments, RankConfig()) == [1]


def test_best_picks_argmax_of_clip_scores(scores, segments):
    assert choose_segments(scores, segments, RankConfig()) == [int(np.argmax(scores))]


def test_all_above_includes_threshold(segments):
    scores = np.array([10.0, 30.0, 20.0, 5.0], dtype=np.float32)

    chosen = choose_segments(scores, segments, RankConfig(select="all-above", threshold=10.0))

    assert chosen == [1, 2, 0]  # best first; 10.0 is at the threshold


def test_all_above_without_threshold_raises(segments):
    scores = np.zeros(len(segments), dtype=np.float32)

    with pytest.raises(SegmentationError, match="threshold"):
        choose_segments(scores, segments, RankConfig(select="all-above"))


def test_all_above_none_raises(segments):
    scores = np.array([10.0, 30.0, 20.0, 5.0], dtype=np.float32)

    with pytest.raises(SegmentationError, match="best: 30.00") as error:
        choose_segments(scores, segments, RankConfig(select="all-above", threshold=31.0))
    assert "--pick" in str(error.value)
    assert "--mask" in str(error.value)


def test_pick_overrides_ranking(segments):
    scores = np.array([10.0, 30.0, 20.0, 5.0], dtype=np.float32)

    assert choose_segments(scores, segments, RankConfig(pick=(3, 0, 3))) == [3, 0]
    config = RankConfig(select="all-above", threshold=100.0, pick=(2,))
    assert choose_segments(scores, segments, config) == [2]


@pytest.mark.parametrize("pick", [(4,), (-1,), (0, 9)])
def test_invalid_pick_raises(segments, pick):
    scores = np.zeros(len(segments), dtype=np.float32)

    with pytest.raises(SegmentationError, match="valid ids are 0 to 3"):
        choose_segments(scores, segments, RankConfig(pick=pick))


def test_unknown_select_raises():
    with pytest.raises(SameditError, match="--select"):
        RankConfig(select="top")


# edit mask and preview


def test_edit_mask_is_union(segments):
    mask = edit_mask(segments, [0, 2])

    assert mask.shape == (HEIGHT, WIDTH)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, segments[0].mask | segments[2].mask)
    assert not edit_mask(segments, []).any()


def test_edit_mask_invalid_id_raises(segments):
    with pytest.raises(SegmentationError, match="no such segment"):
        edit_mask(segments, [7])


def test_preview_has_image_size(image, segments, scores):
    preview = draw_preview(image, segments, scores, chosen=[1], top_k=2)

    assert preview.size == image.size
    assert preview.mode == "RGB"
    assert not np.array_equal(np.asarray(preview), np.asarray(image))


def test_preview_shows_chosen_beyond_top_k(image, segments):
    scores = np.array([10.0, 30.0, 20.0, 5.0], dtype=np.float32)

    preview = np.asarray(draw_preview(image, segments, scores, chosen=[3], top_k=1))

    # Segment 3 is last by score, but chosen: its pixels are tinted or outlined.
    inside = segments[3].mask
    assert not np.array_equal(preview[inside], np.asarray(image)[inside])
    # Segment 2 is neither in the top 1 nor chosen, so pixels only it covers are unchanged.
    only_segment_2 = segments[2].mask & ~segments[0].mask & ~segments[1].mask & ~segments[3].mask
    np.testing.assert_array_equal(preview[only_segment_2], np.asarray(image)[only_segment_2])
