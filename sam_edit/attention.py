"""Prompt-to-Prompt attention control through diffusers attention processors.

Prompt-to-Prompt (Hertz et al., "Prompt-to-Prompt Image Editing with Cross Attention Control",
2022) denoises a source and a target prompt side by side. For the first steps the target takes
the source's attention: cross-attention is mapped from source tokens to target tokens (word
swap or alignment, see `sam_edit.alignment`) and self-attention is copied as is. Local blend
then keeps the source latent wherever neither the source word nor the target word is attended.

Batch convention of the UNet calls while a controller is attached: 4 rows = [source uncond,
target uncond, source cond, target cond] (classifier-free guidance) or 2 rows = [source,
target]. Only the target row of the conditional pair is edited, from the source row of that
pair. Calls with any other batch size (DDIM inversion uses 1) run plain SDPA attention.

Self-attention is replaced only below the full latent size (32x32 and smaller for SD at
512 px), as PnPInversion does, and always runs `F.scaled_dot_product_attention`: replacing the
target's self-attention probabilities with the source's equals attending with the source's
queries and keys over the target's values, so no [queries, queries] matrix is materialised.
Explicit probabilities (77 keys, cheap) are computed only for cross-attention, at every level
during the replacement steps and at the local-blend level all along.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sam_edit import alignment
from sam_edit.errors import SameditError

logger = logging.getLogger(__name__)

MODES = ("auto", "replace", "refine")
BLEND_LEVEL = 2  # local blend reads the UNet level at 1/4 of the latent size (16x16 for 64x64)


@dataclass(frozen=True)
class AttentionControlConfig:
    """Prompt-to-Prompt settings. The defaults are PnPInversion's PIE-Bench settings."""

    # fraction of steps whose cross-attention the target takes from the source
    cross_replace: float = 0.4
    # fraction of steps whose self-attention the target takes from the source
    self_replace: float = 0.6
    # local blend: share of the peak attention above which a latent pixel is edited
    blend_threshold: float = 0.3
    blend_start: float = 0.2  # local blend starts after this fraction of steps
    mode: str = "auto"  # "auto" (replace if same word count, else refine), "replace", "refine"
    # factor on the target words' cross-attention (None = no reweight), 2 in PnPInversion
    reweight: float | None = None


def _check_config(config: AttentionControlConfig, num_steps: int) -> None:
    for name in ("cross_replace", "self_replace", "blend_threshold", "blend_start"):
        value = getattr(config, name)
        if not 0.0 <= value <= 1.0:
            raise SameditError(f"`{name}` must be a fraction in [0, 1], got {value}")
    if config.mode not in MODES:
        raise SameditError(f"`mode` must be one of {', '.join(MODES)}, got `{config.mode}`")
    if config.reweight is not None and not config.reweight > 0:
        raise SameditError(f"`reweight` must be a positive factor or None, got {config.reweight}")
    if num_steps < 1:
        raise SameditError(f"`num_steps` must be at least 1, got {num_steps}")


def _step_count(fraction: float, num_steps: int) -> int:
    """Return int(fraction * num_steps), robust to float error (0.29 * 100 = 28.999999999999996)."""
    return math.floor(round(fraction * num_steps, 6))


def _word_tokens(tokenizer, prompt: str, words: str) -> list[int]:
    positions = alignment.word_token_indices(tokenizer, prompt, words, tokenizer.model_max_length)
    if not positions:
        # Without this check the word's mask would be empty and local blend would silently
        # return the source image.
        raise SameditError(
            f"blend word `{words}` not found in the prompt `{prompt}` (within its first "
            f"{tokenizer.model_max_length} tokens); use words that appear in the prompt"
        )
    return positions


def _layer_level(processor_name: str, num_down_blocks: int, num_up_blocks: int) -> int | None:
    """Return a UNet2DConditionModel attention layer's level: 0 = full latent size, 1 = half, ...

    Returns None for a layer outside `down_blocks`, `mid_block` and `up_blocks`.
    """
    parts = processor_name.split(".")
    if parts[0] == "down_blocks":
        return int(parts[1])
    if parts[0] == "up_blocks":
        return num_up_blocks - 1 - int(parts[1])
    if parts[0] == "mid_block":
        return num_down_blocks - 1
    return None


