"""The stages as Python functions: segment, rank, invert, edit. The CLI is a thin layer on these.

Each stage loads the models it needs and releases them before returning, so SAM and CLIP
never share the GPU with the UNet.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sam_edit import artifacts, __version__
from sam_edit.artifacts import Ranking
from sam_edit.errors import SameditError, StageFileError
from sam_edit.images import LoadedImage, image_to_tensor, load_mask, tensor_to_image, working_size
from sam_edit.inversion import StepCallback, ddim_invert, decode_latents, encode_image, encode_prompts
from sam_edit.methods import blended, conditioning, everything, inversion_based, ip2p
from sam_edit.methods.inversion_based import InversionMethod, attention_controller, edit_loop
from sam_edit.methods.registry import MethodInfo, get_method_info
from sam_edit.methods.request import EditRequest
from sam_edit.models import loaders
from sam_edit.models.registry import DEFAULT_SAM
from sam_edit.rank import RankConfig, choose_segments, draw_preview, edit_mask, score_segments
from sam_edit.runtime import Runtime, sam_points_per_batch
from sam_edit.segment import TINY_SEGMENT_CONFIG, Segment, SegmentConfig, colour_composite, generate_segments

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """Where models come from and run, shared by every stage of one invocation."""

    runtime: Runtime
    model_set: str = "default"
    sam_model: str = DEFAULT_SAM
    callback: StepCallback | None = field(default=None, compare=False)


def release(runtime: Runtime) -> None:
    """Free memory held by models that went out of scope before the next stage loads."""
    gc.collect()
    if runtime.device.type == "cuda":
        torch.cuda.empty_cache()


# Segment and rank ------------------------------------------------------------------------------


def segment_config(context: Context, image_size: tuple[int, int] | None = None) -> SegmentConfig:
    """SAM settings for the model set, with `points_per_batch` cut to the memory profile's budget.

    `image_size` is the photo's (width, height); SAM's masks are that size.
    """
    if context.model_set == "tiny":
        config = TINY_SEGMENT_CONFIG
    elif context.model_set == "random-full":
        # Random weights predict no meaningful IoU or stability, so both filters are off.
        config = SegmentConfig(pred_iou_thresh=0.0, stability_score_thresh=0.0)
    else:
        config = SegmentConfig()
    profile = context.runtime.profile
    if profile is None or image_size is None:
        return config
    fitted = sam_points_per_batch(profile.sam_batch_bytes, *image_size)
    return dataclasses.replace(config, points_per_batch=min(config.points_per_batch, fitted))


def segment(loaded: LoadedImage, context: Context) -> tuple[list[Segment], dict, dict]:
    """Run SAM's automatic mask generator; return (segments, model ids, settings)."""
    config = segment_config(context, loaded.size)
    sam = loaders.load_sam_model(context.sam_model, context.model_set, context.runtime)
    segments = generate_segments(sam, np.asarray(loaded.image), config)
    del sam
    release(context.runtime)
    models = {"sam": loaders.model_id(context.sam_model, context.model_set)}
    return segments, models, {"segment": dataclasses.asdict(config)}


def rank(loaded: LoadedImage, segments: list[Segment], phrase: str, context: Context,
         config: RankConfig = RankConfig()) -> tuple[Ranking, dict, dict]:
    """Score every segment against `phrase` with CLIP and choose the edit region."""
    if not phrase.strip():
        raise SameditError("`--from` must not be empty")
    clip, processor = loaders.load_clip(context.model_set, context.runtime)
    scores = score_segments(clip, processor, loaded.image, segments, phrase)
    del clip, processor
    release(context.runtime)
    chosen = choose_segments(scores, segments, config)
    ranking = Ranking(
        phrase=phrase,
        scores={segment.id: float(score) for segment, score in zip(segments, scores)},
        chosen=tuple(chosen),
        mask=edit_mask(segments, chosen),
        record={},
    )
    models = {"clip": loaders.model_id("clip-l14", context.model_set)}
    settings = {"select": config.select, "threshold": config.threshold, "pick": list(config.pick)}
    return ranking, models, settings


def preview(loaded: LoadedImage, segments: list[Segment], ranking: Ranking):
    scores = np.array([ranking.scores[segment.id] for segment in segments], dtype=np.float32)
    return draw_preview(loaded.image, segments, scores, list(ranking.chosen))


@dataclass(frozen=True)
class MaskSource:
    """Where the edit region comes from; the first one given wins: mask, rank, masks, none."""

    mask: Path | None = None  # --mask PNG, white = edit
    rank: Path | None = None  # ranking file from `samedit rank`
    masks: Path | None = None  # masks file from `samedit segment`
    rank_config: RankConfig = RankConfig()


