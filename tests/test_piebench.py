"""PIE-Bench mask decoding, mapping-file reading and folder scoring (no models needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from sam_edit.errors import SameditError
from sam_edit.metrics import ScoreModels
from sam_edit.piebench import (
    PieBenchEntry,
    decode_rle,
    encode_rle,
    find_edited_image,
    force_border,
    read_mapping,
    score_outputs,
    strip_brackets,
)

SIZE = 512
TOTAL = SIZE * SIZE
BORDER_PIXELS = 4 * SIZE - 4


def runs_by_loop(mask: np.ndarray) -> list[int]:
    """Encode runs of True pixel by pixel, independently of `encode_rle`."""
    counts, start = [], None
    flat = mask.ravel().tolist()
    for index, value in enumerate(flat + [False]):
        if value and start is None:
            start = index
        elif not value and start is not None:
            counts += [start, index - start]
            start = None
    return counts


def drawn_mask() -> np.ndarray:
    """A mask with a disc, a rectangle that touches the right border, and the forced frame."""
    rows, cols = np.mgrid[:SIZE, :SIZE]
    mask = (rows - 200) ** 2 + (cols - 180) ** 2 < 90**2
    mask[300:420, 400:] = True
    return force_border(mask)


def test_decode_matches_drawn_mask():
    mask = drawn_mask()
    decoded = decode_rle(runs_by_loop(mask))
    assert decoded.shape == (SIZE, SIZE)
    assert decoded.dtype == bool
    assert np.array_equal(decoded, mask)


def test_decode_forces_border():
    decoded = decode_rle([])
    assert decoded.sum() == BORDER_PIXELS
    assert decoded[0].all()
    assert decoded[-1].all()
    assert decoded[:, 0].all()
    assert decoded[:, -1].all()
    assert not decoded[1:-1, 1:-1].any()


def test_decode_runs_wrap_across_rows():
    # Starts like PIE-Bench image 000000000000: row 0 plus pixel (1, 0), then (1, 511) and (2, 0).
    decoded = decode_rle([0, 513, 1023, 2, 5000, 3])
    assert decoded[1, 0]
    assert decoded[1, 511]
    assert decoded[2, 0]
    assert decoded.ravel()[5000:5003].all()
    assert not decoded.ravel()[5003]


def test_decode_clips_run_at_mask_end():
    decoded = decode_rle([TOTAL - 600, 10**9])
    assert decoded.ravel()[TOTAL - 600 :].all()
    assert not decoded.ravel()[TOTAL - 601]
    assert np.array_equal(decoded, decode_rle([TOTAL - 600, 600]))


def test_decode_ignores_run_past_mask_end():
    assert np.array_equal(decode_rle([TOTAL + 5, 10]), decode_rle([]))


def test_decode_rejects_odd_length():
    with pytest.raises(SameditError, match="odd number"):
        decode_rle([0, 10, 20])


def test_decode_rejects_negative_run():
    with pytest.raises(SameditError, match="negative"):
        decode_rle([-3, 10])


def test_encode_matches_loop_encoder():
    mask = drawn_mask()
    assert encode_rle(mask) == runs_by_loop(mask)


def test_rle_round_trip():
    mask = drawn_mask()
    assert np.array_equal(decode_rle(encode_rle(mask)), mask)
    counts = [0, 513, 1023, 2, 1535, 2, 2047, 300, TOTAL - 512, 512]
    assert encode_rle(decode_rle(counts))[:8] == counts[:8]


def test_decode_other_size():
    decoded = decode_rle([5 * 16 + 5, 3], size=16)
    assert decoded.shape == (16, 16)
    assert decoded[5, 5:8].all()


def test_strip_brackets():
    assert strip_brackets("a [red] car on [the] road") == "a red car on the road"
    assert strip_brackets("no marks") == "no marks"


# Mapping file ------------------------------------------------------------------------------


def mapping_item(image_path: str, type_id: str, mask: list[int], blended: str = "cat dog") -> dict:
    return {
        "image_path": image_path,
        "original_prompt": "a [cat] sitting on a mat",
        "editing_prompt": "a [dog] sitting on a mat",
        "editing_instruction": "turn the cat into a dog",
        "editing_type_id": type_id,
        "blended_word": blended,
        "mask": mask,
    }


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A three-image PIE-Bench copy under `data/`, with real photos at 512 x 512."""
    root = tmp_path / "PIE-Bench"
    images = root / "data" / "annotation_images"
    paths = {
        "000000000000": "0_random_140/000000000000.jpg",
        "111000000000": "1_change_object_80/1_artificial/1_animal/111000000000.jpg",
        "911000000000": "9_change_style_80/1_artificial/1_animal/911000000000.jpg",
    }
    photos = [data.astronaut(), data.coffee()[:, :512], data.rocket()[:, :512]]
    for (entry_id, relative), photo in zip(paths.items(), photos):
        path = images / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(photo)).resize((SIZE, SIZE)).save(path, quality=95)
    mapping = {
        "000000000000": mapping_item(paths["000000000000"], "0", encode_rle(drawn_mask())),
        "111000000000": mapping_item(paths["111000000000"], "1", [0, 600], blended=""),
        "911000000000": mapping_item(paths["911000000000"], "9", [0, TOTAL], blended="photo watercolor"),
    }
    (root / "data" / "mapping_file.json").write_text(json.dumps(mapping))
    return root


