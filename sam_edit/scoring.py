"""Scoring edits from files: one pair, a folder of pairs, or PIE-Bench edits of several methods.

Every mode returns `MethodScores`: the per-image rows of `metrics.score_pair` for one method
(or one folder), the images whose edit is missing, and whether the edits were made with the
ground-truth PIE-Bench mask. `report` turns them into tables, CSV, JSON and a plot.

Pairing rules for a folder of pairs (`find_pairs`). Each image under the source folder pairs
with the file of the same relative path under the edited folder. The edit may have another
image suffix, so `cat.jpg` pairs with `cat.png`. For the source `a/cat.jpg` the edit mask is
the first of these that exists:

1. `MASKS_DIR/a/cat.rank.json`, a ranking file from `samedit rank`;
2. `MASKS_DIR/a/cat.mask.png`, then `MASKS_DIR/a/cat.png`, a PNG with white = edit;
3. `SOURCE_DIR/a/cat.rank.json`, a ranking file next to the source.

Without a mask the edit region is empty: background metrics then cover the whole image and
edit-region metrics are NaN. Prompts come from the edited PNG's `samedit` settings when it
has them, else from the prompts the caller passes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sam_edit import artifacts
from sam_edit.errors import ImageError, SameditError
from sam_edit.images import LoadedImage, load_image, load_mask, read_png_settings
from sam_edit.metrics import (
    DEFAULT_METRICS,
    METRIC_NAMES,
    ScoreModels,
    check_metrics,
    empty_region_metrics,
    empty_region_warning,
    nan_phrase,
    score_pair,
)
from sam_edit.piebench import EDITED_SUFFIXES, PieBenchEntry, find_edited_image, score_outputs

logger = logging.getLogger(__name__)

GROUND_TRUTH_MARK = "†"
GROUND_TRUTH_NOTE = (
    f"{GROUND_TRUTH_MARK} edited with the ground-truth PIE-Bench mask, "
    "which makes background metrics close to trivial"
)
MANIFEST_NAME = "bench.json"  # written by `samedit bench` into its output folder
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# Files that samedit's stages write beside a source image; they are not sources themselves.
STAGE_OUTPUT_SUFFIXES = (".rank.mask.png", ".rank.preview.png", ".masks.composite.png", ".mask.png")

ImageCallback = Callable[[], None]  # called once per image scored or found missing


@dataclass
class MethodScores:
    """The scores of one method (or one folder of edits) over a set of images."""

    name: str  # method name, or the edited folder's name
    folder: Path | None  # where the edits are; None for a single pair
    rows: list[dict[str, object]] = field(default_factory=list)  # `id`, `editing_type_id`, metrics
    missing: list[str] = field(default_factory=list)  # ids of images without an edit
    ground_truth_mask: bool = False  # some edit was made with the ground-truth PIE-Bench mask

    @property
    def label(self) -> str:
        """The name as tables show it, marked when the ground-truth mask was used for editing."""
        return f"{self.name} {GROUND_TRUTH_MARK}" if self.ground_truth_mask else self.name


def parse_metrics(value: str | None) -> tuple[str, ...]:
    """Parse `--metrics a,b`; None or "" gives the eight PIE-Bench metrics."""
    if not value:
        return DEFAULT_METRICS
    names = tuple(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown or not names:
        raise SameditError(
            f"unknown metric `{unknown[0] if unknown else value}` in `--metrics`; known metrics: {', '.join(METRIC_NAMES)}"
        )
    return names


# PIE-Bench method folders ------------------------------------------------------------------


def has_edits(folder: Path, entries: Sequence[PieBenchEntry]) -> bool:
    return any(find_edited_image(folder, entry) is not None for entry in entries)


def manifest_methods(folder: Path) -> list[str] | None:
    """Return the methods listed in a `samedit bench` manifest in `folder`, or None."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        methods = json.loads(path.read_text(encoding="utf-8")).get("methods")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise SameditError(f"cannot read the bench manifest `{path}`: {error}") from error
    return [str(name) for name in methods] if isinstance(methods, list) else None


