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
