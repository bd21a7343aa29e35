import os
import stat
from pathlib import Path

import pytest

from sam_edit.errors import SameditError
from sam_edit.outputs import atomic_path, check_output


def test_existing_output_needs_overwrite(tmp_path):
    path = tmp_path / "out.png"
    path.write_bytes(b"old")
    with pytest.raises(SameditError, match="--overwrite"):
        check_output(path, overwrite=False)
    assert check_output(path, overwrite=True) == path.resolve()


def test_input_is_never_replaced(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(b"photo")
    with pytest.raises(SameditError, match="is an input file"):
        check_output(path, overwrite=True, inputs=(path,))


def test_missing_folder(tmp_path):
    with pytest.raises(SameditError, match="does not exist"):
        check_output(tmp_path / "absent" / "out.png", overwrite=False)


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(path) as temporary:
            temporary.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_successful_write_renames(tmp_path):
    path = tmp_path / "out.bin"
    with atomic_path(path) as temporary:
        temporary.write_bytes(b"done")
    assert path.read_bytes() == b"done"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_folder_that_refuses_files_fails_early():
    # /proc passes os.access(W_OK) for root but accepts no new files.
    with pytest.raises(SameditError, match="not writable"):
        check_output(Path("/proc/samedit-out.png"), overwrite=False)


def test_recreated_file_gets_umask_mode(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "out.bin") as temporary:
            temporary.unlink()  # as safetensors does: the writer creates the file anew
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.bin").stat().st_mode) == 0o644
