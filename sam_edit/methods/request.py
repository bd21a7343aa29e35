"""The edit request: prompts and settings that the CLI collects and every editing method reads."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from sam_edit.attention import MODES
from sam_edit.errors import SameditError, UsageError
from sam_edit.methods.registry import get_method_info

# Fields every method reads (or records, as the seed); the others belong to some methods only,
# as the registry's `options` lists them.
SHARED_FIELDS = (
    "source_words", "target_words", "method", "caption", "num_steps", "guidance_scale", "seed", "max_side",
)

# InstructPix2Pix's instruction when `--instruction` is not given.
DEFAULT_INSTRUCTION = "turn the {source} into {target}"


@dataclass(frozen=True)
class EditRequest:
    """Prompts and settings of one edit; the CLI builds it, every method reads it."""

    source_words: str  # --from: names the region to change; CLIP ranks with it; blend word
    target_words: str  # --to: replaces --from in the caption
    method: str = "residual"
    caption: str | None = None  # --prompt: full source caption containing --from
    num_steps: int | None = None  # DDIM steps; None = the method's default (20 for everything, else 50)
    guidance_scale: float = 7.5  # classifier-free guidance while editing (inversion uses 1)
    residual_weight: float | None = None  # w; None = the method's default
    cross_replace: float = 0.4  # fraction of steps with the source's cross-attention
    self_replace: float = 0.6  # fraction of steps with the source's self-attention
    blend_threshold: float = 0.3  # local blend threshold on the normalised attention
    reweight: float | None = None  # factor on the target words' cross-attention; None = none
    attention_mode: str = "auto"  # Prompt-to-Prompt: auto (replace if same word count, else refine)
    control_scale: float = 1.0  # controlnet: factor on the ControlNet residuals (diffusers' default)
    # everything: grow the mask by this many pixels of the input image (square neighbourhood),
    # as Edit Everything's `expand_mask` does; Ying et al. ("Boost Text-Driven Image Editing
    # with SAM and Residual Correction") run Edit Everything with an expand length of 12.
    dilate: int = 12
    instruction: str | None = None  # ip2p: None = DEFAULT_INSTRUCTION with --from and --to
    image_guidance_scale: float = 1.5  # ip2p: guidance towards the input image (InstructPix2Pix's default)
    seed: int = 0  # for methods that start from noise; recorded by all
    max_side: int = 512  # longer side of the working size

    def __post_init__(self) -> None:
        for name in ("source_words", "target_words"):
            if not getattr(self, name).strip():
                flag = "--from" if name == "source_words" else "--to"
                raise SameditError(f"`{flag}` must not be empty")
        if self.caption is not None and not find_words(self.caption, self.source_words):
            raise SameditError(
                f"`--prompt` {self.caption!r} must contain the `--from` words {self.source_words!r}"
            )
        info = get_method_info(self.method)
        if self.num_steps is None:
            object.__setattr__(self, "num_steps", info.num_steps)  # frozen: resolved once, here
        if not 1 <= self.num_steps <= 1000:
            # DDIM cannot take more steps than the 1,000 training timesteps.
            raise SameditError(f"`--steps` must be from 1 to 1000, got {self.num_steps}")
        if self.residual_weight is not None and not math.isfinite(self.residual_weight):
            raise SameditError(f"`--residual-weight` must be a finite number, got {self.residual_weight}")
        for name in ("cross_replace", "self_replace", "blend_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise SameditError(f"`--{name.replace('_', '-')}` must be in [0, 1], got {value}")
        self._check_method_options()

    def _check_method_options(self) -> None:
        if self.reweight is not None and not (math.isfinite(self.reweight) and self.reweight > 0):
            raise SameditError(
                f"`--reweight` must be a positive factor (2 doubles the target words' attention), got {self.reweight}"
            )
        if self.attention_mode not in MODES:
            raise SameditError(
                f"`--attention-mode` must be one of {', '.join(MODES)}, got {self.attention_mode!r}"
            )
        source_count, target_count = len(self.source_prompt.split()), len(self.target_prompt.split())
        if self.attention_mode == "replace" and source_count != target_count:
            # Word swap pairs the prompts word by word (`alignment.replace_mapper`).
            raise UsageError(
                f"`--attention-mode replace` needs prompts with the same number of words, but the source "
                f"prompt has {source_count} and the target prompt {target_count}; use `--attention-mode refine` "
                "or give `--from` and `--to` the same number of words"
            )
        for name, flag in (("control_scale", "--control-scale"), ("image_guidance_scale", "--image-guidance"),
                           ("guidance_scale", "--guidance")):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise SameditError(f"`{flag}` must be a number of at least 0, got {value}")
        if self.dilate < 0:
            raise SameditError(f"`--dilate` must be 0 or more pixels, got {self.dilate}")
        if self.instruction is not None and not self.instruction.strip():
            raise SameditError("`--instruction` must not be empty; leave it out to use the default instruction")

    @property
    def source_prompt(self) -> str:
        return self.caption if self.caption is not None else self.source_words

    @property
    def target_prompt(self) -> str:
        """The caption with the `--from` words replaced by the `--to` words."""
        pattern = word_pattern(self.source_words)
        return pattern.sub(lambda _: self.target_words, self.source_prompt, count=1)

    @property
    def edit_instruction(self) -> str:
        """The instruction InstructPix2Pix gets: `--instruction`, else one built from --from and --to."""
        if self.instruction is not None:
            return self.instruction
        return DEFAULT_INSTRUCTION.format(source=self.source_words, target=self.target_words)

    def settings(self) -> dict:
        """Return the shared fields and this method's own, with the resolved prompts and instruction."""
        fields = SHARED_FIELDS + get_method_info(self.method).options
        record = {name: value for name, value in asdict(self).items() if name in fields}
        record.update(source_prompt=self.source_prompt, target_prompt=self.target_prompt)
        if "instruction" in record:
            record["instruction"] = self.edit_instruction
        return record


def word_pattern(words: str) -> re.Pattern:
    return re.compile(r"(?<!\w)" + r"\s+".join(re.escape(word) for word in words.split()) + r"(?!\w)", re.IGNORECASE)


def find_words(text: str, words: str) -> bool:
    return word_pattern(words).search(text) is not None
