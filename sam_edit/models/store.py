"""Local model store: the Hugging Face cache for hub models, samedit's cache for other files.

A cached model resolves with no network call. A model that is not cached is downloaded on
first use unless downloads are off (`HF_HUB_OFFLINE=1`), in which case `ModelNotCachedError`
names every missing model and one `samedit models pull` command that fetches them all. With
downloads on, one request with a short timeout checks the download host first, so an
unreachable host fails in seconds with `ModelDownloadError` instead of after the hub client's
retries.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import huggingface_hub
import platformdirs
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

from sam_edit.errors import ModelDownloadError, ModelNotCachedError, SameditError
from sam_edit.models.registry import ModelSpec
from sam_edit.outputs import atomic_path

logger = logging.getLogger(__name__)

CHUNK = 1 << 20

# Seconds for the one request that checks the hub before a download, unless the user sets
# HF_HUB_ETAG_TIMEOUT. Without this check, huggingface_hub 2.4 retries a refused connection
# 5 times with 1 to 8 s waits before it raises (23 s measured against a closed local port).
HUB_CHECK_TIMEOUT = 5

# Values of HF_HUB_OFFLINE that turn downloads off, as huggingface_hub reads them.
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


def _import_errors(names: Sequence[tuple[str, str]]) -> tuple[type[Exception], ...]:
    """Return the exception classes `module.attribute` of the modules that are installed."""
    found = []
    for module_name, attribute in names:
        try:
            found.append(getattr(importlib.import_module(module_name), attribute))
        except ImportError:
            continue
    return tuple(found)


# Connection failures and timeouts: urllib's, the hub's own, and those of the installed HTTP
# clients. huggingface_hub 0.x raises requests' errors, 1.x httpx's and 2.x httpx2's.
NETWORK_ERRORS = (
    urllib.error.URLError,
    TimeoutError,
    ConnectionError,
    OfflineModeIsEnabled,
    LocalEntryNotFoundError,
    *_import_errors([
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("requests", "ConnectionError"),
        ("requests", "Timeout"),
    ]),
)
# Every error a download can raise, for the wrapper that turns them into one-line errors.
DOWNLOAD_ERRORS = (OSError, EntryNotFoundError, *NETWORK_ERRORS)


def cache_dir() -> Path:
    """Folder for non-hub files and the tiny set: `SAMEDIT_CACHE_DIR` or the user cache dir."""
    override = os.environ.get("SAMEDIT_CACHE_DIR")
    return Path(override) if override else Path(platformdirs.user_cache_dir("samedit", appauthor=False))


def offline_variable() -> str | None:
    """Return the environment variable that turns downloads off, or None when they are on.

    huggingface_hub reads HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) once, at import, so both that
    value and the current environment are checked.
    """
    # The first of the two that is set decides, as in huggingface_hub.constants.
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(variable)
        if value:
            if value.upper() in TRUE_VALUES:
                return variable
            break
    return "HF_HUB_OFFLINE" if huggingface_hub.constants.HF_HUB_OFFLINE else None


def is_offline() -> bool:
    """Return whether downloads are off (`offline_variable`)."""
    return offline_variable() is not None


def hub_check_timeout() -> float:
    """Return HF_HUB_ETAG_TIMEOUT when the user set it, else `HUB_CHECK_TIMEOUT` seconds."""
    constants = huggingface_hub.constants
    if constants.HF_HUB_ETAG_TIMEOUT != constants.DEFAULT_ETAG_TIMEOUT:
        return constants.HF_HUB_ETAG_TIMEOUT
    return HUB_CHECK_TIMEOUT


# Messages --------------------------------------------------------------------------------------


def source_of(spec: ModelSpec) -> str:
    """Return where a model comes from: `repo@revision` (7 digits) or its URL."""
    if spec.repo_id and spec.revision:
        return f"{spec.repo_id}@{spec.revision[:7]}"
    return spec.repo_id or spec.url


def host_of(spec: ModelSpec) -> str:
    """Return the server a model downloads from: the hub endpoint (HF_ENDPOINT) or the URL's host."""
    if spec.url:
        parts = urlsplit(spec.url)
        return f"{parts.scheme}://{parts.netloc}"
    return huggingface_hub.constants.ENDPOINT


def cache_folders(specs: Sequence[ModelSpec]) -> str:
    """Return the cache folders that hold `specs`, as a phrase: "`A`" or "`A` and `B`"."""
    folders = dict.fromkeys(
        str(file_path(spec).parent) if spec.url else huggingface_hub.constants.HF_HUB_CACHE for spec in specs
    )
    return " and ".join(f"`{folder}`" for folder in folders)


def pull_command(specs: Sequence[ModelSpec]) -> str:
    return "samedit models pull " + " ".join(spec.name for spec in specs)


def not_cached_phrase(specs: Sequence[ModelSpec]) -> str:
    """Return "model `a` (source) is not cached", naming every other model of `specs` after it."""
    named = [f"`{spec.name}` ({source_of(spec)})" for spec in specs]
    if len(named) == 1:
        return f"model {named[0]} is not cached"
    rest = ", ".join(named[1:-1]) + (" and " if len(named) > 2 else "") + named[-1]
    return f"model {named[0]} is not cached, and neither are {rest}"


def not_cached(specs: Sequence[ModelSpec]) -> ModelNotCachedError:
    """Return the error for models that a command needs while downloads are off."""
    variable = offline_variable() or "HF_HUB_OFFLINE"
    return ModelNotCachedError(
        f"{not_cached_phrase(specs)}, and downloads are off ({variable}=1); "
        f"unset {variable} and run `{pull_command(specs)}`, or run it on a connected machine "
        f"and copy {cache_folders(specs)} from there to this machine"
    )