def find_method_folders(outputs: Sequence[Path], entries: Sequence[PieBenchEntry]) -> dict[str, Path]:
    """Map method names to folders of edits; raise `SameditError` when a folder has none.

    Each path in `outputs` is either one method's folder (laid out by `image_path`, under
    `annotation_images/` or flat) or a folder of such method folders, as PnP Inversion's
    `output/<method>/annotation_images/...` and `samedit bench --out`. A bench manifest gives
    the methods' order; otherwise subfolders are taken in name order.
    """
    folders: dict[str, Path] = {}
    for root in map(Path, outputs):
        if not root.is_dir():
            raise SameditError(f"outputs folder `{root}` not found")
        if has_edits(root, entries):
            found = [root]
        else:
            names = manifest_methods(root)
            candidates = [root / name for name in names] if names else sorted(root.iterdir())
            found = [path for path in candidates if path.is_dir() and not path.name.startswith(".")
                     and has_edits(path, entries)]
        if not found:
            raise SameditError(
                f"no edit of the {len(entries)} PIE-Bench images under `{root}` or its subfolders; "
                "expected METHOD/annotation_images/<image_path> or <image_path> with any image suffix"
            )
        for path in found:
            if path.name in folders and folders[path.name] != path:
                raise SameditError(f"two outputs folders are named `{path.name}`: `{folders[path.name]}` and `{path}`")
            folders[path.name] = path
    return folders


def used_ground_truth_mask(path: Path) -> bool:
    """Return whether a samedit PNG records editing with the ground-truth PIE-Bench mask."""
    if path.suffix.lower() != ".png":
        return False
    try:
        settings = read_png_settings(path)
    except (ImageError, json.JSONDecodeError):
        return False
    bench = settings.get("bench")
    return isinstance(bench, dict) and bench.get("use_gt_mask") is True


def score_methods(
    models: ScoreModels,
    entries: Sequence[PieBenchEntry],
    folders: dict[str, Path],
    metrics: Sequence[str] = DEFAULT_METRICS,
    dino_fixed: bool = False,
    callback: ImageCallback | None = None,
) -> list[MethodScores]:
    """Score every method's edits of `entries`; a missing edit is logged and listed, not scored."""
    metrics = check_metrics(models, metrics)
    results = []
    for name, folder in folders.items():
        edited = {entry.id: find_edited_image(folder, entry) for entry in entries}
        present = [entry for entry in entries if edited[entry.id] is not None]
        result = MethodScores(name, folder, missing=[entry.id for entry in entries if edited[entry.id] is None])
        if result.missing:
            # Logged at INFO because `MethodScores.missing` carries the list, and the CLI prints it once.
            logger.info(
                "%s: %d of %d PIE-Bench edits are missing (first %s); they are not scored",
                name, len(result.missing), len(entries), result.missing[0],
            )
        if callback:
            for _ in result.missing:
                callback()  # keeps a progress bar over entries x methods complete
        result.ground_truth_mask = any(used_ground_truth_mask(edited[entry.id]) for entry in present)
        scored = score_outputs(models, present, folder, metrics, dino_fixed,
                               callback=(lambda index, entry: callback()) if callback else None)
        result.rows = list(scored)
        results.append(result)
    return results


# Pairs and folders of pairs ----------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """A source image, its edit (None when missing) and the file holding its edit mask."""

    id: str  # the source's path relative to its folder, or the edited file for one pair
    source: Path
    edited: Path | None
    mask: Path | None  # a mask PNG or a ranking JSON; None = empty edit region


def is_source_image(path: Path) -> bool:
    name = path.name.lower()
    return (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".")
            and not name.endswith(STAGE_OUTPUT_SUFFIXES))


def find_edit(edited_dir: Path, relative: Path) -> Path | None:
    for suffix in dict.fromkeys((relative.suffix, *EDITED_SUFFIXES)):
        candidate = edited_dir / relative.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def find_mask(relative: Path, source_dir: Path, masks_dir: Path | None) -> Path | None:
    """Return the mask file of a source by the naming rule in the module docstring."""
    stem = relative.with_suffix("")
    candidates = []
    if masks_dir is not None:
        candidates += [masks_dir / f"{stem}.rank.json", masks_dir / f"{stem}.mask.png", masks_dir / f"{stem}.png"]
    candidates.append(source_dir / f"{stem}.rank.json")
    return next((path for path in candidates if path.is_file()), None)


