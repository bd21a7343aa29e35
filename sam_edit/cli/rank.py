"""`samedit rank`: CLIP scores of every segment against a phrase, and the chosen edit region."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sam_edit.cli import common
from sam_edit.models.registry import DEFAULT_SAM

if TYPE_CHECKING:
    from sam_edit.rank import RankConfig

Select = Annotated[str, typer.Option("--select", help="`best` (the top segment) or `all-above T` (every segment scoring at least T).")]
Pick = Annotated[str | None, typer.Option("--pick", help="Comma-separated segment ids to edit, overriding the ranking.")]


def rank_config(select: str, pick: str | None) -> RankConfig:
    """Parse `--select best|all-above T` and `--pick ID[,ID]`."""
    from sam_edit.rank import RankConfig

    parts = select.split()
    if parts == ["best"]:
        mode, threshold = "best", None
    elif len(parts) == 2 and parts[0] == "all-above":
        try:
            mode, threshold = "all-above", float(parts[1])
        except ValueError:
            raise typer.BadParameter(f"threshold must be a number, got {parts[1]!r}", param_hint="--select") from None
        if not math.isfinite(threshold):
            raise typer.BadParameter(f"threshold must be a finite number, got {parts[1]!r}", param_hint="--select")
    else:
        raise typer.BadParameter(f"expected `best` or `all-above T`, got {select!r}", param_hint="--select")
    ids: tuple[int, ...] = ()
    if pick:
        try:
            ids = tuple(int(value) for value in pick.split(","))
        except ValueError:
            raise typer.BadParameter(f"expected comma-separated integers, got {pick!r}", param_hint="--pick") from None
    return RankConfig(select=mode, threshold=threshold, pick=ids)


@common.handle_errors
def rank(
    image: common.ImageArg,
    masks: Annotated[Path, typer.Option("--masks", help="Masks file from `samedit segment`.")],
    phrase: Annotated[str, typer.Option("--from", help="Phrase naming the region to edit.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Ranking file to write (JSON).")],
    select: Select = "best",
    pick: Pick = None,
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
    """Rank the segments of IMAGE against a phrase with CLIP and choose the edit region.

    Writes OUTPUT, the edit mask as OUTPUT with the suffix .mask.png, and a preview with the
    top scores as .preview.png.

    Example:

        samedit rank photo.jpg --masks photo.masks.json --from cat -o photo.rank.json
    """
    from sam_edit import artifacts, stages
    from sam_edit.images import load_image
    from sam_edit.models import loaders
    from sam_edit.outputs import atomic_path

    config = rank_config(select, pick)
    output, _, preview_path = common.check_outputs(
        (output, artifacts.ranking_mask_path(output), output.with_suffix(".preview.png")), overwrite, (image, masks),
    )
    loaded = load_image(image)
    context = common.RunOptions(device, dtype, offload, models, sam_model).make_context()
    segments, record = artifacts.read_masks(masks, loaded)
    artifacts.check_models(record.get("models", {}), {"sam": loaders.model_id(sam_model, context.model_set)}, masks)
    ranking, model_ids, settings = stages.rank(loaded, segments, phrase, context, config)
    mask_png = artifacts.write_ranking(output, loaded, ranking, model_ids | record.get("models", {}), settings)
    with atomic_path(preview_path) as temporary:
        stages.preview(loaded, segments, ranking).save(temporary, format="PNG")
    top = sorted(ranking.scores.items(), key=lambda item: -item[1])[:5]
    common.print_result(output, {"ranking": str(output), "mask": str(mask_png), "preview": str(preview_path),
                                 "chosen": list(ranking.chosen), "top": [{"id": i, "score": s} for i, s in top]},
                        json_output)
