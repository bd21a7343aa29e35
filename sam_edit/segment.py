"""SAM automatic segmentation, mask RLE encoding, and the colour composite for ControlNet."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam
from segment_anything.utils import amg
from segment_anything.utils.transforms import ResizeLongestSide

from sam_edit.errors import ImageError, SameditError, SegmentationError, StageFileError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentConfig:
    """Settings of SAM's automatic segmentation.

    `max_side` is samedit's own. The other fields are `SamAutomaticMaskGenerator` arguments with
    segment-anything 1.0's defaults, and they act on the copy that SAM segments (see `max_side`),
    so pixel counts such as `min_mask_region_area` are counted in that copy.
    """

    points_per_side: int = 32  # a 32x32 grid of point prompts over the image (1,024 points)
    points_per_batch: int = 64  # prompts per decoder pass; memory grows with it (x3 masks x H x W)
    pred_iou_thresh: float = 0.88  # keep masks with predicted IoU above this (<= 0: keep all)
    stability_score_thresh: float = 0.95  # keep masks at least this stable (<= 0: keep all)
    stability_score_offset: float = 1.0  # logit shift used to measure stability
    box_nms_thresh: float = 0.7  # box IoU above which duplicate masks are suppressed
    crop_n_layers: int = 0  # extra passes on image crops; layer i has (2**i)**2 crops
    crop_nms_thresh: float = 0.7  # box IoU for suppressing duplicates between crops
    crop_overlap_ratio: float = 512 / 1500  # overlap of first-layer crops, as a share of the image
    crop_n_points_downscale_factor: int = 1  # points per side shrink by this per crop layer
    min_mask_region_area: int = 0  # fill holes and drop islands below this many copy pixels (needs cv2)
    # SAM segments a copy of the photo whose longer side is at most this many pixels, and its
    # masks are resized back to the photo's size. The released SAM models resize their input
    # to 1024 px and predict mask logits at 256 px, so a larger copy adds no detail. The mask
    # generator keeps float32 logits of 3 masks per point prompt at the copy's size in memory,
    # which for a 4000x3000 copy and 64 prompts per batch is 64 x 3 x 12e6 x 4 bytes = 9.2 GB.
    max_side: int = 1024


# The tiny random-weight SAM predicts no meaningful IoU or stability, so both filters are off.
# With these settings the tiny SAM built after `torch.manual_seed(0)` yields at least two
# non-empty segments on scikit-image's chelsea, coffee and astronaut photos. Seeds 1 to 9
# did too when checked. A 16x16 grid took 1 to 2 s per photo on a shared 2-core CPU.
# NOTE: scikit-image's rocket photo yields no segment with seed 0.
TINY_SEGMENT_CONFIG = SegmentConfig(
    points_per_side=16,
    points_per_batch=64,
    pred_iou_thresh=0.0,
    stability_score_thresh=0.0,
)


@dataclass(frozen=True)
class Segment:
    """One SAM mask with the scores SAM gave it."""

    id: int  # position in the list, which is sorted by area, largest first
    mask: np.ndarray  # [H, W] bool, the image's size
    bbox: tuple[int, int, int, int]  # XYWH in pixels, the tight box around `mask`
    area: int  # pixels in `mask`
    predicted_iou: float  # SAM's own estimate of the mask's IoU with the object
    stability_score: float  # IoU of the mask thresholded at +offset and at -offset


def generate_segments(sam: Sam, image: np.ndarray, config: SegmentConfig) -> list[Segment]:
    """Run SAM's automatic mask generator on `image` and return its non-empty masks.

    `image` is [H, W, 3] uint8 RGB in [0, 255]. SAM segments a copy whose longer side is at
    most `config.max_side`, and each mask is resized back to [H, W] by nearest neighbour.
    Segments are sorted by area, largest first, and numbered 0..N-1 in that order. Raises
    `ImageError` for an image SAM cannot segment (see `check_sam_size`) and
    `SegmentationError` when SAM finds no segment.
    """
    _check_image(image)
    height, width = image.shape[:2]
    copy_size = sam_image_size((width, height), config.max_side)
    check_sam_size((width, height), copy_size, sam.image_encoder.img_size)
    generator = _mask_generator(sam, config)

    sam_image = image
    if copy_size != (width, height):
        logger.info("SAM segments a %dx%d copy of the %dx%d image", *copy_size, width, height)
        sam_image = np.asarray(Image.fromarray(image).resize(copy_size, Image.Resampling.BILINEAR))
    records = generator.generate(sam_image)

    masks = [resize_mask(np.asarray(record["segmentation"], dtype=bool), (width, height))
             for record in records]  # each [H, W] bool
    areas = [int(mask.sum()) for mask in masks]
    # Sorted by the area at the photo's size, which the resize can reorder. The sort is
    # stable, so ties keep SAM's order.
    order = sorted((index for index in range(len(records)) if areas[index] > 0),
                   key=lambda index: areas[index], reverse=True)
    if not order:
        hint = ""
        if config.pred_iou_thresh > 0 or config.stability_score_thresh > 0:
            hint = (
                f"lower `pred_iou_thresh` ({config.pred_iou_thresh:g}) or "
                f"`stability_score_thresh` ({config.stability_score_thresh:g}), or "
            )
        raise SegmentationError(
            f"SAM found no segment in the {width}x{height} image; "
            f"{hint}give the edit region directly with `--mask PNG`"
        )

    segments = [
        Segment(
            id=segment_id,
            mask=masks[index],
            bbox=mask_to_bbox(masks[index]),
            area=areas[index],
            predicted_iou=float(records[index]["predicted_iou"]),
            stability_score=float(records[index]["stability_score"]),
        )
        for segment_id, index in enumerate(order)
    ]
    logger.info("SAM found %d segments", len(segments))
    return segments


def sam_image_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """Return the (width, height) of the copy SAM segments, with the longer side cut to `max_side`.

    A photo within `max_side` keeps its size. Otherwise the sides are scaled and rounded as
    segment-anything's `ResizeLongestSide` rounds them, and may round to 0.
    """
    if max_side < 1:
        raise SameditError(f"`max_side` must be at least 1, got {max_side}")
    width, height = size
    if max(width, height) <= max_side:
        return (width, height)
    new_height, new_width = ResizeLongestSide.get_preprocess_shape(height, width, max_side)
    return (new_width, new_height)


# A side of 1 px gives every mask a box of zero area. Box IoU is then 0 / 0, so torchvision's
# box NMS keeps every duplicate, and SAM returns 3 masks per point prompt.
MIN_SAM_SIDE = 2


def check_sam_size(size: tuple[int, int], copy_size: tuple[int, int], sam_input_side: int) -> None:
    """Raise `ImageError` naming `size` when SAM cannot segment the photo or its copy.

    `size` is the photo's (width, height) and `copy_size` the copy's (see `sam_image_size`).
    `sam_input_side` is the longer side SAM resizes its input to, `sam.image_encoder.img_size`:
    1024 for the released models and 64 for the tiny one. segment-anything's resize raises a
    bare `ValueError` when it rounds the shorter side to 0 px, which happens once the
    longer side is more than about 2 x `sam_input_side` times the shorter.
    """
    width, height = size
    fix = "crop the image, or give the edit region directly with `--mask PNG`"
    if min(width, height) < MIN_SAM_SIDE:
        raise ImageError(
            f"the {width}x{height} image is too small for SAM: each side must be at least "
            f"{MIN_SAM_SIDE} px; {fix}"
        )
    copy_width, copy_height = copy_size
    if min(copy_width, copy_height) < MIN_SAM_SIDE:
        raise ImageError(
            f"the {width}x{height} image is too narrow for SAM: scaled to a longer side of "
            f"{max(copy_size)} px it is {copy_width}x{copy_height}, and each side must be at least "
            f"{MIN_SAM_SIDE} px; {fix}"
        )
    input_height, input_width = ResizeLongestSide.get_preprocess_shape(
        copy_height, copy_width, sam_input_side
    )
    if min(input_width, input_height) < 1:
        raise ImageError(
            f"the {width}x{height} image is too narrow for this SAM model: it resizes the longer "
            f"side to {sam_input_side} px, which makes the shorter side 0 px, so the longer side "
            f"can be at most about {2 * sam_input_side} times the shorter; {fix}"
        )


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a [h, w] bool mask to `size` (width, height) by nearest neighbour: [H, W] bool."""
    if mask.shape == (size[1], size[0]):
        return mask
    resized = Image.fromarray(mask).resize(size, Image.Resampling.NEAREST)
    return np.array(resized, dtype=bool)  # a writable copy, as SAM's own masks are


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", type(image).__name__)
        raise ImageError(
            f"SAM needs an [H, W, 3] RGB array, got shape {shape}; convert the image to RGB"
        )
    if image.dtype != np.uint8:
        raise ImageError(f"SAM needs a uint8 image in [0, 255], got dtype {image.dtype}")


