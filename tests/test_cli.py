import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sam_edit import __version__
from sam_edit.images import read_png_settings

FAST = ["--models", "tiny", "--steps", "4", "--max-side", "64"]


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_version(run):
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"samedit {__version__}"


def test_edit_chelsea_with_defaults(run, chelsea_path, tmp_path):
    output = tmp_path / "out.png"
    result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", "--method", "residual",
                 "--models", "tiny", "--seed", "1", "-o", output)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(output.resolve())
    with Image.open(output) as image:
        assert image.format == "PNG" and image.size == (451, 300)
    settings = read_png_settings(output)
    assert settings["method"] == "residual" and settings["seed"] == 1
    assert settings["num_steps"] == 50 and settings["residual_weight"] == 1.0
    assert settings["working_size"] == [512, 344] and settings["size"] == [451, 300]
    assert settings["target_prompt"] == "tiger"


def test_stage_chain_equals_one_shot(run, chelsea_path, tmp_path):
    masks, ranking, inversion = tmp_path / "cat.masks.json", tmp_path / "cat.rank.json", tmp_path / "cat.inv.safetensors"
    assert run("segment", chelsea_path, "-o", masks, "--models", "tiny").exit_code == 0
    assert (tmp_path / "cat.masks.composite.png").is_file()
    result = run("rank", chelsea_path, "--masks", masks, "--from", "cat", "-o", ranking, "--models", "tiny")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cat.rank.mask.png").is_file() and (tmp_path / "cat.rank.preview.png").is_file()
    result = run("invert", chelsea_path, "--prompt", "cat", "--method", "residual", "--rank", ranking, "-o", inversion, *FAST)
    assert result.exit_code == 0, result.output
    chained, one_shot = tmp_path / "chained.png", tmp_path / "one-shot.png"
    result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", "--method", "residual", "--masks", masks,
                 "--rank", ranking, "--inversion", inversion, "--seed", "1", "-o", chained, *FAST)
    assert result.exit_code == 0, result.output
    result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", "--method", "residual", "--seed", "1", "-o", one_shot, *FAST)
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.asarray(Image.open(chained)), np.asarray(Image.open(one_shot)))


def test_zero_residual_weight_is_run_without_correction(run, chelsea_path, tmp_path):
    outputs = {}
    for method, extra in (("residual", ["--residual-weight", "0"]), ("iclight-pnp", [])):
        outputs[method] = tmp_path / f"{method}.png"
        result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", "--method", method, *extra, "-o", outputs[method], *FAST)
        assert result.exit_code == 0, result.output
    assert np.array_equal(np.asarray(Image.open(outputs["residual"])), np.asarray(Image.open(outputs["iclight-pnp"])))


def test_offline_missing_model_is_one_line(run, chelsea_path, tmp_path):
    result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", "--method", "residual", "-o", tmp_path / "x.png")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "samedit models pull" in line and "is not cached" in line
    assert not (tmp_path / "x.png").exists()


def test_stage_file_for_another_image_rejected(run, chelsea_path, coffee_path, tmp_path):
    masks = tmp_path / "cat.masks.json"
    assert run("segment", chelsea_path, "-o", masks, "--models", "tiny").exit_code == 0
    result = run("rank", coffee_path, "--masks", masks, "--from", "cup", "-o", tmp_path / "r.json", "--models", "tiny")
    assert result.exit_code == 1
    assert "made for another image" in one_line_error(result)


def test_existing_output_needs_overwrite(run, chelsea_path, tmp_path):
    output = tmp_path / "out.png"
    output.write_bytes(b"keep me")
    result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", "-o", output, *FAST)
    assert result.exit_code == 1
    assert "--overwrite" in one_line_error(result)
    assert output.read_bytes() == b"keep me"


