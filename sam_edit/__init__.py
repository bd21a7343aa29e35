"""samedit: text-driven editing of one photo with SAM, CLIP, Prompt-to-Prompt and residual correction."""

__version__ = "0.1.0"
