"""Local model store: the Hugging Face cache for hub models, samedit's cache for other files.

A cached model resolves with no network call. A model that is not cached is downloaded on
first use unless the hub is offline (`HF_HUB_OFFLINE=1`), in which case `ModelNotCachedError`
names the model and the `samedit models pull` command that fetches it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from pathlib import Path

import huggingface_hub
import platformdirs
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

from sam_edit.errors import ModelNotCachedError, SameditError
from sam_edit.models.registry import ModelSpec
from sam_edit.outputs import atomic_path

logger = logging.getLogger(__name__)

CHUNK = 1 << 20


def cache_dir() -> Path:
    """Folder for non-hub files and the tiny set: `SAMEDIT_CACHE_DIR` or the user cache dir."""
    override = os.environ.get("SAMEDIT_CACHE_DIR")
    return Path(override) if override else Path(platformdirs.user_cache_dir("samedit", appauthor=False))


def is_offline() -> bool:
    return huggingface_hub.constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "ON", "YES")


def not_cached(spec: ModelSpec) -> ModelNotCachedError:
    source = f"{spec.repo_id}@{spec.revision[:7]}" if spec.repo_id and spec.revision else spec.repo_id or spec.url
    return ModelNotCachedError(
        f"model `{spec.name}` ({source}) is not cached and downloads are off (HF_HUB_OFFLINE=1); "
        f"run `samedit models pull {spec.name}` on a connected machine"
    )


def _hub(spec: ModelSpec, local_only: bool) -> Path:
    if spec.revision is None:
        raise SameditError(f"model `{spec.name}` has no pinned revision in the registry")
    if spec.filename:
        path = huggingface_hub.hf_hub_download(
            spec.repo_id, spec.filename, revision=spec.revision, local_files_only=local_only
        )
        return Path(path)
    folder = huggingface_hub.snapshot_download(
        spec.repo_id, revision=spec.revision, allow_patterns=list(spec.files), local_files_only=local_only
    )
    return Path(folder)


def file_path(spec: ModelSpec) -> Path:
    return cache_dir() / "files" / spec.filename


def cached_path(spec: ModelSpec) -> Path | None:
    """Return the local path of a cached model, or None; never touches the network."""
    if spec.url:
        path = file_path(spec)
        # Only a download that passed its checks is renamed to this name, so its presence (and
        # the size, where the registry knows it) is enough; hashing GBs on every run is not.
        if path.is_file() and (spec.size is None or path.stat().st_size == spec.size):
            return path
        return None
    try:
        return _hub(spec, local_only=True)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, FileNotFoundError):
        return None


def download_file(spec: ModelSpec) -> Path:
    """Download a non-hub file to a temporary name, check size and sha256, then rename."""
    target = file_path(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    logger.info("downloading %s from %s", spec.filename, spec.url)
    with atomic_path(target) as temporary:
        with urllib.request.urlopen(spec.url, timeout=60) as response, open(temporary, "wb") as out:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        size = temporary.stat().st_size
        if (spec.size is not None and size != spec.size) or digest.hexdigest() != spec.sha256:
            raise SameditError(
                f"download of `{spec.name}` is corrupt ({size} bytes, sha256 {digest.hexdigest()[:12]}); "
                f"expected {spec.size or 'any'} bytes, sha256 {spec.sha256[:12]}; "
                f"run `samedit models pull {spec.name}` again"
            )
    return target


def pull(spec: ModelSpec) -> Path:
    """Download a model into the cache (a no-op if cached) and return its path."""
    path = cached_path(spec)
    if path is not None:
        return path
    if is_offline():
        raise not_cached(spec)
    try:
        return download_file(spec) if spec.url else _hub(spec, local_only=False)
    except OSError as error:
        raise SameditError(f"download of model `{spec.name}` failed: {error}") from error


def resolve(spec: ModelSpec) -> Path:
    """Return the cached path of a model, downloading it first when the hub is reachable."""
    path = cached_path(spec)
    if path is not None:
        return path
    if is_offline():
        raise not_cached(spec)
    logger.warning("model `%s` is not cached; downloading it now", spec.name)
    return pull(spec)

