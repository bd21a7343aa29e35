"""Options of `invert` and `edit` that describe the edit and where its mask comes from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sam_edit.methods.registry import INVERSION_METHODS, METHODS


def method_list(names=tuple(METHODS)) -> str:
    """One line per method, `name  summary`, for a command's help text.

    Each line is a paragraph of its own: click's plain help joins the lines of a paragraph.
    """
    width = max(len(name) for name in names)
    return "\n\n".join(f"  {name.ljust(width)}  {METHODS[name].summary}" for name in names)


def check_method(value: str) -> str:
    if value not in METHODS:
        raise typer.BadParameter(f"unknown method {value!r}; valid methods: {', '.join(METHODS)}")
    return value


def check_inversion_method(value: str) -> str:
    if value not in INVERSION_METHODS:
        raise typer.BadParameter(
            f"method {value!r} does not start from an inversion; valid methods: {', '.join(INVERSION_METHODS)}"
        )
    return value


Method = Annotated[str, typer.Option("--method", help=f"Editing method: {', '.join(METHODS)} (listed above).", callback=check_method)]
InversionMethod = Annotated[str, typer.Option("--method", help=f"Method whose UNet inverts: {', '.join(INVERSION_METHODS)}.", callback=check_inversion_method)]
Prompt = Annotated[str | None, typer.Option("--prompt", help="Full caption of the source photo containing the --from words; default: the --from words.")]
MasksFile = Annotated[Path | None, typer.Option("--masks", help="Masks file from `samedit segment` (skips SAM).", rich_help_panel="Stage files")]
RankFile = Annotated[Path | None, typer.Option("--rank", help="Ranking file from `samedit rank` (skips SAM and CLIP).", rich_help_panel="Stage files")]
MaskPng = Annotated[Path | None, typer.Option("--mask", help="Edit region as a PNG of the image's size, white = edit (skips SAM and CLIP).", rich_help_panel="Stage files")]
InversionFile = Annotated[Path | None, typer.Option("--inversion", help="Inversion file from `samedit invert` (skips the inversion); inversion-based methods only.", rich_help_panel="Stage files")]
Steps = Annotated[int, typer.Option("--steps", help="DDIM steps for inversion and editing, 1 to 1000.", rich_help_panel="Diffusion")]
EditSteps = Annotated[int | None, typer.Option("--steps", help="DDIM steps, 1 to 1000; default: 20 for everything, 50 for the other methods.", show_default=False, rich_help_panel="Diffusion")]
Guidance = Annotated[float, typer.Option("--guidance", help="Classifier-free guidance scale while editing.", rich_help_panel="Diffusion")]
ResidualWeight = Annotated[float | None, typer.Option("--residual-weight", help="Weight w of the residual correction on the background; default 1 for residual, 0 for the other inversion-based methods.", rich_help_panel="Prompt-to-Prompt")]
CrossReplace = Annotated[float, typer.Option("--cross-replace", help="Fraction of steps in which the target takes the source's cross-attention.", rich_help_panel="Prompt-to-Prompt")]
SelfReplace = Annotated[float, typer.Option("--self-replace", help="Fraction of steps in which the target takes the source's self-attention.", rich_help_panel="Prompt-to-Prompt")]
BlendThreshold = Annotated[float, typer.Option("--blend-threshold", help="Local blend: attention share above which a latent pixel may change.", rich_help_panel="Prompt-to-Prompt")]
Reweight = Annotated[float | None, typer.Option("--reweight", help="Multiply the --to words' cross-attention by FACTOR during the cross-replace steps (PnP Inversion uses 2); default: no reweight.", metavar="FACTOR", show_default=False, rich_help_panel="Prompt-to-Prompt")]
AttentionMode = Annotated[str | None, typer.Option("--attention-mode", help="Cross-attention edit: replace (word swap; prompts need the same word count), refine (token alignment) or auto (replace if the word counts match, else refine); default auto.", show_default=False, rich_help_panel="Prompt-to-Prompt")]
ControlScale = Annotated[float | None, typer.Option("--control-scale", help="controlnet: factor on the ControlNet residuals; default 1.", show_default=False, rich_help_panel="Method options")]
Dilate = Annotated[int | None, typer.Option("--dilate", help="everything: grow the chosen mask by this many pixels of the input (square neighbourhood) before inpainting; default 12.", metavar="PIXELS", show_default=False, rich_help_panel="Method options")]
Instruction = Annotated[str | None, typer.Option("--instruction", help="ip2p: the edit instruction; default \"turn the FROM into TO\" from --from and --to.", show_default=False, rich_help_panel="Method options")]
ImageGuidance = Annotated[float | None, typer.Option("--image-guidance", help="ip2p: guidance towards the input image; default 1.5.", show_default=False, rich_help_panel="Method options")]


def unused(option: str, value, reason: str) -> None:
    if value is not None:
        raise typer.BadParameter(reason, param_hint=option)