def test_read_mapping_entries(dataset: Path):
    entries = read_mapping(dataset)
    assert [entry.id for entry in entries] == ["000000000000", "111000000000", "911000000000"]
    first = entries[0]
    assert isinstance(first, PieBenchEntry)
    assert first.image_path == dataset / "data" / "annotation_images" / "0_random_140/000000000000.jpg"
    assert first.source_prompt == "a cat sitting on a mat"
    assert first.target_prompt == "a dog sitting on a mat"
    assert first.instruction == "turn the cat into a dog"
    assert first.editing_type_id == "0"
    assert first.blend_words == ("cat", "dog")
    assert np.array_equal(first.mask, drawn_mask())
    assert entries[1].blend_words is None
    assert entries[2].mask.all()


def test_read_mapping_at_root_or_as_file(dataset: Path):
    data_dir = dataset / "data"
    assert len(read_mapping(data_dir)) == 3
    assert len(read_mapping(data_dir / "mapping_file.json")) == 3


def test_read_mapping_filters_types_and_limit(dataset: Path):
    assert [entry.id for entry in read_mapping(dataset, types=["1", 9])] == ["111000000000", "911000000000"]
    assert [entry.id for entry in read_mapping(dataset, types=["9"], limit=1)] == ["911000000000"]
    assert [entry.id for entry in read_mapping(dataset, limit=2)] == ["000000000000", "111000000000"]
    assert read_mapping(dataset, limit=0) == []


def test_read_mapping_rejects_unknown_type(dataset: Path):
    with pytest.raises(SameditError, match="unknown editing types 12"):
        read_mapping(dataset, types=["12"])


def test_read_mapping_missing_file(tmp_path: Path):
    with pytest.raises(SameditError, match="no mapping_file.json"):
        read_mapping(tmp_path)


def test_read_mapping_invalid_json(tmp_path: Path):
    (tmp_path / "mapping_file.json").write_text("{not json")
    with pytest.raises(SameditError, match="cannot read PIE-Bench mapping file"):
        read_mapping(tmp_path)


def test_read_mapping_not_an_object(tmp_path: Path):
    (tmp_path / "mapping_file.json").write_text("[1, 2]")
    with pytest.raises(SameditError, match="expected a JSON object"):
        read_mapping(tmp_path)


def test_read_mapping_missing_key(tmp_path: Path):
    item = mapping_item("0_random_140/a.jpg", "0", [])
    del item["mask"]
    (tmp_path / "mapping_file.json").write_text(json.dumps({"000000000000": item}))
    with pytest.raises(SameditError, match="000000000000 is missing mask"):
        read_mapping(tmp_path, check_images=False)


