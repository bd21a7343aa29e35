"""Load models by registry name from the real cache or the tiny set, through one code path."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPProcessor, CLIPTextModel, CLIPTokenizer

from sam_edit.errors import SameditError
from sam_edit.models import configs, metric_models, offload, random_full, store, tiny
from sam_edit.models.registry import DEFAULT_SAM, ModelSpec, get_spec
from sam_edit.runtime import Runtime

logger = logging.getLogger(__name__)

# default: real weights; tiny: toy models for tests; random-full: real sizes with random weights,
# built in memory, for benchmarks only (`sam_edit.models.random_full`).
MODEL_SETS = ("default", "tiny", "random-full")

# Metric family (`sam_edit.metrics.metric_family`) -> the registry model that computes it.
SCORE_MODELS = {"structure_distance": "dino-vitb8", "lpips": "lpips-squeeze", "clip": "clip-l14"}


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
    if model_set == "random-full":
        raise SameditError(f"`--models random-full` builds models in memory for benchmarks and has no file "
                           f"for `{name}`; use `--models default` or `--models tiny`")
    return store.resolve(spec)


def require_models(names: Sequence[str], model_set: str) -> None:
    """Check that every model in `names` is cached before a command loads any of them.

    Offline, one `ModelNotCachedError` names every missing model and one pull command for all.
    Online, the missing ones are downloaded now. Tiny models are built on first use, so for them
    only the package that building needs is checked. Random-full models are built in memory.
    """
    specs = [get_spec(name) for name in dict.fromkeys(names)]
    if model_set == "default":
        store.require(specs)
    elif model_set == "tiny":
        tiny.check_buildable(specs, store.cache_dir())


def required_models(method: str | None, *, segment: bool = False, rank: bool = False,
                    sam_model: str = DEFAULT_SAM) -> list[str]:
    """Return the registry names of the models a stage or an edit loads, in loading order.

    `method` is an editing method, or None for the `segment` and `rank` stages alone. `segment`
    is True when SAM runs, which happens when no masks file is given and the method either finds
    its edit mask or needs segments (`controlnet`). `rank` is True when CLIP ranks segments,
    which happens when the edit mask is found without `--mask` or a ranking file.
    """
    names = [sam_model] if segment else []
    if rank:
        names.append("clip-l14")
    if method is not None:
        names += method_models(method)
    return names


def method_models(method: str) -> list[str]:
    """Return the registry names of the diffusion models (and ControlNet) that `method` loads."""
    from sam_edit.methods import inversion_based  # imports this module, so not at the top
    from sam_edit.methods.registry import get_method_info

    info = get_method_info(method)
    if not info.inversion_based:
        return [info.model]
    inversion_method = inversion_based.METHODS[method]
    names = ["iclight-base", "iclight-fc"] if inversion_method.base == "iclight" else [inversion_method.base]
    if inversion_method.conditioning == "control":
        names.append("controlnet-seg")
    return names


def score_models(metrics: Sequence[str]) -> list[str]:
    """Return the registry names of the models that computing `metrics` loads."""
    from sam_edit.metrics import metric_family

    families = {metric_family(name) for name in metrics}
    return [name for family, name in SCORE_MODELS.items() if family in families]


def model_id(name: str, model_set: str) -> str:
    """Identity of a model as stage files record it: repo@revision, URL file name, or tiny/name."""
    spec = get_spec(name)
    if model_set in ("tiny", "random-full"):
        return f"{model_set}/{name}"
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


def place(module: torch.nn.Module, runtime: Runtime, dtype: torch.dtype | None = None,
          unit: str | None = None) -> torch.nn.Module:
    """Move a model to the runtime's device and dtype, in eval mode with gradients off.

    With CPU offload, a model given an offload `unit` ("unet", "text_encoder", "vae") stays
    on the CPU and moves to the GPU when it runs (`sam_edit.models.offload`). A model without
    one (SAM, CLIP) goes to the GPU whole, because it runs in a stage of its own.
    """
    module.requires_grad_(False).eval()
    if runtime.offload == "none" or unit is None or runtime.device.type != "cuda":
        return module.to(runtime.device, dtype or runtime.dtype)
    module.to(dtype or runtime.dtype)  # never on the GPU before accelerate's sequential offload
    return offload.attach(module, runtime.device, runtime.offload, unit)


def place_diffusion(models: DiffusionModels, runtime: Runtime) -> None:
    """Place the VAE (in the profile's VAE dtype), UNet and text encoder of `models`."""
    place(models.vae, runtime, runtime.vae_dtype, unit="vae")
    place(models.unet, runtime, unit="unet")
    place(models.text_encoder, runtime, unit="text_encoder")
    models.runtime = runtime


def load_diffusion(name: str, model_set: str, runtime: Runtime) -> DiffusionModels:
    """Load VAE, UNet, text encoder and tokenizer of an SD 1.x model; the scheduler is DDIM."""
    if model_set == "random-full":
        unet, vae, text_encoder, tokenizer = random_full.build_diffusion(get_spec(name))
    else:
        unet, vae, text_encoder, tokenizer = read_diffusion(name, model_set)
    models = DiffusionModels(name, vae, unet, text_encoder, tokenizer, new_scheduler(), runtime)
    place_diffusion(models, runtime)
    return models


def read_diffusion(name: str, model_set: str):
    """Read (unet, vae, text_encoder, tokenizer) of model `name` from its diffusers folder."""
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
    return unet, vae, text_encoder, tokenizer


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
    require_models(["iclight-base", "iclight-fc"], model_set)
    models = load_diffusion("iclight-base", model_set, Runtime(torch.device("cpu"), torch.float32, "none"))
    # The merge happens in fp32 on the CPU, as the IC-Light release does, before the cast.
    widen_conv_in(models.unet, int(spec.variant))
    if model_set != "random-full":  # random weights need no offsets
        merge_offsets(models.unet, load_file(locate(spec.name, model_set)))
    place_diffusion(models, runtime)
    models.name = "iclight"
    return models


def load_controlnet(model_set: str, runtime: Runtime) -> ControlNetModel:
    if model_set == "random-full":
        return place(random_full.build_controlnet(), runtime, unit="unet")
    folder = locate("controlnet-seg", model_set)
    # The ControlNet runs beside the UNet at every step, so it shares the UNet's offload unit.
    return place(ControlNetModel.from_pretrained(folder), runtime, unit="unet")


def load_clip(model_set: str, runtime: Runtime, name: str = "clip-l14") -> tuple[CLIPModel, CLIPProcessor]:
    """Load CLIP in fp32 (it ranks a few dozen crops; precision matters more than memory)."""
    if model_set == "random-full":
        model, processor = random_full.build_clip()
        return place(model, runtime, torch.float32), processor
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
    if model_set == "random-full":
        return place(random_full.build_sam(spec), runtime, torch.float32)
    config = configs.SAM_CONFIGS["tiny" if model_set == "tiny" else spec.variant]
    return place(load_sam(config, locate(name, model_set)), runtime, torch.float32)


def load_score_models(model_set: str, runtime: Runtime, metrics: tuple[str, ...]):
    """Load only the metric models that `metrics` need (DINO, LPIPS, CLIP) for `metrics.score_pair`."""
    from sam_edit.metrics import ScoreModels

    names = score_models(metrics)
    require_models(names, model_set)
    models = ScoreModels(device=runtime.device)
    if "dino-vitb8" in names:
        models.dino = metric_models.load_dino(locate("dino-vitb8", model_set), runtime.device)
    if "lpips-squeeze" in names:
        models.lpips = metric_models.load_lpips(locate("lpips-squeeze", model_set), runtime.device)
    if "clip-l14" in names:
        models.clip_score = metric_models.load_clip_score(locate("clip-l14", model_set), runtime.device)
    return models
