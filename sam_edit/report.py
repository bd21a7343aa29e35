"""Presentation of metric scores: a rich table, CSV, JSON and a comparison plot.

Rows are the dicts that `metrics.score_pair` or `piebench.score_outputs` return, optionally
with an `id` and an `editing_type_id`. CSV and JSON contain raw values by default, tables and
plots the values at `metrics.PAPER_SCALE` (the units of the PnP Inversion paper's tables).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from rich.table import Table

from sam_edit.metrics import (
    HIGHER_IS_BETTER,
    METRIC_NAMES,
    PAPER_SCALE,
    count_scores,
    mean_scores,
    metric_family,
    to_paper_scale,
)
from sam_edit.outputs import atomic_path
from sam_edit.scoring import GROUND_TRUTH_NOTE

ID_COLUMNS = ("id", "editing_type_id")
MEAN_ROW_ID = "mean"
_FAMILY_LABELS = {
    "structure_distance": "Structure", "psnr": "PSNR", "lpips": "LPIPS", "mse": "MSE", "ssim": "SSIM"
}
_REGION_LABELS = {"": "", "_unedit_part": " bg", "_edit_part": " edit"}
_CLIP_LABELS = {
    "clip_similarity_source_image": "CLIP source",
    "clip_similarity_target_image": "CLIP whole",
    "clip_similarity_target_image_edit_part": "CLIP edited",
}
_SUPERSCRIPTS = {1e2: "10²", 1e3: "10³", 1e4: "10⁴"}


def metric_label(name: str, paper_scale: bool = True) -> str:
    """Return a short column label: "PSNR bg ↑", "LPIPS bg ×10³ ↓", "CLIP edited ↑"."""
    family = metric_family(name)
    if family == "clip":
        label = _CLIP_LABELS[name]
    else:
        label = _FAMILY_LABELS[family] + _REGION_LABELS[name[len(family):]]
    if paper_scale and PAPER_SCALE[name] != 1.0:
        label += f" ×{_SUPERSCRIPTS[PAPER_SCALE[name]]}"
    return label + (" ↑" if HIGHER_IS_BETTER[name] else " ↓")


def format_value(value: float, paper_scale: bool = True) -> str:
    """Format a score with 2 decimals at paper scale or 4 significant digits raw; NaN as "nan"."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.2f}" if paper_scale else f"{value:.4g}"


def _metrics_in(rows: Iterable[Mapping[str, object]]) -> list[str]:
    present = {key for row in rows for key in row}
    return [name for name in METRIC_NAMES if name in present]


def scores_table(
    scores_by_label: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] | None = None,
    paper_scale: bool = True,
    label_header: str = "method",
    title: str | None = None,
) -> Table:
    """Build a rich table with one row per label (a method, an image) and one column per metric."""
    metrics = list(metrics) if metrics is not None else _metrics_in(scores_by_label.values())
    table = Table(title=title)
    table.add_column(label_header)
    for name in metrics:
        table.add_column(metric_label(name, paper_scale), justify="right")
    for label, scores in scores_by_label.items():
        scaled = to_paper_scale(scores) if paper_scale else scores
        values = [float(scaled.get(name, math.nan)) for name in metrics]
        table.add_row(label, *(format_value(value, paper_scale) for value in values))
    return table


def write_csv(
    target: Path | TextIO,
    rows: Sequence[Mapping[str, object]],
    metrics: Sequence[str] | None = None,
    paper_scale: bool = False,
) -> None:
    """Write one line per image and a last line with the NaN-skipping means (id `mean`).

    Columns: `id`, `editing_type_id`, then the metrics. NaN is written `nan`, as the
    evaluation script writes it. A path is written atomically.
    """
    metrics = list(metrics) if metrics is not None else _metrics_in(rows)
    if isinstance(target, (str, Path)):
        with atomic_path(Path(target)) as temporary:
            with open(temporary, "w", newline="", encoding="utf-8") as handle:
                _write_csv_rows(handle, rows, metrics, paper_scale)
    else:
        _write_csv_rows(target, rows, metrics, paper_scale)