def _level_shape(height: int, width: int, num_queries: int) -> tuple[int, int]:
    """Return the spatial size of the UNet level with `num_queries` pixels for a latent size."""
    # Each UNet downsampler (3x3 conv, stride 2, padding 1) maps a side n to ceil(n / 2).
    while height * width > num_queries:
        height, width = math.ceil(height / 2), math.ceil(width / 2)
    if height * width != num_queries:
        raise ValueError(f"no UNet level of the latent has {num_queries} pixels")
    return height, width


def _choose_blend_level(cross_levels: set[int]) -> int:
    """Pick the cross-attention level closest to 1/4 of the latent size, preferring the finer."""
    if not cross_levels:
        raise ValueError("the UNet has no cross-attention layers to control")
    # Full resolution comes last because its maps are the largest to store.
    return min(cross_levels, key=lambda level: (level == 0, abs(level - BLEND_LEVEL), level))


def _attention_levels(unet) -> tuple[dict[str, int | None], set[int]]:
    """Return each attention processor's UNet level, and the levels with cross-attention."""
    names = list(unet.attn_processors)
    if not names:
        raise ValueError("the UNet has no attention layers to control")
    num_down, num_up = len(unet.down_blocks), len(unet.up_blocks)
    levels = {name: _layer_level(name, num_down, num_up) for name in names}
    unknown = [name for name, level in levels.items() if level is None]
    if unknown:
        logger.warning(
            "attention layers outside the UNet levels get no self-attention replacement "
            "and no local-blend maps: %s",
            unknown,
        )
    cross_levels = set()
    for name, level in levels.items():
        module = unet.get_submodule(name.removesuffix(".processor"))
        if level is not None and getattr(module, "is_cross_attention", False):
            cross_levels.add(level)
    return levels, cross_levels


