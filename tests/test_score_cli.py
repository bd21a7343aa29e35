"""`samedit score`: one pair, folders paired by relative path, PIE-Bench outputs, and errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from sam_edit import artifacts
from sam_edit.artifacts import Ranking
from sam_edit.images import load_image, save_png

CHEAP = "mse_unedit_part,ssim_unedit_part,psnr_unedit_part,mse_edit_part"


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def box(height: int, width: int) -> np.ndarray:
    """A `[H, W]` bool edit region in the middle of the image."""
    mask = np.zeros((height, width), dtype=bool)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = True
    return mask


def save_mask(mask: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return path


def changed_inside(photo: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The photo with its colours inverted inside `mask` only."""
    edited = photo.copy()
    edited[mask] = 255 - edited[mask]
    return edited


def means(result) -> dict:
    record = json.loads(result.stdout)
    assert len(record["methods"]) == 1
    return record["methods"][0]["mean"]


# One pair --------------------------------------------------------------------------------------


def test_identical_pair_scores_perfect(run, chelsea_path, tmp_path):
    mask = save_mask(box(300, 451), tmp_path / "mask.png")
    result = run("score", chelsea_path, chelsea_path, "--mask", mask, "--prompt", "a tiger", "--source-prompt", "a cat",
                 "--models", "tiny", "--json")
    assert result.exit_code == 0, result.output
    scores = means(result)
    assert list(scores) == json.loads(result.stdout)["metrics"]
    assert len(scores) == 8
    assert scores["structure_distance"] == 0
    assert scores["lpips_unedit_part"] == 0
    assert scores["mse_unedit_part"] == 0
    assert scores["ssim_unedit_part"] == pytest.approx(1.0, abs=1e-6)
    assert scores["psnr_unedit_part"] is None  # +inf: strict JSON has no infinity
    for name in ("clip_similarity_source_image", "clip_similarity_target_image", "clip_similarity_target_image_edit_part"):
        assert scores[name] >= 0


def test_pair_table_shows_paper_scale(run, chelsea_path, tmp_path):
    edited = tmp_path / "edited.png"
    Image.fromarray(changed_inside(data.chelsea(), box(300, 451))).save(edited)
    mask = save_mask(box(300, 451), tmp_path / "mask.png")
    result = run("score", chelsea_path, edited, "--mask", mask, "--metrics", CHEAP)
    assert result.exit_code == 0, result.output
    assert "MSE bg ×10⁴" in result.stdout
    assert "SSIM bg ×10²" in result.stdout
    assert "edited.png" in result.stdout
    assert "inf" in result.stdout  # background PSNR of an edit changed only inside the mask


def test_pair_mask_from_ranking_file(run, chelsea_path, tmp_path):
    loaded = load_image(chelsea_path)
    ranking = tmp_path / "cat.rank.json"
    artifacts.write_ranking(ranking, loaded, Ranking("cat", {0: 1.0}, (0,), box(300, 451), {}), {}, {})
    edited = tmp_path / "edited.png"
    Image.fromarray(changed_inside(data.chelsea(), box(300, 451))).save(edited)
    result = run("score", chelsea_path, edited, "--mask", ranking, "--metrics", CHEAP, "--json")
    assert result.exit_code == 0, result.output
    scores = means(result)
    assert scores["mse_unedit_part"] == 0
    assert scores["mse_edit_part"] > 0


def test_pair_prompts_from_png_settings(run, chelsea_path, tmp_path):
    edited = tmp_path / "edited.png"
    save_png(load_image(chelsea_path).image, edited, {"target_prompt": "a tiger", "source_prompt": "a cat"})
    result = run("score", chelsea_path, edited, "--metrics", "clip_similarity_target_image", "--models", "tiny", "--json")
    assert result.exit_code == 0, result.output
    assert means(result)["clip_similarity_target_image"] >= 0


def test_pair_without_prompt_rejected(run, chelsea_path):
    result = run("score", chelsea_path, chelsea_path, "--metrics", "clip_similarity_target_image", "--models", "tiny")
    assert result.exit_code == 1
    assert "pass `--prompt`" in one_line_error(result)


