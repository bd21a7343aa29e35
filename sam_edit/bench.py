"""Run editing methods over PIE-Bench and write their edits where `score --pie-bench` reads them.

Output layout under the `out` folder:

- `<method>/annotation_images/<image_path with .png>`: each edit, a samedit PNG whose settings
  add a `bench` record (PIE-Bench id, the mask used, how `--from`/`--to` were derived).
- `masks/<image_path without suffix>.gt.png` (ground-truth masks) or `.masks.json` and
  `.rank.json` + `.rank.mask.png` (SAM segments and their CLIP ranking), reused across methods.
- `bench.json`: the manifest with the settings every edit in the folder shares.

A run resumes: an edit whose PNG exists with samedit settings is skipped. PNGs are written to
a temporary name and renamed, so an interrupted edit never has the final name. Its stale
temporary file is deleted before the edit is redone.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sam_edit import __version__, artifacts, stages
from sam_edit.errors import ImageError, ModelNotCachedError, SameditError, StageFileError
from sam_edit.images import LoadedImage, load_image, read_png_settings, save_png
from sam_edit.methods.request import EditRequest
from sam_edit.models import loaders
from sam_edit.outputs import atomic_path
from sam_edit.piebench import IMAGES_FOLDER, MASK_SIZE, EditWords, PieBenchEntry, edit_words
from sam_edit.scoring import MANIFEST_NAME

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "samedit.bench"
MANIFEST_VERSION = 1
MASKS_FOLDER = "masks"
DEFAULT_SEED = 1234  # PnP Inversion's seed for every PIE-Bench edit


# Settings and manifest ---------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """Settings that every edit of one benchmark folder shares."""

    methods: tuple[str, ...]  # method names, checked with `stages.get_method`
    num_steps: int | None = None  # DDIM steps; None = each method's default
    max_side: int = 512  # longer side of the working size
    seed: int = DEFAULT_SEED
    use_gt_mask: bool = False  # edit with the PIE-Bench mask instead of SAM + CLIP

    def manifest_settings(self, context: stages.Context) -> dict[str, object]:
        """Return the settings that must match for two runs to share an output folder."""
        return {
            "num_steps": self.num_steps,
            "max_side": self.max_side,
            "seed": self.seed,
            "use_gt_mask": self.use_gt_mask,
            "model_set": context.model_set,
            "sam_model": context.sam_model,
        }


def check_methods(names: Sequence[str]) -> tuple[str, ...]:
    """Return the method names without repeats; raise `SameditError` for an unknown one."""
    methods = tuple(dict.fromkeys(name.strip() for name in names if name.strip()))
    if not methods:
        raise SameditError("`--methods` is empty; name at least one method, e.g. p2p,residual")
    for name in methods:
        stages.get_method(name)
    return methods


def update_manifest(out: Path, config: BenchConfig, context: stages.Context, dataset: Path) -> Path:
    """Write `bench.json`, adding this run's methods to those listed before.

    Raises `SameditError` when the folder contains edits made with other settings, so results
    of different settings never mix in one table.
    """
    path = out / MANIFEST_NAME
    settings = config.manifest_settings(context)
    methods = list(config.methods)
    if path.is_file():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SameditError(f"cannot read the bench manifest `{path}`: {error}") from error
        recorded = record.get("settings") if isinstance(record, dict) else None
        if not isinstance(recorded, dict):
            raise SameditError(f"`{path}` is not a samedit bench manifest; use another `--out`")
        for key, value in settings.items():
            if recorded.get(key) != value:
                raise SameditError(
                    f"`{out}` contains edits made with {key}={recorded.get(key)!r}, but this run uses "
                    f"{value!r}; use another `--out` or the same settings"
                )
        methods = list(dict.fromkeys([*record.get("methods", []), *methods]))
    record = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "samedit_version": __version__,
        "dataset": str(Path(dataset).resolve()),
        "methods": methods,
        "settings": settings,
    }
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path


# Paths and resume --------------------------------------------------------------------------


def edited_path(out: Path, method: str, entry: PieBenchEntry) -> Path:
    """Return the path of the edit of `entry` by `method`: PnP Inversion's output layout, as PNG."""
    return out / method / IMAGES_FOLDER / Path(entry.relative_path).with_suffix(".png")


def is_finished(path: Path) -> bool:
    """Return whether `path` is a complete samedit PNG (it carries its settings)."""
    if not path.is_file():
        return False
    try:
        read_png_settings(path)
    except (ImageError, json.JSONDecodeError):
        logger.warning("%s exists but carries no samedit settings; editing it again", path)
        return False
    return True


