"""Safe output files: never overwrite without permission, never the input, never half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sam_edit.errors import SameditError


def check_output(path: Path, overwrite: bool, inputs: tuple[Path, ...] = ()) -> Path:
    """Validate an output path before any work is done, and return it resolved.

    Raises `SameditError` when the path is one of the inputs (even with `--overwrite`), when it
    exists and `overwrite` is false, or when its folder does not exist.
    """
    path = Path(path)
    resolved = path.resolve()
    for source in inputs:
        if source is not None and Path(source).resolve() == resolved:
            raise SameditError(f"output `{path}` is an input file; choose another output path")
    if path.is_dir():
        raise SameditError(f"output `{path}` is a folder; give a file path")
    if path.exists() and not path.is_file():
        raise SameditError(f"output `{path}` is not a regular file; give a file path")
    if path.exists() and not overwrite:
        raise SameditError(f"output `{path}` already exists; pass `--overwrite` to replace it")
    if not resolved.parent.is_dir():
        raise SameditError(f"folder `{path.parent}` for output `{path.name}` does not exist")
    # Creating a file is the only reliable test: root passes os.access on read-only mounts and /proc.
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=resolved.parent)
    except OSError as error:
        raise SameditError(
            f"folder `{path.parent}` for output `{path.name}` is not writable ({error.strerror}); choose another output path"
        ) from error
    os.close(handle)
    os.unlink(probe)
    return resolved


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds.

    An interrupted or failed write leaves no partial file under the final name.
    """
    path = Path(path)
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as error:
        raise SameditError(f"cannot write output `{path}`: {error.strerror}") from error
    os.close(handle)
    try:
        yield Path(temporary)
        # mkstemp creates the file with mode 0600, and some writers (safetensors) create it anew, so
        # the usual mode under the umask is set once the file is written.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