def test_whole_image_mask_gives_null_background(run, chelsea_path, tmp_path):
    mask = save_mask(np.ones((300, 451), dtype=bool), tmp_path / "all.png")
    result = run("score", chelsea_path, chelsea_path, "--mask", mask, "--metrics", CHEAP, "--json")
    assert result.exit_code == 0, result.output
    scores = means(result)
    assert scores["mse_unedit_part"] is None  # NaN in JSON
    assert scores["mse_edit_part"] == 0
    assert json.loads(result.stdout)["methods"][0]["count"]["mse_unedit_part"] == 0


def warnings_in(stderr: str) -> list[str]:
    """Return the WARNING records on stderr, one line each when stderr is not a terminal."""
    return [line.removeprefix("WARNING:").strip() for line in stderr.splitlines() if line.startswith("WARNING:")]


def test_whole_image_mask_warns_once(run, chelsea_path, tmp_path):
    edited = tmp_path / "edited.png"
    Image.fromarray(data.coffee()[:300, :451]).save(edited)
    mask = save_mask(np.ones((300, 451), dtype=bool), tmp_path / "all.png")
    csv_path = tmp_path / "scores.csv"

    result = run("score", chelsea_path, edited, "--mask", mask, "--metrics", CHEAP, "--csv", csv_path)

    assert result.exit_code == 0, result.output
    assert warnings_in(result.stderr) == [
        "edited.png: the edit mask covers the whole image, so there is no background and mse_unedit_part, "
        "ssim_unedit_part, psnr_unedit_part are NaN, as in the PIE-Bench evaluation"
    ]
    table_row = next(line for line in result.stdout.splitlines() if "edited.png" in line)
    assert table_row.count("nan") == 3
    rows = list(csv.DictReader(csv_path.open()))
    assert rows[0]["mse_unedit_part"] == "nan"
    assert float(rows[0]["mse_edit_part"]) > 0


def test_json_writes_null_for_infinity(run, chelsea_path, tmp_path):
    edited = tmp_path / "edited.png"
    Image.fromarray(changed_inside(data.chelsea(), box(300, 451))).save(edited)
    mask = save_mask(box(300, 451), tmp_path / "mask.png")
    csv_path = tmp_path / "scores.csv"

    result = run("score", chelsea_path, edited, "--mask", mask, "--metrics", CHEAP, "--json", "--csv", csv_path)

    assert result.exit_code == 0, result.output
    assert "inf" not in result.stdout.lower()
    assert "nan" not in result.stdout.lower()
    assert means(result)["psnr_unedit_part"] is None  # +inf: the background is unchanged
    rows = list(csv.DictReader(csv_path.open()))
    assert rows[0]["psnr_unedit_part"] == "inf"


def test_tiny_images_one_line_error(run, tmp_path):
    source, edited = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(data.chelsea()[:5, :7]).save(source)
    Image.fromarray(data.coffee()[:5, :7]).save(edited)
    mask = save_mask(box(5, 7), tmp_path / "mask.png")

    result = run("score", source, edited, "--mask", mask, "--metrics", CHEAP)

    assert result.exit_code == 1
    line = one_line_error(result)
    assert "7x5" in line
    assert "SSIM needs at least 11x11 px" in line
    assert "ssim_unedit_part" in line


