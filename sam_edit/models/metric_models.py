"""Models behind the PIE-Bench metrics: DINO ViT-B/8, LPIPS SqueezeNet and CLIP ViT-L/14.

Each loader reads local files only and never downloads. The tiny builders write seeded random
models in the same formats, so that tests load them through the same loaders.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchmetrics.functional.image.lpips import _NoTrainLpips
from torchmetrics.multimodal import CLIPScore
from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer, ViTConfig, ViTModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from sam_edit.errors import ModelNotCachedError, SameditError
from sam_edit.models import configs
from sam_edit.models.vocab import write_clip_tokenizer

logger = logging.getLogger(__name__)

DINO_HUB_ID = "facebook/dino-vitb8"  # the torch.hub `dino_vitb8` weights, converted to ViTModel
# DINO's `vit_base` uses LayerNorm eps 1e-6. The converted hub config keeps ViTConfig's default
# of 1e-12, so the loader restores 1e-6 to compute what the torch.hub model computes.
DINO_LAYER_NORM_EPS = 1e-6

# The checkpoint torchvision downloads for `squeezenet1_1(weights=DEFAULT)`, which torchmetrics'
# LPIPS uses as its backbone. torch.hub names checkpoints `<name>-<first 8 hex digits of the
# file's SHA-256>.pth`.
SQUEEZENET_URL = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.url
SQUEEZENET_FILENAME = "squeezenet1_1-b8a52dc0.pth"
SQUEEZENET_SHA256_PREFIX = "b8a52dc0"

CLIP_HUB_ID = "openai/clip-vit-large-patch14"

TINY_DINO = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    patch_size=8,  # as ViT-B/8, so a 224 input gives 28 x 28 patches + CLS = 785 tokens
    image_size=224,
    qkv_bias=True,
    layer_norm_eps=DINO_LAYER_NORM_EPS,
)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch in a forked RNG, so that building a tiny model leaves the caller's RNG alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# DINO ViT-B/8 -----------------------------------------------------------------------------


def load_dino(folder: Path, device: torch.device | str = "cpu") -> ViTModel:
    """Load a DINO ViT (`facebook/dino-vitb8` layout) in fp32 eval mode from a local folder."""
    try:
        dino = ViTModel.from_pretrained(
            folder, add_pooling_layer=False, layer_norm_eps=DINO_LAYER_NORM_EPS, local_files_only=True
        )
    except OSError as error:
        raise ModelNotCachedError(
            f"no DINO ViT model in `{folder}` ({error}); download `{DINO_HUB_ID}` into it"
        ) from error
    return dino.to(device=device, dtype=torch.float32).eval()


def build_tiny_dino(folder: Path, seed: int = 0) -> Path:
    """Write a seeded random ViT with DINO ViT-B/8's patch size and input size; return `folder`."""
    with _seeded(seed):
        dino = ViTModel(ViTConfig(**TINY_DINO), add_pooling_layer=False)
    dino.save_pretrained(folder)
    return folder


def dino_key_projection(dino: ViTModel) -> nn.Linear:
    """Return the key projection of the last transformer block.

    DINO's structure distance uses the keys of the last block, i.e. the middle third of that
    block's fused `qkv` output, which the converted model stores as a separate key layer.
    """
    if hasattr(dino, "layers"):  # transformers >= 5
        return dino.layers[-1].attention.k_proj
    return dino.encoder.layer[-1].attention.attention.key  # transformers 4.x


# LPIPS with a SqueezeNet backbone ----------------------------------------------------------


