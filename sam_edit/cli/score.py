"""`samedit score`: PIE-Bench metrics of one edit, a folder of edits, or PIE-Bench outputs.

The scoring modules import torch, so they are imported inside the functions that use them,
and `samedit --help` does not load them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sam_edit.cli import common
from sam_edit.errors import SameditError, UsageError
from sam_edit.outputs import check_output

if TYPE_CHECKING:
    from sam_edit.metrics import ScoreModels
    from sam_edit.scoring import MethodScores

Metrics = Annotated[str | None, typer.Option("--metrics", help="Comma-separated metrics; default: the 8 of the PIE-Bench evaluation (structure_distance, psnr/lpips/mse/ssim_unedit_part, clip_similarity_source_image, clip_similarity_target_image, clip_similarity_target_image_edit_part). Whole-image (psnr) and edit-region (psnr_edit_part) variants exist too.", rich_help_panel="Metrics")]
DinoFixed = Annotated[bool, typer.Option("--dino-fixed", help="Divide pixels by 255 before DINO's normalisation. The PIE-Bench evaluation does not, so fixed structure distances do not compare with published ones.", rich_help_panel="Metrics")]
CsvPath = Annotated[Path | None, typer.Option("--csv", help="Write raw scores to this CSV: one line per image, then one `mean` line per method.", rich_help_panel="Output")]
PlotPath = Annotated[Path | None, typer.Option("--plot", help="Write a chart comparing the methods' means on each metric (PNG, or any suffix matplotlib writes).", rich_help_panel="Output")]
Types = Annotated[str | None, typer.Option("--types", help="Comma-separated PIE-Bench editing types to keep, 0 to 9 (e.g. 1,2).", rich_help_panel="PIE-Bench")]
Limit = Annotated[int | None, typer.Option("--limit", help="Keep the first N PIE-Bench images (after --types).", rich_help_panel="PIE-Bench")]


def parse_types(value: str | None) -> list[str] | None:
    """Parse `--types 1,2` into PIE-Bench editing type ids, or None to keep every type.

    Raises `UsageError` for an empty list or a type outside 0 to 9.
    """
    if value is None:
        return None
    from sam_edit.piebench import EDITING_TYPES

    types = [part.strip() for part in value.split(",") if part.strip()]
    if not types:
        raise UsageError("`--types` is empty; give PIE-Bench editing types 0 to 9, e.g. --types 1,2")
    for type_id in types:
        if type_id not in EDITING_TYPES:
            raise UsageError(f"unknown editing type `{type_id}` in `--types`; PIE-Bench types are 0 to 9, e.g. --types 1,2")
    return types


def check_limit(limit: int | None) -> int | None:
    if limit is not None and limit < 0:
        raise UsageError(f"`--limit` {limit} is negative; give 0 or more")
    return limit


def check_plot_suffix(plot: Path | None) -> None:
    """Reject a `--plot` suffix that matplotlib cannot write. A path without a suffix is written as PNG."""
    if plot is None or not plot.suffix:
        return
    from matplotlib.figure import Figure

    formats = sorted(Figure().canvas.get_supported_filetypes())
    if plot.suffix.lstrip(".").lower() not in formats:
        suffixes = ", ".join(f".{name}" for name in formats)
        raise UsageError(f"`--plot` suffix `{plot.suffix}` is not supported; use one of {suffixes}")


@contextmanager
def item_progress(enabled: bool, description: str, total: int) -> Iterator[Callable[[], None] | None]:
    """Yield a function that advances one bar on stderr by one item, or None when disabled."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=common.stderr) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)


def check_outputs(paths: Sequence[Path | None], overwrite: bool) -> None:
    for path in paths:
        if path is not None:
            check_output(path, overwrite)


def print_table(table: Table) -> None:
    """Print a table on stdout; written to a file or a pipe, it is not squeezed to 80 columns."""
    if common.stdout.is_terminal:
        common.stdout.print(table)
        return
    unlimited = common.stdout.options.update(max_width=10_000)
    width = max(common.stdout.width, common.stdout.measure(table, options=unlimited).maximum)
    Console(width=width, highlight=False).print(table)


