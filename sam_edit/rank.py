"""CLIP ranking of SAM segments against the phrase that names the region to edit.

Segments are scored as Edit Everything scores them. The image is cropped to the segment's
tight box, and pixels outside the mask are painted a fill colour (white). The crop is padded to
a square of the same colour. The score is 100 x the cosine similarity between the crop's CLIP
image embedding and the phrase's CLIP text embedding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from sam_edit.errors import SameditError, SegmentationError
from sam_edit.segment import Segment, mask_to_bbox

logger = logging.getLogger(__name__)

SELECT_MODES = ("best", "all-above")


@dataclass(frozen=True)
class RankConfig:
    """Settings that choose the segments to edit from their CLIP scores."""

    select: str = "best"  # "best": the top-scoring segment; "all-above": each one >= threshold
    threshold: float | None = None  # for "all-above": CLIP score (cosine x 100) to reach
    pick: tuple[int, ...] = ()  # user-chosen segment ids, which override the ranking
    # Colour outside the mask inside the crop; Edit Everything paints it white.
    fill: tuple[int, int, int] = (255, 255, 255)

    def __post_init__(self) -> None:
        if self.select not in SELECT_MODES:
            raise SameditError(
                f"invalid `--select` {self.select!r}; use one of {', '.join(SELECT_MODES)}"
            )


def score_segments(
    clip_model,
    processor,
    image: Image.Image,
    segments: list[Segment],
    phrase: str,
    *,
    fill: tuple[int, int, int] = (255, 255, 255),
    batch_size: int = 32,
) -> np.ndarray:
    """Score every segment against `phrase`: [N] float32, 100 x cosine(crop, text) in [-100, 100].

    `clip_model` is a `transformers.CLIPModel` and `processor` its `CLIPProcessor`. The crops
    go through the vision tower `batch_size` at a time, in the model's device and dtype.
    """
    if not phrase or not phrase.strip():
        raise SameditError(
            "the phrase to rank segments against is empty; name the region to edit, "
            "e.g. `--from cat`"
        )
    pixels = np.asarray(image.convert("RGB"))  # [H, W, 3] uint8
    if segments and segments[0].mask.shape != pixels.shape[:2]:
        mask_height, mask_width = segments[0].mask.shape
        raise SameditError(
            f"the segments are {mask_width}x{mask_height} but the image is "
            f"{image.width}x{image.height}; segment this image again"
        )
    if not segments:
        return np.zeros(0, dtype=np.float32)

    text_embeds = _embed_text(clip_model, processor, phrase)  # [1, D]
    image_embeds = []
    for start in range(0, len(segments), batch_size):
        batch = segments[start : start + batch_size]
        crops = [crop_segment(pixels, segment, fill) for segment in batch]
        image_embeds.append(_embed_images(clip_model, processor, crops))
    image_embeds = torch.cat(image_embeds)  # [N, D]

    scores = 100.0 * (image_embeds @ text_embeds.T)[:, 0]  # [N]
    return scores.numpy().astype(np.float32)


def crop_segment(pixels: np.ndarray, segment: Segment, fill: tuple[int, int, int]) -> Image.Image:
    """Cut `segment` out of `pixels` ([H, W, 3] uint8) as a square crop for CLIP.

    Pixels in the tight box but outside the mask become `fill`; the crop is centred in a
    square of `fill`. The box is measured from the mask, not read from `segment.bbox`, so
    boxes in segment-anything's convention (one pixel smaller) crop the same.
    """
    x, y, width, height = mask_to_bbox(segment.mask)
    if width == 0:
        raise SegmentationError(f"segment {segment.id} has an empty mask; segment the image again")
    crop = pixels[y : y + height, x : x + width].copy()  # [h, w, 3]
    crop[~segment.mask[y : y + height, x : x + width]] = fill

    side = max(width, height)
    square = np.empty((side, side, 3), dtype=np.uint8)
    square[:] = fill
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = crop
    return Image.fromarray(square)


def _model_device_dtype(clip_model) -> tuple[torch.device, torch.dtype]:
    parameter = next(clip_model.parameters())
    return parameter.device, parameter.dtype


def _embed_text(clip_model, processor, phrase: str) -> torch.Tensor:
    """Return the L2-normalised CLIP text embedding of `phrase`: [1, D] float32 on the CPU."""
    tokenizer = processor.tokenizer
    max_length = tokenizer.model_max_length
    input_ids = tokenizer(phrase, verbose=False)["input_ids"]  # with start and end tokens
    if len(input_ids) > max_length:
        cut = tokenizer.decode(input_ids[max_length - 1 : -1])
        logger.warning(
            "the phrase has %d CLIP tokens, more than %d, so this end is cut: %r",
            len(input_ids),
            max_length,
            cut,
        )

    inputs = tokenizer(
        [phrase], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    device, _ = _model_device_dtype(clip_model)
    with torch.no_grad():
        outputs = clip_model.text_model(
            input_ids=inputs["input_ids"].to(device),
            attention_mask=inputs["attention_mask"].to(device),
        )
        text_embeds = clip_model.text_projection(outputs.pooler_output)  # [1, D]
    return torch.nn.functional.normalize(text_embeds.float().cpu(), dim=-1)


def _embed_images(clip_model, processor, crops: list[Image.Image]) -> torch.Tensor:
    """Return L2-normalised CLIP image embeddings of `crops`: [B, D] float32 on the CPU."""
    inputs = processor.image_processor(images=crops, return_tensors="pt")
    pixel_values = inputs["pixel_values"]  # [B, 3, S, S], S = the CLIP input size
    device, dtype = _model_device_dtype(clip_model)
    with torch.no_grad():
        outputs = clip_model.vision_model(pixel_values=pixel_values.to(device, dtype))
        image_embeds = clip_model.visual_projection(outputs.pooler_output)  # [B, D]
    return torch.nn.functional.normalize(image_embeds.float().cpu(), dim=-1)


def choose_segments(scores: np.ndarray, segments: list[Segment], config: RankConfig) -> list[int]:
    """Choose the segment ids to edit, by `config.pick` if given, else by score.

    "best" returns the top-scoring id; "all-above" returns every id scoring at or above
    `config.threshold`, best first. Raises `SegmentationError` when nothing can be chosen.
    """
    if len(scores) != len(segments):
        raise ValueError(f"got {len(scores)} scores for {len(segments)} segments")
    if not segments:
        raise SegmentationError(
            "there are no segments to choose from; give the edit region with `--mask PNG`"
        )

    if config.pick:
        _check_ids(config.pick, len(segments))
        return list(dict.fromkeys(int(index) for index in config.pick))

    best = int(np.argmax(scores))
    if config.select == "best":
        return [best]

    if config.threshold is None:
        raise SegmentationError(
            "missing threshold for `--select all-above`; give one, e.g. `--select all-above 25`"
        )
    order = np.argsort(-scores, kind="stable")
    chosen = [int(index) for index in order if scores[index] >= config.threshold]
    if not chosen:
        raise SegmentationError(
            f"no segment scores at or above {config.threshold:g} "
            f"(best: {scores[best]:.2f}, segment {best}); lower the `--select all-above` "
            "threshold, choose segments with `--pick ID`, or give the edit region with `--mask PNG`"
        )
    return chosen


def _check_ids(ids, count: int) -> None:
    invalid = [index for index in ids if not 0 <= int(index) < count]
    if invalid:
        raise SegmentationError(
            f"`--pick` {', '.join(str(index) for index in invalid)}: no such segment; "
            f"valid ids are 0 to {count - 1}"
        )


def edit_mask(segments: list[Segment], chosen: list[int]) -> np.ndarray:
    """Return the union of the chosen segments' masks: [H, W] bool."""
    if not segments:
        raise SegmentationError(
            "there are no segments to build an edit mask from; give `--mask PNG`"
        )
    _check_ids(chosen, len(segments))
    mask = np.zeros(segments[0].mask.shape, dtype=bool)
    for index in chosen:
        mask |= segments[index].mask
    return mask