def remove_stale_parts(path: Path) -> None:
    """Delete temporary files an interrupted write of `path` left (`outputs.atomic_path` names)."""
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{path.name}.*.part"):
            logger.info("removing %s, left by an interrupted run", stale)
            stale.unlink(missing_ok=True)


def mask_stem(out: Path, entry: PieBenchEntry) -> Path:
    return out / MASKS_FOLDER / Path(entry.relative_path).with_suffix("")


# Stage files of the edit regions ------------------------------------------------------------


@dataclass
class EntryFiles:
    """Stage files that the edits of one entry share, made once per run."""

    gt_mask: Path | None = None  # PIE-Bench mask as a PNG, with --use-gt-mask
    masks: Path | None = None  # SAM segments
    rank: Path | None = None  # CLIP ranking of the segments against the region phrase
    errors: dict[str, str] = field(default_factory=dict)  # file kind -> why it was not made

    def need(self, kind: str) -> Path:
        """Return the file of `kind`; raise `SameditError` with the reason it was not made."""
        path = getattr(self, kind)
        if path is None:
            # A ranking is not made when SAM failed on the entry.
            reasons = [self.errors[name] for name in (kind, "masks") if name in self.errors]
            raise SameditError(reasons[0] if reasons else f"the {kind} file of this entry was not made")
        return path


def ground_truth_mask_png(out: Path, entry: PieBenchEntry, loaded: LoadedImage) -> Path:
    """Write the decoded PIE-Bench mask (with its forced border) as a PNG; return its path."""
    if loaded.size != (MASK_SIZE, MASK_SIZE):
        raise SameditError(
            f"PIE-Bench {entry.id} image is {loaded.size[0]}x{loaded.size[1]}, but its mask is "
            f"{MASK_SIZE}x{MASK_SIZE}; PIE-Bench images must be {MASK_SIZE}x{MASK_SIZE}"
        )
    path = mask_stem(out, entry).with_suffix(".gt.png")
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            Image.fromarray(entry.mask.astype(np.uint8) * 255, "L").save(temporary, format="PNG")
    return path


def segment_entry(out: Path, context: stages.Context, entry: PieBenchEntry, loaded: LoadedImage) -> Path:
    """Run SAM on the entry unless an earlier run's masks file fits; return the masks file's path.

    New segments delete the entry's ranking file, whose segment ids they no longer match.
    """
    stem = mask_stem(out, entry)
    path = stem.with_suffix(".masks.json")
    sam_id = {"sam": loaders.model_id(context.sam_model, context.model_set)}
    try:
        record = artifacts.read_json(path)
        if isinstance(record, dict):
            artifacts.check_header(record, artifacts.MASKS_FORMAT, loaded, path)
            artifacts.check_models(record.get("models", {}), sam_id, path)
            return path
    except StageFileError:
        pass  # absent, or made for another image or SAM model: segment again
    path.parent.mkdir(parents=True, exist_ok=True)
    segments, models, settings = stages.segment(loaded, context)
    stem.with_suffix(".rank.json").unlink(missing_ok=True)
    artifacts.write_masks(path, loaded, segments, models, settings)
    return path


def rank_entry(out: Path, context: stages.Context, entry: PieBenchEntry, loaded: LoadedImage) -> Path:
    """Rank the entry's segments with CLIP against its region phrase, unless an earlier run did."""
    stem = mask_stem(out, entry)
    path = stem.with_suffix(".rank.json")
    phrase = edit_words(entry).region_phrase
    model_ids = {"sam": loaders.model_id(context.sam_model, context.model_set),
                 "clip": loaders.model_id("clip-l14", context.model_set)}
    try:
        ranking = artifacts.read_ranking(path, loaded)
        artifacts.check_models(ranking.record.get("models", {}), model_ids, path)
        if ranking.phrase == phrase:
            return path
    except StageFileError:
        pass  # absent, or made for other models: rank again
    segments, record = artifacts.read_masks(stem.with_suffix(".masks.json"), loaded)
    ranking, clip_ids, settings = stages.rank(loaded, segments, phrase, context)
    artifacts.write_ranking(path, loaded, ranking, clip_ids | record.get("models", {}), settings)
    return path


def needs_edit_region(method: str) -> bool:
    """Return whether `method` needs an edit mask (methods that do not say are given one)."""
    return bool(getattr(stages.get_method(method), "needs_mask", True))