def default_squeezenet_checkpoint() -> Path:
    """Return where torchvision caches the SqueezeNet 1.1 checkpoint (`$TORCH_HOME/hub/checkpoints`)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / SQUEEZENET_FILENAME


def load_lpips(
    backbone_checkpoint: Path | None = None, device: torch.device | str = "cpu"
) -> nn.Module:
    """Build torchmetrics' LPIPS network with `net_type="squeeze"` without any download.

    torchmetrics builds the backbone with `torchvision.models.squeezenet1_1(weights=DEFAULT)`,
    which downloads `SQUEEZENET_URL` on first use. The LPIPS linear layers ship inside the
    torchmetrics wheel (`functional/image/lpips_models/squeeze.pth`). Here the network is built
    with a random backbone, so nothing is downloaded, and the backbone weights are then loaded
    from `backbone_checkpoint` with `weights_only=True`. Without a checkpoint path, the file in
    torchvision's own cache is used.

    Returns a module whose `forward(img1, img2)` takes two `[N, 3, H, W]` float tensors in
    [-1, 1] and returns the LPIPS distance per image, shape `[N, 1, 1, 1]`.
    """
    if backbone_checkpoint is None:
        path = default_squeezenet_checkpoint()
    else:
        path = Path(backbone_checkpoint)
    if not path.is_file():
        raise ModelNotCachedError(
            f"SqueezeNet 1.1 checkpoint for LPIPS not found at `{path}`; "
            f"download {SQUEEZENET_URL} there"
        )
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        squeezenet = torchvision.models.squeezenet1_1(weights=None)
        squeezenet.load_state_dict(state_dict)  # strict, so a wrong or truncated file fails here
    except (RuntimeError, ValueError, EOFError, OSError, KeyError, TypeError) as error:
        raise SameditError(
            f"`{path}` is not a torchvision squeezenet1_1 checkpoint ({error}); "
            f"delete it and download {SQUEEZENET_URL} again"
        ) from error

    # `pnet_rand=True` gives a random backbone (no download); the LPIPS linear layers are still
    # loaded from the torchmetrics wheel because `pretrained` stays True.
    lpips = _NoTrainLpips(net="squeeze", pnet_rand=True)
    # torchmetrics splits `features` into slices and keeps each layer's index as its name, so
    # `slices.<slice>.<index>.<param>` is torchvision's `features.<index>.<param>`.
    backbone = {}
    for key in lpips.net.state_dict():
        _, _, index, param = key.split(".", 3)
        backbone[key] = squeezenet.state_dict()[f"features.{index}.{param}"]
    lpips.net.load_state_dict(backbone)
    return lpips.to(device=device, dtype=torch.float32).eval()


def build_tiny_squeezenet(path: Path, seed: int = 0) -> Path:
    """Write a seeded random `squeezenet1_1` state dict, loadable by `load_lpips`; return `path`.

    LPIPS's linear layers fix the channel counts, so this backbone has SqueezeNet 1.1's full
    size (1.2 M parameters, 5 MB); only its weights are random.
    """
    with _seeded(seed):
        squeezenet = torchvision.models.squeezenet1_1(weights=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(squeezenet.state_dict(), path)
    return path


# CLIP score --------------------------------------------------------------------------------


class _TensorFeatureCLIP(nn.Module):
    """A `CLIPModel` whose `get_image_features` and `get_text_features` return tensors.

    torchmetrics 1.9 `CLIPScore` divides what these methods return by its norm. transformers 5
    returns a `BaseModelOutputWithPooling` there instead, with the projected embedding in
    `pooler_output`; transformers 4 returns that embedding as a tensor.
    """

    def __init__(self, model: CLIPModel) -> None:
        super().__init__()
        self.model = model

    @property
    def config(self) -> CLIPConfig:  # read by CLIPScore to truncate text to 77 tokens
        return self.model.config

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        return _projected_embedding(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        features = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return _projected_embedding(features)


def _projected_embedding(features) -> Tensor:
    return features if isinstance(features, Tensor) else features.pooler_output


def load_clip_score(folder: Path, device: torch.device | str = "cpu") -> CLIPScore:
    """Build torchmetrics' `CLIPScore` on a local folder laid out as `openai/clip-vit-large-patch14`.

    `CLIPScore(model_name_or_path=...)` only accepts hub names that contain "openai", "jinaai"
    or "zer0int", so it is given a callable that returns the locally loaded model and
    processor, which torchmetrics supports. The score is torchmetrics' own:
    max(100 * cos(image embedding, text embedding), 0), with text cut to 77 tokens.

    The image processor uses the PIL backend (bicubic PIL resize, then centre crop), which is
    what `CLIPProcessor` ran in transformers 4; transformers 5 defaults to a torchvision
    backend whose resize gives slightly different pixels.
    """
    try:
        model = CLIPModel.from_pretrained(folder, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(folder, backend="pil", local_files_only=True)
    except OSError as error:
        raise ModelNotCachedError(
            f"no CLIP model in `{folder}` ({error}); download `{CLIP_HUB_ID}` into it"
        ) from error
    model = _TensorFeatureCLIP(model.to(dtype=torch.float32).eval())
    return CLIPScore(model_name_or_path=lambda: (model, processor)).to(device)


def build_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """Write a seeded random `CLIPModel` and its `CLIPProcessor` with the real CLIP vocabulary."""
    with _seeded(seed):
        config = CLIPConfig(
            text_config=configs.TINY_TEXT_ENCODER,
            vision_config=configs.TINY_CLIP_VISION,
            projection_dim=configs.TINY_TEXT_DIM,
        )
        model = CLIPModel(config)
    model.save_pretrained(folder)
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder))
    side = configs.TINY_CLIP_VISION["image_size"]
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder
