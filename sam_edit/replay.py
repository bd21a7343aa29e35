"""Replaying an edit from the settings that its PNG records: `samedit edit IMAGE --replay OUT.png`.

An edited PNG records the whole request, the model ids and where the edit region came from. A
replay rebuilds the request from them and runs the edit again. The inversion-based methods are
deterministic, and the others record their seed, so on the same device and model set a replay
gives the same pixels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from sam_edit.errors import SameditError, StageFileError
from sam_edit.images import LoadedImage, read_png_settings
from sam_edit.methods.request import EditRequest
from sam_edit.rank import RankConfig
from sam_edit.artifacts import mask_sha256
from sam_edit.stages import MaskSource, file_edit_mask

REQUEST_FIELDS = frozenset(field.name for field in dataclasses.fields(EditRequest))
# The JSON types each recorded request field may have; None only where the field is optional.
REQUEST_TYPES = {
    field.name: ((int, float) if "float" in str(field.type) else (int,) if "int" in str(field.type) else (str,))
    + ((type(None),) if "None" in str(field.type) else ())
    for field in dataclasses.fields(EditRequest)
}

# Model sets whose ids have the form `<set>/<name>` (see `loaders.model_id`); real ids name a repo.
SYNTHETIC_MODEL_SETS = ("tiny", "random-full")


@dataclass(frozen=True)
class Replay:
    """An edit rebuilt from a samedit PNG."""

    request: EditRequest
    source: MaskSource  # where the edit region comes from, as the original edit found it
    model_set: str  # the model set of the original edit: default, tiny or random-full
    sam_model: str | None  # SAM checkpoint of the original segmentation; None when SAM did not run


def read_replay(path: Path, loaded: LoadedImage) -> Replay:
    """Read the settings of the samedit PNG `path` and rebuild the edit of `loaded` they record.

    Raises `StageFileError` when the PNG was made from another image or lacks a setting.
    """
    settings = read_png_settings(path)
    # Newer PNGs record the hash of the decoded pixels, so a re-encoded copy of the input replays.
    if "image_pixels_sha256" in settings:
        recorded, actual = settings["image_pixels_sha256"], loaded.pixels_sha256
    else:
        recorded, actual = settings.get("image_sha256"), loaded.sha256
    if recorded != actual:
        raise StageFileError(
            f"`{path}` is an edit of another image (SHA-256 {str(recorded)[:12]}), not of `{loaded.path}` "
            f"({actual[:12]}); replay it with the image it was made from"
        )
    if "method" not in settings or "source_words" not in settings or "target_words" not in settings:
        raise StageFileError(f"`{path}` lacks the method or the --from/--to words, so it cannot be replayed")
    fields = {name: value for name, value in settings.items() if name in REQUEST_FIELDS}
    request = build_request(path, fields)
    origin = settings.get("edit_region") or {}
    source, sam_model = mask_source(origin)
    check_given_mask(path, loaded, source, origin)
    return Replay(request, source, model_set_of(settings.get("models") or {}), sam_model)


def build_request(path: Path, fields: dict) -> EditRequest:
    """Rebuild the request from recorded fields; raise `StageFileError` naming the PNG when they are invalid."""
    for name, value in fields.items():
        if not isinstance(value, REQUEST_TYPES[name]):
            raise StageFileError(f"`{path}` records an invalid {name} ({value!r}), so it cannot be replayed")
    try:
        return EditRequest(**fields)
    except SameditError as error:
        raise StageFileError(f"`{path}` records settings that are no longer valid ({error}), so it cannot be replayed") from error


def check_given_mask(path: Path, loaded: LoadedImage, source: MaskSource, origin: dict) -> None:
    """Raise `StageFileError` when the recorded `--mask` or `--rank` file now gives another edit mask."""
    from_file = file_edit_mask(loaded, source)
    if from_file is None or "mask_sha256" not in origin:
        return
    mask, _ = from_file
    if mask_sha256(mask) != origin["mask_sha256"]:
        flag, file = ("--mask", source.mask) if source.mask is not None else ("--rank", source.rank)
        raise StageFileError(
            f"the {flag} file `{file}` that `{path}` was edited with now gives another edit mask; restore it, "
            f"or edit without --replay"
        )


def mask_source(origin: dict) -> tuple[MaskSource, str | None]:
    """Return the mask source and SAM model that reproduce the recorded edit region."""
    if "mask" in origin:
        return MaskSource(mask=Path(origin["mask"])), None
    if "rank" in origin:
        return MaskSource(rank=Path(origin["rank"])), None
    if "chosen" in origin:
        # SAM is deterministic, so picking the recorded segment ids gives the recorded mask.
        masks = Path(origin["masks"]) if "masks" in origin else None
        return MaskSource(masks=masks, rank_config=RankConfig(pick=tuple(origin["chosen"]))), origin.get("sam_model")
    return MaskSource(), origin.get("sam_model")


def model_set_of(models: dict) -> str:
    """Return the model set that the recorded model ids belong to."""
    for model_set in SYNTHETIC_MODEL_SETS:
        if any(str(model_id).startswith(f"{model_set}/") for model_id in models.values()):
            return model_set
    return "default"
