"""The stages as Python functions: segment, rank, invert, edit. The CLI is a thin layer on these.

Each stage loads the models it needs and releases them before returning, so SAM and CLIP
never share the GPU with the UNet. A `Context` with a `ModelCache` keeps a stage's models
loaded for the next call instead; its owner (`samedit bench`) evicts them between stages.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sam_edit import __version__, alignment, artifacts
from sam_edit.artifacts import Ranking
from sam_edit.errors import SameditError, UsageError
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
from sam_edit.segment import (
    TINY_SEGMENT_CONFIG, Segment, SegmentConfig, colour_composite, generate_segments, sam_image_size,
)

logger = logging.getLogger(__name__)


class ModelCache:
    """Loaded models by key, e.g. `("diffusion", "sd14")`, kept from one stage call to the next."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, ...], object] = {}

    def get(self, key: tuple[str, ...], load: Callable[[], object]) -> object:
        """Return the model stored under `key`, calling `load` only the first time."""
        if key not in self._models:
            self._models[key] = load()
        return self._models[key]

    def retain(self, keys: Iterable[tuple[str, ...]], runtime: Runtime) -> None:
        """Drop every model not under `keys` and free its memory before the next stage loads."""
        retained = set(keys)
        dropped = [key for key in self._models if key not in retained]
        for key in dropped:
            del self._models[key]
        if dropped:
            logger.debug("released %s", dropped)
            release(runtime)


@dataclass(frozen=True)
class Context:
    """Runtime, model set and SAM model shared by every stage of one invocation."""

    runtime: Runtime
    model_set: str = "default"
    sam_model: str = DEFAULT_SAM
    callback: StepCallback | None = field(default=None, compare=False)
    # None: each stage loads its models and releases them; a cache keeps them for the next call.
    cache: ModelCache | None = field(default=None, compare=False)


def release(runtime: Runtime) -> None:
    """Free memory held by models that went out of scope before the next stage loads."""
    gc.collect()
    if runtime.device.type == "cuda":
        torch.cuda.empty_cache()


def load_model(context: Context, key: tuple[str, ...], load: Callable[[], object]):
    """Call `load`, or return the model the context's cache keeps under `key`."""
    if context.cache is None:
        return load()
    return context.cache.get(key, load)


# Segment and rank ------------------------------------------------------------------------------


def segment_config(context: Context, image_size: tuple[int, int] | None = None) -> SegmentConfig:
    """SAM settings for the model set, with `points_per_batch` cut to the memory profile's budget.

    `image_size` is the photo's (width, height). SAM runs on a copy bounded by the config's
    `max_side`, and its masks are the copy's size until they are resized back.
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
    fitted = sam_points_per_batch(profile.sam_batch_bytes, *sam_image_size(image_size, config.max_side))
    return dataclasses.replace(config, points_per_batch=min(config.points_per_batch, fitted))


def segment(loaded: LoadedImage, context: Context) -> tuple[list[Segment], dict, dict]:
    """Run SAM's automatic mask generator; return (segments, model ids, settings)."""
    config = segment_config(context, loaded.size)
    sam = load_model(context, ("sam", context.sam_model),
                     lambda: loaders.load_sam_model(context.sam_model, context.model_set, context.runtime))
    segments = generate_segments(sam, np.asarray(loaded.image), config)
    del sam
    if context.cache is None:  # a cache keeps SAM loaded, so collecting would free nothing
        release(context.runtime)
    models = {"sam": loaders.model_id(context.sam_model, context.model_set)}
    return segments, models, {"segment": dataclasses.asdict(config)}


def rank(loaded: LoadedImage, segments: list[Segment], phrase: str, context: Context,
         config: RankConfig = RankConfig()) -> tuple[Ranking, dict, dict]:
    """Score every segment against `phrase` with CLIP and choose the edit region."""
    if not phrase.strip():
        raise SameditError("`--from` must not be empty")
    clip, processor = load_model(context, ("clip",), lambda: loaders.load_clip(context.model_set, context.runtime))
    scores = score_segments(clip, processor, loaded.image, segments, phrase)
    del clip, processor
    if context.cache is None:
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
    """Origin of the edit region: `--mask`, else `--rank`, else SAM segments ranked by CLIP.

    The segments come from `--masks` when given, else SAM runs. Giving both `--mask` and
    `--rank`, or `--pick` with either of them, raises `UsageError`.
    """

    mask: Path | None = None  # --mask PNG, white = edit
    rank: Path | None = None  # ranking file from `samedit rank`
    masks: Path | None = None  # masks file from `samedit segment`
    rank_config: RankConfig = RankConfig()

    def __post_init__(self) -> None:
        if self.mask is not None and self.rank is not None:
            raise UsageError(
                f"`--mask {self.mask}` and `--rank {self.rank}` both give the edit region; pass only one of them"
            )
        if self.rank_config.pick and (self.mask is not None or self.rank is not None):
            flag = "--mask" if self.mask is not None else "--rank"
            raise UsageError(f"`--pick` chooses SAM segments, and `{flag}` already gives the edit region; "
                             f"pass only one of them")


