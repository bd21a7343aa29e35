"""One image loader for every stage, the working size, tensor conversion and PNG output.

Conversion rules to RGB (stated once, applied everywhere):
- EXIF orientation is applied first.
- L, LA and P are expanded to RGB; P with transparency goes through RGBA.
- I;16 and I (16- or 32-bit integer) are scaled from their full range to 0-255, not clipped.
- CMYK is converted with Pillow's conversion.
- Alpha (RGBA, LA, PA) is composited over white, with a notice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from sam_edit.errors import ImageError
from sam_edit.outputs import atomic_path

logger = logging.getLogger(__name__)

DEFAULT_MAX_SIDE = 512  # SD 1.x was trained at 512 px
ALPHA_BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class LoadedImage:
    """An input photo in RGB with the identity that stage files record."""

    image: Image.Image  # RGB, the input's own size, EXIF orientation applied
    sha256: str  # of the file's bytes
    path: Path | None = None
    notices: tuple[str, ...] = field(default=())

    @property
    def size(self) -> tuple[int, int]:
        """Width and height in pixels."""
        return self.image.size

    @cached_property
    def pixels_sha256(self) -> str:
        """SHA-256 of the size and the decoded RGB pixels: the image identity stage files record.

        Re-encoding the file or stripping its metadata keeps this digest; any pixel change does not.
        """
        return hash_pixels(self.image)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_pixels(image: Image.Image) -> str:
    """Hash an RGB image's size and its pixels (row-major, 8 bits per channel)."""
    if image.mode != "RGB":
        raise ValueError(f"hash_pixels needs an RGB image, got mode {image.mode}")
    width, height = image.size
    digest = hashlib.sha256(f"RGB {width}x{height}\n".encode("ascii"))
    digest.update(image.tobytes())
    return digest.hexdigest()


def to_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """Convert any Pillow mode to RGB by the rules in the module docstring."""
    notices = []
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        full_scale = 65535.0 if mode.startswith("I;16") or values.max() <= 65535 else values.max()
        values = np.clip(values / full_scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(values, "L").convert("RGB"), notices
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low or 1.0) * 255.0
        notices.append(f"float image scaled from [{low:g}, {high:g}] to 0-255")
        return Image.fromarray(scaled.round().astype(np.uint8), "L").convert("RGB"), notices
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notices.append("transparent pixels were composited over white")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB"), notices
    if mode != "RGB":
        image = image.convert("RGB")
    return image, notices


def load_image(path: Path) -> LoadedImage:
    """Read an image file as RGB, applying EXIF orientation; raise `ImageError` if unreadable."""
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"image `{path}` is a folder; give an image file")
    if not path.is_file():
        raise ImageError(f"image `{path}` not found")
    try:
        with warnings.catch_warnings():
            # Pillow warns above about 89 million pixels; samedit resizes to the working size anyway.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.load()
                frames = getattr(opened, "n_frames", 1)
                image = ImageOps.exif_transpose(opened) or opened
                image, notices = to_rgb(image)
    except Image.DecompressionBombError as error:
        raise ImageError(
            f"image `{path}` has more pixels than Pillow opens ({Image.MAX_IMAGE_PIXELS * 2:,}), a guard against "
            "decompression bombs; downscale it first"
        ) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"cannot read image `{path}`: {error}") from error
    if frames > 1:
        notices.append(f"has {frames} frames; only the first is edited")
    for notice in notices:
        logger.warning("%s: %s", path.name, notice)
    return LoadedImage(image=image, sha256=file_sha256(path), path=path, notices=tuple(notices))


def working_size(size: tuple[int, int], max_side: int = DEFAULT_MAX_SIDE) -> tuple[int, int]:
    """Return the (width, height) the models run at: longer side `max_side`, both multiples of 8.

    The image is scaled up or down so that its longer side is `max_side`, keeping the aspect
    ratio, and each side is rounded to the nearest multiple of 8 (at least 8).
    """
    if max_side < 64 or max_side % 8:
        raise ImageError(f"`--max-side` must be a multiple of 8 and at least 64, got {max_side}")
    width, height = size
    scale = max_side / max(width, height)
    return tuple(max(8, int(math.floor(side * scale / 8 + 0.5)) * 8) for side in (width, height))