def _mask_generator(sam: Sam, config: SegmentConfig) -> SamAutomaticMaskGenerator:
    """Build segment-anything's generator after checking what its asserts would reject."""
    if config.points_per_side < 1 or config.points_per_batch < 1:
        raise SameditError(
            f"`points_per_side` ({config.points_per_side}) and `points_per_batch` "
            f"({config.points_per_batch}) must be at least 1"
        )
    if config.crop_n_layers < 0 or config.crop_n_points_downscale_factor < 1:
        raise SameditError(
            f"`crop_n_layers` ({config.crop_n_layers}) must be 0 or more and "
            f"`crop_n_points_downscale_factor` ({config.crop_n_points_downscale_factor}) at least 1"
        )
    if config.min_mask_region_area > 0 and importlib.util.find_spec("cv2") is None:
        raise SameditError(
            f"`min_mask_region_area` {config.min_mask_region_area} needs OpenCV; "
            "install `opencv-python-headless` or set it to 0"
        )
    arguments = asdict(config)
    del arguments["max_side"]  # samedit's own setting, applied in `generate_segments`
    return SamAutomaticMaskGenerator(sam, output_mode="binary_mask", **arguments)


def mask_to_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Return the tight XYWH box of a [H, W] bool mask, or (0, 0, 0, 0) when it is empty.

    Width and height count pixels. segment-anything's own `bbox` field is one pixel smaller
    in each, because it subtracts the inclusive XYXY corners.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    x0, y0 = int(columns[0]), int(rows[0])
    return (x0, y0, int(columns[-1]) - x0 + 1, int(rows[-1]) - y0 + 1)


