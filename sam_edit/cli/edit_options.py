"""Options of `invert` and `edit` that describe the edit and where its mask comes from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sam_edit.methods.inversion_based import METHODS

METHOD_HELP = "Editing method: " + "; ".join(f"{name}: {method.summary}" for name, method in METHODS.items()) + "."



def check_method(value: str) -> str:
    if value not in METHODS:
        raise typer.BadParameter(f"unknown method {value!r}; valid methods: {', '.join(METHODS)}")
    return value


Method = Annotated[str, typer.Option("--method", help=METHOD_HELP, callback=check_method)]
Prompt = Annotated[str | None, typer.Option("--prompt", help="Full caption of the source photo containing the --from words; default: the --from words.")]
MasksFile = Annotated[Path | None, typer.Option("--masks", help="Masks file from `samedit segment` (skips SAM).", rich_help_panel="Stage files")]
RankFile = Annotated[Path | None, typer.Option("--rank", help="Ranking file from `samedit rank` (skips SAM and CLIP).", rich_help_panel="Stage files")]
MaskPng = Annotated[Path | None, typer.Option("--mask", help="Edit region as a PNG of the image's size, white = edit (skips SAM and CLIP).", rich_help_panel="Stage files")]
InversionFile = Annotated[Path | None, typer.Option("--inversion", help="Inversion file from `samedit invert` (skips the inversion).", rich_help_panel="Stage files")]
Steps = Annotated[int, typer.Option("--steps", help="DDIM steps for inversion and editing.", rich_help_panel="Diffusion")]
Guidance = Annotated[float, typer.Option("--guidance", help="Classifier-free guidance scale while editing.", rich_help_panel="Diffusion")]
ResidualWeight = Annotated[float | None, typer.Option("--residual-weight", help="Weight w of the residual correction on the background; default 1 for residual, 0 otherwise.", rich_help_panel="Diffusion")]
CrossReplace = Annotated[float, typer.Option("--cross-replace", help="Fraction of steps in which the target takes the source's cross-attention.", rich_help_panel="Diffusion")]
SelfReplace = Annotated[float, typer.Option("--self-replace", help="Fraction of steps in which the target takes the source's self-attention.", rich_help_panel="Diffusion")]
BlendThreshold = Annotated[float, typer.Option("--blend-threshold", help="Local blend: attention share above which a latent pixel may change.", rich_help_panel="Diffusion")]


def unused(option: str, value, reason: str) -> None:
    if value is not None:
        raise typer.BadParameter(reason, param_hint=option)