def find_edit_mask(loaded: LoadedImage, request: EditRequest, source: MaskSource,
                   context: Context) -> tuple[np.ndarray, dict]:
    """Return the edit mask `[H, W]` bool and a record of where it came from."""
    if source.mask is not None:
        mask = load_mask(source.mask, loaded.size)
        origin = {"mask": str(source.mask)}
    elif source.rank is not None:
        ranking = artifacts.read_ranking(source.rank, loaded)
        mask, origin = ranking.mask, {"rank": str(source.rank), "chosen": list(ranking.chosen)}
    else:
        segments = load_or_segment(loaded, source, context)
        ranking, _, _ = rank(loaded, segments, request.source_words, context, source.rank_config)
        mask, origin = ranking.mask, {"segments": "sam+clip", "chosen": list(ranking.chosen)}
    if not mask.any():
        raise SameditError("the edit mask is empty; give a mask with white pixels via `--mask PNG`")
    return mask, origin


def load_or_segment(loaded: LoadedImage, source: MaskSource, context: Context) -> list[Segment]:
    if source.masks is not None:
        segments, record = artifacts.read_masks(source.masks, loaded)
        artifacts.check_models(record.get("models", {}), {"sam": loaders.model_id(context.sam_model, context.model_set)}, source.masks)
        return segments
    return segment(loaded, context)[0]


# Invert and edit -------------------------------------------------------------------------------


@dataclass
class Prepared:
    """Everything an inversion-based method needs before its loops run."""

    method: InversionMethod
    models: loaders.DiffusionModels
    size: tuple[int, int]  # working (width, height)
    pixels: torch.Tensor  # [1, 3, H, W] in [-1, 1]
    pixel_mask: torch.Tensor | None  # [1, 1, H, W] float, 1 = edit
    denoiser: object
    model_ids: dict


def load_method_models(method: InversionMethod, context: Context) -> tuple[loaders.DiffusionModels, dict]:
    if method.base == "iclight":
        models = loaders.load_iclight(context.model_set, context.runtime)
        ids = {"unet": loaders.model_id("iclight-base", context.model_set) + " + " + loaders.model_id("iclight-fc", context.model_set)}
    else:
        models = loaders.load_diffusion(method.base, context.model_set, context.runtime)
        ids = {"unet": loaders.model_id(method.base, context.model_set)}
    if method.conditioning == "control":
        ids["controlnet"] = loaders.model_id("controlnet-seg", context.model_set)
    return models, ids


def prepare(loaded: LoadedImage, request: EditRequest, mask: np.ndarray | None, context: Context,
            segments: list[Segment] | None = None) -> Prepared:
    """Load the method's models and build its UNet call for this image and mask."""
    method = get_inversion_method(request.method)
    models, ids = load_method_models(method, context)
    size = working_size(loaded.size, request.max_side)
    pixels = image_to_tensor(loaded.image, size).to(context.runtime.device, context.runtime.dtype)
    pixel_mask = None if mask is None else conditioning.mask_tensor(mask, size, context.runtime.device).to(pixels.dtype)
    if method.conditioning == "foreground":
        denoiser = conditioning.concat_denoiser(models, conditioning.foreground_latents(models, pixels, pixel_mask))
    elif method.conditioning == "control":
        controlnet = loaders.load_controlnet(context.model_set, context.runtime)
        composite = image_to_tensor(colour_composite(segments), size).to(pixels) * 0.5 + 0.5  # [0, 1]
        denoiser = conditioning.control_denoiser(models, controlnet, composite, request.control_scale)
    else:
        denoiser = conditioning.plain_denoiser(models)
    return Prepared(method, models, size, pixels, pixel_mask, denoiser, ids)


def get_method(name: str) -> MethodInfo:
    """Return the registry entry of method `name`; raise `SameditError` listing the valid names."""
    return get_method_info(name)


def get_inversion_method(name: str) -> InversionMethod:
    """Return the inversion-based method `name`; raise `SameditError` for any other method."""
    info = get_method_info(name)
    if not info.inversion_based:
        raise SameditError(
            f"method `{name}` does not start from an inversion; `--inversion` and `samedit invert` "
            f"work with {', '.join(inversion_based.METHODS)}"
        )
    return inversion_based.METHODS[name]


def inversion_settings(prepared: Prepared, request: EditRequest, mask: np.ndarray | None) -> dict:
    """Settings an inversion depends on; an inversion file is reused only if they all match."""
    return {
        "method_unet": prepared.method.base,
        "conditioning": prepared.method.conditioning,
        "prompt": request.source_prompt,
        "num_steps": request.num_steps,
        "working_size": list(prepared.size),
        "mask_sha256": None if mask is None or prepared.method.conditioning != "foreground" else artifacts.mask_sha256(mask),
    }


def invert(prepared: Prepared, request: EditRequest, callback: StepCallback | None = None) -> torch.Tensor:
    """DDIM-invert the image with the source prompt (guidance 1); return `[T+1, 4, h, w]`."""
    latents = encode_image(prepared.models, prepared.pixels)
    prompt_embeds = encode_prompts(prepared.models, [request.source_prompt])
    return ddim_invert(prepared.models, prepared.denoiser, latents, prompt_embeds, request.num_steps, callback)