# Folders ---------------------------------------------------------------------------------------


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path, Path]:
    """Sources in two subfolders plus one without an edit; masks in a folder and beside a source."""
    sources, edits, masks = tmp_path / "src", tmp_path / "out", tmp_path / "masks"
    cat, coffee, rocket = data.chelsea(), data.coffee(), data.rocket()
    for folder in ("a", "b", "c"):
        (sources / folder).mkdir(parents=True)
    Image.fromarray(cat).save(sources / "a" / "cat.png")
    Image.fromarray(coffee).save(sources / "b" / "coffee.jpg", quality=95)
    Image.fromarray(rocket).save(sources / "c" / "rocket.png")
    save_mask(box(*cat.shape[:2]), masks / "a" / "cat.mask.png")
    coffee_source = load_image(sources / "b" / "coffee.jpg")
    ranking = Ranking("cup", {0: 1.0}, (0,), box(*coffee.shape[:2]), {})
    artifacts.write_ranking(sources / "b" / "coffee.rank.json", coffee_source, ranking, {}, {})  # also a .mask.png
    (edits / "a").mkdir(parents=True)
    (edits / "b").mkdir()
    Image.fromarray(changed_inside(cat, box(*cat.shape[:2]))).save(edits / "a" / "cat.png")
    coffee_source.image.save(edits / "b" / "coffee.png")  # the decoded JPEG, losslessly: no change
    return sources, edits, masks


def test_folders_pair_by_relative_path(run, folders, tmp_path):
    sources, edits, masks = folders
    csv_path = tmp_path / "scores.csv"
    result = run("score", sources, edits, "--masks-dir", masks, "--metrics", CHEAP, "--csv", csv_path, "--json")
    assert result.exit_code == 0, result.output
    method = json.loads(result.stdout)["methods"][0]
    rows = {row["id"]: row for row in method["images"]}
    assert list(rows) == ["a/cat.png", "b/coffee.jpg"]  # the ranking's .rank.mask.png is no source
    assert rows["a/cat.png"]["mse_unedit_part"] == 0
    assert rows["a/cat.png"]["ssim_unedit_part"] == pytest.approx(1.0, abs=1e-6)
    assert rows["a/cat.png"]["mse_edit_part"] > 0
    assert rows["b/coffee.jpg"]["mse_unedit_part"] == 0
    assert rows["b/coffee.jpg"]["mse_edit_part"] == 0
    assert method["missing"] == ["c/rocket.png"]
    assert "out: 1 of 3 edits are missing and were not scored (first: c/rocket.png)" in result.stderr
    with open(csv_path, newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert [line["id"] for line in lines] == ["a/cat.png", "b/coffee.jpg", "mean"]
    assert {line["method"] for line in lines} == {"out"}


def test_folder_table_lists_images(run, folders):
    sources, edits, masks = folders
    result = run("score", sources, edits, "--masks-dir", masks, "--metrics", CHEAP)
    assert result.exit_code == 0, result.output
    for text in ("a/cat.png", "b/coffee.jpg", "mean", "MSE bg ×10⁴"):
        assert text in result.stdout


def test_folder_without_masks_scores_whole_image(run, folders):
    sources, edits, _ = folders
    shutil.rmtree(sources / "b")
    result = run("score", sources, edits, "--metrics", CHEAP, "--json")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["methods"][0]["images"][0]
    assert row["mse_unedit_part"] > 0  # no mask: the changed box counts as background
    assert row["mse_edit_part"] is None
    assert "no edit mask found" in result.stderr


def test_folder_without_edits_rejected(run, folders, tmp_path):
    sources, _, _ = folders
    (tmp_path / "empty").mkdir()
    result = run("score", sources, tmp_path / "empty", "--metrics", CHEAP)
    assert result.exit_code == 1
    assert "none of the 3 source images has an edit" in one_line_error(result)


# PIE-Bench outputs without models: layouts and missing edits ----------------------------------


def test_pie_bench_method_folders_and_missing(run, tmp_path):
    from test_bench import IDS, write_pie_bench

    dataset = write_pie_bench(tmp_path / "PIE-Bench")
    mapping = json.loads((dataset / "mapping_file.json").read_text())
    outputs = tmp_path / "output"
    for entry_id, item in mapping.items():
        source = dataset / "annotation_images" / item["image_path"]
        nested = outputs / "copy" / "annotation_images" / Path(item["image_path"]).with_suffix(".png")
        nested.parent.mkdir(parents=True, exist_ok=True)
        Image.open(source).convert("RGB").save(nested)
        if entry_id != IDS[2]:
            flat = outputs / "flat" / item["image_path"]  # PnP Inversion's flat layout, same suffix
            flat.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, flat)
    result = run("score", "--pie-bench", dataset, "--outputs", outputs, "--metrics", CHEAP, "--json")
    assert result.exit_code == 0, result.output
    methods = {method["name"]: method for method in json.loads(result.stdout)["methods"]}
    assert list(methods) == ["copy", "flat"]
    assert methods["copy"]["missing"] == []
    assert methods["flat"]["missing"] == [IDS[2]]
    assert methods["copy"]["mean"]["mse_unedit_part"] == 0
    assert methods["flat"]["mean"]["mse_unedit_part"] == 0
    assert set(methods["copy"]["mean_by_type"]) == {"0", "1", "2"}
    assert methods["copy"]["ground_truth_mask"] is False