def file_edit_mask(loaded: LoadedImage, source: MaskSource) -> tuple[np.ndarray, dict] | None:
    """Return the edit mask of `--mask` or `--rank` and where it came from, or None when neither is given.

    Paths are recorded absolute, so that `edit --replay` finds them from any folder.
    """
    if source.mask is not None:
        return load_mask(source.mask, loaded.size), {"mask": str(source.mask.resolve())}
    if source.rank is not None:
        ranking = artifacts.read_ranking(source.rank, loaded)
        return ranking.mask, {"rank": str(source.rank.resolve()), "chosen": list(ranking.chosen)}
    return None


def find_edit_mask(loaded: LoadedImage, request: EditRequest, source: MaskSource,
                   context: Context) -> tuple[np.ndarray, dict]:
    """Return the edit mask `[H, W]` bool and a record of where it came from and of its digest."""
    from_file = file_edit_mask(loaded, source)
    if from_file is not None:
        mask, origin = from_file
    else:
        segments = load_or_segment(loaded, source, context)
        ranking, _, _ = rank(loaded, segments, request.source_words, context, source.rank_config)
        mask, origin = ranking.mask, {"segments": "sam+clip", "chosen": list(ranking.chosen)}
        if source.masks is not None:
            origin["masks"] = str(source.masks.resolve())
        else:
            origin["sam_model"] = context.sam_model
    if not mask.any():
        raise SameditError("the edit mask is empty; give a mask with white pixels via `--mask PNG`")
    origin["mask_sha256"] = artifacts.mask_sha256(mask)
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


def method_model_keys(name: str) -> tuple[tuple[str, ...], ...]:
    """Return the `ModelCache` keys of the models that method `name` loads."""
    info = get_method(name)
    if not info.inversion_based:
        return (("diffusion", info.model),)
    method = inversion_based.METHODS[name]
    keys = (("iclight",),) if method.base == "iclight" else (("diffusion", method.base),)
    return keys + ((("controlnet",),) if method.conditioning == "control" else ())


def load_method_models(method: InversionMethod, context: Context) -> tuple[loaders.DiffusionModels, dict]:
    if method.base == "iclight":
        models = load_model(context, ("iclight",), lambda: loaders.load_iclight(context.model_set, context.runtime))
        ids = {"unet": loaders.model_id("iclight-base", context.model_set) + " + " + loaders.model_id("iclight-fc", context.model_set)}
    else:
        models = load_model(context, ("diffusion", method.base),
                            lambda: loaders.load_diffusion(method.base, context.model_set, context.runtime))
        ids = {"unet": loaders.model_id(method.base, context.model_set)}
    if method.conditioning == "control":
        ids["controlnet"] = loaders.model_id("controlnet-seg", context.model_set)
    return models, ids


def check_alignment(models: loaders.DiffusionModels, request: EditRequest) -> None:
    """Check that Prompt-to-Prompt finds the request's words in its prompts; raise `UsageError` if not.

    Stages call this before any UNet runs, so a word the edit cannot place stops the run before
    the inversion. It builds the same controller as `edit`, after checking the `--from` and
    `--to` words itself so that the message names the flag.
    """
    tokenizer = models.tokenizer
    limit = tokenizer.model_max_length - 2  # word tokens between the start and end tokens
    for flag, kind, prompt, words in (("--from", "source", request.source_prompt, request.source_words),
                                      ("--to", "target", request.target_prompt, request.target_words)):
        if alignment.word_token_indices(tokenizer, prompt, words, tokenizer.model_max_length):
            continue
        whole_length = len(tokenizer(prompt, add_special_tokens=False).input_ids) + 2
        positions = alignment.word_token_indices(tokenizer, prompt, words, whole_length)
        if positions:
            raise UsageError(
                f"`{flag}` {words!r} starts at token {positions[0]} of the {kind} prompt, beyond the {limit} "
                f"tokens the CLIP text encoder reads; shorten `--prompt` so that {words!r} falls within them"
            )
        raise UsageError(
            f"`{flag}` {words!r} matches no whole words of the {kind} prompt {prompt!r}; Prompt-to-Prompt "
            f"matches space-separated words, ignoring case and punctuation at their ends"
        )
    attention_controller(models, request)


