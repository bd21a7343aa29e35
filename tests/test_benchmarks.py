"""The benchmark scripts: the tiny smoke run's evaluation counts, the full-size configs, the memory plan."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sam_edit.models import configs, loaders, random_full
from sam_edit.models.registry import get_spec
from sam_edit.runtime import GIB, plan_profile

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_rows(cache_root) -> dict[str, dict]:
    """Rows of `benchmarks/methods.py --models tiny --size 64 --steps 2 --json`, by row name."""
    env = {key: value for key, value in os.environ.items() if key != "SAMEDIT_MODELS"}
    env.update(HF_HUB_OFFLINE="1", SAMEDIT_CACHE_DIR=str(cache_root), HF_HOME=str(cache_root / "hf-home"))
    command = [sys.executable, str(BENCHMARKS / "methods.py"), "--models", "tiny", "--size", "64", "--steps", "2", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {row["row"]: row for row in rows}


def test_tiny_run_has_every_method_and_stage(tiny_rows):
    from sam_edit.methods.registry import METHODS

    assert set(tiny_rows) == {"segment", "rank", "residual+inversion-file", *METHODS}
    for name in ("segment", "rank", "p2p", "pnp", "iclight", "iclight-pnp", "residual", "residual+inversion-file"):
        assert "error" not in tiny_rows[name], tiny_rows[name]
        assert "skipped" not in tiny_rows[name], tiny_rows[name]


def test_direct_inversion_costs_no_evaluation(tiny_rows):
    assert tiny_rows["pnp"]["unet_batch_items"] <= tiny_rows["p2p"]["unet_batch_items"]
    assert tiny_rows["residual"]["unet_batch_items"] <= tiny_rows["iclight"]["unet_batch_items"]
    assert tiny_rows["iclight-pnp"]["unet_batch_items"] <= tiny_rows["iclight"]["unet_batch_items"]


def test_inversion_methods_count_inversion_and_edit(tiny_rows):
    # 2 inversion steps with batch 1, then 2 editing steps with batch 4 (CFG on source and target).
    for name in ("p2p", "pnp", "iclight", "residual"):
        row = tiny_rows[name]
        assert row["inversion_unet_calls"] == 2
        assert row["inversion_unet_batch_items"] == 2
        assert row["unet_calls"] == 4
        assert row["unet_batch_items"] == 10


def test_inversion_file_runs_no_inversion(tiny_rows):
    from_file, inverted = tiny_rows["residual+inversion-file"], tiny_rows["residual"]
    assert from_file["inversion_file"] is True
    assert from_file["inversion_unet_calls"] == 0
    assert from_file["unet_calls"] == inverted["unet_calls"] - inverted["inversion_unet_calls"]


def test_controlnet_runs_beside_every_unet_call(tiny_rows):
    row = tiny_rows["controlnet"]
    assert row["controlnet_calls"] == row["unet_calls"]
    assert row["controlnet_batch_items"] == row["unet_batch_items"]


def test_rows_have_time_and_memory(tiny_rows):
    for row in tiny_rows.values():
        if "skipped" in row:
            continue
        assert 0 < row["model_seconds"] <= row["wall_seconds"] + 0.002, row["row"]  # both rounded to ms
        assert 0 <= row["overhead_share"] <= 1
        assert row["peak_rss_bytes"] >= row["baseline_rss_bytes"] > 0
        assert row["size"] == 64
        assert row["steps"] == 2
    assert set(tiny_rows["p2p"]["model_seconds_by"]) == {"unet", "vae", "text_encoder"}
    assert set(tiny_rows["segment"]["model_seconds_by"]) == {"sam"}
    assert set(tiny_rows["rank"]["model_seconds_by"]) == {"clip"}


# Full-size configs -------------------------------------------------------------------------------

# Parameter counts of the full-size configs. The SD 1.x model card gives 860M for the UNet and
# 123M for the text encoder. The other counts are pinned so that a config change shows.
RELEASED_PARAMETERS = {
    "unet": 859_520_964,
    "vae": 83_653_863,
    "text_encoder": 123_060_480,
    "controlnet": 361_279_120,
    "clip": 427_616_513,
    "sam-vit-b": 93_735_472,
    "sam-vit-h": 641_090_608,
}


def count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def test_full_configs_match_released_sizes():
    with torch.device("meta"):
        unet, vae, text_encoder, tokenizer = random_full.build_diffusion(get_spec("sd15"))
        sizes = {
            "unet": count(unet),
            "vae": count(vae),
            "text_encoder": count(text_encoder),
            "controlnet": count(random_full.build_controlnet()),
            "clip": count(random_full.build_clip()[0]),
            "sam-vit-b": count(random_full.build_sam(get_spec("sam-vit-b"))),
            "sam-vit-h": count(random_full.build_sam(get_spec("sam-vit-h"))),
        }
    assert sizes == RELEASED_PARAMETERS
    assert tokenizer("a cat").input_ids == [49406, 320, 2368, 49407]


@pytest.mark.parametrize("name, in_channels", [("iclight-base", 4), ("sd15-inpaint", 9), ("ip2p", 8)])
def test_full_unet_input_channels(name, in_channels):
    with torch.device("meta"):
        unet = random_full.build_unet(name, int(get_spec(name).variant))
    assert unet.config.in_channels == in_channels
    assert unet.config.cross_attention_dim == configs.SD_TEXT_DIM


def test_random_full_model_set():
    assert loaders.model_set_from_env("random-full") == "random-full"
    assert loaders.model_id("sd14", "random-full") == "random-full/sd14"
    with pytest.raises(Exception, match="random-full"):
        loaders.locate("sd14", "random-full")


# Memory plan -------------------------------------------------------------------------------------


def traced_row(**extra) -> dict:
    row = {
        "row": "p2p",
        "size": 256,
        "parameters_by": {"unet": 1 * GIB, "text_encoder": GIB // 8, "vae": GIB // 16},
        "peak_tensor_bytes_by": {"unet": GIB // 4, "vae": GIB // 2, "text_encoder": GIB // 64},
    }
    row.update(extra)
    return row


def test_memory_plan_model_offload_counts_running_unit():
    plan = load_script("memory_plan")
    card = plan_profile(torch.device("cuda"), int(7.5 * GIB), 8 * GIB)
    peak, at = plan.estimate_peak(traced_row(), card, size=512)
    # UNet phase: 2 GiB of fp16 weights + 1/4 GiB x 4 (area) / 2 (fp16) = 2.5 GiB.
    # VAE phase: 1/8 GiB of fp16 weights + 1/2 GiB x 4 / 2 = 1.125 GiB.
    assert card.offload == "model"
    assert peak == pytest.approx(2.5 * GIB)
    assert at == "unet"


def test_memory_plan_without_offload_counts_every_model():
    plan = load_script("memory_plan")
    resident = plan_profile(torch.device("cuda"), 24 * GIB, 24 * GIB)
    peak, at = plan.estimate_peak(traced_row(), resident, size=512)
    # Weights: UNet 2 + text encoder 1/4 (fp16) + VAE 1/4 (fp32) GiB; the VAE's fp32 live
    # tensors, 1/2 GiB x 4, are the largest.
    assert resident.offload == "none"
    assert peak == pytest.approx((2 + 0.25 + 0.25 + 2) * GIB)
    assert at == "vae"


def test_memory_plan_keeps_sam_unscaled():
    plan = load_script("memory_plan")
    card = plan_profile(torch.device("cuda"), int(7.5 * GIB), 8 * GIB)
    row = traced_row(parameters_by={"sam": GIB // 4}, peak_tensor_bytes_by={"sam": GIB})
    peak, _ = plan.estimate_peak(row, card, size=512)
    assert peak == pytest.approx(2 * GIB)  # fp32 weights, live tensors as traced


def test_memory_plan_table_skips_untraced_rows():
    plan = load_script("memory_plan")
    table = plan.plan_table([traced_row(), {"row": "pnp", "size": 256}])
    assert [record["row"] for record in table] == ["p2p"]
    assert table[0]["fits"] is True
    assert "| p2p |" in plan.markdown(table, 512, 7.5)


def test_memory_plan_keeps_text_encoder_unscaled():
    plan = load_script("memory_plan")
    card = plan_profile(torch.device("cuda"), int(7.5 * GIB), 8 * GIB)
    row = traced_row(parameters_by={"text_encoder": GIB // 8}, peak_tensor_bytes_by={"text_encoder": GIB // 2})
    peak, at = plan.estimate_peak(row, card, size=512)
    assert peak == pytest.approx(0.25 * GIB + 0.25 * GIB)  # fp16 weights and live tensors, 77 tokens at any size
    assert at == "text_encoder"


# Probe -------------------------------------------------------------------------------------------


def test_live_bytes_counts_new_storages_only():
    probe = load_script("probe")
    tracker = probe.Probe(torch.device("cpu"), trace=True).tracer
    weight = torch.ones(1000, 1000)  # made before tracing, like the weights
    with tracker:
        view = weight.t()
        doubled = weight * 2  # 4 MB
        del doubled
        shifted = weight + 1  # 4 MB, after the first is freed
        shifted.add_(1)  # in place: nothing new
    assert view.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()
    assert tracker.peaks["other"] == 4_000_000
    assert tracker.current == 4_000_000
    del shifted
    assert tracker.current == 0


def test_probe_counts_unet_calls_and_batch_items():
    from diffusers import UNet2DConditionModel

    probe_module = load_script("probe")
    probe = probe_module.Probe(torch.device("cpu"))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**configs.TINY_UNET).eval()
    probe.instrument(unet)
    probe.instrument(unet)  # a model placed twice is hooked once
    prompt_embeds = torch.zeros(4, 77, configs.TINY_TEXT_DIM)
    with torch.no_grad():
        probe.inverting = True
        unet(torch.zeros(1, 4, 8, 8), 10, encoder_hidden_states=prompt_embeds[:1])
        probe.inverting = False
        unet(torch.zeros(4, 4, 8, 8), 10, encoder_hidden_states=prompt_embeds)
    record = probe.record()
    assert record["unet_calls"] == 2
    assert record["unet_batch_items"] == 5
    assert record["inversion_unet_calls"] == 1
    assert record["inversion_unet_batch_items"] == 1
    assert set(record["model_seconds_by"]) == {"unet"}
    assert record["parameters_by"] == {"unet": count(unet)}


def test_memory_plan_keeps_sam_masks_fp32():
    plan = load_script("memory_plan")
    row = traced_row(parameters_by={"sam": GIB // 4}, peak_tensor_bytes_by={"sam": GIB // 2, "other": GIB})
    live = plan.activation_bytes(row, 512, vae_fp32=False)
    assert live == {"sam": GIB // 2, "other": GIB}