def show_results(
    results: Sequence[MethodScores],
    metrics: Sequence[str],
    json_output: bool,
    csv_path: Path | None,
    plot_path: Path | None,
    by_type: bool,
    extra: dict | None = None,
) -> None:
    """Print the tables (or the JSON record) on stdout and write the CSV and the plot."""
    from sam_edit import report
    from sam_edit.metrics import mean_scores
    from sam_edit.piebench import EDITING_TYPE_NAMES

    if csv_path is not None:
        report.write_results_csv(csv_path, results, metrics)
        common.stderr.print(f"CSV: {csv_path}", markup=False, highlight=False)
    if plot_path is not None:
        means = {result.label: mean_scores(result.rows, metrics) for result in results}
        report.plot_comparison(means, plot_path, metrics)
        common.stderr.print(f"plot: {plot_path}", markup=False, highlight=False)
    for result in results:
        if result.missing:
            total = len(result.rows) + len(result.missing)
            common.stderr.print(
                f"{result.name}: {len(result.missing)} of {total} edits are missing and were not scored "
                f"(first: {result.missing[0]})",
                markup=False, highlight=False,
            )
    if json_output:
        record = report.results_json(results, metrics, EDITING_TYPE_NAMES if by_type else None)
        common.stdout.print(json.dumps((extra or {}) | record, allow_nan=False))
    elif by_type:
        print_table(report.results_table(results, metrics))
        print_table(report.type_table(results, metrics, EDITING_TYPE_NAMES))
    elif len(results) == 1 and results[0].folder is not None:
        print_table(report.image_table(results[0], metrics))
    else:
        print_table(report.results_table(results, metrics, subject="Scores"))


def load_models(metrics: Sequence[str], device: str, models: str | None) -> ScoreModels:
    """Load the metric models that `metrics` need (none for PSNR, MSE and SSIM)."""
    from sam_edit.models import loaders
    from sam_edit.runtime import resolve_runtime

    common.disable_library_progress_bars()
    return loaders.load_score_models(loaders.model_set_from_env(models), resolve_runtime(device), tuple(metrics))


def check_mode(source, edited, pie_bench, outputs, mask, masks_dir, prompts, types, limit) -> str:
    """Return "pie-bench", "folders" or "pair"; raise `typer.BadParameter` for a mix of modes.

    `prompts` is (--prompt, --source-prompt). A SOURCE or EDITED that does not exist raises
    `SameditError` (exit 1) before the file and folder checks.
    """
    if pie_bench is not None:
        if source is not None or edited is not None:
            raise typer.BadParameter("give SOURCE and EDITED, or --pie-bench with --outputs, not both")
        if not outputs:
            raise typer.BadParameter("--pie-bench needs --outputs DIR, the folder of edits", param_hint="--outputs")
        given = ((mask, "--mask"), (masks_dir, "--masks-dir"), (prompts[0], "--prompt"), (prompts[1], "--source-prompt"))
        for value, option in given:
            if value is not None:
                raise typer.BadParameter("PIE-Bench masks and prompts come from its mapping file", param_hint=option)
        return "pie-bench"
    for value, option in ((outputs or None, "--outputs"), (types, "--types"), (limit, "--limit")):
        if value is not None:
            raise typer.BadParameter("only used with --pie-bench", param_hint=option)
    if source is None or edited is None:
        raise typer.BadParameter("give SOURCE and EDITED (two images or two folders), or --pie-bench DIR --outputs DIR")
    for path, name in ((source, "SOURCE"), (edited, "EDITED")):
        if not path.exists():
            raise SameditError(f"{name} `{path}` not found; give an existing image or folder")
    if source.is_dir() != edited.is_dir():
        raise typer.BadParameter(f"SOURCE `{source}` and EDITED `{edited}` must both be images or both folders")
    if source.is_dir():
        if mask is not None:
            raise typer.BadParameter("for folders, give --masks-dir", param_hint="--mask")
        return "folders"
    if masks_dir is not None:
        raise typer.BadParameter("for one pair, give --mask", param_hint="--masks-dir")
    return "pair"


