"""`samedit bench` over a PIE-Bench folder made here: layout, resume, shards, masks, scoring."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from sam_edit import bench, shards, stages
from sam_edit.cli.app import app
from sam_edit.errors import SameditError
from sam_edit.images import read_png_settings
from sam_edit.models import loaders
from sam_edit.piebench import PieBenchEntry, edit_words, encode_rle, force_border, read_mapping
from sam_edit.runtime import CPU
from sam_edit.segment import Segment

SIZE = 512
METHODS = ("p2p", "residual")
FAST = ["--models", "tiny", "--steps", "2", "--max-side", "64"]
CHEAP_METRICS = ["--metrics", "mse_unedit_part"]
IDS = ("000000000000", "113000000000", "212000000000")


def disc_mask() -> np.ndarray:
    rows, cols = np.mgrid[:SIZE, :SIZE]
    return force_border((rows - 260) ** 2 + (cols - 250) ** 2 < 120**2)


def box_mask(top: int, bottom: int, left: int, right: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[top:bottom, left:right] = True
    return force_border(mask)


def write_pie_bench(root: Path) -> Path:
    """Write a three-image PIE-Bench folder: real photos at 512 x 512, RLE masks, bracketed prompts."""
    items = {
        IDS[0]: ("0_random_140/000000000000.jpg", data.chelsea(), "0", "a [cat] lying on a blanket",
                 "a [tiger] lying on a blanket", "cat tiger", disc_mask()),
        IDS[1]: ("1_change_object_80/1_artificial/3_indoor/113000000000.png", data.coffee(), "1",
                 "a cup of [coffee] on a saucer", "a cup of [tea] on a saucer", "cup cup", box_mask(60, 300, 120, 400)),
        IDS[2]: ("2_add_object_80/1_artificial/2_human/212000000000.jpg", data.astronaut(), "2",
                 "an astronaut in a suit", "an astronaut [with a helmet] in a suit", "", box_mask(0, 200, 150, 380)),
    }
    mapping = {}
    for entry_id, (relative, photo, type_id, original, editing, blended, mask) in items.items():
        path = root / "annotation_images" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).resize((SIZE, SIZE)).save(path, quality=95)
        mapping[entry_id] = {
            "image_path": relative,
            "original_prompt": original,
            "editing_prompt": editing,
            "editing_instruction": f"turn it into {editing}",
            "editing_type_id": type_id,
            "blended_word": blended,
            "mask": encode_rle(mask),
        }
    (root / "mapping_file.json").write_text(json.dumps(mapping), encoding="utf-8")
    return root


def invoke(*args, env: dict | None = None):
    return CliRunner().invoke(app, [str(arg) for arg in args], prog_name="samedit", env=env)


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def edit_paths(out: Path, methods=METHODS) -> dict[tuple[str, str], Path]:
    entries = read_mapping(out.parent / "PIE-Bench")
    return {(method, entry.id): bench.edited_path(out, method, entry) for method in methods for entry in entries}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, cache_root):
    """One `bench` run of p2p and residual with the ground-truth masks, shared by the tests below."""
    root = tmp_path_factory.mktemp("bench")
    dataset = write_pie_bench(root / "PIE-Bench")
    env = {"SAMEDIT_CACHE_DIR": str(cache_root), "HF_HOME": str(cache_root / "hf-home"),
           "HF_HUB_OFFLINE": "1", "SAMEDIT_MODELS": None}
    result = invoke("bench", "--pie-bench", dataset, "--methods", ",".join(METHODS), "--out", root / "runs",
                    "--use-gt-mask", *FAST, *CHEAP_METRICS, env=env)
    return dataset, root / "runs", result


def copy_run(bench_run, tmp_path: Path) -> tuple[Path, Path]:
    """Copy the dataset and the run, so a test can change them without touching the others."""
    dataset, out, _ = bench_run
    shutil.copytree(dataset, tmp_path / "PIE-Bench")
    shutil.copytree(out, tmp_path / "runs")
    return tmp_path / "PIE-Bench", tmp_path / "runs"


# One run: layout, records and the comparison table --------------------------------------------


def test_bench_writes_score_layout(bench_run):
    _, out, result = bench_run
    assert result.exit_code == 0, result.output
    paths = edit_paths(out)
    assert len(paths) == 6
    for (method, entry_id), path in paths.items():
        assert path.suffix == ".png"
        with Image.open(path) as image:
            assert image.size == (SIZE, SIZE)
        record = read_png_settings(path)["bench"]
        assert record["id"] == entry_id
        assert record["use_gt_mask"] is True
    assert (out / "p2p" / "annotation_images" / "0_random_140" / "000000000000.png").is_file()
    assert "edited 6, skipped 0" in result.stderr


def test_bench_manifest_records_settings(bench_run):
    _, out, _ = bench_run
    manifest = json.loads((out / "bench.json").read_text())
    assert manifest["methods"] == list(METHODS)
    assert manifest["settings"]["num_steps"] == 2
    assert manifest["settings"]["max_side"] == 64
    assert manifest["settings"]["use_gt_mask"] is True
    assert manifest["settings"]["model_set"] == "tiny"


def test_bench_table_marks_ground_truth_mask(bench_run):
    _, _, result = bench_run
    assert "p2p †" in result.stdout
    assert "residual †" in result.stdout
    assert "ground-truth PIE-Bench mask" in result.stdout
    assert "1 change object" in result.stdout  # the per-type table
    assert "MSE bg ×10⁴" in result.stdout


def test_bench_records_derived_words(bench_run):
    _, out, _ = bench_run
    paths = edit_paths(out)
    mask_use = {"p2p": None, "residual": "ground truth"}  # p2p needs no edit mask
    for method in METHODS:
        record = read_png_settings(paths[method, IDS[1]])["bench"]
        assert record["mask"] == mask_use[method]
        assert record["blended_word"] == "cup cup"
        assert record["edit_words"]["rule"] == "prompt difference"
    settings = read_png_settings(paths["residual", IDS[1]])
    assert settings["source_words"] == "cup of coffee"
    assert settings["target_prompt"] == "a cup of tea on a saucer"


def test_score_pie_bench_table_csv_plot(bench_run, tmp_path):
    dataset, out, _ = bench_run
    csv_path, plot_path = tmp_path / "scores.csv", tmp_path / "scores.png"
    # LPIPS and SSIM are left out to keep the test fast; the one-pair test in test_score_cli runs all 8.
    metrics = "structure_distance,psnr_unedit_part,mse_unedit_part,clip_similarity_target_image,clip_similarity_target_image_edit_part"
    result = invoke("score", "--pie-bench", dataset, "--outputs", out, "--models", "tiny", "--metrics", metrics,
                    "--csv", csv_path, "--plot", plot_path)
    assert result.exit_code == 0, result.output
    for text in ("Structure ×10³", "MSE bg ×10⁴", "PSNR bg", "CLIP edited", "p2p †", "2 add object"):
        assert text in result.stdout
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["method"], row["id"]) for row in rows] == [
        (method, entry_id) for method in METHODS for entry_id in (*IDS, "mean")
    ]
    assert list(rows[0])[3:] == metrics.split(",")
    assert [row["editing_type_id"] for row in rows[:3]] == ["0", "1", "2"]
    with Image.open(plot_path) as image:
        assert image.format == "PNG"


# Resume, shards, settings -----------------------------------------------------------------------


def test_bench_resume_skips_finished(bench_run, tmp_path):
    dataset, out = copy_run(bench_run, tmp_path)
    before = {key: path.stat().st_mtime_ns for key, path in edit_paths(out).items()}
    result = invoke("bench", "--pie-bench", dataset, "--methods", ",".join(METHODS), "--out", out,
                    "--use-gt-mask", "--no-score", *FAST)
    assert result.exit_code == 0, result.output
    assert "edited 0, skipped 6" in result.stderr
    assert {key: path.stat().st_mtime_ns for key, path in edit_paths(out).items()} == before


def test_bench_redoes_missing_and_partial_edits(bench_run, tmp_path):
    dataset, out = copy_run(bench_run, tmp_path)
    paths = edit_paths(out)
    missing, foreign = paths["p2p", IDS[0]], paths["residual", IDS[2]]
    missing.unlink()
    stale = missing.parent / f".{missing.name}.x1y2z3.part"  # what an interrupted write leaves
    stale.write_bytes(b"half a PNG")
    Image.new("RGB", (SIZE, SIZE)).save(foreign)  # a PNG without samedit settings
    result = invoke("bench", "--pie-bench", dataset, "--methods", ",".join(METHODS), "--out", out,
                    "--use-gt-mask", "--no-score", *FAST)
    assert result.exit_code == 0, result.output
    assert "edited 2, skipped 4" in result.stderr
    assert not stale.exists()
    assert read_png_settings(missing)["bench"]["id"] == IDS[0]
    assert read_png_settings(foreign)["bench"]["id"] == IDS[2]


def test_bench_shards_cover_entries_once(bench_run, tmp_path):
    dataset, _, _ = bench_run
    out = tmp_path / "runs"
    edited = []
    for shard in ("0/2", "1/2"):
        before = set(out.rglob("*.png"))
        result = invoke("bench", "--pie-bench", dataset, "--methods", "p2p", "--out", out, "--shard", shard,
                        "--use-gt-mask", "--no-score", *FAST)
        assert result.exit_code == 0, result.output
        assert f"(shard {shard})" in result.stderr
        edited.append({path.stem for path in set((out / "p2p").rglob("*.png")) - before})
    assert edited[0] == {IDS[0], IDS[2]}
    assert edited[1] == {IDS[1]}


def test_bench_rejects_other_settings(bench_run):
    dataset, out, _ = bench_run
    result = invoke("bench", "--pie-bench", dataset, "--methods", "p2p", "--out", out, "--use-gt-mask",
                    "--models", "tiny", "--steps", "3", "--max-side", "64")
    assert result.exit_code == 1
    assert "num_steps=2, but this run uses 3" in one_line_error(result)


def test_bench_rejects_unknown_method(tmp_path):
    dataset = write_pie_bench(tmp_path / "PIE-Bench")
    result = invoke("bench", "--pie-bench", dataset, "--methods", "p2p,magic", "--out", tmp_path / "runs", *FAST)
    assert result.exit_code == 2
    assert "unknown method `magic`" in one_line_error(result)
    assert not (tmp_path / "runs").exists()


def test_shard_parsing():
    assert shards.parse_shard("1/4") == shards.Shard(1, 4)
    assert shards.Shard(1, 4).select(list(range(10))) == [1, 5, 9]
    for value in ("4/4", "-1/2", "a/b", "3"):
        with pytest.raises(SameditError, match="shard|--shard"):
            shards.parse_shard(value)


def test_launcher_shard_from_environment():
    assert shards.launcher_shard({}) is None
    assert shards.launcher_shard({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert shards.launcher_shard({"WORLD_SIZE": "3", "RANK": "2", "LOCAL_RANK": "0"}) == shards.Shard(2, 3)


# From prompts to --from and --to --------------------------------------------------------------


def entry_with(original: str, editing: str, blended: str) -> PieBenchEntry:
    return PieBenchEntry(
        id="000000000001", image_path=Path("x.jpg"), source_prompt=original.replace("[", "").replace("]", ""),
        target_prompt=editing.replace("[", "").replace("]", ""), instruction="", editing_type_id="0",
        blend_words=None, mask_rle=(), relative_path="x.jpg", original_prompt=original, editing_prompt=editing,
        blended_word=blended,
    )


@pytest.mark.parametrize(
    "original, editing, blended, expected",
    [
        # blended_word replaces cleanly: used as it is
        ("a [cat] on a mat", "a [dog] on a mat", "cat dog", ("cat", "dog", "cat", "blended_word")),
        # a multi-word subject, which PnP Inversion's first-two-words split would break
        ("a [tennis ball] on grass", "a [golf ball] on grass", "tennis ball golf ball",
         ("tennis ball", "golf ball", "tennis ball", "blended_word")),
        # colour change blended on the object: the span grows to take in the blend word
        ("a [white] suit on a chair", "a [red] suit on a chair", "suit suit",
         ("white suit", "red suit", "suit", "prompt difference")),
        # added words, no blend word: the span takes the word before the insertion
        ("an astronaut in a suit", "an astronaut [with a helmet] in a suit", "",
         ("astronaut", "astronaut with a helmet", "astronaut", "prompt difference")),
        # deleted words at the start: the span takes the word after them
        ("[two] birds on a wire", "birds on a wire", "", ("two birds", "birds", "two birds", "prompt difference")),
        # the changed word occurs earlier too: the span widens until its first match is the change
        ("a dog next to a dog", "a dog next to a cat", "", ("to a dog", "to a cat", "to a dog", "prompt difference")),
    ],
)
def test_edit_words_cases(original, editing, blended, expected):
    words = edit_words(entry_with(original, editing, blended))
    assert (words.source_words, words.target_words, words.region_phrase, words.rule) == expected
    replaced = words.caption.lower().replace(words.source_words.lower(), words.target_words, 1)
    assert replaced == " ".join(editing.replace("[", "").replace("]", "").split()).lower()


def test_edit_words_identical_prompts_rejected():
    with pytest.raises(SameditError, match="identical"):
        edit_words(entry_with("a cat", "a cat", "cat cat"))


# Library: SAM + CLIP masks and failures ---------------------------------------------------------


def halves_segments() -> list[Segment]:
    """Two segments, the left and the right half of a PIE-Bench image."""
    halves = np.zeros((2, SIZE, SIZE), dtype=bool)
    halves[0, :, : SIZE // 2] = halves[1, :, SIZE // 2 :] = True
    boxes = [(0, 0, SIZE // 2, SIZE), (SIZE // 2, 0, SIZE // 2, SIZE)]  # XYWH
    return [Segment(index, halves[index], boxes[index], SIZE * SIZE // 2, 0.9, 0.9) for index in (0, 1)]


def test_sam_clip_mask_ranked_with_blend_word(tmp_path, monkeypatch):
    """SAM is replaced by two fixed segments; CLIP (tiny) ranks them against the blend word once."""
    dataset = write_pie_bench(tmp_path / "PIE-Bench")
    entry = read_mapping(dataset)[1]
    segments = halves_segments()
    calls = []

    def fake_segment(loaded, context):
        calls.append(loaded.path)
        return segments, {"sam": "tiny/sam-vit-b"}, {"segment": {}}

    monkeypatch.setattr(stages, "segment", fake_segment)
    config = bench.BenchConfig(("residual", "iclight-pnp"), num_steps=2, max_side=64)
    context = stages.Context(runtime=CPU, model_set="tiny")
    summary = bench.run_bench([entry], tmp_path / "runs", config, context)
    assert summary.edited == 2
    assert summary.failed == []
    assert len(calls) == 1  # the second method reuses the ranking
    ranking = json.loads((tmp_path / "runs" / "masks" / "1_change_object_80" / "1_artificial" / "3_indoor"
                          / "113000000000.rank.json").read_text())
    assert ranking["phrase"] == "cup"
    for method in config.methods:
        record = read_png_settings(bench.edited_path(tmp_path / "runs", method, entry))["bench"]
        assert record["mask"] == "sam+clip"
        assert record["region_phrase"] == "cup"
        assert record["use_gt_mask"] is False


def test_bench_loads_each_model_once(tmp_path, monkeypatch):
    """Three images, four methods: every model loads once, SAM runs once per image."""
    dataset = write_pie_bench(tmp_path / "PIE-Bench")
    loads, sam_runs = [], []

    def counted(function, name):
        def wrapper(*args, **kwargs):
            loads.append(name if name != "load_diffusion" else f"load_diffusion {args[0]}")
            return function(*args, **kwargs)
        return wrapper

    for name in ("load_diffusion", "load_iclight", "load_controlnet", "load_clip", "load_sam_model"):
        monkeypatch.setattr(loaders, name, counted(getattr(loaders, name), name))

    def fake_generate_segments(sam, image, config):
        sam_runs.append(image.shape)
        return halves_segments()

    monkeypatch.setattr(stages, "generate_segments", fake_generate_segments)  # SAM's own run takes seconds
    # p2p and pnp share SD 1.4 but are apart here; the run puts them one after the other.
    config = bench.BenchConfig(("p2p", "residual", "pnp", "controlnet"), num_steps=2, max_side=64)
    summary = bench.run_bench(read_mapping(dataset), tmp_path / "runs", config, stages.Context(runtime=CPU, model_set="tiny"))
    assert summary.failed == []
    assert summary.edited == 12
    assert sorted(loads) == sorted([
        "load_diffusion sd14", "load_iclight", "load_diffusion iclight-base", "load_diffusion sd15",
        "load_controlnet", "load_clip", "load_sam_model",
    ])
    assert sam_runs == [(SIZE, SIZE, 3)] * 3


def test_method_order_groups_shared_models():
    order = bench.model_order(["p2p", "residual", "controlnet", "pnp", "blended", "iclight"])
    assert order == ["p2p", "pnp", "residual", "iclight", "controlnet", "blended"]


def test_failed_entry_is_recorded_and_skipped(tmp_path):
    entry = entry_with("a cat", "a cat", "")
    config = bench.BenchConfig(("p2p",), num_steps=2, max_side=64)
    events = []
    summary = bench.run_bench([entry], tmp_path / "runs", config, stages.Context(runtime=CPU, model_set="tiny"),
                              events.append)
    assert summary.edited == 0
    assert [failure["id"] for failure in summary.failed] == [entry.id]
    assert "identical" in summary.failed[0]["error"]
    assert [event.status for event in events] == ["failed"]
    assert not os.path.exists(bench.edited_path(tmp_path / "runs", "p2p", entry))


@pytest.mark.parametrize(("flag", "value"), [("--shard", "4/4"), ("--shard", "x"), ("--metrics", "beauty"),
                                             ("--types", "11"), ("--limit", "-1"), ("--plot", "scores.xyz")])
def test_bench_flag_errors_exit_2(tmp_path, flag, value):
    dataset = write_pie_bench(tmp_path / "PIE-Bench")
    result = invoke("bench", "--pie-bench", dataset, "--methods", "p2p", "--out", tmp_path / "runs", flag, value, *FAST)
    assert result.exit_code == 2
    assert flag in one_line_error(result)
    assert not (tmp_path / "runs").exists()


def test_bench_out_file_rejected(tmp_path):
    dataset = write_pie_bench(tmp_path / "PIE-Bench")
    out = tmp_path / "cat.png"
    out.write_bytes(b"not a folder")
    result = invoke("bench", "--pie-bench", dataset, "--methods", "p2p", "--out", out, "--no-score", *FAST)
    assert result.exit_code == 2
    assert "`--out`" in one_line_error(result)
    assert out.read_bytes() == b"not a folder"
    assert not (tmp_path / "masks").exists()


def test_bench_failures_printed_once_exit_1(tmp_path, cache_root):
    """One entry has identical prompts, so its edit fails; the other is edited and scored."""
    dataset = write_pie_bench(tmp_path / "PIE-Bench")
    mapping_path = dataset / "mapping_file.json"
    mapping = json.loads(mapping_path.read_text())
    mapping[IDS[0]]["editing_prompt"] = mapping[IDS[0]]["original_prompt"]
    mapping_path.write_text(json.dumps(mapping))
    env = {"SAMEDIT_CACHE_DIR": str(cache_root), "HF_HOME": str(cache_root / "hf-home"),
           "HF_HUB_OFFLINE": "1", "SAMEDIT_MODELS": None}

    result = invoke("bench", "--pie-bench", dataset, "--methods", "p2p", "--out", tmp_path / "runs", "--limit", "2",
                    "--use-gt-mask", *FAST, *CHEAP_METRICS, env=env)

    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output
    assert "edited 1, skipped 0 finished before, failed 1" in result.stderr
    failures = [line for line in lines if "identical" in line]
    assert len(failures) == 1, result.stderr
    assert failures[0].startswith(f"failed: p2p {IDS[0]}: ")
    assert [line for line in lines if "missing" in line] == [
        f"p2p: 1 of 2 edits are missing and were not scored (first: {IDS[0]})"
    ]
    assert lines[-1] == "Error: 1 of 2 edits failed (listed above); run the same command again to retry them"
    assert "MSE bg ×10⁴" in result.stdout  # the scores were printed before the exit