def image_to_tensor(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """Resize to `size` (width, height) and return `[1, 3, H, W]` float32 in [-1, 1]."""
    resized = image.resize(size, Image.Resampling.LANCZOS) if image.size != size else image
    array = np.asarray(resized, dtype=np.float32) / 127.5 - 1.0  # [H, W, 3]
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def tensor_to_image(pixels: torch.Tensor, size: tuple[int, int] | None = None) -> Image.Image:
    """Turn `[1, 3, H, W]` values in [-1, 1] into an RGB image, resized to `size` if given."""
    if not torch.isfinite(pixels).all():
        raise ImageError("decoded image contains NaN or Inf values; retry with `--dtype fp32`")
    array = ((pixels[0].float().clamp(-1, 1) + 1) * 127.5).round().byte()
    image = Image.fromarray(array.permute(1, 2, 0).cpu().numpy(), "RGB")
    if size is not None and image.size != tuple(size):
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


# Share of mid-grey pixels above which a mask is reported as probably not a mask. Antialiased
# mask edges stay far below it.
MASK_GREY_SHARE = 0.05


def load_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Read a mask PNG (white = edit) of the image's own `size`; return `[H, W]` bool."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"mask `{path}` not found")
    try:
        with Image.open(path) as opened:
            mask = ImageOps.exif_transpose(opened) or opened
            mask = to_rgb(mask)[0].convert("L")
    except (UnidentifiedImageError, OSError) as error:
        raise ImageError(f"cannot read mask `{path}`: {error}") from error
    if mask.size != tuple(size):
        raise ImageError(
            f"mask `{path}` is {mask.size[0]}x{mask.size[1]} but the image is {size[0]}x{size[1]}; "
            "give a mask of the image's size"
        )
    values = np.asarray(mask)
    grey = float(((values > 32) & (values < 224)).mean())
    if grey > MASK_GREY_SHARE:
        logger.warning("mask `%s` has %.0f%% grey pixels, so it may be a photo rather than a mask; "
                       "it is cut at 128 (white = edit)", path, 100 * grey)
    return values >= 128


def a1111_parameters(settings: dict) -> str:
    """Format settings as AUTOMATIC1111's `parameters` chunk: the prompt, then `Key: value` pairs."""
    width, height = settings.get("size", (0, 0))
    pairs = {
        "Steps": settings.get("num_steps"),
        "Sampler": "DDIM",
        "CFG scale": settings.get("guidance_scale"),
        "Seed": settings.get("seed"),
        "Size": f"{width}x{height}",
        "Model": ", ".join(settings.get("models", {}).values()) or None,
        "Method": settings.get("method"),
        "Source prompt": settings.get("source_prompt"),
        "Residual weight": settings.get("residual_weight"),
    }
    fields = ", ".join(f"{key}: {value}" for key, value in pairs.items() if value is not None)
    return f"{settings.get('target_prompt', '')}\n{fields}"


def save_png(image: Image.Image, path: Path, settings: dict) -> None:
    """Write a PNG atomically with the settings as JSON (`samedit`) and A1111 `parameters` chunks."""
    info = PngImagePlugin.PngInfo()
    info.add_text("samedit", json.dumps(settings, sort_keys=True))
    info.add_text("parameters", a1111_parameters(settings))
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG", pnginfo=info)


def read_png_settings(path: Path) -> dict:
    """Return the settings a samedit PNG carries; raise `ImageError` if it has none."""
    try:
        with Image.open(path) as opened:
            text = opened.text.get("samedit") if hasattr(opened, "text") else None
    except (UnidentifiedImageError, OSError) as error:
        raise ImageError(f"cannot read `{path}`: {error}") from error
    if not text:
        raise ImageError(f"`{path}` carries no samedit settings; it was not written by `samedit edit`")
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as error:
        raise ImageError(f"`{path}` has damaged samedit settings (not JSON: {error})") from error
    if not isinstance(settings, dict):
        raise ImageError(f"`{path}` has damaged samedit settings (a JSON {type(settings).__name__}, not an object)")
    return settings