def downloads_off(spec: ModelSpec) -> ModelNotCachedError:
    """Return the error for `samedit models pull` while downloads are off."""
    variable = offline_variable() or "HF_HUB_OFFLINE"
    return ModelNotCachedError(
        f"cannot download model `{spec.name}` ({source_of(spec)}) because {variable}=1 turns "
        f"downloads off; unset {variable} and rerun `{pull_command([spec])}`, or copy "
        f"{cache_folders([spec])} from a machine that has the model"
    )


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def download_failed(spec: ModelSpec, error: BaseException, pending: Sequence[ModelSpec]) -> ModelDownloadError:
    """Return the one-line error for a failed download of `spec`.

    `pending` is every model still to fetch, `spec` first; the fix names one pull command for all.
    """
    prefix = f"download of model `{spec.name}` ({source_of(spec)}) from {host_of(spec)} failed ({first_line(error)})"
    if isinstance(error, (HfHubHTTPError, urllib.error.HTTPError)):
        fix = ("check that the repo or URL exists and that you have access to it (`hf auth login` for "
               f"gated hub repos), then rerun `{pull_command(pending)}`")
    elif isinstance(error, NETWORK_ERRORS):
        fix = (f"connect to the network and rerun, or run `{pull_command(pending)}` on a connected machine, "
               f"copy {cache_folders(pending)} from there to this machine and set HF_HUB_OFFLINE=1 here, "
               "so that samedit reads the cache without network calls")
    else:
        fix = f"check free space and permissions in {cache_folders([spec])}, then rerun `{pull_command(pending)}`"
    return ModelDownloadError(f"{prefix}; {fix}")


# Cache and downloads ---------------------------------------------------------------------------


def _hub(spec: ModelSpec, local_only: bool) -> Path:
    if spec.revision is None:
        raise SameditError(f"model `{spec.name}` has no pinned revision in the registry")
    if spec.filename:
        path = huggingface_hub.hf_hub_download(
            spec.repo_id, spec.filename, revision=spec.revision, local_files_only=local_only,
            etag_timeout=hub_check_timeout(),
        )
        return Path(path)
    folder = huggingface_hub.snapshot_download(
        spec.repo_id, revision=spec.revision, allow_patterns=list(spec.files), local_files_only=local_only,
        etag_timeout=hub_check_timeout(),
    )
    return Path(folder)


def file_path(spec: ModelSpec) -> Path:
    return cache_dir() / "files" / spec.filename


def cached_path(spec: ModelSpec) -> Path | None:
    """Return the local path of a cached model, or None; never touches the network."""
    if spec.url:
        path = file_path(spec)
        # Only a download that passed its checks is renamed to this name, so its presence (and
        # the size, where the registry lists it) is enough; hashing GBs on every run is not.
        if path.is_file() and (spec.size is None or path.stat().st_size == spec.size):
            return path
        return None
    try:
        return _hub(spec, local_only=True)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, FileNotFoundError):
        return None


def check_hub(spec: ModelSpec) -> None:
    """Request the model's repo info once, with no retries, so that an unreachable hub fails fast."""
    huggingface_hub.HfApi().model_info(spec.repo_id, revision=spec.revision, timeout=hub_check_timeout())


def download_file(spec: ModelSpec) -> Path:
    """Download a non-hub file to a temporary name, check size and sha256, then rename.

    The socket timeout is huggingface_hub's HF_HUB_DOWNLOAD_TIMEOUT (10 s unless the user sets
    it), so both kinds of download give up on a silent server after the same time.
    """
    target = file_path(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    timeout = huggingface_hub.constants.HF_HUB_DOWNLOAD_TIMEOUT
    logger.info("downloading %s from %s", spec.filename, spec.url)
    with atomic_path(target) as temporary:
        with urllib.request.urlopen(spec.url, timeout=timeout) as response, open(temporary, "wb") as out:
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


def download(spec: ModelSpec, pending: Sequence[ModelSpec]) -> Path:
    """Download one model into the cache; a failure names every model in `pending`."""
    try:
        if spec.url:
            return download_file(spec)
        check_hub(spec)
        return _hub(spec, local_only=False)
    except DOWNLOAD_ERRORS as error:
        raise download_failed(spec, error, pending) from error


def pull(spec: ModelSpec) -> Path:
    """Download a model into the cache (a no-op if cached) and return its path."""
    path = cached_path(spec)
    if path is not None:
        return path
    if is_offline():
        raise downloads_off(spec)
    return download(spec, [spec])


def require(specs: Sequence[ModelSpec]) -> list[Path]:
    """Return the cached paths of `specs`, downloading the missing ones when downloads are on.

    All models are checked before anything is downloaded, so one error names every missing
    model and one `samedit models pull` command for all of them.
    """
    paths = [cached_path(spec) for spec in specs]
    missing = list(dict.fromkeys(spec for spec, path in zip(specs, paths) if path is None))
    if not missing:
        return paths
    if is_offline():
        raise not_cached(missing)
    logger.warning("%s; downloading now", not_cached_phrase(missing))
    downloaded = {spec.name: download(spec, missing[index:]) for index, spec in enumerate(missing)}
    return [path or downloaded[spec.name] for spec, path in zip(specs, paths)]


def resolve(spec: ModelSpec) -> Path:
    """Return the cached path of a model, downloading it first when downloads are on."""
    return require([spec])[0]
