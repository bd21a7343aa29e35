"""`samedit edit`: the whole edit in one command; runs any stage whose file is not given."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sam_edit.cli import common
from sam_edit.cli import edit_options as options
from sam_edit.cli.rank import Pick, Select, rank_config
from sam_edit.methods.registry import METHODS
from sam_edit.models.registry import DEFAULT_SAM

# Options that only some methods read: EditRequest field -> flag.
METHOD_FLAGS = {
    "residual_weight": "--residual-weight",
    "reweight": "--reweight",
    "attention_mode": "--attention-mode",
    "control_scale": "--control-scale",
    "dilate": "--dilate",
    "instruction": "--instruction",
    "image_guidance_scale": "--image-guidance",
}


# Parameters that --replay may be given with: the input, the output and how the edit runs.
REPLAY_PARAMETERS = frozenset({
    "image", "output", "replay", "device", "dtype", "offload", "progress", "overwrite", "json_output", "quiet",
    "verbose",
})


def check_replay_flags(context: typer.Context) -> None:
    """Reject edit settings given on the command line next to `--replay`, which reads them from the PNG."""
    conflicting = [
        parameter for parameter in context.command.params
        if parameter.name not in REPLAY_PARAMETERS
        # Typer ships its own copy of click, so the source is compared by name.
        and getattr(context.get_parameter_source(parameter.name), "name", None) in ("COMMANDLINE", "ENVIRONMENT")
    ]
    if conflicting:
        flags = ", ".join(parameter.opts[0] for parameter in conflicting)
        pronoun = "them" if len(conflicting) > 1 else "it"
        raise typer.BadParameter(
            f"takes the edit settings from the PNG, so {flags} cannot be given with it; leave {pronoun} out, "
            "or edit without --replay", param_hint="--replay",
        )


def default_output(image: Path, method: str) -> Path:
    return image.with_name(f"{image.stem}.{method}.png")


def method_options(method: str, values: dict, inversion: Path | None) -> dict:
    """Return the method options the user gave; reject those that `method` does not read."""
    info = METHODS[method]
    chosen = {field: value for field, value in values.items() if value is not None}
    for field in chosen:
        if field not in info.options:
            users = [name for name, other in METHODS.items() if field in other.options]
            raise typer.BadParameter(f"applies to {', '.join(users)}, not to {method}", param_hint=METHOD_FLAGS[field])
    if inversion is not None and not info.inversion_based:
        raise typer.BadParameter(f"method {method} starts from noise and takes no inversion", param_hint="--inversion")
    return chosen


# The help text is `edit.__doc__`, set at the end of this module with the registry's method list.
@common.handle_errors
def edit(
    context: typer.Context,
    image: common.ImageArg,
    source_words: Annotated[str | None, typer.Option("--from", help="Words naming the region to change (CLIP ranks segments with them). Required unless --replay is given.", show_default=False)] = None,
    target_words: Annotated[str | None, typer.Option("--to", help="Words that replace --from in the caption. Required unless --replay is given.", show_default=False)] = None,
    method: options.Method = "residual",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Edited PNG to write; default IMAGE-stem.METHOD.png beside the input.")] = None,
    prompt: options.Prompt = None,
    masks: options.MasksFile = None,
    rank: options.RankFile = None,
    mask: options.MaskPng = None,
    inversion: options.InversionFile = None,
    replay: Annotated[Path | None, typer.Option("--replay", help="Rerun the edit that this samedit PNG records (request, edit region, model set) on IMAGE; only output and runtime flags may be given with it.", show_default=False)] = None,
    select: Select = "best",
    pick: Pick = None,
    steps: options.EditSteps = None,
    guidance: options.Guidance = 7.5,
    residual_weight: options.ResidualWeight = None,
    cross_replace: options.CrossReplace = 0.4,
    self_replace: options.SelfReplace = 0.6,
    blend_threshold: options.BlendThreshold = 0.3,
    reweight: options.Reweight = None,
    attention_mode: options.AttentionMode = None,
    control_scale: options.ControlScale = None,
    dilate: options.Dilate = None,
    instruction: options.Instruction = None,
    image_guidance: options.ImageGuidance = None,
    seed: common.Seed = 0,
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
    from sam_edit import stages
    from sam_edit.images import load_image, save_png
    from sam_edit.methods.request import EditRequest
    from sam_edit.outputs import check_output

    if replay is not None:
        check_replay_flags(context)
        return edit_replay(image, replay, output, common.RunOptions(device, dtype, offload, progress=progress, quiet=quiet),
                           overwrite, json_output)
    if source_words is None or target_words is None:
        raise typer.BadParameter("give --from and --to, or --replay with an edited PNG",
                                 param_hint="--to" if source_words is not None else "--from")

    # 1. Check the flags: every error here exits 2.
    chosen_options = method_options(method, {
        "residual_weight": residual_weight, "reweight": reweight, "attention_mode": attention_mode,
        "control_scale": control_scale, "dilate": dilate, "instruction": instruction,
        "image_guidance_scale": image_guidance,
    }, inversion)
    output = output or default_output(image, method)
    check_png_output(output)
    source = stages.MaskSource(mask=mask, rank=rank, masks=masks, rank_config=rank_config(select, pick))
    run = common.RunOptions(device, dtype, offload, models, sam_model, progress, quiet)
    with common.usage_errors():
        request = EditRequest(
            source_words=source_words, target_words=target_words, method=method, caption=prompt, num_steps=steps,
            guidance_scale=guidance, cross_replace=cross_replace, self_replace=self_replace,
            blend_threshold=blend_threshold, seed=seed, max_side=max_side, **chosen_options,
        )

    # 2. Check the files, then edit.
    output = check_output(output, overwrite, (image, masks, rank, mask, inversion))
    loaded = load_image(image)
    with run.context_with_progress(request.num_steps) as context:
        edited, settings = stages.run_edit(loaded, request, context, source, inversion)
    save_png(edited, output, settings)
    common.print_result(output, {"output": str(output), "settings": settings}, json_output)


def check_png_output(output: Path) -> None:
    if output.is_dir():
        raise typer.BadParameter(f"`{output}` is a folder; give a file path ending in .png", param_hint="--output")
    if output.suffix.lower() != ".png":
        raise typer.BadParameter(f"`{output}` must end in .png: samedit writes PNG with the settings inside",
                                 param_hint="--output")


def edit_replay(image: Path, replay: Path, output: Path | None, run: common.RunOptions, overwrite: bool,
                json_output: bool) -> None:
    """Rerun the edit that the PNG `replay` records, on `image`, with the model set it records."""
    import dataclasses

    from sam_edit import stages
    from sam_edit.images import load_image, save_png
    from sam_edit.outputs import check_output
    from sam_edit.replay import read_replay

    loaded = load_image(image)
    recorded = read_replay(replay, loaded)
    output = output or default_output(image, recorded.request.method)
    check_png_output(output)
    output = check_output(output, overwrite, (image, replay))
    run = dataclasses.replace(run, models=recorded.model_set, sam_model=recorded.sam_model or run.sam_model)
    with run.context_with_progress(recorded.request.num_steps) as context:
        edited, settings = stages.run_edit(loaded, recorded.request, context, recorded.source)
    save_png(edited, output, settings)
    common.print_result(output, {"output": str(output), "settings": settings}, json_output)


edit.__doc__ = f"""Edit IMAGE: change what --from names into --to and keep everything else.

Methods (--method):

{options.method_list()}

Methods that need the edit region (everything, blended, iclight, iclight-pnp, residual) take it
from --mask or --rank; without them SAM segments the photo and CLIP picks the segment that best
matches --from (--select, --pick choose others). Inversion-based methods invert the photo first
unless --inversion gives the file.

Examples:

    samedit edit photo.jpg --from fruit --to candy --method residual

    samedit edit cat.png --from cat --to tiger --prompt "a cat on a sofa" --method pnp --reweight 2

    samedit edit cat.png --from cat --to tiger --method everything --pick 3,7 --dilate 20

    samedit edit cat.png --from cat --to tiger --method ip2p --instruction "make the cat a tiger"

    samedit edit cat.png --from cat --to tiger --method blended --mask cat-mask.png --seed 1

    samedit edit cat.png --from cat --to tiger --rank cat.rank.json --inversion cat.inv.safetensors

    samedit edit cat.png --replay cat.residual.png -o again.png
"""
