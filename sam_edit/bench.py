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
import json
import logging
import os
import time
from datetime import timedelta
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sam_edit import __version__, artifacts, stages
from sam_edit.errors import ImageError, ModelNotCachedError, SameditError, StageFileError
from sam_edit.images import LoadedImage, load_image, read_png_settings, save_png
from sam_edit.methods.request import EditRequest
from sam_edit.models import loaders
from sam_edit.outputs import atomic_path
from sam_edit.piebench import IMAGES_FOLDER, MASK_SIZE, EditWords, PieBenchEntry, edit_words
from sam_edit.runtime import Runtime
from sam_edit.scoring import MANIFEST_NAME

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "samedit.bench"
MANIFEST_VERSION = 1
MASKS_FOLDER = "masks"
DEFAULT_SEED = 1234  # PnP Inversion's seed for every PIE-Bench edit
BARRIER_TIMEOUT = timedelta(days=7)  # how long launched processes wait for the slowest shard


# Shards ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """Entry `k` belongs to shard `k % count`; shard `index` runs those entries."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise SameditError(f"shard {self.index}/{self.count} is invalid; use I/N with 0 <= I < N")

    def select(self, entries: Sequence[PieBenchEntry]) -> list[PieBenchEntry]:
        return list(entries[self.index :: self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(value: str) -> Shard:
    """Parse `--shard I/N`."""
    index, _, count = value.partition("/")
    try:
        return Shard(int(index), int(count))
    except ValueError:
        raise SameditError(f"`--shard` must be I/N with integers, e.g. 0/4, got {value!r}") from None


def launcher_shard(environ: Mapping[str, str] = os.environ) -> Shard | None:
    """Return the shard of this process under `accelerate launch` or `torchrun`, else None.

    Both launchers set `RANK` (this process, from 0) and `WORLD_SIZE` (the process count).
    """
    world_size = int(environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return None
    return Shard(int(environ.get("RANK", "0") or 0), world_size)


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
        """The settings that must match for two runs to share an output folder."""
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


# Edit masks --------------------------------------------------------------------------------


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


def sam_clip_ranking(out: Path, entry: PieBenchEntry, loaded: LoadedImage, phrase: str,
                     context: stages.Context) -> tuple[Path, Path]:
    """Segment with SAM and rank with CLIP against `phrase`, or reuse the files of an earlier run.

    Returns the paths of the masks file and of the ranking file, whose mask is the edit region.
    """
    stem = mask_stem(out, entry)
    masks_path, rank_path = stem.with_suffix(".masks.json"), stem.with_suffix(".rank.json")
    sam_id = {"sam": loaders.model_id(context.sam_model, context.model_set)}
    clip_id = {"clip": loaders.model_id("clip-l14", context.model_set)}
    try:
        ranking = artifacts.read_ranking(rank_path, loaded)
        artifacts.check_models(ranking.record.get("models", {}), sam_id | clip_id, rank_path)
        if ranking.phrase == phrase and masks_path.is_file():
            return masks_path, rank_path
    except StageFileError:
        pass  # absent or made for other models: segment and rank again
    stem.parent.mkdir(parents=True, exist_ok=True)
    segments, models, settings = stages.segment(loaded, context)
    artifacts.write_masks(masks_path, loaded, segments, models, settings)
    ranking, clip_models, settings = stages.rank(loaded, segments, phrase, context)
    artifacts.write_ranking(rank_path, loaded, ranking, clip_models | models, settings)
    return masks_path, rank_path


def needs_edit_region(method: str) -> bool:
    """Return whether `method` needs an edit mask (methods that do not say are given one)."""
    return bool(getattr(stages.get_method(method), "needs_mask", True))


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


class EntryEditor:
    """Edits one entry with each method, computing its edit mask once, on first need."""

    def __init__(self, entry: PieBenchEntry, out: Path, config: BenchConfig, context: stages.Context):
        self.entry, self.out, self.config, self.context = entry, out, config, context
        self.words = edit_words(entry)
        self.loaded = load_image(entry.image_path)
        self.source: stages.MaskSource | None = None
        self.region_record: dict[str, object] = {"mask": None}

    def mask_source(self) -> stages.MaskSource:
        """Return the edit region: the ground-truth mask, or SAM segments ranked by CLIP (made once)."""
        if self.source is None and self.config.use_gt_mask:
            self.source = stages.MaskSource(mask=ground_truth_mask_png(self.out, self.entry, self.loaded))
            self.region_record = {"mask": "ground truth"}
        elif self.source is None:
            masks_path, rank_path = sam_clip_ranking(self.out, self.entry, self.loaded,
                                                     self.words.region_phrase, self.context)
            self.source = stages.MaskSource(rank=rank_path, masks=masks_path)
            self.region_record = {"mask": "sam+clip", "region_phrase": self.words.region_phrase}
        return self.source

    def edit(self, method: str, path: Path) -> None:
        """Run `method` on the entry and save the edit with its settings and a `bench` record."""
        request = build_request(self.entry, self.words, method, self.config)
        uses_mask = needs_edit_region(method)
        source = self.mask_source() if uses_mask else stages.MaskSource()
        image, settings = stages.run_edit(self.loaded, request, self.context, source)
        settings["bench"] = {
            "id": self.entry.id,
            "editing_type_id": self.entry.editing_type_id,
            "use_gt_mask": self.config.use_gt_mask,
            "original_prompt": self.entry.original_prompt,
            "editing_prompt": self.entry.editing_prompt,
            "blended_word": self.entry.blended_word,
            "edit_words": self.words.record(),
            **(self.region_record if uses_mask else {"mask": None}),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(image, path, settings)


def run_bench(
    entries: Sequence[PieBenchEntry],
    out: Path,
    config: BenchConfig,
    context: stages.Context,
    callback: Callable[[BenchEvent], None] | None = None,
) -> BenchSummary:
    """Edit each entry with each method, skipping finished edits; return the counts.

    An edit that fails with a `SameditError` (no segment found, prompts that cannot form a
    request) is logged, counted and skipped, so one image does not stop a benchmark. A model
    that is not cached stops the run, because every later edit would fail the same way.
    """
    summary = BenchSummary()
    for entry in entries:
        editor = None
        for method in config.methods:
            path = edited_path(out, method, entry)
            started = time.perf_counter()
            if is_finished(path):
                event = BenchEvent(entry, method, "skipped", path)
            else:
                remove_stale_parts(path)
                try:
                    editor = editor or EntryEditor(entry, out, config, context)
                    editor.edit(method, path)
                    event = BenchEvent(entry, method, "edited", path, time.perf_counter() - started)
                except ModelNotCachedError:
                    raise
                except SameditError as error:
                    logger.warning("%s %s failed: %s", method, entry.id, error)
                    event = BenchEvent(entry, method, "failed", path, error=str(error))
            logger.info("%s %s: %s %s", method, entry.id, event.status, path)
            summary.count(event)
            if callback is not None:
                callback(event)
    return summary


# Several processes -------------------------------------------------------------------------


def join_launch(environ: Mapping[str, str] = os.environ) -> Shard | None:
    """Join the process group of `accelerate launch` or `torchrun`; return this process's shard.

    Returns None for a single process. The group (gloo, which works with or without GPUs) is
    used only for the barrier before scoring, so its timeout is long: the barrier waits for the
    slowest shard.
    """
    shard = launcher_shard(environ)
    if shard is not None and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    return shard


def wait_for_all_shards() -> None:
    """Block until every launched process has finished editing, then leave the process group."""
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def process_runtime(runtime: Runtime, environ: Mapping[str, str] = os.environ) -> Runtime:
    """Move a CUDA runtime to the GPU the launcher gave this process, `cuda:LOCAL_RANK`."""
    # NOTE: the launch path was run with torchrun on CPU only; this GPU mapping has not been run.
    if runtime.device.type != "cuda" or "LOCAL_RANK" not in environ:
        return runtime
    device = torch.device("cuda", int(environ["LOCAL_RANK"]) % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return dataclasses.replace(runtime, device=device)