def _write_csv_rows(handle: TextIO, rows, metrics: list[str], paper_scale: bool) -> None:
    writer = csv.writer(handle)
    writer.writerow([*ID_COLUMNS, *metrics])
    mean_row = {"id": MEAN_ROW_ID, "editing_type_id": "", **mean_scores(rows, metrics)}
    for row in [*rows, mean_row]:
        scaled = to_paper_scale(row) if paper_scale else row
        values = [repr(float(scaled.get(name, math.nan))) for name in metrics]
        writer.writerow([row.get("id", ""), row.get("editing_type_id", ""), *values])


def json_value(value: object) -> object:
    """Return a value that strict JSON can hold: NaN and infinities become None (JSON null).

    A metric column then holds only numbers and nulls. NOTE: null does not tell an infinite
    PSNR (identical images) from a NaN (empty region); the CSV and the tables keep "inf".
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def scores_json(
    rows: Sequence[Mapping[str, object]],
    metrics: Sequence[str] | None = None,
    paper_scale: bool = False,
) -> dict[str, object]:
    """Build a JSON-ready record: metric names, scale factors, per-image rows, means and counts.

    `count` is the number of non-NaN values behind each mean. Values pass through `json_value`,
    so `json.dumps(..., allow_nan=False)` accepts the record.
    """
    metrics = list(metrics) if metrics is not None else _metrics_in(rows)
    means = mean_scores(rows, metrics)
    if paper_scale:
        rows, means = [to_paper_scale(row) for row in rows], to_paper_scale(means)
    return {
        "metrics": metrics,
        "paper_scale": paper_scale,
        "scale_factors": {name: PAPER_SCALE[name] for name in metrics},
        "images": [{key: json_value(value) for key, value in row.items()} for row in rows],
        "mean": {name: json_value(value) for name, value in means.items()},
        "count": count_scores(rows, metrics),
    }


def plot_comparison(
    means_by_method: Mapping[str, Mapping[str, float]],
    path: Path,
    metrics: Sequence[str] | None = None,
    paper_scale: bool = True,
    columns: int = 4,
) -> Path:
    """Draw one bar panel per metric, one bar per method, and save it (format from the suffix).

    Uses matplotlib's Agg canvas directly, so no GUI backend or global pyplot state is touched.
    A NaN mean leaves its bar out.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    metrics = list(metrics) if metrics is not None else _metrics_in(means_by_method.values())
    methods = list(means_by_method)
    rows = max(1, math.ceil(len(metrics) / columns))
    width = 3.2 * min(columns, max(1, len(metrics)))
    figure = Figure(figsize=(width, 2.8 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    for index, name in enumerate(metrics):
        axes = figure.add_subplot(rows, columns, index + 1)
        scale = PAPER_SCALE[name] if paper_scale else 1.0
        values = [float(means_by_method[method].get(name, math.nan)) * scale for method in methods]
        finite = [position for position, value in enumerate(values) if math.isfinite(value)]
        axes.bar(finite, [values[position] for position in finite], color=f"C{index % 10}")
        axes.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        axes.set_title(metric_label(name, paper_scale), fontsize=10)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=path.suffix.lstrip(".") or "png", dpi=120)
    return path


# Results of several methods ----------------------------------------------------------------
# `results` are `scoring.MethodScores`: a method's label, rows (one per image) and missing ids.


def scale_note(metrics: Sequence[str]) -> str:
    """Describe the paper-scale factors of `metrics`, e.g. "Structure ×10³, LPIPS ×10³"."""
    parts = []
    for name in metrics:
        family = metric_family(name)
        if PAPER_SCALE[name] != 1.0:
            part = f"{_FAMILY_LABELS[family]} ×{_SUPERSCRIPTS[PAPER_SCALE[name]]}"
            if part not in parts:
                parts.append(part)
    return ", ".join(parts)


def _table_title(subject: str, metrics: Sequence[str]) -> str:
    note = scale_note(metrics)
    scale = f"; {note} as in the PnP Inversion paper" if note else ""
    return f"{subject} (means over images, NaN skipped{scale})"


def _footnote(results) -> str | None:
    return GROUND_TRUTH_NOTE if any(result.ground_truth_mask for result in results) else None


def _add_means_row(table: Table, labels: Sequence[str], rows, metrics: Sequence[str]) -> None:
    scaled = to_paper_scale(mean_scores(rows, metrics))
    values = (format_value(float(scaled[name])) for name in metrics)
    table.add_row(*labels, str(len(rows)), *values)


def results_table(results, metrics: Sequence[str], subject: str = "PIE-Bench") -> Table:
    """Build a rich table with one row per method: label, image count and each metric's mean."""
    table = Table(title=_table_title(subject, metrics), caption=_footnote(results))
    table.add_column("method")
    table.add_column("images", justify="right")
    for name in metrics:
        table.add_column(metric_label(name), justify="right")
    for result in results:
        _add_means_row(table, [result.label], result.rows, metrics)
    return table


def type_table(results, metrics: Sequence[str], type_names: Mapping[str, str]) -> Table:
    """Build a rich table of means per editing type and method, types in `type_names` order."""
    table = Table(title=_table_title("By editing type", metrics), caption=_footnote(results))
    for header in ("type", "method"):
        table.add_column(header)
    table.add_column("images", justify="right")
    for name in metrics:
        table.add_column(metric_label(name), justify="right")
    for type_id, type_name in type_names.items():
        for result in results:
            rows = [row for row in result.rows if row.get("editing_type_id") == type_id]
            if rows:
                _add_means_row(table, [f"{type_id} {type_name}", result.label], rows, metrics)
    return table


def image_table(result, metrics: Sequence[str]) -> Table:
    """Build a rich table with one row per image of one method, then the means."""
    table = Table(title=_table_title(result.label, metrics), caption=_footnote([result]))
    table.add_column("image")
    for name in metrics:
        table.add_column(metric_label(name), justify="right")
    for row in [*result.rows, {"id": MEAN_ROW_ID, **mean_scores(result.rows, metrics)}]:
        scaled = to_paper_scale(row)
        table.add_row(str(row["id"]), *(format_value(float(scaled[name])) for name in metrics))
    return table


def write_results_csv(target: Path | TextIO, results, metrics: Sequence[str], paper_scale: bool = False) -> None:
    """Write one line per image and a `mean` line per method, with a leading `method` column.

    Values are raw unless `paper_scale`; NaN is written `nan`. A path is written atomically.
    """
    if isinstance(target, (str, Path)):
        with atomic_path(Path(target)) as temporary:
            with open(temporary, "w", newline="", encoding="utf-8") as handle:
                write_results_csv(handle, results, metrics, paper_scale)
        return
    writer = csv.writer(target)
    writer.writerow(["method", *ID_COLUMNS, *metrics])
    for result in results:
        mean_row = {"id": MEAN_ROW_ID, "editing_type_id": "", **mean_scores(result.rows, metrics)}
        for row in [*result.rows, mean_row]:
            scaled = to_paper_scale(row) if paper_scale else row
            values = [repr(float(scaled.get(name, math.nan))) for name in metrics]
            writer.writerow([result.name, row.get("id", ""), row.get("editing_type_id", ""), *values])


def results_json(results, metrics: Sequence[str], type_names: Mapping[str, str] | None = None) -> dict[str, object]:
    """Build a JSON-ready record of raw scores: per method its images, means, counts and missing ids.

    With `type_names`, each method also gets `mean_by_type` for the types it has images of.
    """
    methods = []
    for result in results:
        record = scores_json(result.rows, metrics)
        del record["metrics"], record["paper_scale"], record["scale_factors"]
        record = {
            "name": result.name,
            "folder": None if result.folder is None else str(result.folder),
            "ground_truth_mask": result.ground_truth_mask,
            "missing": list(result.missing),
            **record,
        }
        if type_names is not None:
            record["mean_by_type"] = {
                type_id: {name: json_value(value) for name, value in mean_scores(rows, metrics).items()}
                for type_id in type_names
                if (rows := [row for row in result.rows if row.get("editing_type_id") == type_id])
            }
        methods.append(record)
    return {
        "metrics": list(metrics),
        "paper_scale": False,
        "scale_factors": {name: PAPER_SCALE[name] for name in metrics},
        "methods": methods,
    }
