"""Stage files: masks (segment), ranking (rank), inversion (invert).

Every stage file records its format and version, the SHA-256 of the source image's pixels
and its size, the model ids and the settings that made it. Reading a stage file for another
image, size or model raises `StageFileError`; nothing is silently recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from sam_edit.errors import StageFileError
from sam_edit.images import LoadedImage
from sam_edit.outputs import atomic_path
from sam_edit.segment import Segment, mask_to_rle, rle_to_mask

logger = logging.getLogger(__name__)

VERSION = 2
# Versions `check_header` reads. Version 1 identified the image by the SHA-256 of its file's
# bytes; version 2 by `LoadedImage.pixels_sha256`, so a re-encoded copy still matches.
READABLE_VERSIONS = (1, 2)
MASKS_FORMAT = "samedit.masks"
RANKING_FORMAT = "samedit.ranking"
INVERSION_FORMAT = "samedit.inversion"

# Model role in a stage file -> (what the user calls it, the command that writes it, its flags).
MODEL_ROLES = {
    "sam": ("SAM model", "`samedit segment`", "--sam-model and --models"),
    "clip": ("CLIP model", "`samedit rank`", "--models"),
    "unet": ("diffusion model", "`samedit invert`", "--method and --models"),
    "controlnet": ("ControlNet", "`samedit invert`", "--models"),
}


def image_record(loaded: LoadedImage) -> dict:
    width, height = loaded.size
    return {"pixels_sha256": loaded.pixels_sha256, "width": width, "height": height}


def header(format_name: str, loaded: LoadedImage, models: dict, settings: dict) -> dict:
    return {
        "format": format_name,
        "version": VERSION,
        "image": image_record(loaded),
        "models": models,
        "settings": settings,
    }


def check_header(record: dict, format_name: str, loaded: LoadedImage, path: Path) -> None:
    """Raise `StageFileError` unless `record` is a `format_name` file made for this image."""
    if record.get("format") != format_name:
        raise StageFileError(f"`{path}` is not a {format_name} file (format {record.get('format')!r})")
    version = record.get("version")
    if version not in READABLE_VERSIONS:
        raise StageFileError(
            f"`{path}` has {format_name} version {version}; this samedit reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}: rerun the stage with this samedit"
        )
    image = record.get("image", {})
    width, height = loaded.size
    if (image.get("width"), image.get("height")) != loaded.size:
        raise StageFileError(
            f"`{path}` was made for another image, of {image.get('width')}x{image.get('height')} pixels, but "
            f"this image is {width}x{height}; rerun the stage on this image"
        )
    if version == 1:
        recorded, actual, compared = image.get("sha256"), loaded.sha256, "file bytes"
    else:
        recorded, actual, compared = image.get("pixels_sha256"), loaded.pixels_sha256, "pixels"
    if recorded != actual:
        raise StageFileError(
            f"`{path}` was made for another image: the {compared} differ (SHA-256 {str(recorded)[:12]} in the "
            f"file, {actual[:12]} for this image); rerun the stage on this image"
        )


def check_models(recorded: dict, expected: dict, path: Path) -> None:
    """Raise `StageFileError` when a model the caller uses differs from the one recorded."""
    for role, model in expected.items():
        if role in recorded and recorded[role] != model:
            name, command, flags = MODEL_ROLES.get(role, (f"{role} model", "the stage that wrote it", "--models"))
            raise StageFileError(
                f"`{path}` was made with the {name} `{recorded[role]}`, but this run uses `{model}`; "
                f"rerun {command} with this run's {flags}, or give this run the {flags} that made the file"
            )


def write_json(path: Path, record: dict) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def read_json(path: Path) -> dict | list:
    path = Path(path)
    if not path.is_file():
        raise StageFileError(f"stage file `{path}` not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StageFileError(f"`{path}` is not valid JSON: {error}") from error


def mask_sha256(mask: np.ndarray) -> str:
    """Digest of a boolean mask, used to tie an inversion to the edit mask that conditioned it."""
    return hashlib.sha256(np.packbits(mask).tobytes() + str(mask.shape).encode()).hexdigest()


# Masks --------------------------------------------------------------------------------------


def segment_record(segment: Segment) -> dict:
    return {
        "id": segment.id,
        "segmentation": mask_to_rle(segment.mask),
        "bbox": list(segment.bbox),
        "area": segment.area,
        "predicted_iou": segment.predicted_iou,
        "stability_score": segment.stability_score,
    }


def write_masks(path: Path, loaded: LoadedImage, segments: list[Segment], models: dict, settings: dict) -> None:
    record = header(MASKS_FORMAT, loaded, models, settings)
    record["segments"] = [segment_record(segment) for segment in segments]
    write_json(path, record)


def parse_segment(index: int, item: dict, size: tuple[int, int], path: Path) -> Segment:
    try:
        mask = rle_to_mask(item["segmentation"])
    except (KeyError, TypeError, ValueError, StageFileError) as error:
        raise StageFileError(f"segment {index} in `{path}` has no valid RLE `segmentation`: {error}") from error
    if mask.shape != (size[1], size[0]):
        raise StageFileError(f"segment {index} in `{path}` is {mask.shape[1]}x{mask.shape[0]}, the image {size[0]}x{size[1]}")
    ys, xs = np.nonzero(mask)
    bbox = item.get("bbox") or ([int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1] if len(xs) else [0, 0, 0, 0])
    return Segment(
        id=int(item.get("id", index)),
        mask=mask,
        bbox=tuple(int(value) for value in bbox),
        area=int(item.get("area", mask.sum())),
        predicted_iou=float(item.get("predicted_iou", 0.0)),
        stability_score=float(item.get("stability_score", 0.0)),
    )


def read_masks(path: Path, loaded: LoadedImage) -> tuple[list[Segment], dict]:
    """Read a masks file: samedit's own format, or the JSON list that SAM's `amg.py` writes.

    An `amg.py` list carries no image identity, so only its mask size can be checked.
    """
    record = read_json(path)
    if isinstance(record, list):
        logger.warning("`%s` is a segment-anything amg.py file; only its size can be checked against the image", path)
        items, record = record, {"models": {}, "settings": {"source": "segment-anything amg.py"}}
    else:
        check_header(record, MASKS_FORMAT, loaded, path)
        items = record.get("segments", [])
    segments = [parse_segment(index, item, loaded.size, Path(path)) for index, item in enumerate(items)]
    return segments, record


# Ranking ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ranking:
    """A ranking file's content: scores per segment id, the chosen ids and the edit mask."""

    phrase: str
    scores: dict[int, float]
    chosen: tuple[int, ...]
    mask: np.ndarray  # [H, W] bool, image size, True = edit
    record: dict


