"""`samedit models list|pull|path`: what is cached, fetching it, and where it lives."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from sam_edit.cli import common
from sam_edit.errors import SameditError
from sam_edit.models.registry import MODELS, get_spec

app = typer.Typer(help="List, download and locate the models samedit uses.", no_args_is_help=True)


def check_model_names(names: list[str] | None) -> list[str] | None:
    """Reject a model name the registry does not know; `all`, given alone, means every model."""
    if names and "all" in names and len(names) > 1:
        raise typer.BadParameter("`all` already names every model; give it alone or list the names")
    for name in names or ():
        if name != "all" and name not in MODELS:
            raise typer.BadParameter(f"unknown model {name!r}; known models: {', '.join(MODELS)}, or all")
    return names


def check_model_name(name: str | None) -> str | None:
    if name is not None and name not in MODELS:
        raise typer.BadParameter(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return name


def status(name: str, model_set: str) -> dict:
    """Return one `models list` row: where the model comes from and whether it is cached."""
    from sam_edit.models import store

    spec = get_spec(name)
    if model_set == "tiny":
        path = store.cache_dir() / "tiny" / name
        cached = path.exists()
    else:
        path = store.cached_path(spec)
        cached = path is not None
    return {
        "name": name,
        "state": "cached" if cached else "missing",
        "source": spec.repo_id or spec.url,
        "revision": spec.revision,
        "file": spec.filename,
        "size": spec.size,
        "sha256": spec.sha256,
        "path": str(path) if cached else None,
        "description": spec.description,
    }


@app.command("list")
@common.handle_errors
def list_models(
    models: common.Models = None,
    json_output: common.JsonOutput = False,
    quiet: common.Quiet = False,
    verbose: common.Verbose = False,
) -> None:
    """Show every model with its source, pinned revision and cached or missing state."""
    from sam_edit.models import loaders, store

    model_set = loaders.model_set_from_env(models)
    rows = [status(name, model_set) for name in MODELS]
    if json_output:
        common.stdout.print(json.dumps(rows, indent=1))
        return
    table = Table(title=f"samedit models ({model_set} set, cache {store.cache_dir()})")
    for column in ("name", "state", "source", "revision", "description"):
        table.add_column(column)
    for row in rows:
        state = "[green]cached[/]" if row["state"] == "cached" else "[red]missing[/]"
        table.add_row(row["name"], state, row["source"], (row["revision"] or "")[:12], row["description"])
    common.stdout.print(table)


@app.command("pull")
@common.handle_errors
def pull(
    names: Annotated[list[str], typer.Argument(help="Model names, or `all`.", show_default=False, callback=check_model_names)],
    models: common.Models = None,
    quiet: common.Quiet = False,
    verbose: common.Verbose = False,
) -> None:
    """Download models into the cache (builds them for `--models tiny`); prints each path.

    Example:

        samedit models pull sd14 sam-vit-b clip-l14
    """
    from sam_edit.models import loaders, store

    model_set = loaders.model_set_from_env(models)
    selected = list(MODELS) if names == ["all"] else names
    for name in selected:
        if model_set == "tiny":
            path = loaders.locate(name, "tiny")
        else:
            path = store.pull(get_spec(name))
        common.stdout.print(f"{name}\t{path}")


@app.command("path")
@common.handle_errors
def path(
    name: Annotated[str | None, typer.Argument(help="Model name; without it, the cache folder.", show_default=False, callback=check_model_name)] = None,
    models: common.Models = None,
    quiet: common.Quiet = False,
    verbose: common.Verbose = False,
) -> None:
    """Print where a cached model lives, or the samedit cache folder."""
    from sam_edit.models import loaders, store

    if name is None:
        common.stdout.print(str(store.cache_dir()))
        return
    row = status(name, loaders.model_set_from_env(models))
    if row["path"] is None:
        raise SameditError(f"model `{name}` is not cached; run `samedit models pull {name}`")
    common.stdout.print(row["path"])
