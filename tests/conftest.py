"""Shared fixtures: offline hub, a private samedit cache with the tiny set, real photos."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # read when huggingface_hub is imported
os.environ.setdefault("TYPER_USE_RICH", "0")
os.environ.setdefault("COLUMNS", "120")

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from sam_edit.images import load_image
from sam_edit.methods.request import EditRequest
from sam_edit.runtime import CPU


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    """One samedit cache per test worker, so the tiny set is built once."""
    return tmp_path_factory.mktemp("samedit-cache")


@pytest.fixture(autouse=True)
def samedit_env(cache_root, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SAMEDIT_CACHE_DIR", str(cache_root))
    monkeypatch.setenv("HF_HOME", str(cache_root / "hf-home"))  # an empty hub cache
    monkeypatch.delenv("SAMEDIT_MODELS", raising=False)
    torch.set_num_threads(1)  # pytest -n 2 runs one worker per core; more threads oversubscribe


@pytest.fixture(scope="session")
def chelsea_path(tmp_path_factory) -> Path:
    """scikit-image's chelsea photo (CC0) as a 451x300 PNG."""
    path = tmp_path_factory.mktemp("photos") / "cat.png"
    Image.fromarray(skimage.data.chelsea()).save(path)
    return path


@pytest.fixture(scope="session")
def coffee_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(path)
    return path


@pytest.fixture
def chelsea(chelsea_path):
    return load_image(chelsea_path)


@pytest.fixture
def cpu():
    return CPU


@pytest.fixture
def context(cpu):
    """Stage context on the CPU with the tiny model set."""
    from sam_edit import stages  # imports diffusers and transformers: seconds, so only when used

    return stages.Context(runtime=cpu, model_set="tiny")


@pytest.fixture
def cat_mask(chelsea):
    """A box around the cat in chelsea: `[300, 451]` bool, True = edit."""
    width, height = chelsea.size
    mask = np.zeros((height, width), dtype=bool)
    mask[60:240, 120:330] = True
    return mask


@pytest.fixture
def cat_mask_path(cat_mask, tmp_path):
    """`cat_mask` as a mask PNG (white = edit)."""
    path = tmp_path / "cat-mask.png"
    Image.fromarray(cat_mask.astype(np.uint8) * 255).save(path)
    return path


@pytest.fixture
def make_request():
    """Return a factory of fast edit requests (cat to tiger, 2 steps, 64 px); keywords override fields."""

    def build(method, **overrides):
        values = dict(source_words="cat", target_words="tiger", method=method, num_steps=2, max_side=64, seed=1)
        return EditRequest(**(values | overrides))

    return build


@pytest.fixture
def run():
    """Return a function that runs `samedit ARGS...` in this process and returns Typer's result."""
    from typer.testing import CliRunner

    from sam_edit.cli.app import app

    runner = CliRunner()

    def invoke(*args, env=None):
        return runner.invoke(app, [str(arg) for arg in args], prog_name="samedit", env=env)

    return invoke


@pytest.fixture
def cached_sam_checkpoint(cache_root):
    """Put a sparse file of SAM ViT-B's size where the store keeps it; yield its path, then remove it."""
    from sam_edit.models import store
    from sam_edit.models.registry import get_spec

    spec = get_spec("sam-vit-b")
    path = store.file_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(spec.size)  # the store checks only the size of a cached file
    yield path
    path.unlink()