class PromptToPrompt:
    """Prompt-to-Prompt controller for one source/target prompt pair over `num_steps` steps.

    Notation: the step index i counts denoising steps 0..num_steps-1; the target takes the
    source's cross-attention for i < int(cross_replace * num_steps), its self-attention for
    i < int(self_replace * num_steps), and local blend runs for i >= int(blend_start * num_steps).
    """

    def __init__(
        self,
        tokenizer,
        source_prompt: str,
        target_prompt: str,
        source_words: str,
        target_words: str,
        num_steps: int,
        config: AttentionControlConfig = AttentionControlConfig(),
    ):
        _check_config(config, num_steps)
        max_length = tokenizer.model_max_length
        self.config = config
        self.num_steps = num_steps

        same_length = len(source_prompt.split()) == len(target_prompt.split())
        self.mode = config.mode
        if self.mode == "auto":
            self.mode = "replace" if same_length else "refine"
        # Per-prompt tensors on the CPU. `_tensor` caches copies per device and dtype.
        self._tensors: dict[str, torch.Tensor] = {}
        if self.mode == "replace":
            self._tensors["replace_mapper"] = alignment.replace_mapper(
                tokenizer, source_prompt, target_prompt, max_length
            )  # [77, 77]
        else:
            mapper, alphas = alignment.refine_mapper(
                tokenizer, source_prompt, target_prompt, max_length
            )
            self._tensors["alphas"] = alphas  # [77]
            self._tensors["refine_index"] = mapper.clamp(min=0)  # new tokens (-1) get alpha 0

        source_tokens = _word_tokens(tokenizer, source_prompt, source_words)
        target_tokens = _word_tokens(tokenizer, target_prompt, target_words)
        self._blend_words = torch.zeros(2, max_length)  # [2, 77]: token weights per row
        self._blend_words[0, source_tokens] = 1.0
        self._blend_words[1, target_tokens] = 1.0
        equalizer = torch.ones(max_length)  # [77] factor per target token
        if config.reweight is not None:
            equalizer[target_tokens] = config.reweight
        self._tensors["equalizer"] = equalizer

        self._cross_steps = _step_count(config.cross_replace, num_steps)
        self._self_steps = _step_count(config.self_replace, num_steps)
        self._blend_start = _step_count(config.blend_start, num_steps)
        self._blend_level: int | None = None
        self._cached_tensors: dict[tuple, torch.Tensor] = {}
        self._reset()

    def _reset(self) -> None:
        self._step = 0
        self._blend_maps: torch.Tensor | None = None  # [2, Q, 77] float32 sum
        self._blend_map_count = 0
        self._blend_mask: torch.Tensor | None = None

    @contextlib.contextmanager
    def attach(self, unet):
        """Install Prompt-to-Prompt processors on every attention layer of `unet`.

        Use as `with controller.attach(unet):`. The previous processors come back on exit, also
        when the block raises. Entering resets the step and the stored attention maps.
        """
        previous = unet.attn_processors
        levels, cross_levels = _attention_levels(unet)
        self._blend_level = _choose_blend_level(cross_levels)
        if self._blend_level != BLEND_LEVEL:
            level = self._blend_level
            logger.info("no cross-attention at 1/4 latent size; local blend uses level %d", level)
        logger.debug(
            "Prompt-to-Prompt (%s) on %d layers: cross %d, self %d, blend from step %d of %d",
            self.mode,
            len(levels),
            self._cross_steps,
            self._self_steps,
            self._blend_start,
            self.num_steps,
        )

        self._reset()
        unet.set_attn_processor(
            {name: PromptToPromptAttnProcessor(self, level) for name, level in levels.items()}
        )
        try:
            yield self
        finally:
            # set_attn_processor pops from the dict it gets, so it gets a copy.
            unet.set_attn_processor(dict(previous))

    def set_step(self, i: int) -> None:
        """Set the denoising step index (0..num_steps-1) of the next UNet calls."""
        if not 0 <= i < self.num_steps:
            raise ValueError(f"step {i} is outside 0..{self.num_steps - 1}")
        self._step = i

    @property
    def blend_mask(self) -> torch.Tensor | None:
        """Latest local-blend mask, [h, w] float32 in {0, 1} (1 = edited), or None before any."""
        return self._blend_mask

    def _tensor(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Return a per-prompt tensor on the device of `like`, floats also in its dtype."""
        key = (name, like.device, like.dtype)
        if key not in self._cached_tensors:
            tensor = self._tensors[name]
            dtype = like.dtype if tensor.is_floating_point() else tensor.dtype
            self._cached_tensors[key] = tensor.to(device=like.device, dtype=dtype)
        return self._cached_tensors[key]

    def _attend(self, attn, query, key, value, attention_mask, is_cross: bool, level: int | None):
        """Compute attention for [B, heads, N, d] inputs, editing the target row where due."""
        batch_size = query.shape[0]
        if batch_size not in (2, 4):
            return _sdpa(attn, query, key, value, attention_mask)
        source_row, target_row = batch_size - 2, batch_size - 1

        if not is_cross:
            if level is not None and level > 0 and self._step < self._self_steps:
                # softmax(q_src k_src^T) v_tgt: the source's self-attention, the target's values
                rows = torch.arange(batch_size, device=query.device)
                rows[target_row] = source_row
                query, key = query[rows], key[rows]
                if attention_mask is not None and attention_mask.shape[0] == batch_size:
                    attention_mask = attention_mask[rows]
            return _sdpa(attn, query, key, value, attention_mask)

        replacing = self._step < self._cross_steps
        storing = level is not None and level == self._blend_level
        if not (replacing or storing):
            return _sdpa(attn, query, key, value, attention_mask)

        mask = None if attention_mask is None else attention_mask.flatten(0, 1)
        probs = attn.get_attention_scores(query.flatten(0, 1), key.flatten(0, 1), mask)
        probs = probs.unflatten(0, (batch_size, -1))  # [B, heads, Q, 77]
        if replacing:
            self._edit_cross_attention(probs, source_row, target_row)
        if storing:
            self._store_blend_maps(probs[[source_row, target_row]])
        return probs @ value  # [B, heads, Q, d]

    def _edit_cross_attention(self, probs: torch.Tensor, source_row: int, target_row: int) -> None:
        """Set the target row of [B, heads, Q, 77] probabilities from the source row, in place."""
        num_tokens = self._tensors["equalizer"].shape[0]
        if probs.shape[-1] != num_tokens:
            raise ValueError(
                f"cross-attention has {probs.shape[-1]} keys but the prompts were aligned for "
                f"{num_tokens} tokens"
            )
        source = probs[source_row]  # [heads, Q, 77]
        if self.mode == "replace":
            edited = source @ self._tensor("replace_mapper", source)
        else:
            alphas = self._tensor("alphas", source)
            aligned = source[..., self._tensor("refine_index", source)]
            edited = aligned * alphas + probs[target_row] * (1 - alphas)
        probs[target_row] = edited * self._tensor("equalizer", source)

    def _store_blend_maps(self, pair_probs: torch.Tensor) -> None:
        """Add the conditional pair's [2, heads, Q, 77] cross-attention to the local-blend sum.

        The sum runs over heads, the blend level's layers and all steps so far, as in
        Prompt-to-Prompt's AttentionStore, which PnPInversion's local blend reads. A mask from
        the running sum changes little between steps, where the current step's maps alone would
        flicker, and it costs the same: one [2, Q, 77] tensor. The stored maps are the edited
        ones, as there: that store keeps the tensor that the edit then changes in place.
        """
        maps = pair_probs.float().sum(dim=1)  # [2, Q, 77]
        if self._blend_maps is None or self._blend_maps.shape != maps.shape:
            self._blend_maps = torch.zeros_like(maps)
            self._blend_map_count = 0
        self._blend_maps += maps
        self._blend_map_count += pair_probs.shape[1]

    def local_blend(self, latents: torch.Tensor, i: int) -> torch.Tensor:
        """Keep the source latent outside the region attended by the blend words.

        Args:
            latents: [2, 4, h, w] (source, target) after step i.
            i: the step index just taken.

        Returns:
            New latents with the target row set to z_src + M * (z_tgt - z_src), where M [h, w]
            in {0, 1} is the union of the source-word and target-word masks; `latents` itself
            before step int(blend_start * num_steps) or while no maps are stored.
        """
        if latents.shape[0] != 2:
            raise ValueError(f"local blend expects latents [2, C, h, w], got {list(latents.shape)}")
        if i < self._blend_start or self._blend_maps is None:
            return latents

        height, width = latents.shape[-2:]
        maps = self._blend_maps / self._blend_map_count  # [2, Q, 77] mean over heads, layers, steps
        word_maps = (maps * self._blend_words[:, None].to(maps.device)).sum(dim=-1)  # [2, Q]
        map_height, map_width = _level_shape(height, width, word_maps.shape[1])
        word_maps = word_maps.view(2, 1, map_height, map_width)
        word_maps = F.max_pool2d(word_maps, kernel_size=3, stride=1, padding=1)
        word_maps = F.interpolate(word_maps, size=(height, width), mode="nearest")  # [2, 1, h, w]
        peaks = word_maps.amax(dim=(2, 3), keepdim=True)
        peaks = peaks.clamp_min(torch.finfo(peaks.dtype).tiny)  # a word with no attention: no mask
        masks = (word_maps / peaks) > self.config.blend_threshold
        mask = (masks[0, 0] | masks[1, 0]).float()  # [h, w]: source word or target word
        self._blend_mask = mask

        blended = latents.clone()
        mask_latents = mask.to(device=latents.device, dtype=latents.dtype)
        blended[1] = latents[0] + mask_latents * (latents[1] - latents[0])
        return blended


def _sdpa(attn, query, key, value, attention_mask):
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=0.0, scale=attn.scale
    )


class PromptToPromptAttnProcessor:
    """Attention processor that lets a `PromptToPrompt` controller compute the attention.

    The steps around the attention are those of diffusers' `AttnProcessor2_0` (spatial norm,
    attention mask, group norm, cross-attention norm, q/k norms, output projection, residual,
    output rescale), so with nothing to edit the output matches the default processor.
    """

    def __init__(self, controller: PromptToPrompt, level: int | None):
        self.controller = controller
        self.level = level  # 0 = full latent size; None = outside the UNet levels

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        batch_size, key_length, _ = context.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key_length, batch_size)
            key_count = attention_mask.shape[-1]
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, key_count)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if not is_cross:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        head_dim = key.shape[-1] // attn.heads
        query, key, value = (
            tensor.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, heads, N, d]
            for tensor in (query, key, value)
        )
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = self.controller._attend(
            attn, query, key, value, attention_mask, is_cross, self.level
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)  # linear projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2)
            hidden_states = hidden_states.reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
