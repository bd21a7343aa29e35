"""PIE-Bench metrics, computed as PnP Inversion's evaluation script computes them.

The source is `cure-lab/PnPInversion`, files `evaluation/evaluate.py` and
`evaluation/matrics_calculator.py`. Its quirks are kept so that numbers compare with the
published tables:

- Background ("unedit_part") metrics multiply both images by (1 - mask) and then average
  over the whole frame, zeroed pixels included. This dilutes the error, so PSNR is higher
  than a background-only PSNR would be.
- The structure distance feeds DINO floats in 0-255 through ImageNet normalisation without
  first dividing by 255. `fixed=True` divides first, but its numbers do not compare with the
  published ones.
- "CLIP Edited" scores `uint8(edited * mask)`, i.e. the edit region on black.
- Background metrics are NaN when the mask covers the whole image. Edit-region metrics are
  NaN when the mask is empty. Means skip NaN.

Values are raw. `PAPER_SCALE` contains the factors of the PnP Inversion paper's tables:
structure distance and LPIPS x1e3, MSE x1e4, SSIM x1e2, PSNR and CLIP unscaled.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from sam_edit.errors import SameditError
from sam_edit.images import to_rgb

# torchmetrics, torchvision and transformers take seconds to import, so the functions that
# need them import them, and importing this module for its names and means stays fast.
if TYPE_CHECKING:
    from torchmetrics.multimodal import CLIPScore
    from transformers import ViTModel

logger = logging.getLogger(__name__)

# The eight metrics of PnP Inversion's evaluation script, in its column order.
DEFAULT_METRICS = (
    "structure_distance",
    "psnr_unedit_part",
    "lpips_unedit_part",
    "mse_unedit_part",
    "ssim_unedit_part",
    "clip_similarity_source_image",
    "clip_similarity_target_image",
    "clip_similarity_target_image_edit_part",
)
_PIXEL_FAMILIES = ("structure_distance", "psnr", "lpips", "mse", "ssim")
_REGION_SUFFIXES = ("", "_unedit_part", "_edit_part")  # whole image, background, edit region
# Every metric the script can compute: the defaults, then the whole-image and edit-region variants.
METRIC_NAMES = DEFAULT_METRICS + tuple(
    family + suffix
    for suffix in _REGION_SUFFIXES
    for family in _PIXEL_FAMILIES
    if family + suffix not in DEFAULT_METRICS
)

# Factors from raw values to the units of the PnP Inversion tables. CLIP scores are already x100.
_FAMILY_SCALE = {
    "structure_distance": 1e3, "psnr": 1.0, "lpips": 1e3, "mse": 1e4, "ssim": 1e2, "clip": 1.0
}
_HIGHER_IS_BETTER = {
    "structure_distance": False, "psnr": True, "lpips": False, "mse": False, "ssim": True, "clip": True
}


def metric_family(name: str) -> str:
    """Return the family of a metric name: structure_distance, psnr, lpips, mse, ssim or clip."""
    if name.startswith("clip_"):
        return "clip"
    for family in _PIXEL_FAMILIES:
        if name.startswith(family):
            return family
    raise SameditError(f"unknown metric `{name}`; known metrics: {', '.join(METRIC_NAMES)}")


PAPER_SCALE = {name: _FAMILY_SCALE[metric_family(name)] for name in METRIC_NAMES}
HIGHER_IS_BETTER = {name: _HIGHER_IS_BETTER[metric_family(name)] for name in METRIC_NAMES}
_MODEL_FOR_FAMILY = {"structure_distance": "dino", "lpips": "lpips", "clip": "clip_score"}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_SHORT_SIDE = 224  # DINO input: shorter side resized to 224 ...
DINO_MAX_SIDE = 480  # ... unless that makes the longer side exceed 480
DINO_PATCH_SIZE = 8  # DINO ViT-B/8, as PIE-Bench's structure distance uses; the tiny DINO too
SSIM_BORDER = 5  # half of the 11-tap Gaussian window (sigma 1.5)
# Smallest side each pixel metric accepts. PIE-Bench computes SSIM with torchmetrics' default
# 11x11 Gaussian window, and samedit keeps that window rather than shrinking it for small
# images, because SSIM with another window does not compare with PIE-Bench numbers. With the
# 5-pixel border cut, the SSIM map of an image under 11 px has no pixel left. torchvision's
# SqueezeNet 1.1, the LPIPS backbone, fails in its max pooling on a side under 17 px.
MIN_SIDE = {"ssim": 2 * SSIM_BORDER + 1, "lpips": 17}
# Large images are scored in pieces of at most this many pixels, so memory stays bounded. SSIM
# is exact in bands of rows, and LPIPS approximate in tiles (see `lpips_tiled`). An image of
# up to 1024x1024 pixels, such as PIE-Bench's 512x512, is one piece. Scoring one 4000x3000
# pair on a 2-core CPU (SqueezeNet 1.1 with random weights) raised peak RAM by 8.9 GB for
# SSIM and 10 GB for LPIPS at full size, and by 1.4 GB and 1.2 GB in pieces.
PIECE_PIXELS = 1024 * 1024


@dataclass
class ScoreModels:
    """The loaded metric models; a metric whose model is None cannot be computed."""

    dino: ViTModel | None = None  # structure distance
    lpips: nn.Module | None = None  # torchmetrics LPIPS network with a SqueezeNet backbone
    clip_score: CLIPScore | None = None  # CLIP similarity scores
    device: torch.device = torch.device("cpu")  # where inputs go; the models must be there too

    def can_compute(self, name: str) -> bool:
        """Return whether the model that metric `name` needs is loaded."""
        model = _MODEL_FOR_FAMILY.get(metric_family(name))
        return model is None or getattr(self, model) is not None


def load_score_models(
    dino_folder: Path | None = None,
    lpips_checkpoint: Path | None = None,
    clip_folder: Path | None = None,
    device: torch.device | str = "cpu",
) -> ScoreModels:
    """Load the models whose paths are given; the others stay None, and so do their metrics."""
    from sam_edit.models import metric_models

    models = ScoreModels(device=torch.device(device))
    if dino_folder is not None:
        models.dino = metric_models.load_dino(dino_folder, models.device)
    if lpips_checkpoint is not None:
        models.lpips = metric_models.load_lpips(lpips_checkpoint, models.device)
    if clip_folder is not None:
        models.clip_score = metric_models.load_clip_score(clip_folder, models.device)
    return models


def check_metrics(models: ScoreModels, metrics: Iterable[str]) -> tuple[str, ...]:
    """Return `metrics` as a tuple; raise `SameditError` for an unknown name or a missing model."""
    metrics = tuple(metrics)
    for name in metrics:
        if name not in METRIC_NAMES:
            raise SameditError(f"unknown metric `{name}`; known metrics: {', '.join(METRIC_NAMES)}")
        if not models.can_compute(name):
            model = _MODEL_FOR_FAMILY[metric_family(name)]
            raise SameditError(
                f"metric `{name}` needs the `{model}` model, which is not loaded; "
                "load it or drop the metric"
            )
    return metrics


# Inputs ------------------------------------------------------------------------------------


def rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """Return an image as `[H, W, 3]` uint8 RGB (a writable copy for a PIL image)."""
    if isinstance(image, Image.Image):
        image, _ = to_rgb(image)
        image = np.array(image)
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise SameditError(f"expected an RGB image as [H, W, 3] uint8, got {array.dtype} {array.shape}")
    return array


def match_edit_size(source: np.ndarray, edited: np.ndarray) -> np.ndarray:
    """Return `edited` at the source's size; raise `SameditError` if the sizes cannot match.

    PIE-Bench rule: the reference editing scripts save a strip of panels (text, source,
    reconstruction, edit) and the evaluation keeps the right-most tile. An edit of the
    source's height that is wider than the source is therefore cropped to its right-most
    source-sized tile. Any other size mismatch is an error, because resizing would change
    every pixel metric. Both images are `[H, W, 3]`.
    """
    height, width = source.shape[:2]
    if edited.shape[:2] == (height, width):
        return edited
    if edited.shape[0] == height and edited.shape[1] > width:
        logger.info(
            "edited image is %dx%d; scoring its right-most %dx%d tile",
            edited.shape[1], height, width, height,
        )
        return edited[:, -width:]
    raise SameditError(
        f"edited image is {edited.shape[1]}x{edited.shape[0]} but the source is {width}x{height}; "
        "save the edit at the source's size"
    )


def region_weights(mask: np.ndarray, suffix: str) -> np.ndarray | None:
    """Return the `[H, W, 1]` float32 weights of a region, or None for the whole image."""
    if suffix == "_unedit_part":
        return (1.0 - mask.astype(np.float32))[..., None]
    if suffix == "_edit_part":
        return mask.astype(np.float32)[..., None]
    return None


def region_is_empty(mask: np.ndarray, suffix: str) -> bool:
    """Return whether a region has no pixel, which makes its metrics NaN."""
    if suffix == "_unedit_part":
        return bool(mask.all())
    if suffix == "_edit_part":
        return not mask.any()
    return False


def metric_region(name: str) -> str:
    """Return the region suffix of a metric name: "_unedit_part", "_edit_part" or "" (whole image)."""
    for suffix in ("_unedit_part", "_edit_part"):
        if name.endswith(suffix):
            return suffix
    return ""


def empty_region_metrics(mask: np.ndarray, metrics: Iterable[str]) -> list[str]:
    """Return the names among `metrics` that `score_pair` makes NaN because their region of `mask` is empty."""
    return [name for name in metrics if region_is_empty(mask, metric_region(name))]


def empty_region_warning(mask: np.ndarray, metrics: Iterable[str]) -> str | None:
    """Return a sentence saying which of `metrics` are NaN for `mask` and why, or None if none is."""
    names = empty_region_metrics(mask, metrics)
    if not names:
        return None
    if mask.all():
        cause = "the edit mask covers the whole image, so there is no background and"
    else:
        cause = "the edit mask is empty, so"
    return f"{cause} {nan_phrase(names)}, as in the PIE-Bench evaluation"


def nan_phrase(names: Sequence[str]) -> str:
    """Return "a is NaN" or "a, b are NaN" for metric names."""
    return f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} NaN"


# Metrics -----------------------------------------------------------------------------------


@torch.inference_mode()
def dino_self_similarity(dino: ViTModel, image: np.ndarray, fixed: bool = False) -> torch.Tensor:
    """Return the cosine self-similarity of the last block's keys, `[T, T]` float32.

    `image` is `[H, W, 3]` with values in 0-255, any float or integer dtype. A 224 x 224 input
    to ViT-B/8 gives T = 785 (28 x 28 patches and CLS); the keys of all heads are concatenated.
    """
    from torchvision.transforms import functional as TF

    from sam_edit.models import metric_models

    device = next(dino.parameters()).device
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None]  # [1, 3, H, W]
    if fixed:
        pixels = pixels / 255.0
    # NOTE: PnP Inversion's install instructions pin torchvision 0.13, which resized tensors
    # without antialiasing. Newer torchvision antialiases by default, so it is switched off here.
    pixels = TF.resize(pixels, [DINO_SHORT_SIDE], max_size=DINO_MAX_SIDE, antialias=False)
    pixels = TF.normalize(pixels, IMAGENET_MEAN, IMAGENET_STD).to(device)

    side = dino.config.image_size
    keys = []
    hook = metric_models.dino_key_projection(dino).register_forward_hook(
        lambda module, args, output: keys.append(output)
    )
    try:
        # DINO interpolates its position embeddings for inputs of another size than its own.
        # NOTE: transformers interpolates to a target size, DINO by a scale factor, so
        # non-square inputs give slightly different embeddings than torch.hub DINO.
        dino(pixel_values=pixels, interpolate_pos_encoding=pixels.shape[-2:] != (side, side))
    finally:
        hook.remove()
    keys = keys[0][0].float()  # [T, D]
    norms = keys.norm(dim=-1, keepdim=True)
    return (keys @ keys.T) / (norms @ norms.T).clamp(min=1e-8)


def structure_distance(
    dino: ViTModel, source: np.ndarray, edited: np.ndarray, fixed: bool = False
) -> float:
    """Return the MSE between the DINO key self-similarity matrices of two 0-255 `[H, W, 3]` images."""
    similarity_source = dino_self_similarity(dino, source, fixed)
    similarity_edited = dino_self_similarity(dino, edited, fixed)
    return float(F.mse_loss(similarity_edited, similarity_source))


def _pixels(array: np.ndarray, device: torch.device) -> torch.Tensor:
    # MeanSquaredError flattens with `view`, which needs a contiguous tensor.
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous().to(device)  # [1, 3, H, W]


@torch.inference_mode()
def pixel_metric(family: str, source: np.ndarray, edited: np.ndarray, models: ScoreModels) -> float:
    """Compute PSNR (data range 1), LPIPS, MSE or SSIM (Gaussian 11, sigma 1.5) with torchmetrics.

    `source` and `edited` are `[H, W, 3]` float32 in [0, 1], already multiplied by the region
    weights. LPIPS gets them mapped to [-1, 1]. Images over `PIECE_PIXELS` are scored in pieces
    for SSIM and LPIPS (see `ssim_banded` and `lpips_tiled`).
    """
    from torchmetrics.functional import mean_squared_error
    from torchmetrics.functional.image import peak_signal_noise_ratio

    check_image_size((family,), source.shape[:2])
    if family == "ssim":
        return ssim_banded(source, edited, models.device)
    if family == "lpips":
        return lpips_tiled(models.lpips, source, edited, models.device)
    preds, target = _pixels(source, models.device), _pixels(edited, models.device)
    if family == "psnr":
        value = peak_signal_noise_ratio(preds, target, data_range=1.0)
    elif family == "mse":
        value = mean_squared_error(preds, target)
    else:
        raise SameditError(f"`{family}` is not a pixel metric; use one of psnr, lpips, mse, ssim")
    return float(value)


def check_image_size(metrics: Iterable[str], size: tuple[int, int]) -> None:
    """Raise `SameditError` when a `size` (H, W) image is too small for any of `metrics`.

    The message names the size, what each metric family needs and the metrics to leave out.
    Whole-image names such as "ssim" stand for their family.
    """
    height, width = size
    needs = {}  # family -> what it needs
    for family in (metric_family(name) for name in metrics):
        if family in MIN_SIDE and min(size) < MIN_SIDE[family]:
            needs[family] = f"{family.upper()} needs at least {MIN_SIDE[family]}x{MIN_SIDE[family]} px"
        elif family == "structure_distance" and min(dino_input_size(size)) < DINO_PATCH_SIZE:
            dino_height, dino_width = dino_input_size(size)
            needs[family] = (
                f"DINO resizes them to {dino_width}x{dino_height} px, narrower than its "
                f"{DINO_PATCH_SIZE} px patches"
            )
    if needs:
        names = [name for name in metrics if metric_family(name) in needs]
        raise SameditError(
            f"the {width}x{height} images are too small: {', '.join(needs.values())}; "
            f"leave {', '.join(names)} out of `--metrics`"
        )


def dino_input_size(size: tuple[int, int]) -> tuple[int, int]:
    """Return the (H, W) that `dino_self_similarity` resizes a `size` (H, W) image to.

    torchvision's `resize(size=[DINO_SHORT_SIDE], max_size=DINO_MAX_SIDE)` rule: the shorter
    side becomes 224 px unless the longer one would exceed 480 px, which then becomes 480 px.
    """
    height, width = size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = DINO_SHORT_SIDE, int(DINO_SHORT_SIDE * long / short)
    if new_long > DINO_MAX_SIDE:
        new_short, new_long = int(DINO_MAX_SIDE * new_short / new_long), DINO_MAX_SIDE
    return (new_long, new_short) if width <= height else (new_short, new_long)


def ssim_banded(source: np.ndarray, edited: np.ndarray, device: torch.device) -> float:
    """Return the mean SSIM map without its `SSIM_BORDER`, computed in bands of rows.

    `source` and `edited` are `[H, W, 3]` float32 in [0, 1]. Each band gets `SSIM_BORDER`
    extra rows on both sides, and only map rows whose 11x11 window lies inside the image are
    kept, so each kept value is the one a full-size pass gives. An image of at most
    `PIECE_PIXELS` is one band, the same call as a full-size pass.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    height, width = source.shape[:2]
    # NOTE: torchmetrics < 1.5 (which the published numbers used) averaged the SSIM map
    # without its 5-pixel border, where the 11-tap window reaches into reflect padding, as
    # scikit-image does. torchmetrics >= 1.5 averages the whole map, so the border is cut here.
    band_rows = max(1, PIECE_PIXELS // width - 2 * SSIM_BORDER)
    # Several bands are summed in float64, so the mean of millions of values keeps float32 precision.
    total, count = 0.0, 0
    for top in range(SSIM_BORDER, height - SSIM_BORDER, band_rows):
        bottom = min(top + band_rows, height - SSIM_BORDER)
        rows = slice(top - SSIM_BORDER, bottom + SSIM_BORDER)
        preds, target = _pixels(source[rows], device), _pixels(edited[rows], device)
        _, ssim_map = structural_similarity_index_measure(
            preds, target, data_range=1.0, return_full_image=True
        )
        band_map = ssim_map[..., SSIM_BORDER:-SSIM_BORDER, SSIM_BORDER:-SSIM_BORDER]  # [1, 3, rows, W - 10]
        if (top, bottom) == (SSIM_BORDER, height - SSIM_BORDER):
            return float(band_map.mean())  # one band: the full-size pass
        total += float(band_map.double().sum())
        count += band_map.numel()
    return total / count


def lpips_tiled(lpips: nn.Module, source: np.ndarray, edited: np.ndarray, device: torch.device) -> float:
    """Return LPIPS of two `[H, W, 3]` float32 images in [0, 1], in tiles for large images.

    An image of at most `PIECE_PIXELS` is one tile, which is the plain LPIPS call. A larger
    one is cut into a grid of near-equal tiles of at most `PIECE_PIXELS`, and the result is
    the pixel-weighted mean of the tiles' LPIPS.
    NOTE: for tiled images this is an approximation. LPIPS averages each layer's feature map,
    and the convolutions' zero padding at tile borders changes features near them.
    """
    height, width = source.shape[:2]
    tiles_down = tiles_across = 1
    while math.ceil(height / tiles_down) * math.ceil(width / tiles_across) > PIECE_PIXELS:
        if height / tiles_down >= width / tiles_across:
            tiles_down += 1
        else:
            tiles_across += 1
    row_edges = np.linspace(0, height, tiles_down + 1).round().astype(int)
    column_edges = np.linspace(0, width, tiles_across + 1).round().astype(int)

    values, weights = [], []
    for top, bottom in zip(row_edges[:-1], row_edges[1:]):
        for left, right in zip(column_edges[:-1], column_edges[1:]):
            preds = _pixels(source[top:bottom, left:right], device)
            target = _pixels(edited[top:bottom, left:right], device)
            values.append(float(lpips(preds * 2 - 1, target * 2 - 1).mean()))
            weights.append((bottom - top) * (right - left))
    if len(values) == 1:
        return values[0]
    return float(np.average(values, weights=weights))


# `no_grad`, not `inference_mode`: `reset` recreates the metric's state tensors, and inference
# tensors could not be updated by a later `update` call outside inference mode.
@torch.no_grad()
def clip_similarity(
    clip_score: CLIPScore, image: np.ndarray, prompt: str, device: torch.device
) -> float:
    """Return torchmetrics' CLIP score, max(100 * cos, 0), of a `[H, W, 3]` uint8 image and a prompt."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(device)  # [3, H, W] uint8
    # `update` + `compute` gives what the script's `forward` call returns, and runs CLIP once
    # where `forward` runs it twice.
    try:
        clip_score.update(pixels, prompt)
        return float(clip_score.compute())
    finally:
        clip_score.reset()


def score_pair(
    models: ScoreModels,
    source: Image.Image | np.ndarray,
    edited: Image.Image | np.ndarray,
    mask: np.ndarray,
    target_prompt: str,
    source_prompt: str | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    dino_fixed: bool = False,
) -> dict[str, float]:
    """Score one edit against its source; return `{metric: value}` in the order of `metrics`.

    `mask` is `[H, W]` bool at the source's size, True where the edit was meant to happen. It
    is used as given; PIE-Bench masks already carry the forced 1-pixel frame that
    `piebench.decode_rle` adds. Prompts are used as given (strip PIE-Bench brackets first).
    `clip_similarity_source_image` is NaN without a source prompt. PSNR is +inf when the two
    masked images are identical.
    """
    metrics = check_metrics(models, metrics)
    source = rgb_array(source)
    edited = match_edit_size(source, rgb_array(edited))
    mask = np.asarray(mask).astype(bool)
    if mask.shape != source.shape[:2]:
        raise SameditError(f"mask is {mask.shape} but the source image is {source.shape[:2]} (H, W)")
    check_image_size(metrics, source.shape[:2])

    scores = {}
    for name in metrics:
        family = metric_family(name)
        if family == "clip":
            scores[name] = _clip_metric(
                models, name, source, edited, mask, target_prompt, source_prompt
            )
            continue
        suffix = name[len(family):]
        if region_is_empty(mask, suffix):
            scores[name] = math.nan
            continue
        weights = region_weights(mask, suffix)
        if family == "structure_distance":
            # DINO gets 0-255 floats, masked but not rescaled, as in the evaluation script.
            source_255, edited_255 = source.astype(np.float32), edited.astype(np.float32)
            if weights is not None:
                source_255, edited_255 = source_255 * weights, edited_255 * weights
            scores[name] = structure_distance(models.dino, source_255, edited_255, fixed=dino_fixed)
            continue
        # In place, so a 12-megapixel pair needs one float32 copy of each image, not three.
        source_01, edited_01 = source.astype(np.float32), edited.astype(np.float32)
        for image in (source_01, edited_01):
            image /= 255
            if weights is not None:
                image *= weights
        scores[name] = pixel_metric(family, source_01, edited_01, models)
    return scores


def _clip_metric(models, name, source, edited, mask, target_prompt, source_prompt) -> float:
    if name == "clip_similarity_source_image":
        if source_prompt is None:
            return math.nan
        return clip_similarity(models.clip_score, source, source_prompt, models.device)
    if name == "clip_similarity_target_image":
        return clip_similarity(models.clip_score, edited, target_prompt, models.device)
    if not mask.any():
        return math.nan
    edit_region = edited * mask[..., None].astype(np.uint8)  # the edit region on black
    return clip_similarity(models.clip_score, edit_region, target_prompt, models.device)


# Aggregation -------------------------------------------------------------------------------


def mean_scores(
    rows: Iterable[Mapping[str, object]], metrics: Sequence[str] | None = None
) -> dict[str, float]:
    """Return the mean of each metric over `rows`, skipping NaN; NaN where every value is NaN.

    Keys of a row that are not metric names (an image id, a type) are ignored. Without
    `metrics`, every metric name found in the rows is averaged, in `METRIC_NAMES` order.
    """
    rows = list(rows)
    if metrics is None:
        present = {key for row in rows for key in row}
        metrics = [name for name in METRIC_NAMES if name in present]
    means = {}
    for name in metrics:
        values = _values(rows, name)
        means[name] = float(np.mean(values)) if values else math.nan
    return means


def count_scores(rows: Iterable[Mapping[str, object]], metrics: Sequence[str]) -> dict[str, int]:
    """Return how many rows have a non-NaN value for each metric (the `n` behind each mean)."""
    rows = list(rows)
    return {name: len(_values(rows, name)) for name in metrics}


def _values(rows: list[Mapping[str, object]], name: str) -> list[float]:
    """Return the non-NaN values of one metric."""
    values = (float(row[name]) for row in rows if name in row)
    return [value for value in values if not math.isnan(value)]


def to_paper_scale(scores: Mapping[str, float]) -> dict[str, float]:
    """Multiply each metric by its `PAPER_SCALE` factor; other keys pass through unchanged."""
    scaled = dict(scores)
    for key in scaled.keys() & PAPER_SCALE.keys():
        scaled[key] = scaled[key] * PAPER_SCALE[key]
    return scaled