def ranking_mask_path(path: Path) -> Path:
    return Path(path).with_suffix(".mask.png")


def write_ranking(path: Path, loaded: LoadedImage, ranking: Ranking, models: dict, settings: dict) -> Path:
    """Write the ranking JSON and the binary edit-mask PNG beside it; return the PNG's path."""
    record = header(RANKING_FORMAT, loaded, models, settings)
    mask_png = ranking_mask_path(path)
    record.update(
        phrase=ranking.phrase,
        scores=[{"id": key, "score": value} for key, value in sorted(ranking.scores.items())],
        chosen=list(ranking.chosen),
        edit_mask=mask_to_rle(ranking.mask),
        edit_mask_png=mask_png.name,
    )
    with atomic_path(mask_png) as temporary:
        Image.fromarray(ranking.mask.astype(np.uint8) * 255, "L").convert("1").save(temporary, format="PNG")
    write_json(path, record)
    return mask_png


def read_ranking(path: Path, loaded: LoadedImage) -> Ranking:
    record = read_json(path)
    if not isinstance(record, dict):
        raise StageFileError(f"`{path}` is not a {RANKING_FORMAT} file")
    check_header(record, RANKING_FORMAT, loaded, path)
    try:
        mask = rle_to_mask(record["edit_mask"])
        scores = {int(item["id"]): float(item["score"]) for item in record["scores"]}
        chosen = tuple(int(value) for value in record["chosen"])
    except (KeyError, TypeError, ValueError) as error:
        raise StageFileError(f"`{path}` is missing ranking fields: {error}") from error
    return Ranking(record.get("phrase", ""), scores, chosen, mask, record)


# Inversion ----------------------------------------------------------------------------------


