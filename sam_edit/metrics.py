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
from sam_edit.pixel_metrics import MIN_SIDE, pixel_metric

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
        scores[name] = pixel_metric(family, source_01, edited_01, models.device, models.lpips)
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
