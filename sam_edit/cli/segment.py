"""`samedit segment`: SAM automatic masks and the colour composite ControlNet reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sam_edit.cli import common
from sam_edit.models.registry import DEFAULT_SAM


def composite_path(masks_path: Path) -> Path:
    return masks_path.with_suffix(".composite.png")


@common.handle_errors
def segment(
    image: common.ImageArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Masks file to write (JSON).")],
    device: common.Device = "auto",
    dtype: common.Dtype = "auto",
    offload: common.Offload = "auto",
    models: common.Models = None,
    sam_model: common.SamModel = DEFAULT_SAM,
    overwrite: common.Overwrite = False,
    json_output: common.JsonOutput = False,
    quiet: common.Quiet = False,
    verbose: common.Verbose = False,
) -> None:
    """Find every segment of IMAGE with SAM and write them as a masks file.

    Also writes OUTPUT with the suffix .composite.png: one random colour per segment.

    Example:

        samedit segment photo.jpg -o photo.masks.json
    """
    from sam_edit import artifacts, stages
    from sam_edit.images import load_image
    from sam_edit.outputs import atomic_path
    from sam_edit.segment import colour_composite

    output, composite = common.check_outputs((output, composite_path(output)), overwrite, (image,))
    loaded = load_image(image)
    context = common.RunOptions(device, dtype, offload, models, sam_model).make_context()
    segments, model_ids, settings = stages.segment(loaded, context)
    artifacts.write_masks(output, loaded, segments, model_ids, settings)
    with atomic_path(composite) as temporary:
        colour_composite(segments).save(temporary, format="PNG")
    record = {"masks": str(output), "composite": str(composite), "segments": len(segments)}
    common.print_result(output, record, json_output)
