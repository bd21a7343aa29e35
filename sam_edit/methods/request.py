"""What the user asked for: prompts and settings shared by every editing method."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from sam_edit.errors import SameditError


@dataclass(frozen=True)
class EditRequest:
    """Prompts and settings of one edit; the CLI builds it, every method reads it."""

    source_words: str  # --from: names the region to change; CLIP ranks with it; blend word
    target_words: str  # --to: replaces --from in the caption
    method: str = "residual"
    caption: str | None = None  # --prompt: full source caption containing --from
    num_steps: int = 50  # DDIM steps for inversion and editing
    guidance_scale: float = 7.5  # classifier-free guidance while editing (inversion uses 1)
    residual_weight: float | None = None  # w; None = the method's default
    cross_replace: float = 0.4  # fraction of steps with the source's cross-attention
    self_replace: float = 0.6  # fraction of steps with the source's self-attention
    blend_threshold: float = 0.3  # local blend threshold on the normalised attention
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
        if self.num_steps < 1:
            raise SameditError(f"`--steps` must be at least 1, got {self.num_steps}")
        for name in ("cross_replace", "self_replace", "blend_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise SameditError(f"`--{name.replace('_', '-')}` must be in [0, 1], got {value}")

    @property
    def source_prompt(self) -> str:
        return self.caption if self.caption is not None else self.source_words

    @property
    def target_prompt(self) -> str:
        """The caption with the `--from` words replaced by the `--to` words."""
        pattern = word_pattern(self.source_words)
        return pattern.sub(lambda _: self.target_words, self.source_prompt, count=1)

    def settings(self) -> dict:
        record = asdict(self)
        record.update(source_prompt=self.source_prompt, target_prompt=self.target_prompt)
        return record


def word_pattern(words: str) -> re.Pattern:
    return re.compile(r"(?<!\w)" + r"\s+".join(re.escape(word) for word in words.split()) + r"(?!\w)", re.IGNORECASE)


def find_words(text: str, words: str) -> bool:
    return word_pattern(words).search(text) is not None
