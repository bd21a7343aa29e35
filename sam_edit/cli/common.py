"""Options shared by the commands, logging setup, progress display and the error boundary."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import diffusers.utils.logging
import transformers.utils.logging
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sam_edit.errors import SameditError, UsageError
from sam_edit.images import DEFAULT_MAX_SIDE
from sam_edit.models.loaders import model_set_from_env
from sam_edit.models.registry import DEFAULT_SAM
from sam_edit.runtime import resolve_runtime
from sam_edit.stages import Context

stderr = Console(stderr=True)
stdout = Console(soft_wrap=True, highlight=False)

Device = Annotated[str, typer.Option("--device", help="Where models run: auto, cuda, mps or cpu.", rich_help_panel="Runtime")]
Dtype = Annotated[str, typer.Option("--dtype", help="Weight precision: auto (fp16 on GPU, fp32 on CPU), fp16, bf16 or fp32.", rich_help_panel="Runtime")]
Offload = Annotated[str, typer.Option("--offload", help="CPU offload on CUDA: auto, none, model or sequential.", rich_help_panel="Runtime")]
Models = Annotated[str | None, typer.Option("--models", help="Model set: default (real weights), tiny (random toy models for tests) or random-full (real sizes, random weights, for benchmarks only). Env: SAMEDIT_MODELS.", rich_help_panel="Runtime")]
SamModel = Annotated[str, typer.Option("--sam-model", help="SAM checkpoint: sam-vit-b, sam-vit-l or sam-vit-h.", rich_help_panel="Runtime")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the noise for methods that start from noise (everything, ip2p, blended); the same seed gives the same image on any device. Recorded in every output.")]
ProgressMode = Annotated[str, typer.Option("--progress", help="Progress bars on stderr: auto (only on a terminal), always or never.", rich_help_panel="Output")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only results and errors.", rich_help_panel="Output")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log the chosen runtime and models; show tracebacks.", rich_help_panel="Output")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.", rich_help_panel="Output")]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print a JSON record on stdout.", rich_help_panel="Output")]
MaxSide = Annotated[int, typer.Option("--max-side", help="Longer side of the working size in pixels (a multiple of 8); the output keeps the input's size.")]
ImageArg = Annotated[Path, typer.Argument(help="Input photo (any format Pillow reads).", show_default=False)]


def setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING
    handler = RichHandler(console=stderr, show_time=False, show_path=False, markup=False)
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("sam_edit").setLevel(level)
    for noisy in ("diffusers", "transformers", "huggingface_hub", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # Their loading bars would mix with ours on stderr; samedit draws one bar per loop.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def make_context(device: str, dtype: str, offload: str, models: str | None, sam_model: str = DEFAULT_SAM,
                 callback=None) -> Context:
    runtime = resolve_runtime(device, dtype, offload)
    return Context(runtime=runtime, model_set=model_set_from_env(models), sam_model=sam_model, callback=callback)


def handle_errors(command: Callable) -> Callable:
    """Turn `SameditError` into one line on stderr and exit code 1 (2 for `UsageError`). `-v` adds the traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        verbose, quiet = kwargs.get("verbose", False), kwargs.get("quiet", False)
        setup_logging(verbose, quiet)
        try:
            return command(*args, **kwargs)
        except SameditError as error:
            if verbose:
                stderr.print_exception()
            stderr.print(f"Error: {error}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(code=2 if isinstance(error, UsageError) else 1) from None
        except KeyboardInterrupt:
            stderr.print("Interrupted; no partial output was written.", markup=False)
            raise typer.Exit(code=130) from None

    return wrapper


def show_progress(mode: str, quiet: bool) -> bool:
    if mode not in ("auto", "always", "never"):
        raise SameditError(f"`--progress` must be auto, always or never, got {mode!r}")
    if quiet or mode == "never":
        return False
    return mode == "always" or sys.stderr.isatty()


@contextmanager
def progress_bars(enabled: bool, num_steps: int):
    """Yield a step callback that drives one bar per loop (inversion, editing) on stderr."""
    if not enabled:
        yield None
        return
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=stderr, transient=False,
    )
    tasks = {}

    def callback(state: dict) -> None:
        stage = state["stage"]
        if stage not in tasks:
            tasks[stage] = progress.add_task(stage, total=num_steps)
        progress.update(tasks[stage], completed=state["i"] + 1)

    with progress:
        yield callback
