"""PIE-Bench metrics against independent computations, with tiny random metric models."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from skimage import data
from skimage.metrics import structural_similarity
from transformers import CLIPModel, CLIPProcessor

from sam_edit import report
from sam_edit.errors import ModelNotCachedError, SameditError
from sam_edit import metrics as metrics_module
from sam_edit import pixel_metrics
from sam_edit.metrics import (
    DEFAULT_METRICS,
    METRIC_NAMES,
    PAPER_SCALE,
    ScoreModels,
    count_scores,
    dino_self_similarity,
    empty_region_warning,
    load_score_models,
    mean_scores,
    score_pair,
    structure_distance,
    to_paper_scale,
)
from sam_edit.models import metric_models

BACKGROUND = ("psnr_unedit_part", "lpips_unedit_part", "mse_unedit_part", "ssim_unedit_part")
EDIT_REGION = ("psnr_edit_part", "lpips_edit_part", "mse_edit_part", "ssim_edit_part", "structure_distance_edit_part")
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("metric_models")
    return {
        "dino": metric_models.build_tiny_dino(root / "dino"),
        "lpips": metric_models.build_tiny_squeezenet(root / metric_models.SQUEEZENET_FILENAME),
        "clip": metric_models.build_tiny_clip(root / "clip"),
    }


@pytest.fixture(scope="module")
def models(model_paths) -> ScoreModels:
    return load_score_models(model_paths["dino"], model_paths["lpips"], model_paths["clip"])


@pytest.fixture(scope="module")
def photos() -> tuple[np.ndarray, np.ndarray]:
    """Two real 128 x 128 photos: the cat's face, and a crop of the coffee cup."""
    cat = np.ascontiguousarray(data.chelsea()[40:168, 150:278])
    coffee = np.ascontiguousarray(data.coffee()[100:228, 200:328])
    return cat, coffee


@pytest.fixture(scope="module")
def mask() -> np.ndarray:
    """A `[128, 128]` edit region: a disc and a bar."""
    rows, cols = np.mgrid[:128, :128]
    mask = (rows - 60) ** 2 + (cols - 70) ** 2 < 30**2
    mask[100:110, 10:120] = True
    return mask