# Errors ----------------------------------------------------------------------------------------


def test_offline_default_models_one_line(run, chelsea_path, tmp_path):
    mask = save_mask(box(300, 451), tmp_path / "mask.png")
    result = run("score", chelsea_path, chelsea_path, "--mask", mask, "--prompt", "a tiger")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "samedit models pull" in line
    assert "is not cached" in line


def test_unknown_metric_one_line(run, chelsea_path):
    result = run("score", chelsea_path, chelsea_path, "--metrics", "mse_unedit_part,sharpness")
    assert result.exit_code == 2
    assert "unknown metric `sharpness`" in one_line_error(result)


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--types", "11", "unknown editing type `11` in `--types`"),
        ("--types", ",", "`--types` is empty"),
        ("--limit", "-1", "`--limit` -1 is negative"),
    ],
)
def test_pie_bench_flag_errors_exit_2(run, tmp_path, flag, value, message):
    from test_bench import write_pie_bench

    dataset = write_pie_bench(tmp_path / "PIE-Bench")
    result = run("score", "--pie-bench", dataset, "--outputs", tmp_path / "output", "--metrics", CHEAP, flag, value)
    assert result.exit_code == 2
    assert message in one_line_error(result)


def test_unsupported_plot_suffix_before_scoring(run, chelsea_path, tmp_path):
    csv_path, plot_path = tmp_path / "s2.csv", tmp_path / "s2.xyz"
    result = run("score", chelsea_path, chelsea_path, "--metrics", "psnr", "--csv", csv_path, "--plot", plot_path)
    assert result.exit_code == 2
    line = one_line_error(result)
    assert "`--plot` suffix `.xyz` is not supported" in line
    assert ".png" in line
    assert ".pdf" in line
    assert not csv_path.exists()
    assert not plot_path.exists()


@pytest.mark.parametrize("extra", [[], ["--prompt", "a tiger"]])
def test_missing_edited_image_not_found(run, chelsea_path, tmp_path, extra):
    missing = tmp_path / "nonexist.png"
    result = run("score", chelsea_path, missing, *extra)
    assert result.exit_code == 1
    assert f"EDITED `{missing}` not found" in one_line_error(result)


def test_missing_folder_not_found(run, folders, tmp_path):
    sources, _, _ = folders
    missing = tmp_path / "no-such-folder"
    result = run("score", missing, sources, "--metrics", CHEAP)
    assert result.exit_code == 1
    assert f"SOURCE `{missing}` not found" in one_line_error(result)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pie-bench", "data", "a.png", "b.png"], "not both"),
        (["--pie-bench", "data"], "--outputs"),
        (["a.png", "b.png", "--limit", "0"], "only used with --pie-bench"),
        (["--pie-bench", "data", "--outputs", "out", "--prompt", "a cat"], "come from its mapping file"),
        (["a.png"], "give SOURCE and EDITED"),
    ],
)
def test_mixed_modes_are_usage_errors(run, args, message):
    result = run("score", *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_existing_csv_needs_overwrite(run, chelsea_path, tmp_path):
    existing = tmp_path / "scores.csv"
    existing.write_text("keep me")
    result = run("score", chelsea_path, chelsea_path, "--metrics", CHEAP, "--csv", existing)
    assert result.exit_code == 1
    assert "--overwrite" in one_line_error(result)
    assert existing.read_text() == "keep me"
