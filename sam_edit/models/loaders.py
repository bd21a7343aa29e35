"""Load models by registry name from the real cache or the tiny set, through one code path."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPProcessor, CLIPTextModel, CLIPTokenizer

from sam_edit.errors import SameditError
from sam_edit.models import configs, metric_models, store, tiny
from sam_edit.models.registry import ModelSpec, get_spec
from sam_edit.runtime import Runtime

logger = logging.getLogger(__name__)

MODEL_SETS = ("default", "tiny")


def model_set_from_env(requested: str | None = None) -> str:
    """Return `--models`, else `SAMEDIT_MODELS`, else "default"; validate the name."""
    value = requested or os.environ.get("SAMEDIT_MODELS") or "default"
    if value not in MODEL_SETS:
        raise SameditError(f"`--models` must be one of {', '.join(MODEL_SETS)}, got {value!r}")
    return value


def locate(name: str, model_set: str) -> Path:
    """Return the local path of model `name` in `model_set`, building or downloading it if needed."""
    spec = get_spec(name)
    if model_set == "tiny":
        return tiny.tiny_path(spec, store.cache_dir())
    return store.resolve(spec)


def model_id(name: str, model_set: str) -> str:
    """Identity of a model as stage files record it: repo@revision, URL file name, or tiny/name."""
    spec = get_spec(name)
    if model_set == "tiny":
        return f"tiny/{name}"
    if spec.repo_id:
        return f"{spec.repo_id}@{spec.revision}" + (f"/{spec.filename}" if spec.filename else "")
    return f"{spec.filename}@sha256:{spec.sha256[:12]}"


@dataclass
class DiffusionModels:
    """The components of a Stable Diffusion 1.x model that the editing loops call."""

    name: str
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    runtime: Runtime

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def new_scheduler() -> DDIMScheduler:
    """DDIM with SD 1.x's betas, as every method uses (PnP Inversion settings)."""
    return DDIMScheduler(**configs.DDIM_SCHEDULER)


def place(module: torch.nn.Module, runtime: Runtime, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Move a model to the runtime's device and dtype, in eval mode with gradients off."""
    module.requires_grad_(False).eval()
    return module.to(runtime.device, dtype or runtime.dtype)


def load_diffusion(name: str, model_set: str, runtime: Runtime) -> DiffusionModels:
    """Load VAE, UNet, text encoder and tokenizer of an SD 1.x model; the scheduler is DDIM."""
    folder = locate(name, model_set)
    logger.info("loading %s from %s", name, folder)
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    except (OSError, ValueError) as error:
        raise SameditError(f"model `{name}` in `{folder}` is incomplete or corrupt ({error}); "
                           f"run `samedit models pull {name}` again") from error
    return DiffusionModels(
        name=name,
        vae=place(vae, runtime),
        unet=place(unet, runtime),
        text_encoder=place(text_encoder, runtime),
        tokenizer=tokenizer,
        scheduler=new_scheduler(),
        runtime=runtime,
    )


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int) -> None:
    """Give `conv_in` more input channels, as IC-Light does: new channels start at zero."""
    old = unet.conv_in
    new = torch.nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)


def merge_offsets(unet: UNet2DConditionModel, offsets: dict[str, torch.Tensor]) -> None:
    """Set every weight to base + offset, as IC-Light's release does; keys must match exactly."""
    base = unet.state_dict()
    missing, extra = base.keys() - offsets.keys(), offsets.keys() - base.keys()
    if missing or extra:
        raise SameditError(
            f"IC-Light offsets do not fit the base UNet: {len(missing)} weights missing, "
            f"{len(extra)} unexpected (e.g. {sorted(missing or extra)[0]})"
        )
    merged = {key: base[key] + offsets[key].to(base[key].dtype) for key in base}
    unet.load_state_dict(merged, strict=True)


def load_iclight(model_set: str, runtime: Runtime) -> DiffusionModels:
    """Load IC-Light fc: its SD 1.5 base with `conv_in` widened to 8 channels and offsets merged."""
    spec = get_spec("iclight-fc")
    offsets = load_file(locate(spec.name, model_set))
    models = load_diffusion("iclight-base", model_set, Runtime(torch.device("cpu"), torch.float32, "none"))
    # The merge happens in fp32 on the CPU, as the IC-Light release does, before the cast.
    widen_conv_in(models.unet, int(spec.variant))
    merge_offsets(models.unet, offsets)
    for module in (models.vae, models.unet, models.text_encoder):
        place(module, runtime)
    models.runtime = runtime
    models.name = "iclight"
    return models


def load_controlnet(model_set: str, runtime: Runtime) -> ControlNetModel:
    folder = locate("controlnet-seg", model_set)
    return place(ControlNetModel.from_pretrained(folder), runtime)


def load_clip(model_set: str, runtime: Runtime, name: str = "clip-l14") -> tuple[CLIPModel, CLIPProcessor]:
    """Load CLIP in fp32 (it ranks a few dozen crops; precision matters more than memory)."""
    folder = locate(name, model_set)
    model = CLIPModel.from_pretrained(folder)
    # The PIL backend resizes exactly as OpenAI's CLIP preprocessing does.
    processor = CLIPProcessor.from_pretrained(folder, backend="pil")
    return place(model, runtime, torch.float32), processor


def load_sam_model(name: str, model_set: str, runtime: Runtime):
    """Load a SAM checkpoint (`sam-vit-b`, `sam-vit-l`, `sam-vit-h`) in fp32."""
    from sam_edit.models.sam import load_sam

    spec: ModelSpec = get_spec(name)
    if spec.kind != "sam":
        raise SameditError(f"`--sam-model` must be a SAM model (sam-vit-b, sam-vit-l, sam-vit-h), got `{name}`")
    config = configs.SAM_CONFIGS["tiny" if model_set == "tiny" else spec.variant]
    return place(load_sam(config, locate(name, model_set)), runtime, torch.float32)


def load_score_models(model_set: str, runtime: Runtime, metrics: tuple[str, ...]):
    """Load only the metric models that `metrics` need (DINO, LPIPS, CLIP) for `metrics.score_pair`."""
    from sam_edit.metrics import ScoreModels, metric_family

    families = {metric_family(name) for name in metrics}
    models = ScoreModels(device=runtime.device)
    if "structure_distance" in families:
        models.dino = metric_models.load_dino(locate("dino-vitb8", model_set), runtime.device)
    if "lpips" in families:
        models.lpips = metric_models.load_lpips(locate("lpips-squeeze", model_set), runtime.device)
    if "clip" in families:
        models.clip_score = metric_models.load_clip_score(locate("clip-l14", model_set), runtime.device)
    return models
