"""`samedit invert`: DDIM inversion of a photo, saved so edits can reuse it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sam_edit import artifacts, stages
from sam_edit.cli import common
from sam_edit.cli import edit_options as options
from sam_edit.cli.rank import Pick, Select, rank_config
from sam_edit.images import load_image
from sam_edit.methods.request import EditRequest
from sam_edit.outputs import check_output


@common.handle_errors
def invert(
    image: common.ImageArg,
    prompt: Annotated[str, typer.Option("--prompt", help="Caption of the source photo; use the one `edit` will get.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Inversion file to write (safetensors).")],
    method: options.InversionMethod = "residual",
    phrase: Annotated[str | None, typer.Option("--from", help="Phrase naming the edit region, to find the mask when a method needs one.")] = None,
    masks: options.MasksFile = None,
    rank: options.RankFile = None,
    mask: options.MaskPng = None,
    select: Select = "best",
    pick: Pick = None,
    steps: options.Steps = 50,
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
    """DDIM-invert IMAGE with its caption (guidance 1) on the UNet the method uses.

    Methods conditioned on the foreground (iclight, iclight-pnp, residual) need the edit
    region: give --rank, --mask, or --from to run SAM and CLIP.

    Example:

        samedit invert photo.jpg --prompt "a cat" --method residual --rank photo.rank.json -o photo.inv.safetensors
    """
    output = check_output(output, overwrite, (image,))
    method_spec = stages.get_inversion_method(method)
    request = EditRequest(source_words=phrase or prompt, target_words=phrase or prompt, method=method,
                          caption=prompt, num_steps=steps, max_side=max_side)
    loaded = load_image(image)
    with common.progress_bars(common.show_progress(progress, quiet), steps) as callback:
        context = common.make_context(device, dtype, offload, models, sam_model, callback)
        edit_mask, segments = None, None
        if method_spec.needs_mask:
            if not (mask or rank or phrase):
                raise typer.BadParameter(f"method `{method}` needs the edit region: give --rank, --mask or --from", param_hint="--method")
            source = stages.MaskSource(mask=mask, rank=rank, masks=masks, rank_config=rank_config(select, pick))
            edit_mask, _ = stages.find_edit_mask(loaded, request, source, context)
        if method_spec.conditioning == "control":
            segments = stages.load_or_segment(loaded, stages.MaskSource(masks=masks), context)
        prepared = stages.prepare(loaded, request, edit_mask, context, segments)
        trajectory = stages.invert(prepared, request, callback)
    settings = stages.inversion_settings(prepared, request, edit_mask)
    artifacts.write_inversion(output, loaded, trajectory, torch_timesteps(prepared), prepared.model_ids, settings)
    if json_output:
        common.stdout.print(json.dumps({"inversion": str(output), "steps": steps, "latents": list(trajectory.shape)}))
    else:
        common.stdout.print(str(output))


def torch_timesteps(prepared: stages.Prepared):
    return prepared.models.scheduler.timesteps.flip(0)