def segment_colours(count: int, seed: int = 0) -> np.ndarray:
    """Draw `count` distinct random RGB colours, none black; [count, 3] uint8."""
    rng = np.random.default_rng(seed)
    colours: list[tuple[int, int, int]] = []
    seen = {(0, 0, 0)}  # black marks unsegmented pixels
    while len(colours) < count:
        colour = tuple(int(value) for value in rng.integers(0, 256, size=3))
        if colour not in seen:
            seen.add(colour)
            colours.append(colour)
    return np.array(colours, dtype=np.uint8).reshape(count, 3)


def colour_composite(segments: list[Segment], seed: int = 0) -> Image.Image:
    """Paint each segment in its own random colour on black; the segmentation ControlNet input.

    Segment i gets `segment_colours(len(segments), seed)[i]`. Larger segments are painted
    first, so smaller ones drawn over them stay visible. Returns an RGB image of the masks' size.
    """
    if not segments:
        raise SegmentationError("no segments to paint; run SAM first or give `--mask PNG`")
    height, width = segments[0].mask.shape
    colours = segment_colours(len(segments), seed)
    composite = np.zeros((height, width, 3), dtype=np.uint8)  # [H, W, 3] uint8
    for index in sorted(range(len(segments)), key=lambda i: segments[i].area, reverse=True):
        composite[segments[index].mask] = colours[index]
    return Image.fromarray(composite)


def mask_to_rle(mask: np.ndarray) -> dict:
    """Encode a [H, W] bool mask as SAM's uncompressed RLE: {"size": [h, w], "counts": [...]}.

    Counts alternate background and foreground runs in column-major order, starting with
    background (so a mask whose first pixel is set starts with a 0 count), as in COCO.
    """
    mask_torch = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))[None]  # [1, H, W]
    return amg.mask_to_rle_pytorch(mask_torch)[0]


def rle_to_mask(rle: dict) -> np.ndarray:
    """Decode an RLE into a [H, W] bool mask.

    Accepts SAM's uncompressed form (a list of counts) and COCO's compressed string counts,
    which segment-anything's `amg.py --convert-to-rle` writes through pycocotools.
    Raises `StageFileError` when the RLE is malformed.
    """
    try:
        height, width = (int(value) for value in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as error:
        raise StageFileError(
            f"invalid RLE {str(rle)[:80]}: expected `size` [h, w] and `counts`"
        ) from error

    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if isinstance(counts, str):
        counts = decode_coco_counts(counts)
    counts = [int(count) for count in counts]
    if any(count < 0 for count in counts):
        raise StageFileError("invalid RLE: a run length is negative; the masks file is damaged")
    if sum(counts) != height * width:
        raise StageFileError(
            f"invalid RLE: counts sum to {sum(counts)}, but size {height}x{width} "
            f"has {height * width} pixels; the masks file is damaged"
        )
    return amg.rle_to_mask({"size": [height, width], "counts": counts})


def decode_coco_counts(text: str) -> list[int]:
    """Decode COCO's compressed RLE string (pycocotools `rleFrString`) into run lengths.

    Each count is written in 5-bit groups, low group first, as the character 48 + group.
    Bit 0x20 of a group means another group follows, and bit 0x10 of the last group is the
    sign. From the fourth count on, the string stores the difference to the count two
    places earlier.
    """
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise StageFileError(
                    f"invalid COCO RLE string {text[:40]!r}: it ends inside a count"
                )
            group = ord(text[position]) - 48
            if not 0 <= group < 64:
                raise StageFileError(
                    f"invalid COCO RLE string: character {text[position]!r} is out of range"
                )
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value -= 1 << shift  # sign-extend
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts
