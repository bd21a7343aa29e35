"""`samedit score`: background preservation of one edited photo against its source."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from sam_edit.cli import common
from sam_edit.images import load_image, load_mask
from sam_edit.metrics import ScoreModels, score_pair

BACKGROUND_METRICS = ("psnr_unedit_part", "mse_unedit_part", "ssim_unedit_part")


@common.handle_errors
def score(
    source: Annotated[Path, typer.Argument(help="Source photo.", show_default=False)],
    edited: Annotated[Path, typer.Argument(help="Edited photo of the same size.", show_default=False)],
    mask: Annotated[Path | None, typer.Option("--mask", help="Edit region PNG (white = edited); background metrics use its complement.")] = None,
    json_output: common.JsonOutput = False,
    quiet: common.Quiet = False,
    verbose: common.Verbose = False,
) -> None:
    """Score how well EDITED keeps the background of SOURCE: PSNR, MSE and SSIM outside --mask.

    As in the PIE-Bench evaluation, both images are multiplied by (1 - mask) and the metrics
    run over the whole frame.

    Example:

        samedit score cat.png tiger.png --mask cat.rank.mask.png --json
    """
    source_image, edited_image = load_image(source).image, load_image(edited).image
    edit_mask = load_mask(mask, source_image.size) if mask else np.zeros(source_image.size[::-1], dtype=bool)
    scores = score_pair(ScoreModels(), source_image, edited_image, edit_mask, target_prompt="", metrics=BACKGROUND_METRICS)
    if json_output:
        # JSON has no infinity: PSNR of identical images is written as the string "inf".
        common.stdout.print(json.dumps({key: value if math.isfinite(value) else str(value) for key, value in scores.items()}))
        return
    for name, value in scores.items():
        common.stdout.print(f"{name}\t{value:.6g}")