def test_output_may_not_be_the_input(run, chelsea_path):
    result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", "-o", chelsea_path, "--overwrite", *FAST)
    assert result.exit_code == 1
    assert "is an input file" in one_line_error(result)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--from", "", "--to", "tiger"], "`--from` must not be empty"),
        (["--from", "cat", "--to", "tiger", "--prompt", "a dog"], "must contain the `--from` words"),
        (["--from", "cat", "--to", "tiger", "--method", "magic"], "valid methods"),
        (["--from", "cat", "--to", "tiger", "--steps", "0"], "`--steps` must be from 1 to 1000"),
        (["--from", "cat", "--to", "tiger", "--steps", "1001"], "`--steps` must be from 1 to 1000"),
        (["--from", "cat", "--to", "tiger", "--max-side", "100"], "100 is not a multiple of 8"),
    ],
)
def test_bad_edit_arguments(run, chelsea_path, tmp_path, args, message):
    result = run("edit", chelsea_path, *args, "-o", tmp_path / "x.png", "--models", "tiny")
    assert result.exit_code == 2
    assert message in result.stderr


def test_output_to_special_file_rejected(run, chelsea_path, tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", "-o", fifo, "--overwrite", *FAST)
    assert result.exit_code == 1
    assert "not a regular file" in one_line_error(result)
    assert not fifo.is_file()


def test_outputs_follow_umask(run, chelsea_path, tmp_path):
    masks = tmp_path / "cat.masks.json"
    previous = os.umask(0o022)
    try:
        assert run("segment", chelsea_path, "-o", masks, "--models", "tiny").exit_code == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(masks.stat().st_mode) == 0o644


def test_output_must_be_png(run, chelsea_path, tmp_path):
    result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", "-o", tmp_path / "out.jpg", *FAST)
    assert result.exit_code == 2
    assert "must end in .png" in result.stderr


def test_folder_as_image(run, tmp_path):
    result = run("edit", tmp_path, "--from", "cat", "--to", "tiger", *FAST)
    assert result.exit_code == 1
    assert "is a folder" in one_line_error(result)


def test_missing_image(run, tmp_path):
    result = run("edit", tmp_path / "absent.jpg", "--from", "cat", "--to", "tiger", *FAST)
    assert result.exit_code == 1
    assert "not found" in one_line_error(result)


def test_user_mask_skips_segmentation(run, chelsea_path, tmp_path):
    mask = np.zeros((300, 451), dtype=np.uint8)
    mask[50:250, 100:350] = 255
    mask_path = tmp_path / "mask.png"
    Image.fromarray(mask).save(mask_path)
    output = tmp_path / "out.png"
    result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", "--mask", mask_path, "-o", output, *FAST)
    assert result.exit_code == 0, result.output
    region = read_png_settings(output)["edit_region"]
    assert region["mask"] == str(mask_path.resolve())
    assert set(region) == {"mask", "mask_sha256"}


def test_models_list_json(run):
    result = run("models", "list", "--json")
    assert result.exit_code == 0
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["sd14"]["state"] == "missing"
    assert rows["sam-vit-h"]["size"] == 2_564_550_879


def test_models_pull_offline_fails_cleanly(run):
    result = run("models", "pull", "sd14")
    assert result.exit_code == 1
    assert "samedit models pull sd14" in one_line_error(result)


def test_doctor_json(run):
    result = run("doctor", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["runtime"]["dtype"] == "fp32" and report["offline"] is True


def test_score_identical_pair(run, chelsea_path):
    result = run("score", chelsea_path, chelsea_path, "--metrics", "mse_unedit_part,ssim_unedit_part", "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)["methods"][0]["mean"]
    assert scores["mse_unedit_part"] == 0 and scores["ssim_unedit_part"] == pytest.approx(1.0)


def test_edit_prints_no_library_warnings(chelsea_path, tmp_path):
    # A subprocess, because diffusers' log handler keeps the stderr it found at import.
    output = tmp_path / "out.png"
    result = subprocess.run(
        [sys.executable, "-m", "sam_edit", "edit", str(chelsea_path), "--from", "cat", "--to", "tiger",
         "--method", "p2p", "-o", str(output), "--models", "tiny", "--steps", "1", "--max-side", "64"],
        capture_output=True, text=True, env=os.environ | {"COLUMNS": "200"}, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_output_folder_named_as_folder(run, chelsea_path, tmp_path):
    result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", "-o", tmp_path, *FAST)

    assert result.exit_code == 2
    assert "is a folder" in result.stderr
