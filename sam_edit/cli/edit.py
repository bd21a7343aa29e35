"""`samedit edit`: the whole edit in one command; runs any stage whose file is not given."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sam_edit import stages
from sam_edit.cli import common
from sam_edit.cli import edit_options as options
from sam_edit.cli.rank import Pick, Select, rank_config
from sam_edit.images import load_image, save_png
from sam_edit.methods.request import EditRequest
from sam_edit.outputs import check_output


def default_output(image: Path, method: str) -> Path:
    return image.with_name(f"{image.stem}.{method}.png")


@common.handle_errors
def edit(
    image: common.ImageArg,
    source_words: Annotated[str, typer.Option("--from", help="Words naming the region to change (CLIP ranks segments with them).")],
    target_words: Annotated[str, typer.Option("--to", help="Words that replace --from in the caption.")],
    method: options.Method = "residual",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Edited PNG to write; default IMAGE-stem.METHOD.png beside the input.")] = None,
    prompt: options.Prompt = None,
    masks: options.MasksFile = None,
    rank: options.RankFile = None,
    mask: options.MaskPng = None,
    inversion: options.InversionFile = None,
    select: Select = "best",
    pick: Pick = None,
    residual_weight: options.ResidualWeight = None,
    steps: options.Steps = 50,
    guidance: options.Guidance = 7.5,
    cross_replace: options.CrossReplace = 0.4,
    self_replace: options.SelfReplace = 0.6,
    blend_threshold: options.BlendThreshold = 0.3,
    seed: common.Seed = 0,
    max_side: common.MaxSide = 512,
    device: common.Device = "auto",
    dtype: common.Dtype = "auto",
    offload: common.Offload = "auto",
    models: common.Models = None,
    sam_model: common.SamModel = stages.DEFAULT_SAM,
    progress: common.ProgressMode = "auto",
    overwrite: common.Overwrite = False,
    json_output: common.JsonOutput = False,
    quiet: common.Quiet = False,
    verbose: common.Verbose = False,
) -> None:
    """Edit IMAGE: change what --from names into --to and keep everything else.

    Without --masks, --rank or --mask, SAM segments the photo and CLIP picks the segment that
    best matches --from. Without --inversion, the photo is inverted first.

    Examples:

        samedit edit photo.jpg --from fruit --to candy --method residual

        samedit edit cat.png --from cat --to tiger --prompt "a cat on a sofa" --seed 1 -o tiger.png

        samedit edit cat.png --from cat --to tiger --rank cat.rank.json --inversion cat.inv.safetensors
    """
    output = check_output(output or default_output(image, method), overwrite, (image, masks, rank, mask, inversion))
    request = EditRequest(
        source_words=source_words, target_words=target_words, method=method, caption=prompt, num_steps=steps,
        guidance_scale=guidance, residual_weight=residual_weight, cross_replace=cross_replace,
        self_replace=self_replace, blend_threshold=blend_threshold, seed=seed, max_side=max_side,
    )
    loaded = load_image(image)
    source = stages.MaskSource(mask=mask, rank=rank, masks=masks, rank_config=rank_config(select, pick))
    with common.progress_bars(common.show_progress(progress, quiet), steps) as callback:
        context = common.make_context(device, dtype, offload, models, sam_model, callback)
        edited, settings = stages.run_edit(loaded, request, context, source, inversion)
    save_png(edited, output, settings)
    if json_output:
        common.stdout.print(json.dumps({"output": str(output), "settings": settings}))
    else:
        common.stdout.print(str(output))