def test_read_mapping_bad_mask(tmp_path: Path):
    item = mapping_item("0_random_140/a.jpg", "0", [])
    item["mask"] = "0 513 1023 2"  # the PIE-Bench++ string form
    (tmp_path / "mapping_file.json").write_text(json.dumps({"000000000000": item}))
    with pytest.raises(SameditError, match="not a list of integers"):
        read_mapping(tmp_path, check_images=False)


def test_read_mapping_missing_image(dataset: Path):
    (dataset / "data" / "annotation_images" / "0_random_140" / "000000000000.jpg").unlink()
    with pytest.raises(SameditError, match="1 of 3 PIE-Bench images are missing"):
        read_mapping(dataset)
    assert len(read_mapping(dataset, check_images=False)) == 3


# Scoring a folder --------------------------------------------------------------------------


def write_edits(entries: list[PieBenchEntry], outputs: Path, suffix: str = ".png") -> None:
    """Save each source as its own edit, losslessly, under PnP Inversion's output layout."""
    for entry in entries:
        path = outputs / "annotation_images" / Path(entry.relative_path).with_suffix(suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.open(entry.image_path).convert("RGB").save(path)


def test_find_edited_image_suffixes(dataset: Path, tmp_path: Path):
    entries = read_mapping(dataset)
    outputs = tmp_path / "out"
    assert find_edited_image(outputs, entries[0]) is None
    write_edits(entries[:1], outputs)
    found = find_edited_image(outputs, entries[0])
    assert found == outputs / "annotation_images" / "0_random_140" / "000000000000.png"


def test_find_edited_image_flat_layout(dataset: Path, tmp_path: Path):
    entry = read_mapping(dataset)[1]
    path = tmp_path / "out" / entry.relative_path
    path.parent.mkdir(parents=True)
    Image.open(entry.image_path).save(path)
    assert find_edited_image(tmp_path / "out", entry) == path


def test_score_outputs_identical_edits(dataset: Path, tmp_path: Path):
    entries = read_mapping(dataset)
    write_edits(entries, tmp_path / "out")
    seen = []
    rows = list(
        score_outputs(
            ScoreModels(),
            entries,
            tmp_path / "out",
            metrics=("mse_unedit_part", "ssim_unedit_part", "psnr_edit_part"),
            callback=lambda index, entry: seen.append(index),
        )
    )
    assert [row["id"] for row in rows] == [entry.id for entry in entries]
    assert [row["editing_type_id"] for row in rows] == ["0", "1", "9"]
    assert seen == [0, 1, 2]
    assert rows[0]["mse_unedit_part"] == 0.0
    assert rows[0]["ssim_unedit_part"] == pytest.approx(1.0, abs=1e-6)
    assert rows[0]["psnr_edit_part"] == math.inf
    assert math.isnan(rows[2]["mse_unedit_part"])  # type 9 has a whole-image mask


def test_score_outputs_missing_edit(dataset: Path, tmp_path: Path):
    entries = read_mapping(dataset)
    write_edits(entries[:2], tmp_path / "out")
    with pytest.raises(SameditError, match="no edit of PIE-Bench 911000000000"):
        list(score_outputs(ScoreModels(), entries, tmp_path / "out", metrics=("mse_unedit_part",)))
    rows = list(
        score_outputs(ScoreModels(), entries, tmp_path / "out", metrics=("mse_unedit_part",), skip_missing=True)
    )
    assert [row["id"] for row in rows] == ["000000000000", "111000000000"]


def test_score_outputs_needs_models_for_metrics(dataset: Path, tmp_path: Path):
    entries = read_mapping(dataset)
    with pytest.raises(SameditError, match="needs the `dino` model"):
        list(score_outputs(ScoreModels(), entries, tmp_path / "out"))