def needs_segments(method: str) -> bool:
    """Return whether `method` conditions on SAM's segments (the ControlNet's colour composite)."""
    info = stages.get_method(method)
    return info.inversion_based and stages.get_inversion_method(method).conditioning == "control"


def make_entry_files(pending: Mapping[str, Sequence[PieBenchEntry]], out: Path, config: BenchConfig,
                     context: stages.Context) -> dict[str, EntryFiles]:
    """Make the stage files that the pending edits need: SAM on every entry first, then CLIP.

    `pending` maps each method to the entries it still has to edit. `context.cache` must be
    set, so that SAM and CLIP load once each; SAM is released before CLIP loads.
    """
    entries = {entry.id: entry for method_entries in pending.values() for entry in method_entries}
    files = {entry_id: EntryFiles() for entry_id in entries}
    region = {entry.id for method, items in pending.items() if needs_edit_region(method) for entry in items}
    segmented = {entry.id for method, items in pending.items() if needs_segments(method) for entry in items}
    ranked = set() if config.use_gt_mask else region
    steps = (
        ("gt_mask", region if config.use_gt_mask else set(), (), functools.partial(ground_truth_mask_png, out)),
        ("masks", segmented | ranked, (("sam", context.sam_model),), functools.partial(segment_entry, out, context)),
        ("rank", ranked, (("clip",),), functools.partial(rank_entry, out, context)),
    )
    for kind, entry_ids, model_keys, make in steps:
        context.cache.retain(model_keys, context.runtime)
        for entry_id in (entry_id for entry_id in entries if entry_id in entry_ids):  # in entry order
            if kind == "rank" and files[entry_id].masks is None:
                continue  # SAM failed; `EntryFiles.need` reports its error
            make_entry_file(files[entry_id], kind, make, entries[entry_id])
    return files


def make_entry_file(files: EntryFiles, kind: str, make: Callable[[PieBenchEntry, LoadedImage], Path],
                    entry: PieBenchEntry) -> None:
    """Set `files.<kind>` to the file `make` writes; record a `SameditError` instead of raising it."""
    try:
        setattr(files, kind, make(entry, load_image(entry.image_path)))
    except ModelNotCachedError:
        raise
    except SameditError as error:
        # Logged at INFO because the edits that need this file fail with the same message,
        # and `BenchSummary.failed` lists each of those.
        logger.info("%s of PIE-Bench %s failed: %s", kind, entry.id, error)
        files.errors[kind] = str(error)


# The run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchEvent:
    """Outcome of one (entry, method) pair, for progress display."""

    entry: PieBenchEntry
    method: str
    status: str  # "edited", "skipped" (finished before) or "failed"
    path: Path
    seconds: float = 0.0
    error: str | None = None


@dataclass
class BenchSummary:
    """Counts of one run, and the edits that failed."""

    edited: int = 0
    skipped: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)  # entry id, method, error message

    def count(self, event: BenchEvent) -> None:
        if event.status == "failed":
            self.failed.append({"id": event.entry.id, "method": event.method, "error": event.error or ""})
        elif event.status == "edited":
            self.edited += 1
        else:
            self.skipped += 1


def build_request(entry: PieBenchEntry, words: EditWords, method: str, config: BenchConfig) -> EditRequest:
    """Build the edit request of one entry; raise `SameditError` unless its target prompt is the entry's."""
    options = {"num_steps": config.num_steps} if config.num_steps is not None else {}
    # NOTE: `instruction` is passed only to an EditRequest that has the field (InstructPix2Pix).
    if entry.instruction.strip() and "instruction" in {item.name for item in dataclasses.fields(EditRequest)}:
        options["instruction"] = entry.instruction
    request = EditRequest(
        source_words=words.source_words, target_words=words.target_words, method=method,
        caption=words.caption, seed=config.seed, max_side=config.max_side, **options,
    )
    if request.target_prompt != " ".join(entry.target_prompt.split()):
        raise SameditError(
            f"PIE-Bench {entry.id}: replacing {words.source_words!r} by {words.target_words!r} gives "
            f"{request.target_prompt!r}, not the target prompt {entry.target_prompt!r}"
        )
    return request


