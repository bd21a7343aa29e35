"""`samedit bench`: run editing methods over PIE-Bench, then score and compare them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sam_edit.cli import common
from sam_edit.cli.score import (
    CsvPath,
    DinoFixed,
    Limit,
    Metrics,
    PlotPath,
    Types,
    check_limit,
    check_plot_suffix,
    item_progress,
    load_models,
    parse_types,
    show_results,
)
from sam_edit.errors import SameditError, UsageError
from sam_edit.models.registry import DEFAULT_SAM

if TYPE_CHECKING:
    from sam_edit import bench as runner
    from sam_edit import shards

# PnP Inversion's seed for every PIE-Bench edit; equal to `sam_edit.bench.DEFAULT_SEED`, which
# a test checks. It is repeated here because that module imports torch.
DEFAULT_SEED = 1234


def check_out_folder(out: Path) -> None:
    """Reject an `--out` that exists and is not a folder, before any work."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"`--out` `{out}` exists and is not a folder; give a folder path (it is created if missing)")


def print_summary(summary: runner.BenchSummary, shard: shards.Shard) -> None:
    """Report the counts on stderr, then each failed edit on one line (the only place it is printed)."""
    where = f" (shard {shard})" if shard.count > 1 else ""
    common.stderr.print(
        f"edited {summary.edited}, skipped {summary.skipped} finished before, failed {len(summary.failed)}{where}",
        markup=False, highlight=False,
    )
    for failure in summary.failed:
        common.stderr.print(f"failed: {failure['method']} {failure['id']}: {failure['error']}",
                            markup=False, highlight=False)


def raise_if_failed(summary: runner.BenchSummary, attempted: int) -> None:
    """Raise `SameditError` (exit 1) naming how many of the `attempted` edits failed."""
    if summary.failed:
        raise SameditError(
            f"{len(summary.failed)} of {attempted} edits failed (listed above); "
            "run the same command again to retry them"
        )


@common.handle_errors
def bench(
    pie_bench: Annotated[Path, typer.Option("--pie-bench", help="PIE-Bench folder containing mapping_file.json (directly or under data/) and annotation_images/.", show_default=False)],
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated editing methods, e.g. p2p,pnp,residual.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Output folder: METHOD/annotation_images/<image_path>.png per edit, masks/, and the bench.json manifest.", show_default=False)],
    types: Types = None,
    limit: Limit = None,
    shard: Annotated[str | None, typer.Option("--shard", help="Run entries I, I+N, I+2N, ... of the selection (I/N, from 0). Default under `accelerate launch` or torchrun: this process's rank of the process count.", rich_help_panel="PIE-Bench")] = None,
    use_gt_mask: Annotated[bool, typer.Option("--use-gt-mask", help="Edit with PIE-Bench's ground-truth mask instead of SAM + CLIP. Background metrics then become close to trivial; tables mark such runs with †.", rich_help_panel="PIE-Bench")] = False,
    steps: Annotated[int | None, typer.Option("--steps", help="DDIM steps; default: each method's own (50; 20 for everything).", show_default=False)] = None,
    max_side: common.MaxSide = 512,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of every edit (PnP Inversion uses 1234).")] = DEFAULT_SEED,
    score: Annotated[bool, typer.Option("--score/--no-score", help="Score the edits at the end and print the comparison table.", rich_help_panel="Metrics")] = True,
    metrics: Metrics = None,
    dino_fixed: DinoFixed = False,
    csv_path: CsvPath = None,
    plot: PlotPath = None,
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
    """Edit every PIE-Bench image with each method, then score and compare the methods.

    Edits go to OUT/METHOD/annotation_images/, the layout `samedit score --pie-bench` reads.
    A rerun skips finished edits and redoes interrupted ones; edits of one OUT folder must
    share --steps, --max-side, --seed, --models, --sam-model and --use-gt-mask. Edit masks
    come from SAM + CLIP (ranked against the blended word) unless --use-gt-mask is given.

    Examples:

        samedit bench --pie-bench PIE-Bench/ --methods p2p,pnp,residual --out runs/

        samedit bench --pie-bench PIE-Bench/ --methods residual --types 1,2 --limit 20 --out runs/

        accelerate launch --multi_gpu --num_processes 4 -m sam_edit bench --pie-bench PIE-Bench/ --methods pnp --out runs/
    """
    from sam_edit import bench as runner
    from sam_edit import scoring, shards
    from sam_edit.piebench import find_mapping_file, read_mapping

    run = common.RunOptions(device, dtype, offload, models, sam_model, progress, quiet)
    check_out_folder(out)
    with common.usage_errors():
        config = runner.BenchConfig(runner.check_methods(methods.split(",")), steps, max_side, seed, use_gt_mask)
        metric_names = scoring.parse_metrics(metrics)
        explicit_shard = shards.parse_shard(shard) if shard else None
        type_ids = parse_types(types)
        check_limit(limit)
    check_plot_suffix(plot)
    common.check_outputs((csv_path, plot), overwrite)
    entries = read_mapping(pie_bench, type_ids, limit)

    # 1. Which entries this process edits, and on which device.
    runtime = shards.process_runtime(run.runtime())
    launched_shard = None if explicit_shard else shards.join_launch()
    this_shard = explicit_shard or launched_shard or shards.Shard()
    context = run.make_context(runtime=runtime)
    runner.update_manifest(out, config, context, find_mapping_file(pie_bench))

    # 2. Edit.
    selected = this_shard.select(entries)
    show = run.show_progress
    with item_progress(show, "editing", len(selected) * len(config.methods)) as advance:
        summary = runner.run_bench(selected, out, config, context, (lambda event: advance()) if advance else None)
    print_summary(summary, this_shard)
    attempted = len(selected) * len(config.methods)

    # 3. Score: under a launcher the first process scores everything once all have finished.
    # Failed edits are missing from the scores; the run exits 1 after scoring when any failed.
    scored = selected
    if launched_shard is not None:
        shards.wait_for_all_shards()
        if launched_shard.index != 0:
            raise_if_failed(summary, attempted)
            return
        scored = entries
    elif this_shard.count > 1 and score:
        common.stderr.print(
            f"scores cover shard {this_shard} only; when every shard is done, run "
            f"`samedit score --pie-bench {pie_bench} --outputs {out}`", markup=False, highlight=False,
        )
    extra = {"bench": {"out": str(out), "shard": str(this_shard), "edited": summary.edited,
                       "skipped": summary.skipped, "failed": summary.failed}}
    if not score:
        if json_output:
            common.stdout.print(json.dumps(extra))
        raise_if_failed(summary, attempted)
        return
    folders = {name: out / name for name in config.methods if scoring.has_edits(out / name, scored)}
    if not folders:
        raise_if_failed(summary, attempted)
        raise SameditError(f"no method produced an edit under `{out}`; nothing to score")
    score_models = load_models(metric_names, device, models)
    with item_progress(show, "scoring", len(scored) * len(folders)) as advance:
        results = scoring.score_methods(score_models, scored, folders, metric_names, dino_fixed, advance)
    show_results(results, metric_names, json_output, csv_path, plot, by_type=True, extra=extra)
    raise_if_failed(summary, attempted)