def write_inversion(path: Path, loaded: LoadedImage, latents: torch.Tensor, timesteps: torch.Tensor,
                    models: dict, settings: dict) -> None:
    """Write the DDIM inversion trajectory `[T+1, 4, h, w]` (index 0 = encoded image)."""
    record = header(INVERSION_FORMAT, loaded, models, settings)
    metadata = {key: json.dumps(value) for key, value in record.items()}
    tensors = {"latents": latents.detach().float().cpu().contiguous(), "timesteps": timesteps.cpu().long()}
    with atomic_path(path) as temporary:
        save_file(tensors, temporary, metadata=metadata)


# Inversion settings that must match for an edit to reuse an inversion file. `method` is
# recorded for messages only: methods with the same UNet and conditioning share inversions.
INVERSION_CHECKED = ("prompt", "num_steps", "working_size", "mask_sha256")


def check_inversion(path: Path, record: dict, expected: dict, model_ids: dict,
                    methods_by_unet: dict[tuple[str, str], list[str]]) -> None:
    """Raise `StageFileError` naming the flag to change when an inversion file does not fit an edit.

    `expected` holds the edit's inversion settings (`stages.inversion_settings`);
    `methods_by_unet` maps (UNet, conditioning) to the methods that invert with them.
    """
    recorded = record.get("settings", {})
    recorded_unet = (recorded.get("method_unet"), recorded.get("conditioning"))
    if recorded_unet != (expected["method_unet"], expected["conditioning"]):
        fitting = methods_by_unet.get(recorded_unet, [])
        made_with = recorded.get("method") or " or ".join(fitting) or f"UNet {recorded_unet[0]}"
        other_methods = f"edit with `--method` {' or '.join(fitting)}, or " if fitting else ""
        raise StageFileError(
            f"`{path}` is an inversion for `--method {made_with}`, whose UNet or conditioning differs from "
            f"`--method {expected['method']}`; {other_methods}rerun `samedit invert --method {expected['method']}`"
        )
    check_models(record.get("models", {}), model_ids, path)
    for key in INVERSION_CHECKED:
        if recorded.get(key) != expected[key]:
            raise StageFileError(inversion_mismatch(path, key, recorded.get(key), expected[key]))


def inversion_mismatch(path: Path, key: str, recorded, expected) -> str:
    """Return the message for an inversion setting `key` that differs from the edit's."""
    if key == "prompt":
        return (f"`{path}` inverts the source prompt {recorded!r}, but this edit's source prompt is {expected!r}; "
                f"pass `--prompt {shlex.quote(str(recorded))}` or rerun `samedit invert --prompt {shlex.quote(expected)}`")
    if key == "num_steps":
        return (f"`{path}` has {recorded} inversion steps, but this edit uses `--steps {expected}`; "
                f"pass `--steps {recorded}` or rerun `samedit invert --steps {expected}`")
    if key == "working_size" and isinstance(recorded, list) and len(recorded) == 2:
        # The longer working side equals --max-side (`images.working_size`).
        return (f"`{path}` was made at `--max-side {max(recorded)}` (working size {recorded[0]}x{recorded[1]}), "
                f"but this edit uses `--max-side {max(expected)}` (working size {expected[0]}x{expected[1]}); "
                f"pass `--max-side {max(recorded)}` or rerun `samedit invert --max-side {max(expected)}`")
    if key == "mask_sha256":
        return (f"`{path}` was made with another edit mask, and IC-Light's foreground latent depends on it; "
                "give this edit the `--mask` or `--rank` that `samedit invert` got, or rerun `samedit invert` "
                "with this edit's `--mask` or `--rank`")
    return (f"`{path}` records {key} {recorded!r}, but this edit needs {expected!r}; "
            "rerun `samedit invert` with this edit's flags")


def read_inversion(path: Path, loaded: LoadedImage) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Return (latents `[T+1, 4, h, w]`, timesteps `[T]`, header record) of an inversion file."""
    path = Path(path)
    if not path.is_file():
        raise StageFileError(f"stage file `{path}` not found")
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(path)
        record = {key: json.loads(value) for key, value in metadata.items()}
    except (SafetensorError, OSError, json.JSONDecodeError) as error:
        raise StageFileError(f"`{path}` is not a readable inversion file: {error}") from error
    check_header(record, INVERSION_FORMAT, loaded, path)
    if "latents" not in tensors or "timesteps" not in tensors:
        raise StageFileError(f"`{path}` lacks the `latents` or `timesteps` tensor")
    return tensors["latents"], tensors["timesteps"], record