def masked(image: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255 * weights[..., None].astype(np.float32)


# Each metric against an independent computation ------------------------------------------


def test_ssim_matches_skimage(photos, mask):
    source, edited = photos
    scores = score_pair(ScoreModels(), source, edited, mask, "a cat", metrics=("ssim_unedit_part", "ssim"))
    for name, weights in (("ssim_unedit_part", ~mask), ("ssim", np.ones_like(mask))):
        expected = structural_similarity(
            masked(source, weights),
            masked(edited, weights),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=2,
        )
        assert scores[name] == pytest.approx(expected, abs=1e-4)


def test_psnr_and_mse_match_numpy(photos, mask):
    source, edited = photos
    metrics = ("psnr_unedit_part", "mse_unedit_part", "psnr_edit_part", "mse_edit_part", "psnr", "mse")
    scores = score_pair(ScoreModels(), source, edited, mask, "a cat", metrics=metrics)
    for suffix, weights in (("_unedit_part", ~mask), ("_edit_part", mask), ("", np.ones_like(mask))):
        difference = masked(source, weights).astype(np.float64) - masked(edited, weights)
        mse = np.mean(difference**2)  # over all H x W x 3 values, zeroed pixels included
        assert scores["mse" + suffix] == pytest.approx(mse, rel=1e-5)
        assert scores["psnr" + suffix] == pytest.approx(10 * np.log10(1.0 / mse), rel=1e-5)


def keys_by_hand(dino, image: np.ndarray, fixed: bool) -> torch.Tensor:
    """Last-block keys from the hidden state that enters that block."""
    pixels = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    if fixed:
        pixels = pixels / 255
    pixels = F.interpolate(pixels, size=(224, 224), mode="bilinear", align_corners=False, antialias=False)
    pixels = (pixels - IMAGENET_MEAN) / IMAGENET_STD
    with torch.no_grad():
        hidden = dino(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        last = dino.layers[-1]
        return last.attention.k_proj(last.layernorm_before(hidden))[0]


@pytest.fixture(scope="module")
def photos_512() -> tuple[np.ndarray, np.ndarray]:
    """Two real 512 x 512 photos, which DINO's input resize shrinks to 224 x 224."""
    coffee = Image.fromarray(data.coffee()).resize((512, 512), Image.BICUBIC)
    return data.astronaut(), np.asarray(coffee).copy()


@pytest.mark.parametrize("fixed", [False, True])
def test_structure_distance_matches_hand_computation(models, photos_512, fixed):
    source, edited = photos_512
    similarities = []
    for image in (source, edited):
        keys = F.normalize(keys_by_hand(models.dino, image, fixed).double(), dim=-1)
        similarities.append((keys @ keys.T).numpy())
    expected = np.mean((similarities[0] - similarities[1]) ** 2)
    assert expected > 0
    assert structure_distance(models.dino, source, edited, fixed=fixed) == pytest.approx(expected, rel=1e-4)


def test_structure_distance_fixed_differs(models, photos):
    source, edited = photos
    quirk = structure_distance(models.dino, source, edited)
    fixed = structure_distance(models.dino, source, edited, fixed=True)
    assert quirk != pytest.approx(fixed, rel=1e-3)


def test_self_similarity_has_785_tokens(models):
    similarity = dino_self_similarity(models.dino, data.astronaut())
    assert similarity.shape == (785, 785)
    assert torch.allclose(similarity.diagonal(), torch.ones(785), atol=1e-5)
    assert torch.allclose(similarity, similarity.T, atol=1e-6)


def test_self_similarity_non_square_input(models, photos):
    similarity = dino_self_similarity(models.dino, data.chelsea())  # 451 x 300 -> 336 x 224
    assert similarity.shape == (1 + 28 * 42, 1 + 28 * 42)


def test_lpips_matches_torchmetrics_metric(models, model_paths, photos, monkeypatch, tmp_path):
    # torchmetrics' own metric, given the same backbone file through torchvision's cache.
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = metric_models.default_squeezenet_checkpoint()
    assert cached == tmp_path / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    cached.parent.mkdir(parents=True)
    shutil.copy(model_paths["lpips"], cached)
    reference = LearnedPerceptualImagePatchSimilarity(net_type="squeeze")

    source, edited = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1 for image in photos)
    expected = float(reference(source, edited))
    assert expected > 0
    assert float(models.lpips(source, edited).mean()) == pytest.approx(expected, rel=1e-5)
    assert float(metric_models.load_lpips(None).to(torch.float32)(source, edited).mean()) == pytest.approx(expected, rel=1e-5)


def clip_by_hand(model: CLIPModel, processor: CLIPProcessor, image: np.ndarray, prompt: str) -> float:
    inputs = processor(text=[prompt], images=[Image.fromarray(image)], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    cosine = float((outputs.image_embeds * outputs.text_embeds).sum())  # both unit length
    return max(100 * cosine, 0.0)


def test_clip_scores_match_formula(models, model_paths, photos, mask):
    source, edited = photos
    model = CLIPModel.from_pretrained(model_paths["clip"])
    processor = CLIPProcessor.from_pretrained(model_paths["clip"], backend="pil")
    edit_region = np.where(mask[..., None], edited, 0).astype(np.uint8)
    values = []
    for prompt in ("a photo of a cat", "a cup of coffee", "a red car on the road"):
        scores = score_pair(
            models,
            source,
            edited,
            mask,
            prompt,
            source_prompt=prompt,
            metrics=("clip_similarity_source_image", "clip_similarity_target_image", "clip_similarity_target_image_edit_part"),
        )
        expected = {
            "clip_similarity_source_image": clip_by_hand(model, processor, source, prompt),
            "clip_similarity_target_image": clip_by_hand(model, processor, edited, prompt),
            "clip_similarity_target_image_edit_part": clip_by_hand(model, processor, edit_region, prompt),
        }
        for name, value in expected.items():
            assert scores[name] == pytest.approx(value, abs=1e-3), (prompt, name)
        values += scores.values()
    assert any(value > 0 for value in values)  # random weights: some cosines are negative and clamp to 0


# Perfect values and NaN ----------------------------------------------------------------------


def test_identical_images_score_perfect(models, photos, mask):
    source, _ = photos
    scores = score_pair(models, source, source.copy(), mask, "a cat", metrics=METRIC_NAMES)
    for family in ("lpips", "mse", "structure_distance"):
        for suffix in ("", "_unedit_part", "_edit_part"):
            assert scores[family + suffix] == 0.0
    for suffix in ("", "_unedit_part", "_edit_part"):
        assert scores["ssim" + suffix] == pytest.approx(1.0, abs=1e-6)
        assert scores["psnr" + suffix] == math.inf  # zero error: 10 log10(1 / 0)


def test_edit_inside_mask_keeps_background_perfect(models, photos, mask):
    source, other = photos
    edited = np.where(mask[..., None], other, source)
    scores = score_pair(models, source, edited, mask, "a cat", metrics=METRIC_NAMES)
    assert scores["psnr_unedit_part"] == math.inf
    assert scores["lpips_unedit_part"] == 0.0
    assert scores["mse_unedit_part"] == 0.0
    assert scores["ssim_unedit_part"] == pytest.approx(1.0, abs=1e-6)
    assert scores["structure_distance_unedit_part"] == 0.0
    # The edit is real: whole-image and edit-region metrics see it.
    assert scores["mse"] > 0
    assert scores["lpips_edit_part"] > 0
    assert scores["structure_distance"] > 0


def test_whole_image_mask_gives_nan_background(models, photos):
    source, edited = photos
    scores = score_pair(models, source, edited, np.ones((128, 128), bool), "a cat", metrics=METRIC_NAMES)
    for name in (*BACKGROUND, "structure_distance_unedit_part"):
        assert math.isnan(scores[name]), name
    for name in (*EDIT_REGION, "structure_distance", "mse", "clip_similarity_target_image_edit_part"):
        assert not math.isnan(scores[name]), name


def test_empty_mask_gives_nan_edit_metrics(models, photos):
    source, edited = photos
    scores = score_pair(models, source, edited, np.zeros((128, 128), bool), "a cat", metrics=METRIC_NAMES)
    for name in (*EDIT_REGION, "clip_similarity_target_image_edit_part"):
        assert math.isnan(scores[name]), name
    for name in BACKGROUND:
        assert not math.isnan(scores[name]), name


def test_source_clip_nan_without_source_prompt(models, photos, mask):
    source, edited = photos
    scores = score_pair(models, source, edited, mask, "a cat")
    assert list(scores) == list(DEFAULT_METRICS)
    assert math.isnan(scores["clip_similarity_source_image"])


# Inputs --------------------------------------------------------------------------------------


def test_pil_inputs_match_arrays(models, photos, mask):
    source, edited = photos
    from_arrays = score_pair(models, source, edited, mask, "a cat", "a cat")
    from_images = score_pair(models, Image.fromarray(source), Image.fromarray(edited).convert("RGBA"), mask, "a cat", "a cat")
    assert from_images == from_arrays


def test_wide_strip_scores_right_tile(photos, mask):
    source, edited = photos
    strip = np.concatenate([np.zeros_like(edited), source, edited], axis=1)  # [text, source, edit] panels
    metrics = ("mse_unedit_part", "ssim_unedit_part")
    assert score_pair(ScoreModels(), source, strip, mask, "a cat", metrics=metrics) == score_pair(
        ScoreModels(), source, edited, mask, "a cat", metrics=metrics
    )


def test_size_mismatch_raises(photos, mask):
    source, edited = photos
    with pytest.raises(SameditError, match="edited image is 128x64 but the source is 128x128"):
        score_pair(ScoreModels(), source, edited[:64], mask, "a cat", metrics=("mse",))
    with pytest.raises(SameditError, match="mask is"):
        score_pair(ScoreModels(), source, edited, mask[:64], "a cat", metrics=("mse",))


def test_unknown_metric_raises(photos, mask):
    with pytest.raises(SameditError, match="unknown metric `psnr_background`"):
        score_pair(ScoreModels(), *photos, mask, "a cat", metrics=("psnr_background",))


def test_missing_model_raises(photos, mask):
    with pytest.raises(SameditError, match="needs the `lpips` model"):
        score_pair(ScoreModels(), *photos, mask, "a cat", metrics=("lpips_unedit_part",))


def test_subset_without_models(photos, mask):
    scores = score_pair(ScoreModels(), *photos, mask, "a cat", metrics=("ssim_unedit_part", "psnr_unedit_part"))
    assert list(scores) == ["ssim_unedit_part", "psnr_unedit_part"]


# Small and large images ----------------------------------------------------------------------


def test_small_images_rejected_with_minimum():
    source = np.ascontiguousarray(data.chelsea()[:5, :7])
    edited = np.ascontiguousarray(data.coffee()[:5, :7])
    mask = np.zeros((5, 7), bool)
    metrics = ("mse_unedit_part", "ssim_unedit_part")

    with pytest.raises(SameditError) as raised:
        score_pair(ScoreModels(), source, edited, mask, "a cat", metrics=metrics)

    message = str(raised.value)
    assert "\n" not in message
    assert "7x5" in message
    assert "SSIM needs at least 11x11 px" in message
    assert "leave ssim_unedit_part out of `--metrics`" in message


def test_small_images_name_every_family(models):
    image = np.zeros((12, 40, 3), np.uint8)
    mask = np.zeros((12, 40), bool)

    with pytest.raises(SameditError) as raised:
        score_pair(models, image, image, mask, "a cat", metrics=DEFAULT_METRICS)

    message = str(raised.value)
    assert "40x12" in message
    assert "LPIPS needs at least 17x17 px" in message
    assert "SSIM" not in message  # 12 px is enough for SSIM
    assert "lpips_unedit_part" in message


def test_smallest_accepted_sizes(models):
    cat = data.chelsea()
    for side, metric in ((11, "ssim_unedit_part"), (17, "lpips_unedit_part")):
        image = np.ascontiguousarray(cat[:side, :side])
        scores = score_pair(models, image, image[::-1].copy(), np.zeros((side, side), bool), "a cat", metrics=(metric,))
        assert math.isfinite(scores[metric]), metric


@pytest.mark.parametrize("size", [(20, 3000), (3000, 20), (5, 1000)])
def test_narrow_images_rejected_for_structure_distance(models, size):
    image = np.zeros((*size, 3), np.uint8)

    with pytest.raises(SameditError) as raised:
        score_pair(models, image, image, np.zeros(size, bool), "a cat", metrics=("structure_distance", "mse"))

    message = str(raised.value)
    assert f"{size[1]}x{size[0]}" in message
    assert "narrower than its 8 px patches" in message
    assert "leave structure_distance out" in message


@pytest.mark.parametrize("size", [(7, 5), (20, 1000), (300, 451), (512, 512)])
def test_dino_input_size_matches_torchvision(size):
    from torchvision.transforms import functional as TF

    resized = TF.resize(torch.zeros(1, 3, *size), [224], max_size=480, antialias=False)
    assert metrics_module.dino_input_size(size) == tuple(resized.shape[-2:])


def test_mse_accepts_small_images():
    image = np.ascontiguousarray(data.chelsea()[:5, :7])
    scores = score_pair(ScoreModels(), image, image, np.zeros((5, 7), bool), "a cat", metrics=("mse_unedit_part",))
    assert scores["mse_unedit_part"] == 0


def record_calls(monkeypatch, module, name: str) -> list[tuple[int, int]]:
    """Wrap `module.name` so that each call's input height and width are recorded."""
    original = getattr(module, name)
    sizes = []

    def wrapper(preds, *args, **kwargs):
        sizes.append(tuple(preds.shape[-2:]))
        return original(preds, *args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return sizes


def test_ssim_in_bands_matches_one_pass(photos, mask, monkeypatch):
    import torchmetrics.functional.image as image_metrics

    source, edited = photos
    metrics = ("ssim_unedit_part", "ssim")
    one_pass = score_pair(ScoreModels(), source, edited, mask, "a cat", metrics=metrics)
    monkeypatch.setattr(pixel_metrics, "PIECE_PIXELS", 40 * 128)
    sizes = record_calls(monkeypatch, image_metrics, "structural_similarity_index_measure")

    banded = score_pair(ScoreModels(), source, edited, mask, "a cat", metrics=metrics)

    assert len(sizes) > 2 * 2  # several bands per metric
    assert all(height * width <= 40 * 128 for height, width in sizes)
    for name in metrics:
        assert banded[name] == pytest.approx(one_pass[name], rel=1e-6, abs=1e-7), name


def test_lpips_in_tiles_weights_tile_scores(models, photos, monkeypatch):
    source, edited = photos
    weights = np.ones((128, 128), np.float32)
    monkeypatch.setattr(pixel_metrics, "PIECE_PIXELS", 64 * 64)

    tiled = score_pair(models, source, edited, np.zeros((128, 128), bool), "a cat", metrics=("lpips",))

    tiles = []
    for rows in (slice(0, 64), slice(64, 128)):
        for columns in (slice(0, 64), slice(64, 128)):
            pair = [torch.from_numpy(masked(image[rows, columns], weights[rows, columns])).permute(2, 0, 1)[None]
                    for image in (source, edited)]
            tiles.append(float(models.lpips(pair[0] * 2 - 1, pair[1] * 2 - 1).mean()))
    assert tiled["lpips"] == pytest.approx(np.mean(tiles), rel=1e-6)


def test_512_scores_are_one_pass(models, photos_512):
    # PIE-Bench's size is scored by the plain torchmetrics calls, so its numbers are unchanged.
    from torchmetrics.functional.image import structural_similarity_index_measure

    source, edited = photos_512
    weights = np.ones((512, 512), np.float32)
    preds, target = (torch.from_numpy(masked(image, weights)).permute(2, 0, 1)[None] for image in (source, edited))
    _, ssim_map = structural_similarity_index_measure(preds, target, data_range=1.0, return_full_image=True)
    expected_ssim = float(ssim_map[..., 5:-5, 5:-5].mean())
    expected_lpips = float(models.lpips(preds * 2 - 1, target * 2 - 1).mean())

    scores = score_pair(models, source, edited, np.zeros((512, 512), bool), "a cat", metrics=("ssim", "lpips"))

    assert scores["ssim"] == expected_ssim
    assert scores["lpips"] == expected_lpips


def test_empty_region_warning_names_nan_metrics():
    full, empty, part = np.ones((4, 4), bool), np.zeros((4, 4), bool), np.eye(4, dtype=bool)

    background = empty_region_warning(full, DEFAULT_METRICS)
    edit_region = empty_region_warning(empty, ("mse_edit_part", "clip_similarity_target_image_edit_part", "mse"))

    assert background == (
        "the edit mask covers the whole image, so there is no background and psnr_unedit_part, "
        "lpips_unedit_part, mse_unedit_part, ssim_unedit_part are NaN, as in the PIE-Bench evaluation"
    )
    assert edit_region == (
        "the edit mask is empty, so mse_edit_part, clip_similarity_target_image_edit_part are NaN, "
        "as in the PIE-Bench evaluation"
    )
    assert empty_region_warning(part, DEFAULT_METRICS) is None
    assert empty_region_warning(full, ("mse_edit_part", "psnr")) is None


# Aggregation ---------------------------------------------------------------------------------


ROWS = [
    {"id": "a", "editing_type_id": "0", "psnr_unedit_part": 20.0, "lpips_unedit_part": 0.1},
    {"id": "b", "editing_type_id": "9", "psnr_unedit_part": math.nan, "lpips_unedit_part": math.nan},
    {"id": "c", "editing_type_id": "1", "psnr_unedit_part": 30.0, "lpips_unedit_part": 0.3},
]


def test_mean_scores_skip_nan():
    means = mean_scores(ROWS)
    assert list(means) == ["psnr_unedit_part", "lpips_unedit_part"]
    assert means["psnr_unedit_part"] == pytest.approx(25.0)
    assert means["lpips_unedit_part"] == pytest.approx(0.2)
    assert count_scores(ROWS, ["psnr_unedit_part"]) == {"psnr_unedit_part": 2}


def test_mean_scores_all_nan():
    assert math.isnan(mean_scores([{"mse": math.nan}])["mse"])


def test_paper_scale():
    assert PAPER_SCALE["structure_distance"] == 1e3
    assert PAPER_SCALE["lpips_unedit_part"] == 1e3
    assert PAPER_SCALE["mse_unedit_part"] == 1e4
    assert PAPER_SCALE["ssim_unedit_part"] == 1e2
    assert PAPER_SCALE["psnr_unedit_part"] == 1.0
    assert PAPER_SCALE["clip_similarity_target_image"] == 1.0
    assert to_paper_scale({"id": "a", "mse_unedit_part": 0.0032}) == {"id": "a", "mse_unedit_part": pytest.approx(32.0)}


# Report helpers ------------------------------------------------------------------------------


def test_csv_rows_and_mean_line():
    buffer = io.StringIO()
    report.write_csv(buffer, ROWS)
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "id,editing_type_id,psnr_unedit_part,lpips_unedit_part"
    assert lines[2] == "b,9,nan,nan"
    assert lines[-1] == "mean,,25.0,0.2"
    assert len(lines) == 1 + len(ROWS) + 1


def test_csv_to_path(tmp_path):
    path = tmp_path / "scores.csv"
    report.write_csv(path, ROWS, paper_scale=True)
    assert path.read_text().splitlines()[-1] == "mean,,25.0,200.0"


def test_json_is_strict():
    record = report.scores_json([*ROWS, {"id": "d", "psnr_unedit_part": math.inf, "lpips_unedit_part": 0.2}])
    text = json.dumps(record, allow_nan=False)
    loaded = json.loads(text)
    assert loaded["images"][1]["psnr_unedit_part"] is None
    assert loaded["images"][3]["psnr_unedit_part"] is None  # +inf
    assert loaded["mean"]["psnr_unedit_part"] is None
    assert loaded["count"] == {"psnr_unedit_part": 3, "lpips_unedit_part": 3}
    assert loaded["scale_factors"]["lpips_unedit_part"] == 1000.0


def test_table_shows_paper_scale():
    table = report.scores_table({"pnp": mean_scores(ROWS), "ddim": {"psnr_unedit_part": 17.87}})
    console = Console(record=True, width=120)
    console.print(table)
    text = console.export_text()
    assert "PSNR bg ↑" in text
    assert "LPIPS bg ×10³ ↓" in text
    assert "200.00" in text
    assert "nan" in text  # ddim has no LPIPS


def test_plot_comparison_writes_png(tmp_path):
    means = {"ddim+p2p": {"psnr_unedit_part": 17.87, "ssim_unedit_part": 0.7114}, "pnp": {"psnr_unedit_part": 27.22}}
    path = report.plot_comparison(means, tmp_path / "compare.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


# Model loading -------------------------------------------------------------------------------


def test_squeezenet_names_agree():
    assert metric_models.SQUEEZENET_URL == "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth"
    assert metric_models.SQUEEZENET_URL.endswith("/" + metric_models.SQUEEZENET_FILENAME)
    assert metric_models.SQUEEZENET_SHA256_PREFIX in metric_models.SQUEEZENET_FILENAME


def test_load_lpips_missing_checkpoint(tmp_path):
    with pytest.raises(ModelNotCachedError, match="squeezenet1_1-b8a52dc0.pth"):
        metric_models.load_lpips(tmp_path / "absent.pth")


def test_load_lpips_rejects_other_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, path)
    with pytest.raises(SameditError, match="is not a torchvision squeezenet1_1 checkpoint"):
        metric_models.load_lpips(path)


def test_tiny_builders_are_seeded(tmp_path):
    first = metric_models.build_tiny_squeezenet(tmp_path / "a.pth")
    second = metric_models.build_tiny_squeezenet(tmp_path / "b.pth")
    state_a, state_b = torch.load(first, weights_only=True), torch.load(second, weights_only=True)
    assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)


def test_load_dino_restores_dino_layer_norm_eps(model_paths, tmp_path):
    folder = tmp_path / "dino"
    shutil.copytree(model_paths["dino"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["layer_norm_eps"] = 1e-12  # as in the converted hub config
    (folder / "config.json").write_text(json.dumps(config))
    assert metric_models.load_dino(folder).config.layer_norm_eps == 1e-6


def test_load_dino_missing_folder(tmp_path):
    with pytest.raises(ModelNotCachedError, match="facebook/dino-vitb8"):
        metric_models.load_dino(tmp_path / "absent")


def test_load_clip_score_missing_folder(tmp_path):
    with pytest.raises(ModelNotCachedError, match="openai/clip-vit-large-patch14"):
        metric_models.load_clip_score(tmp_path / "absent")