def prepare(loaded: LoadedImage, request: EditRequest, mask: np.ndarray | None, context: Context,
            segments: list[Segment] | None = None) -> Prepared:
    """Load the method's models, check the prompt words and build the UNet call for this image and mask.

    Raises `SameditError` before any UNet call when Prompt-to-Prompt cannot place the words.
    """
    method = get_inversion_method(request.method)
    models, ids = load_method_models(method, context)
    check_alignment(models, request)
    size = working_size(loaded.size, request.max_side)
    pixels = image_to_tensor(loaded.image, size).to(context.runtime.device, context.runtime.dtype)
    pixel_mask = None if mask is None else conditioning.mask_tensor(mask, size, context.runtime.device).to(pixels.dtype)
    if method.conditioning == "foreground":
        denoiser = conditioning.concat_denoiser(models, conditioning.foreground_latents(models, pixels, pixel_mask))
    elif method.conditioning == "control":
        controlnet = load_model(context, ("controlnet",), lambda: loaders.load_controlnet(context.model_set, context.runtime))
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
    """Return the settings an inversion depends on, as its file records them."""
    return {
        "method": request.method,
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
    """Read an inversion file for this edit; raise `StageFileError` naming the flag that differs."""
    trajectory, _, record = artifacts.read_inversion(path, loaded)
    methods_by_unet: dict[tuple[str, str], list[str]] = {}
    for name, method in inversion_based.METHODS.items():
        methods_by_unet.setdefault((method.base, method.conditioning), []).append(name)
    expected = inversion_settings(prepared, request, mask)
    artifacts.check_inversion(path, record, expected, prepared.model_ids, methods_by_unet)
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
    """Return the settings an edited PNG records."""
    return request.settings() | {
        "samedit_version": __version__,
        "residual_weight": weight,
        "image_sha256": loaded.sha256,
        "image_pixels_sha256": loaded.pixels_sha256,
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
    models = load_model(context, ("diffusion", info.model),
                        lambda: loaders.load_diffusion(info.model, context.model_set, context.runtime))
    edited, method_settings = NOISE_METHODS[info.name](models, loaded.image, mask, request, context.callback)
    settings = request.settings() | method_settings | {
        "samedit_version": __version__,
        "image_sha256": loaded.sha256,
        "image_pixels_sha256": loaded.pixels_sha256,
        "size": list(loaded.size),
        "models": {"unet": loaders.model_id(info.model, context.model_set)},
        "edit_region": origin,
    }
    return edited, settings


def region_use(request: EditRequest) -> tuple[bool, bool]:
    """Return whether the edit reads an edit region, and whether it reads SAM's segments itself (ControlNet)."""
    info = get_method(request.method)
    if not info.inversion_based:
        return info.needs_mask, False
    method = get_inversion_method(request.method)
    weight = method.residual_weight if request.residual_weight is None else request.residual_weight
    return method.needs_mask or weight != 0, method.conditioning == "control"


def require_edit_models(request: EditRequest, source: MaskSource, context: Context) -> None:
    """Check that every model the edit will load is cached, or fetch them, before any of them runs.

    With downloads off, one error names all the missing models, so one `samedit models pull`
    fetches them.
    """
    uses_region, uses_segments = region_use(request)
    ranks = uses_region and source.mask is None and source.rank is None
    segments = (ranks or uses_segments) and source.masks is None
    names = loaders.required_models(request.method, segment=segments, rank=ranks, sam_model=context.sam_model)
    loaders.require_models(names, context.model_set)


def warn_unused_sources(method: str, source: MaskSource, uses_region: bool, uses_segments: bool) -> None:
    """Warn about region flags that an inversion-based edit will not read, so they are not checked either."""
    if not uses_region and (source.mask is not None or source.rank is not None):
        logger.warning("method %s with residual weight 0 does not use the edit region and ignores --mask and --rank",
                       method)
    region_from_file = source.mask is not None or source.rank is not None
    if source.masks is not None and not uses_segments and (region_from_file or not uses_region):
        logger.warning("method %s does not read --masks here and ignores it", method)


def run_edit(loaded: LoadedImage, request: EditRequest, context: Context, source: MaskSource = MaskSource(),
             inversion: Path | None = None):
    """Run the whole edit: find the mask if the method needs one, invert (or read the inversion), edit.

    Methods that start from noise (everything, ip2p, blended) take no inversion. Returns
    (edited image at the input's size, settings to record in the PNG).
    """
    require_edit_models(request, source, context)
    if request.source_prompt.casefold() == request.target_prompt.casefold() and request.instruction is None:
        logger.warning("--to %r gives the same prompt as --from %r, so the edit has nothing to change",
                       request.target_words, request.source_words)
    if not get_method(request.method).inversion_based:
        if inversion is not None:
            raise SameditError(
                f"method `{request.method}` starts from noise and takes no `--inversion`; leave it out "
                f"or use an inversion-based method: {', '.join(inversion_based.METHODS)}"
            )
        return run_noise_edit(loaded, request, context, source)
    method = get_inversion_method(request.method)
    uses_region, uses_segments = region_use(request)
    warn_unused_sources(request.method, source, uses_region, uses_segments)
    mask, origin, segments = None, {}, None
    if uses_region:
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
