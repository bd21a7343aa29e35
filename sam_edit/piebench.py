"""PIE-Bench: reading the dataset, decoding its masks, and scoring a folder of edits.

Layout (PnP Inversion's release): `data/mapping_file.json` and `data/annotation_images/<type
folder>/.../<id>.jpg`. The mapping file is a JSON object keyed by 12-digit image ids. Each value
has `image_path` (relative to `annotation_images`), `original_prompt` and `editing_prompt`
(the words that differ are in square brackets), `editing_instruction`, `editing_type_id` (a
string "0" to "9"), `blended_word` ("<source word> <target word>", or "") and `mask` (a
run-length encoding, see `decode_rle`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sam_edit.errors import SameditError
from sam_edit.images import load_image
from sam_edit.methods.request import find_words, word_pattern
from sam_edit.metrics import DEFAULT_METRICS, ScoreModels, check_metrics, empty_region_warning, score_pair

logger = logging.getLogger(__name__)

MASK_SIZE = 512  # PIE-Bench masks are 512 x 512, like its images
MAPPING_FILENAME = "mapping_file.json"
IMAGES_FOLDER = "annotation_images"
EDITING_TYPES = tuple(str(index) for index in range(10))
# Editing types by `editing_type_id`, as PIE-Bench's type folders name them.
EDITING_TYPE_NAMES = {
    "0": "random",
    "1": "change object",
    "2": "add object",
    "3": "delete object",
    "4": "change content",
    "5": "change pose",
    "6": "change color",
    "7": "change material",
    "8": "change background",
    "9": "change style",
}
EDITED_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # tried when the source's own suffix is absent
_REQUIRED_KEYS = ("image_path", "original_prompt", "editing_prompt", "editing_type_id", "mask")


# Masks -------------------------------------------------------------------------------------


def decode_rle(counts: Sequence[int], size: int = MASK_SIZE) -> np.ndarray:
    """Decode a PIE-Bench mask to `[size, size]` bool, True where the edit belongs.

    `counts` is `[start0, length0, start1, length1, ...]`: runs of ones, with `start` an index
    into the row-major flattened mask. A run is cut at the end of the mask (its length
    becomes `min(length, size * size - start)`). As in the evaluation script, the first and
    last rows and columns are then set to True, a guard against annotation errors at the
    border.
    """
    total = size * size
    if len(counts) % 2:
        raise SameditError(
            f"mask encoding has an odd number of values ({len(counts)}); expected start/length pairs"
        )
    flat = np.zeros(total, dtype=bool)
    for start, length in zip(counts[0::2], counts[1::2]):
        start, length = int(start), int(length)
        if start < 0 or length < 0:
            raise SameditError(
                f"mask run ({start}, {length}) is negative; starts and lengths must be >= 0"
            )
        flat[start : start + min(length, total - start)] = True
    mask = flat.reshape(size, size)
    mask[0, :] = mask[-1, :] = True
    mask[:, 0] = mask[:, -1] = True
    return mask


def encode_rle(mask: np.ndarray) -> list[int]:
    """Encode a 2-D bool mask as `[start, length, ...]` runs of True in row-major order.

    The inverse of `decode_rle` for masks whose border is already True.
    """
    flat = np.asarray(mask, dtype=bool).ravel()
    edges = np.diff(np.concatenate(([0], flat.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [int(value) for pair in zip(starts, ends - starts) for value in pair]


def force_border(mask: np.ndarray) -> np.ndarray:
    """Return a copy of a `[H, W]` bool mask with its 1-pixel frame set, as in PIE-Bench masks."""
    mask = np.array(mask, dtype=bool)
    mask[0, :] = mask[-1, :] = True
    mask[:, 0] = mask[:, -1] = True
    return mask


# Mapping file ------------------------------------------------------------------------------


def strip_brackets(prompt: str) -> str:
    """Remove the `[` and `]` that mark changed words, keeping the words."""
    return prompt.replace("[", "").replace("]", "")


@dataclass(frozen=True)
class PieBenchEntry:
    """One PIE-Bench image with its prompts and mask."""

    id: str  # 12 digits, the first being the editing type
    image_path: Path  # absolute path of the source image
    source_prompt: str  # brackets stripped
    target_prompt: str  # brackets stripped
    instruction: str  # imperative sentence, for InstructPix2Pix; "" when absent
    editing_type_id: str  # "0" to "9"
    blend_words: tuple[str, str] | None  # (source word, target word) for local blend
    mask_rle: tuple[int, ...]  # the stored encoding; `mask` decodes it
    relative_path: str  # path under `annotation_images`, reused for the edited image
    original_prompt: str = ""  # the source prompt as stored, with its [ ] markers
    editing_prompt: str = ""  # the target prompt as stored, with its [ ] markers
    blended_word: str = ""  # as stored: "<source words> <target words>", or ""

    @property
    def mask(self) -> np.ndarray:
        """The decoded `[512, 512]` bool mask with its forced border (decoded on each access)."""
        return decode_rle(self.mask_rle)


def find_mapping_file(dataset: Path) -> Path:
    """Return the mapping file for a dataset folder (at its root or under `data/`) or a file path."""
    dataset = Path(dataset)
    if dataset.is_file():
        return dataset
    for candidate in (dataset / MAPPING_FILENAME, dataset / "data" / MAPPING_FILENAME):
        if candidate.is_file():
            return candidate
    raise SameditError(
        f"no {MAPPING_FILENAME} in `{dataset}` or `{dataset / 'data'}`; "
        "pass the PIE-Bench folder that contains it"
    )


def parse_blend_words(value: str, entry_id: str) -> tuple[str, str] | None:
    """Split `blended_word` into (source word, target word); None when it is empty or one word.

    The editing scripts take the first two space-separated words, so a third word is
    ignored with a warning.
    """
    words = value.split()
    if not words:
        return None
    if len(words) == 1:
        logger.warning("PIE-Bench %s: blended_word %r has one word; no local blend", entry_id, value)
        return None
    if len(words) > 2:
        logger.warning(
            "PIE-Bench %s: blended_word %r has more than two words; using %r", entry_id, value, words[:2]
        )
    return words[0], words[1]


def parse_entry(entry_id: str, item: object, images: Path, path: Path) -> PieBenchEntry:
    """Build one entry from its mapping-file value; raise `SameditError` naming a bad field."""
    if not isinstance(item, dict):
        raise SameditError(f"`{path}`: entry {entry_id} is not a JSON object")
    missing = [key for key in _REQUIRED_KEYS if key not in item]
    if missing:
        raise SameditError(f"`{path}`: entry {entry_id} is missing {', '.join(missing)}")
    mask = item["mask"]
    if not isinstance(mask, list) or not all(isinstance(value, int) for value in mask):
        raise SameditError(f"`{path}`: entry {entry_id} has a `mask` that is not a list of integers")
    text_keys = ("original_prompt", "editing_prompt", "editing_instruction", "blended_word")
    texts = {key: item.get(key, "") for key in text_keys}
    for key, value in texts.items():
        if not isinstance(value, str):
            raise SameditError(f"`{path}`: entry {entry_id} has a non-string `{key}`")
    return PieBenchEntry(
        id=entry_id,
        image_path=images / item["image_path"],
        source_prompt=strip_brackets(texts["original_prompt"]),
        target_prompt=strip_brackets(texts["editing_prompt"]),
        instruction=texts["editing_instruction"],
        editing_type_id=str(item["editing_type_id"]),
        blend_words=parse_blend_words(texts["blended_word"], entry_id),
        mask_rle=tuple(mask),
        relative_path=str(item["image_path"]),
        original_prompt=texts["original_prompt"],
        editing_prompt=texts["editing_prompt"],
        blended_word=texts["blended_word"],
    )


def read_mapping(
    dataset: Path,
    types: Iterable[str | int] | None = None,
    limit: int | None = None,
    check_images: bool = True,
) -> list[PieBenchEntry]:
    """Read PIE-Bench entries in file order, keeping editing types `types` and at most `limit`.

    `dataset` is the folder holding `mapping_file.json` (directly or under `data/`) or the
    file itself; images are read from `annotation_images/` beside it. With `check_images`,
    a missing source image of a kept entry raises `SameditError`.
    """
    path = find_mapping_file(dataset)
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SameditError(f"cannot read PIE-Bench mapping file `{path}`: {error}") from error
    if not isinstance(mapping, dict):
        raise SameditError(
            f"`{path}` is not a PIE-Bench mapping file: expected a JSON object keyed by image id"
        )

    selected_types = None
    if types is not None:
        selected_types = {str(value) for value in types}
        unknown = sorted(selected_types - set(EDITING_TYPES))
        if unknown:
            raise SameditError(f"unknown editing types {', '.join(unknown)}; PIE-Bench types are 0 to 9")
    if limit is not None and limit < 0:
        raise SameditError(f"limit {limit} is negative; pass 0 or more")

    images = path.parent / IMAGES_FOLDER
    entries = []
    for entry_id, item in mapping.items():
        if limit is not None and len(entries) >= limit:
            break
        entry = parse_entry(entry_id, item, images, path)
        if selected_types is None or entry.editing_type_id in selected_types:
            entries.append(entry)
    if check_images:
        missing = [entry for entry in entries if not entry.image_path.is_file()]
        if missing:
            raise SameditError(
                f"{len(missing)} of {len(entries)} PIE-Bench images are missing, "
                f"first `{missing[0].image_path}`; put the images under `{images}`"
            )
    logger.info("read %d PIE-Bench entries from %s", len(entries), path)
    return entries


# From prompts to an edit request ---------------------------------------------------------


@dataclass(frozen=True)
class EditWords:
    """One entry's prompts as samedit's `--prompt`, `--from` and `--to`.

    `caption` with the first match of `source_words` replaced by `target_words` equals the
    target prompt (both with single spaces), which is how `EditRequest.target_prompt` builds it.
    """

    caption: str  # the source prompt, brackets stripped, words joined by single spaces
    source_words: str  # `--from`: consecutive words of the caption
    target_words: str  # `--to`
    region_phrase: str  # what CLIP ranks SAM segments with: the blended source words, else `--from`
    rule: str  # "blended_word", or "prompt difference" when `blended_word` cannot be used as is

    def record(self) -> dict[str, str]:
        """Return the fields as a settings record, for the edited PNG."""
        return dataclasses.asdict(self)


def replace_first(text: str, words: str, replacement: str) -> str:
    """Replace the first whole-word, case-insensitive match of `words`, as `EditRequest` does."""
    return word_pattern(words).sub(lambda _: replacement, text, count=1)


def split_blended_word(blended_word: str, caption: str, target_prompt: str) -> tuple[str, str] | None:
    """Split `blended_word` into (source words, target words); None when it is empty or one word.

    PnP Inversion's scripts take the first two words, which breaks multi-word subjects such as
    "tennis ball golf ball". Here every split point is tried and the one nearest the middle
    whose halves occur in the source and the target prompt wins, falling back to the first two
    words.
    """
    words = blended_word.split()
    if len(words) < 2:
        return None
    splits = sorted(range(1, len(words)), key=lambda index: abs(2 * index - len(words)))
    for index in splits:
        source, target = " ".join(words[:index]), " ".join(words[index:])
        if find_words(caption, source) and find_words(target_prompt, target):
            return source, target
    return words[0], words[1]


def find_phrase(words: list[str], phrase: str) -> tuple[int, int] | None:
    """Return the word range `[start, end)` of the first case-insensitive match of `phrase`."""
    wanted = [word.casefold() for word in phrase.split()]
    folded = [word.casefold().strip(".,;:!?\"'") for word in words]
    for start in range(len(words) - len(wanted) + 1):
        if folded[start : start + len(wanted)] == wanted:
            return start, start + len(wanted)
    return None


def edit_words(entry: PieBenchEntry) -> EditWords:
    """Derive `--prompt`, `--from` and `--to` from an entry's prompts and `blended_word`.

    When the blended source words, replaced by the blended target words in the source prompt,
    give the target prompt, they are used as they are. Otherwise (a colour change blended as
    "bicycle bicycle", an added object, a blend word missing from the prompt) `--from` and `--to`
    are the words where the two prompts differ, which are the words the brackets mark. The span
    grows to take in the blended source words when the prompt contains them, and by one
    neighbouring word when either side is empty, so that local blend has a word to attend to.
    Raises `SameditError` when the prompts are empty or identical.
    """
    source, target = entry.source_prompt.split(), entry.target_prompt.split()
    caption, target_prompt = " ".join(source), " ".join(target)
    if not source or not target:
        raise SameditError(f"PIE-Bench {entry.id} has an empty source or target prompt")
    if source == target:
        raise SameditError(f"PIE-Bench {entry.id}: source and target prompts are identical ({caption!r})")
    blend = split_blended_word(entry.blended_word, caption, target_prompt)
    if blend is not None and find_words(caption, blend[0]):
        if replace_first(caption, *blend) == target_prompt:
            return EditWords(caption, blend[0], blend[1], blend[0], "blended_word")

    # The prompts share `prefix` leading and `suffix` trailing words; the rest differs.
    prefix = 0
    while prefix < min(len(source), len(target)) and source[prefix] == target[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(source), len(target)) - prefix and source[-1 - suffix] == target[-1 - suffix]:
        suffix += 1
    start, end = prefix, len(source) - suffix  # the span in the source; the target ends `suffix` earlier
    region = find_phrase(source, blend[0]) if blend is not None else None
    if region is not None:
        start, end = min(start, region[0]), max(end, region[1])
    if start == end or len(target) - (len(source) - end) == start:
        if start > 0:
            start -= 1
        else:
            end += 1
    # Widen to the left until the first match of `--from` is the span itself.
    while start > 0:
        words = " ".join(source[start:end]), " ".join(target[start : len(target) - (len(source) - end)])
        if replace_first(caption, *words) == target_prompt:
            break
        start -= 1
    source_words = " ".join(source[start:end])
    target_words = " ".join(target[start : len(target) - (len(source) - end)])
    region_phrase = blend[0] if blend is not None else source_words
    return EditWords(caption, source_words, target_words, region_phrase, "prompt difference")


# Scoring a folder of edits -----------------------------------------------------------------


def find_edited_image(outputs: Path, entry: PieBenchEntry) -> Path | None:
    """Return the edit of `entry` under `outputs`, or None when there is none.

    The edit has the source's relative path, under `outputs/annotation_images/` when that
    folder exists (PnP Inversion's output layout) and under `outputs/` otherwise. The source's
    suffix is tried first, then `EDITED_SUFFIXES`.
    """
    root = outputs / IMAGES_FOLDER if (outputs / IMAGES_FOLDER).is_dir() else outputs
    relative = Path(entry.relative_path)
    for suffix in (relative.suffix, *EDITED_SUFFIXES):
        candidate = root / relative.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def score_outputs(
    models: ScoreModels,
    entries: Sequence[PieBenchEntry],
    outputs: Path,
    metrics: Sequence[str] = DEFAULT_METRICS,
    dino_fixed: bool = False,
    skip_missing: bool = False,
    callback: Callable[[int, PieBenchEntry], None] | None = None,
) -> Iterator[dict[str, object]]:
    """Score the edit of each entry; yield one row per image: id, editing type, then metrics.

    A missing edit raises `SameditError`, or with `skip_missing` is logged and skipped.
    `callback(index, entry)` runs after each scored image, for progress display.
    """
    metrics = check_metrics(models, metrics)
    outputs = Path(outputs)
    for index, entry in enumerate(entries):
        edited_path = find_edited_image(outputs, entry)
        if edited_path is None:
            if not skip_missing:
                raise SameditError(
                    f"no edit of PIE-Bench {entry.id} under `{outputs}` "
                    f"(expected {entry.relative_path}); run the editor on it or skip missing edits"
                )
            logger.warning("no edit of PIE-Bench %s under %s; skipped", entry.id, outputs)
            continue
        mask = entry.mask
        if warning := empty_region_warning(mask, metrics):
            logger.warning("PIE-Bench %s: %s", entry.id, warning)
        scores = score_pair(
            models,
            load_image(entry.image_path).image,
            load_image(edited_path).image,
            mask,
            entry.target_prompt,
            entry.source_prompt,
            metrics=metrics,
            dino_fixed=dino_fixed,
        )
        yield {"id": entry.id, "editing_type_id": entry.editing_type_id, **scores}
        if callback is not None:
            callback(index, entry)

