"""The `samedit` command: a Typer app with one module per command."""

from __future__ import annotations

from typing import Annotated

import typer

from sam_edit import __version__
from sam_edit.cli import bench, doctor, edit, invert, models, rank, score, segment

app = typer.Typer(
    name="samedit",
    help="Text-driven editing of one photo: SAM segments, CLIP ranks, Stable Diffusion edits.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"samedit {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Text-driven editing of one photo: SAM segments, CLIP ranks, Stable Diffusion edits."""


app.command()(segment.segment)
app.command()(rank.rank)
app.command()(invert.invert)
app.command()(edit.edit)
app.command()(score.score)
app.command()(bench.bench)
app.add_typer(models.app, name="models")
app.command()(doctor.doctor)


def main() -> None:
    app(prog_name="samedit")
