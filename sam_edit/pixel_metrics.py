"""PSNR, LPIPS, MSE and SSIM of two images with torchmetrics, in pieces for large images.

PIE-Bench scores 512x512 images in one piece. Larger images are cut into pieces so that memory
stays bounded: SSIM in bands of rows (exact), LPIPS in tiles (an approximation).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from sam_edit.errors import SameditError

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


def _pixels(array: np.ndarray, device: torch.device) -> torch.Tensor:
    # MeanSquaredError flattens with `view`, which needs a contiguous tensor.
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous().to(device)  # [1, 3, H, W]


@torch.inference_mode()
def pixel_metric(family: str, source: np.ndarray, edited: np.ndarray, device: torch.device,
                 lpips: nn.Module | None = None) -> float:
    """Compute PSNR (data range 1), LPIPS, MSE or SSIM (Gaussian 11, sigma 1.5) with torchmetrics.

    `source` and `edited` are `[H, W, 3]` float32 in [0, 1], already multiplied by the region
    weights. LPIPS gets them mapped to [-1, 1] and needs the `lpips` network. Images over
    `PIECE_PIXELS` are scored in pieces for SSIM and LPIPS (see `ssim_banded` and `lpips_tiled`).
    The caller checks the size against `MIN_SIDE` first.
    """
    from torchmetrics.functional import mean_squared_error
    from torchmetrics.functional.image import peak_signal_noise_ratio

    if family == "ssim":
        return ssim_banded(source, edited, device)
    if family == "lpips":
        return lpips_tiled(lpips, source, edited, device)
    preds, target = _pixels(source, device), _pixels(edited, device)
    if family == "psnr":
        value = peak_signal_noise_ratio(preds, target, data_range=1.0)
    elif family == "mse":
        value = mean_squared_error(preds, target)
    else:
        raise SameditError(f"`{family}` is not a pixel metric; use one of psnr, lpips, mse, ssim")
    return float(value)


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