PREVIEW_CHOSEN = (0, 255, 0)  # outline and tint of chosen segments
PREVIEW_OTHER = (255, 200, 0)  # outline of the other top-scoring segments


def draw_preview(
    image: Image.Image,
    segments: list[Segment],
    scores: np.ndarray,
    chosen: list[int],
    top_k: int = 5,
) -> Image.Image:
    """Draw the `top_k` best-scoring segments and every chosen one over `image`.

    Each drawn segment gets an outline and a "#id score" label at its box's corner. Chosen
    segments get a thicker green outline and a green tint. Returns an RGB image of `image`'s
    size.
    """
    if len(scores) != len(segments):
        raise ValueError(f"got {len(scores)} scores for {len(segments)} segments")
    _check_ids(chosen, len(segments))
    preview = np.asarray(image.convert("RGB")).copy()  # [H, W, 3] uint8
    order = [int(index) for index in np.argsort(-np.asarray(scores), kind="stable")]
    drawn_ids = list(dict.fromkeys(order[:top_k] + list(chosen)))

    for index in chosen:
        tinted = preview[segments[index].mask].astype(np.float32)
        tinted = 0.65 * tinted + 0.35 * np.array(PREVIEW_CHOSEN)
        preview[segments[index].mask] = tinted.astype(np.uint8)
    for index in drawn_ids:
        is_chosen = index in chosen
        outline = _mask_outline(segments[index].mask, width=3 if is_chosen else 1)
        preview[outline] = PREVIEW_CHOSEN if is_chosen else PREVIEW_OTHER

    result = Image.fromarray(preview)
    _draw_labels(result, segments, scores, drawn_ids, chosen)
    return result


def _draw_labels(
    preview: Image.Image, segments, scores, drawn_ids: list[int], chosen: list[int]
) -> None:
    """Write "#id score" at each drawn segment's box corner, below any earlier label there."""
    draw = ImageDraw.Draw(preview)
    font = _label_font(min(preview.size) // 32)
    label_boxes: list[tuple[float, float, float, float]] = []
    for index in drawn_ids:
        x, y = segments[index].bbox[0] + 2, segments[index].bbox[1] + 2
        label = f"#{index} {scores[index]:.1f}"
        box = draw.textbbox((x, y), label, font=font)
        while any(_overlaps(box, other) for other in label_boxes) and box[3] < preview.height:
            y += box[3] - box[1] + 2
            box = draw.textbbox((x, y), label, font=font)
        label_boxes.append(box)
        draw.rectangle(box, fill=(0, 0, 0))
        colour = PREVIEW_CHOSEN if index in chosen else PREVIEW_OTHER
        draw.text((x, y), label, font=font, fill=colour)


def _label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=max(size, 10))
    except (TypeError, ImportError, OSError):  # Pillow before 10.1, or without FreeType
        return ImageFont.load_default()


def _overlaps(first, second) -> bool:
    """Return whether two XYXY boxes overlap."""
    overlap_x = first[0] < second[2] and second[0] < first[2]
    overlap_y = first[1] < second[3] and second[1] < first[3]
    return overlap_x and overlap_y


def _mask_outline(mask: np.ndarray, width: int) -> np.ndarray:
    """Return the pixels of `mask` within `width` pixels of its edge: [H, W] bool."""
    mask_image = Image.fromarray(mask.astype(np.uint8) * 255)
    eroded = np.asarray(mask_image.filter(ImageFilter.MinFilter(2 * width + 1))) > 0
    return mask & ~eroded