def find_pairs(source_dir: Path, edited_dir: Path, masks_dir: Path | None = None) -> list[Pair]:
    """Pair every image under `source_dir` with its edit under `edited_dir` by relative path."""
    source_dir, edited_dir = Path(source_dir), Path(edited_dir)
    for folder in (source_dir, edited_dir, masks_dir):
        if folder is not None and not Path(folder).is_dir():
            raise SameditError(f"folder `{folder}` not found")
    skipped = [folder.resolve() for folder in (edited_dir, masks_dir) if folder is not None]
    pairs = []
    for path in sorted(source_dir.rglob("*")):
        if not is_source_image(path) or any(path.resolve().is_relative_to(folder) for folder in skipped):
            continue
        relative = path.relative_to(source_dir)
        pairs.append(Pair(relative.as_posix(), path, find_edit(edited_dir, relative),
                          find_mask(relative, source_dir, masks_dir)))
    if not pairs:
        raise SameditError(f"no images in `{source_dir}`; expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    return pairs


def read_edit_mask(path: Path | None, loaded: LoadedImage) -> np.ndarray:
    """Return the `[H, W]` bool edit mask from a mask PNG or a ranking file; empty for None."""
    if path is None:
        return np.zeros(loaded.size[::-1], dtype=bool)
    if Path(path).suffix.lower() == ".json":
        return artifacts.read_ranking(path, loaded).mask
    return load_mask(path, loaded.size)


def pair_prompts(edited: Path, target_prompt: str | None, source_prompt: str | None) -> tuple[str | None, str | None]:
    """Return (target prompt, source prompt): the edited PNG's settings first, then the given ones."""
    settings = {}
    if edited.suffix.lower() == ".png":
        try:
            settings = read_png_settings(edited)
        except (ImageError, json.JSONDecodeError):
            settings = {}
    return settings.get("target_prompt") or target_prompt, settings.get("source_prompt") or source_prompt


def needs_target_prompt(metrics: Sequence[str]) -> bool:
    return any(name.startswith("clip_similarity_target") for name in metrics)


def score_pairs(
    models: ScoreModels,
    pairs: Sequence[Pair],
    metrics: Sequence[str] = DEFAULT_METRICS,
    target_prompt: str | None = None,
    source_prompt: str | None = None,
    dino_fixed: bool = False,
    callback: ImageCallback | None = None,
) -> Iterator[dict[str, object]]:
    """Score each pair that has an edit; yield one row per image (`id`, `editing_type_id`, metrics).

    Raises `SameditError` when a CLIP target metric is requested and an edit has no target
    prompt, neither in its settings nor from the caller.
    """
    metrics = check_metrics(models, metrics)
    for pair in pairs:
        if pair.edited is None:
            if callback:
                callback()
            continue
        target, source = pair_prompts(pair.edited, target_prompt, source_prompt)
        if target is None and needs_target_prompt(metrics):
            raise SameditError(
                f"no target prompt for `{pair.edited}`: it carries no samedit settings; "
                "pass `--prompt`, or choose `--metrics` without clip_similarity_target_*"
            )
        loaded = load_image(pair.source)
        mask = read_edit_mask(pair.mask, loaded)
        if pair.mask is None:
            nan_metrics = empty_region_metrics(mask, metrics)
            logger.warning("%s: no edit mask found; the whole image counts as background%s", pair.id,
                           f", so {nan_phrase(nan_metrics)}" if nan_metrics else "")
        elif warning := empty_region_warning(mask, metrics):
            logger.warning("%s: %s", pair.id, warning)
        scores = score_pair(models, loaded.image, load_image(pair.edited).image, mask, target or "", source,
                            metrics=metrics, dino_fixed=dino_fixed)
        yield {"id": pair.id, "editing_type_id": "", **scores}
        if callback:
            callback()


def score_folder(
    models: ScoreModels,
    pairs: Sequence[Pair],
    name: str,
    folder: Path | None,
    **options,
) -> MethodScores:
    """Score `pairs` as one method; pairs without an edit are logged and listed as missing."""
    missing = [pair.id for pair in pairs if pair.edited is None]
    if len(missing) == len(pairs):
        raise SameditError(
            f"none of the {len(pairs)} source images has an edit under `{folder}`; "
            "edits must have the source's relative path (any image suffix)"
        )
    for pair_id in missing:
        logger.warning("no edit of %s; not scored", pair_id)
    return MethodScores(name, folder, list(score_pairs(models, pairs, **options)), missing)