@common.handle_errors
def score(
    source: Annotated[Path | None, typer.Argument(help="Source photo, or a folder of source photos.", show_default=False)] = None,
    edited: Annotated[Path | None, typer.Argument(help="Edited photo, or a folder of edits with the sources' relative paths.", show_default=False)] = None,
    mask: Annotated[Path | None, typer.Option("--mask", help="Edit region of one pair: a PNG of the source's size (white = edited) or a ranking file from `samedit rank`. Default: none, so the whole image is background.")] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", help="Target prompt for the CLIP scores; an edited samedit PNG's own target prompt takes precedence.")] = None,
    source_prompt: Annotated[str | None, typer.Option("--source-prompt", help="Source prompt for clip_similarity_source_image; an edited samedit PNG's own source prompt takes precedence.")] = None,
    masks_dir: Annotated[Path | None, typer.Option("--masks-dir", help="Folder of edit masks for folder scoring: for source a/cat.jpg, a/cat.rank.json, a/cat.mask.png or a/cat.png. Ranking files beside the sources are used too.", rich_help_panel="Folders")] = None,
    pie_bench: Annotated[Path | None, typer.Option("--pie-bench", help="PIE-Bench folder containing mapping_file.json (directly or under data/) and annotation_images/.", rich_help_panel="PIE-Bench")] = None,
    outputs: Annotated[list[Path] | None, typer.Option("--outputs", help="Edits of PIE-Bench: a method folder laid out by image_path (under annotation_images/ or flat), or a folder of method folders such as `samedit bench --out`. Repeat for several.", rich_help_panel="PIE-Bench")] = None,
    types: Types = None,
    limit: Limit = None,
    metrics: Metrics = None,
    dino_fixed: DinoFixed = False,
    csv_path: CsvPath = None,
    plot: PlotPath = None,
    device: common.Device = "auto",
    models: common.Models = None,
    progress: common.ProgressMode = "auto",
    overwrite: common.Overwrite = False,
    json_output: common.JsonOutput = False,
    quiet: common.Quiet = False,
    verbose: common.Verbose = False,
) -> None:
    """Score edits with the PIE-Bench metrics, computed as PnP Inversion's evaluation does.

    Background metrics (PSNR, LPIPS, MSE, SSIM) multiply both images by (1 - mask) and run
    over the whole frame; structure distance compares DINO self-similarities of the whole
    images; CLIP scores the edit and the edit region against the target prompt. Tables use
    the units of the PnP Inversion paper (structure and LPIPS x10^3, MSE x10^4, SSIM x10^2).
    CSV and JSON contain raw values. A missing edit is skipped with a warning and listed.

    Examples:

        samedit score cat.png tiger.png --mask cat.rank.json --prompt "a tiger on a sofa"

        samedit score photos/ edits/ --masks-dir masks/ --csv scores.csv

        samedit score --pie-bench PIE-Bench/ --outputs runs/ --csv pie.csv --plot pie.png
    """
    from sam_edit import scoring
    from sam_edit.piebench import read_mapping

    mode = check_mode(source, edited, pie_bench, outputs, mask, masks_dir, (prompt, source_prompt), types, limit)
    with common.usage_errors():
        metric_names = scoring.parse_metrics(metrics)
        type_ids = parse_types(types)
        check_limit(limit)
    check_plot_suffix(plot)
    check_outputs((csv_path, plot), overwrite)
    options = {"metrics": metric_names, "dino_fixed": dino_fixed}
    if mode == "pie-bench":
        entries = read_mapping(pie_bench, type_ids, limit)
        folders = scoring.find_method_folders(outputs, entries)
        score_models = load_models(metric_names, device, models)
        with item_progress(common.show_progress(progress, quiet), "scoring", len(entries) * len(folders)) as advance:
            results = scoring.score_methods(score_models, entries, folders, callback=advance, **options)
    else:
        if mode == "folders":
            pairs = scoring.find_pairs(source, edited, masks_dir)
        else:
            pairs = [scoring.Pair(edited.name, source, edited, mask)]
        score_models = load_models(metric_names, device, models)
        with item_progress(common.show_progress(progress, quiet), "scoring", len(pairs)) as advance:
            result = scoring.score_folder(
                score_models, pairs, edited.name, edited if mode == "folders" else None,
                target_prompt=prompt, source_prompt=source_prompt, callback=advance, **options,
            )
        results = [result]
    show_results(results, metric_names, json_output, csv_path, plot, by_type=mode == "pie-bench")