def edit_source(files: EntryFiles, method: str, use_gt_mask: bool) -> tuple[stages.MaskSource, dict[str, object]]:
    """Return where `method` takes the entry's edit region and segments from, and its bench record."""
    if needs_edit_region(method) and use_gt_mask:
        return stages.MaskSource(mask=files.need("gt_mask")), {"mask": "ground truth"}
    if needs_edit_region(method):
        masks = files.need("masks") if needs_segments(method) else None  # only ControlNet reads the segments
        source = stages.MaskSource(rank=files.need("rank"), masks=masks)
        return source, {"mask": "sam+clip"}
    if needs_segments(method):
        return stages.MaskSource(masks=files.need("masks")), {"mask": None}
    return stages.MaskSource(), {"mask": None}


def save_edit(entry: PieBenchEntry, method: str, path: Path, files: EntryFiles, config: BenchConfig,
              context: stages.Context) -> None:
    """Run `method` on the entry and save the edit with its settings and a `bench` record."""
    words = edit_words(entry)
    request = build_request(entry, words, method, config)
    source, region_record = edit_source(files, method, config.use_gt_mask)
    image, settings = stages.run_edit(load_image(entry.image_path), request, context, source)
    settings["bench"] = {
        "id": entry.id,
        "editing_type_id": entry.editing_type_id,
        "use_gt_mask": config.use_gt_mask,
        "original_prompt": entry.original_prompt,
        "editing_prompt": entry.editing_prompt,
        "blended_word": entry.blended_word,
        "edit_words": words.record(),
        **region_record,
    }
    if region_record["mask"] == "sam+clip":
        settings["bench"]["region_phrase"] = words.region_phrase
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(image, path, settings)


def model_order(methods: Sequence[str]) -> list[str]:
    """Order methods so that those on the same diffusion model run one after another."""
    first_use: dict[tuple[str, ...], int] = {}
    for method in methods:
        first_use.setdefault(stages.method_model_keys(method)[0], len(first_use))
    return sorted(methods, key=lambda method: first_use[stages.method_model_keys(method)[0]])


def run_bench(
    entries: Sequence[PieBenchEntry],
    out: Path,
    config: BenchConfig,
    context: stages.Context,
    callback: Callable[[BenchEvent], None] | None = None,
) -> BenchSummary:
    """Edit each entry with each method, skipping finished edits; return the counts.

    The run goes stage by stage, so each model loads once. SAM runs on every entry that needs
    segments, CLIP on those that need a ranking, and then each method on its entries, with
    methods on the same diffusion model one after another. A stage's models are released
    before the next stage loads (`ModelCache.retain`), so SAM and CLIP never share the GPU
    with a UNet.

    An edit that fails with a `SameditError` (no segment found, prompts that cannot form a
    request) is logged at INFO, listed in `BenchSummary.failed` and skipped, so one image does
    not stop a benchmark; the caller reports the failures. A model
    that is not cached stops the run, because every later edit would fail the same way.
    """
    summary = BenchSummary()

    def report(event: BenchEvent) -> None:
        logger.info("%s %s: %s %s", event.method, event.entry.id, event.status, event.path)
        summary.count(event)
        if callback is not None:
            callback(event)

    pending: dict[str, list[PieBenchEntry]] = {method: [] for method in config.methods}
    for entry in entries:
        for method in config.methods:
            path = edited_path(out, method, entry)
            if is_finished(path):
                report(BenchEvent(entry, method, "skipped", path))
            else:
                pending[method].append(entry)
    if context.cache is None:
        context = dataclasses.replace(context, cache=stages.ModelCache())
    try:
        files = make_entry_files(pending, out, config, context)
        for method in model_order(config.methods):
            context.cache.retain(stages.method_model_keys(method), context.runtime)
            for entry in pending[method]:
                report(edit_entry(entry, method, out, files[entry.id], config, context))
    finally:
        context.cache.retain((), context.runtime)
    return summary


def edit_entry(entry: PieBenchEntry, method: str, out: Path, files: EntryFiles, config: BenchConfig,
               context: stages.Context) -> BenchEvent:
    """Edit one entry with one method; return the event, "failed" for a `SameditError`."""
    path = edited_path(out, method, entry)
    remove_stale_parts(path)
    started = time.perf_counter()
    try:
        save_edit(entry, method, path, files, config, context)
    except ModelNotCachedError:
        raise
    except SameditError as error:
        logger.info("%s %s failed: %s", method, entry.id, error)  # the caller reports the returned event
        return BenchEvent(entry, method, "failed", path, error=str(error))
    return BenchEvent(entry, method, "edited", path, time.perf_counter() - started)
