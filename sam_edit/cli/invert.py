"""`samedit invert`: DDIM inversion of a photo, saved so edits can reuse it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sam_edit.cli import common
from sam_edit.cli import edit_options as options
from sam_edit.cli.rank import Pick, Select, rank_config
from sam_edit.errors import UsageError
from sam_edit.methods.registry import METHODS
from sam_edit.models.registry import DEFAULT_SAM

if TYPE_CHECKING:
    import torch

    from sam_edit.stages import Prepared


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
    sam_model: common.SamModel = DEFAULT_SAM,
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
    from sam_edit import artifacts, stages
    from sam_edit.images import load_image
    from sam_edit.methods.request import EditRequest
    from sam_edit.outputs import check_output

    # 1. Check the flags: every error here exits 2.
    check_words(prompt, phrase)
    needs_mask = METHODS[method].needs_mask
    if needs_mask and not (mask or rank or phrase):
        raise UsageError(f"missing --rank, --mask or --from: method `{method}` needs the edit region; give a "
                         "ranking file, a mask PNG, or the phrase that SAM and CLIP find it with")
    source = stages.MaskSource(mask=mask, rank=rank, masks=masks, rank_config=rank_config(select, pick))
    run = common.RunOptions(device, dtype, offload, models, sam_model, progress, quiet)
    with common.usage_errors():
        request = EditRequest(source_words=phrase or prompt, target_words=phrase or prompt, method=method,
                              caption=prompt, num_steps=steps, max_side=max_side)

    # 2. Check the files, then find the edit region if the method needs it, and invert.
    output = check_output(output, overwrite, (image, masks, rank, mask))
    method_spec = stages.get_inversion_method(method)
    loaded = load_image(image)
    with run.context_with_progress(steps) as context:
        stages.require_edit_models(request, source, context)
        edit_mask, segments = None, None
        if needs_mask:
            edit_mask, _ = stages.find_edit_mask(loaded, request, source, context)
        if method_spec.conditioning == "control":
            segments = stages.load_or_segment(loaded, stages.MaskSource(masks=masks), context)
        prepared = stages.prepare(loaded, request, edit_mask, context, segments)
        trajectory = stages.invert(prepared, request, context.callback)
    settings = stages.inversion_settings(prepared, request, edit_mask)
    artifacts.write_inversion(output, loaded, trajectory, torch_timesteps(prepared), prepared.model_ids, settings)
    record = {"inversion": str(output), "steps": steps, "latents": list(trajectory.shape)}
    common.print_result(output, record, json_output)


def check_words(prompt: str, phrase: str | None) -> None:
    """Reject an empty `--prompt`, or an empty `--from` (which would otherwise count as not given)."""
    if not prompt.strip():
        raise typer.BadParameter("must not be empty; give the caption of the source photo, e.g. \"a cat on a sofa\"",
                                 param_hint="--prompt")
    if phrase is not None and not phrase.strip():
        raise typer.BadParameter("must not be empty; give the words of --prompt that name the edit region, "
                                 "or leave --from out", param_hint="--from")


def torch_timesteps(prepared: Prepared) -> torch.Tensor:
    return prepared.models.scheduler.timesteps.flip(0)