def read_trajectory(path: Path, loaded: LoadedImage, prepared: Prepared, request: EditRequest,
                    mask: np.ndarray | None) -> torch.Tensor:
    trajectory, _, record = artifacts.read_inversion(path, loaded)
    artifacts.check_models(record.get("models", {}), prepared.model_ids, path)
    expected = inversion_settings(prepared, request, mask)
    recorded = record.get("settings", {})
    for key, value in expected.items():
        if recorded.get(key) != value:
            raise StageFileError(
                f"`{path}` was made with {key}={recorded.get(key)!r}, but this edit needs {value!r}; "
                "rerun `samedit invert` with the same settings"
            )
    return trajectory.to(prepared.models.runtime.device, prepared.models.runtime.dtype)


def edit(loaded: LoadedImage, request: EditRequest, prepared: Prepared, trajectory: torch.Tensor,
         callback: StepCallback | None = None):
    """Run the method's editing loop from the inversion; return the edited image at input size."""
    method, models = prepared.method, prepared.models
    weight = method.residual_weight if request.residual_weight is None else request.residual_weight
    if prepared.pixel_mask is None:
        background = torch.zeros((1, 1) + trajectory.shape[-2:], device=trajectory.device)
    else:
        background = 1.0 - conditioning.latent_mask(prepared.pixel_mask, models.vae_scale_factor)
    prompt_embeds = encode_prompts(models, ["", "", request.source_prompt, request.target_prompt])
    controller = attention_controller(models, request)
    latents = edit_loop(models, prepared.denoiser, trajectory, prompt_embeds, controller, method, request,
                        weight, background.to(trajectory.dtype), callback)
    image = tensor_to_image(decode_latents(models, latents[1:2]), size=loaded.size)
    return image, latents, weight


def edit_settings(loaded: LoadedImage, request: EditRequest, prepared: Prepared, weight: float, origin: dict) -> dict:
    """The settings an edited PNG records."""
    return request.settings() | {
        "samedit_version": __version__,
        "residual_weight": weight,
        "image_sha256": loaded.sha256,
        "size": list(loaded.size),
        "working_size": list(prepared.size),
        "models": prepared.model_ids,
        "edit_region": origin,
    }


# Methods that do not start from an inversion: registry name -> edit(models, image, mask, request, callback).
NOISE_METHODS = {"everything": everything.edit, "ip2p": ip2p.edit, "blended": blended.edit}


def run_noise_edit(loaded: LoadedImage, request: EditRequest, context: Context, source: MaskSource = MaskSource()):
    """Edit with a method that starts from noise (everything, ip2p, blended); see `run_edit`."""
    info = get_method(request.method)
    mask, origin = None, {}
    if info.needs_mask:
        mask, origin = find_edit_mask(loaded, request, source, context)
    elif source.mask is not None or source.rank is not None or source.masks is not None:
        logger.warning("method %s edits the whole image and ignores --mask, --rank and --masks", info.name)
    models = loaders.load_diffusion(info.model, context.model_set, context.runtime)
    edited, method_settings = NOISE_METHODS[info.name](models, loaded.image, mask, request, context.callback)
    settings = request.settings() | method_settings | {
        "samedit_version": __version__,
        "image_sha256": loaded.sha256,
        "size": list(loaded.size),
        "models": {"unet": loaders.model_id(info.model, context.model_set)},
        "edit_region": origin,
    }
    return edited, settings


def run_edit(loaded: LoadedImage, request: EditRequest, context: Context, source: MaskSource = MaskSource(),
             inversion: Path | None = None):
    """The whole edit: find the mask if the method needs one, invert (or read the inversion), edit.

    Methods that start from noise (everything, ip2p, blended) take no inversion. Returns
    (edited image at the input's size, settings to record in the PNG).
    """
    if not get_method(request.method).inversion_based:
        if inversion is not None:
            raise SameditError(
                f"method `{request.method}` starts from noise and takes no `--inversion`; leave it out "
                f"or use an inversion-based method: {', '.join(inversion_based.METHODS)}"
            )
        return run_noise_edit(loaded, request, context, source)
    method = get_inversion_method(request.method)
    weight = method.residual_weight if request.residual_weight is None else request.residual_weight
    mask, origin, segments = None, {}, None
    if method.needs_mask or weight != 0:
        mask, origin = find_edit_mask(loaded, request, source, context)
    if method.conditioning == "control":
        segments = load_or_segment(loaded, MaskSource(masks=source.masks), context)
    prepared = prepare(loaded, request, mask, context, segments)
    if inversion is not None:
        trajectory = read_trajectory(inversion, loaded, prepared, request, mask)
    else:
        trajectory = invert(prepared, request, context.callback)
    edited, _, weight = edit(loaded, request, prepared, trajectory, context.callback)
    return edited, edit_settings(loaded, request, prepared, weight, origin)
