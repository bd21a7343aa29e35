"""Options shared by the commands, logging setup, progress display and the error boundary.

The CLI modules import only typer, rich, the standard library and torch-free samedit modules
at module level, so that `samedit --help` starts fast. Commands import the stages, the model
loaders and torch inside their functions.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sam_edit.errors import SameditError, UsageError
from sam_edit.models.registry import DEFAULT_SAM

if TYPE_CHECKING:
    from sam_edit.runtime import Runtime
    from sam_edit.stages import Context

stderr = Console(stderr=True)
stdout = Console(soft_wrap=True, highlight=False)

# The spellings that `runtime.resolve_runtime` and `loaders.model_set_from_env` accept. They are
# written out here because those modules import torch, and a test checks that the lists match.
DeviceName = Literal["auto", "cuda", "mps", "cpu"]
DtypeName = Literal["auto", "fp16", "bf16", "fp32"]
OffloadName = Literal["auto", "none", "model", "sequential"]
ModelSetName = Literal["default", "tiny", "random-full"]
SamModelName = Literal["sam-vit-b", "sam-vit-l", "sam-vit-h"]
ProgressName = Literal["auto", "always", "never"]

# Bounds of `--max-side`. SD 1.x was trained at 512 px. The upper bound, 2048 px (16 times the
# latent pixels of 512 px), keeps a large photo from running at its full size and exhausting
# memory. NOTE: 2048 is a judgement, not a measured limit.
MAX_SIDE_MIN = 64
MAX_SIDE_MAX = 2048


def check_max_side(value: int) -> int:
    """Reject a `--max-side` outside its bounds or not a multiple of 8 (the VAE downsamples by 8)."""
    if not MAX_SIDE_MIN <= value <= MAX_SIDE_MAX:
        raise typer.BadParameter(f"{value} is outside {MAX_SIDE_MIN} to {MAX_SIDE_MAX} px")
    if value % 8:
        lower, upper = value // 8 * 8, math.ceil(value / 8) * 8
        raise typer.BadParameter(f"{value} is not a multiple of 8; use {lower} or {upper}")
    return value


Device = Annotated[DeviceName, typer.Option("--device", help="Where models run: auto, cuda, mps or cpu.", rich_help_panel="Runtime")]
Dtype = Annotated[DtypeName, typer.Option("--dtype", help="Weight precision: auto (fp16 on GPU, fp32 on CPU), fp16, bf16 or fp32.", rich_help_panel="Runtime")]
Offload = Annotated[OffloadName, typer.Option("--offload", help="CPU offload on CUDA: auto, none, model or sequential.", rich_help_panel="Runtime")]
Models = Annotated[ModelSetName | None, typer.Option("--models", help="Model set: default (real weights), tiny (random toy models for tests) or random-full (real sizes, random weights, for benchmarks only). Env: SAMEDIT_MODELS.", rich_help_panel="Runtime")]
SamModel = Annotated[SamModelName, typer.Option("--sam-model", help="SAM checkpoint: sam-vit-b, sam-vit-l or sam-vit-h.", rich_help_panel="Runtime")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the noise for methods that start from noise (everything, ip2p, blended); the same seed gives the same image on any device. Recorded in every output.")]
ProgressMode = Annotated[ProgressName, typer.Option("--progress", help="Progress bars on stderr: auto (only on a terminal), always or never.", rich_help_panel="Output")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only results and errors.", rich_help_panel="Output")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log the chosen runtime and models; show tracebacks.", rich_help_panel="Output")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.", rich_help_panel="Output")]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print a JSON record on stdout.", rich_help_panel="Output")]
MaxSide = Annotated[int, typer.Option("--max-side", callback=check_max_side, help=f"Longer side of the working size in pixels, {MAX_SIDE_MIN} to {MAX_SIDE_MAX} in multiples of 8; the output keeps the input's size.")]
ImageArg = Annotated[Path, typer.Argument(help="Input photo (any format Pillow reads).", show_default=False)]


def setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING
    if stderr.is_terminal:
        handler = RichHandler(console=stderr, show_time=False, show_path=False, markup=False)
    else:
        # Piped or redirected stderr gets one plain line per record, which grep and log files keep
        # whole; Rich would wrap it at 80 columns.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("sam_edit").setLevel(level)
    for noisy in ("diffusers", "transformers", "huggingface_hub", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # Their loading bars would mix with ours on stderr; samedit draws one bar per loop.
    # huggingface_hub, and transformers through it, read this variable when first imported.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def disable_library_progress_bars() -> None:
    """Turn off the loading bars and warnings of diffusers and transformers on stderr.

    Both libraries reset their loggers' level when first imported, which the CLI does late, so
    `setup_logging` alone cannot silence them. Imports both, so only commands that load models call it.
    """
    import diffusers.utils.logging
    import transformers.utils.logging

    for library in (diffusers.utils.logging, transformers.utils.logging):
        library.disable_progress_bar()
        library.set_verbosity_error()


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


@contextmanager
def usage_errors() -> Iterator[None]:
    """Re-raise a `SameditError` from the block as `UsageError`, so the CLI exits 2.

    For library calls whose only checks are on flag values, such as building an `EditRequest`.
    """
    try:
        yield
    except UsageError:
        raise
    except SameditError as error:
        raise UsageError(str(error)) from error


def show_progress(mode: str, quiet: bool) -> bool:
    if mode not in ("auto", "always", "never"):
        raise UsageError(f"`--progress` must be auto, always or never, got {mode!r}")
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


@dataclass(frozen=True)
class RunOptions:
    """The runtime flags of a command that loads models, and its progress display."""

    device: str = "auto"  # --device
    dtype: str = "auto"  # --dtype
    offload: str = "auto"  # --offload
    models: str | None = None  # --models; None: SAMEDIT_MODELS, else "default"
    sam_model: str = DEFAULT_SAM  # --sam-model
    progress: str = "never"  # --progress; commands without the flag draw no bars
    quiet: bool = False  # --quiet turns the bars off too

    def __post_init__(self) -> None:
        # `resolve_runtime` also rejects this pair, but as a run-time error (exit 1) after
        # importing torch. Checked here, it is a usage error (exit 2).
        if self.device == "cpu" and self.dtype == "fp16":
            raise typer.BadParameter("fp16 is not supported with `--device cpu`; use fp32 or bf16", param_hint="--dtype")

    @property
    def show_progress(self) -> bool:
        return show_progress(self.progress, self.quiet)

    def runtime(self) -> Runtime:
        """Resolve `--device`, `--dtype` and `--offload` with the device's memory profile."""
        from sam_edit.runtime import resolve_runtime

        return resolve_runtime(self.device, self.dtype, self.offload)

    def model_set(self) -> str:
        """Return `--models`, else `SAMEDIT_MODELS`, else "default"."""
        from sam_edit.models.loaders import model_set_from_env

        return model_set_from_env(self.models)

    def make_context(self, callback=None, runtime: Runtime | None = None) -> Context:
        """Return the stages' context: runtime (resolved here unless given), model set, SAM model."""
        from sam_edit.stages import Context

        disable_library_progress_bars()
        runtime = runtime or self.runtime()
        return Context(runtime=runtime, model_set=self.model_set(), sam_model=self.sam_model, callback=callback)

    @contextmanager
    def context_with_progress(self, num_steps: int) -> Iterator[Context]:
        """Yield the context whose step callback draws the bars, one per loop of `num_steps`."""
        with progress_bars(self.show_progress, num_steps) as callback:
            yield self.make_context(callback)


def check_outputs(paths: Iterable[Path | None], overwrite: bool, inputs: tuple[Path | None, ...] = ()) -> list[Path | None]:
    """Check every output path before any work is done; return them resolved, None left as None.

    Raises `SameditError` for a path that is an input, exists without `--overwrite`, or has no
    writable folder (see `outputs.check_output`).
    """
    from sam_edit.outputs import check_output

    return [None if path is None else check_output(path, overwrite, inputs) for path in paths]


def print_result(output: Path, record: dict, json_output: bool) -> None:
    """Print the JSON record on stdout with `--json`, else only the output path."""
    if json_output:
        stdout.print(json.dumps(record))
    else:
        stdout.print(str(output))
