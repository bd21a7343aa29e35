"""Build, load and save segment-anything's `Sam` from a `SamConfig`.

`build_sam` lays the model out as segment-anything's `build_sam.py` does for `vit_b`, `vit_l`
and `vit_h`, with every size taken from the config, so the same code builds the tiny test model.
Checkpoints are plain state dicts, the format of the released `sam_vit_*.pth` files.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import tempfile
import zipfile
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from sam_edit.errors import SameditError
from sam_edit.models.configs import SAM_CONFIGS, SamConfig

logger = logging.getLogger(__name__)

# ImageNet mean and std in 0..255, as in segment-anything's `build_sam.py`.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def build_sam(config: SamConfig) -> Sam:
    """Build SAM with freshly initialised weights, in eval mode; no checkpoint is read."""
    image_embedding_size = config.img_size // config.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=config.encoder_depth,
            embed_dim=config.encoder_embed_dim,
            img_size=config.img_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=config.encoder_num_heads,
            patch_size=config.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=config.encoder_global_attn_indexes,
            window_size=config.window_size,
            out_chans=config.out_chans,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(image_embedding_size, image_embedding_size),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.mlp_dim,
                num_heads=config.decoder_num_heads,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    if config == SAM_CONFIGS["tiny"]:
        init_random_sam(sam)
    return sam.eval()


def init_random_sam(sam: Sam) -> None:
    """Re-initialise SAM's weights, in place, so that random weights still yield varied masks.

    With PyTorch's default initialisation, a random SAM returns the same degenerate masks for
    every point prompt, for three reasons:

    - `nn.Linear` and `nn.Conv2d` start with weight variance 1 / (3 * fan_in), so each layer
      shrinks its input. The mask logits stay within about 0.2 of zero, mostly above SAM's
      threshold of 0, and masks cover most or all of the image. LeCun normal weights
      (variance 1 / fan_in, zero bias) keep the logits at unit scale, so the threshold
      splits the image.
    - The mask decoder upsamples with stride-2, kernel-2 transposed convolutions. Random
      kernels paint one fixed sub-pixel pattern into every embedding cell, so each mask is a
      striped lattice whose box is the whole image, and box NMS keeps only one of them.
      Kernels that are constant over their 2x2 taps make these layers nearest-neighbour
      upsampling followed by a random channel mix, so masks follow the image embedding.
    - Without a mask prompt, the prompt encoder adds `no_mask_embed` to every pixel of the
      image embedding. Drawn from N(0, 1), it is as large as the embedding and hides most of
      its spatial variation, so each mask is close to all or nothing. Starting it at zero
      passes the image embedding through unchanged, as SAM's zero-initialised positional
      embeddings do.

    `build_sam` applies this to the tiny config only. It draws from torch's global generator,
    so seed with `torch.manual_seed` first for reproducible weights.
    """
    with torch.no_grad():
        for module in sam.modules():
            if isinstance(module, torch.nn.ConvTranspose2d):
                # weight: [C_in, C_out, kH, kW]. Each output pixel gets one tap per input channel.
                channels_in, channels_out = module.weight.shape[:2]
                mix = torch.randn(channels_in, channels_out) / math.sqrt(channels_in)
                module.weight.copy_(mix[:, :, None, None].expand_as(module.weight))
            elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, 1.0 / math.sqrt(fan_in))
            else:
                continue
            if module.bias is not None:
                module.bias.zero_()
        sam.prompt_encoder.no_mask_embed.weight.zero_()


def load_sam(config: SamConfig, checkpoint: Path) -> Sam:
    """Build SAM for `config` and load a state dict checkpoint such as `sam_vit_b_01ec64.pth`.

    Raises `SameditError` naming the path when the file is missing, unreadable, or contains
    weights for another architecture.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise SameditError(
            f"SAM checkpoint not found: {checkpoint}; check the path or pull the model again"
        )
    try:
        state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise SameditError(
            f"SAM checkpoint {checkpoint} is corrupt or truncated ({error.__class__.__name__}); "
            "delete it and download it again"
        ) from error
    if not isinstance(state_dict, dict):
        raise SameditError(
            f"SAM checkpoint {checkpoint} is not a state dict; expected a `.pth` file"
        )

    # Building on the meta device skips the random initialisation, which took 4 s for vit_h
    # on a 2-core CPU. `assign=True` then makes the loaded tensors the model's parameters.
    with torch.device("meta"):
        sam = build_sam(config)
    try:
        sam.load_state_dict(state_dict, assign=True)
    except RuntimeError as error:
        raise SameditError(
            f"SAM checkpoint {checkpoint} does not fit the SAM architecture it was loaded into; "
            "check that the model type (vit_b, vit_l, vit_h) matches the file"
        ) from error
    # The pixel mean and std are buffers outside the state dict, so they are still on meta.
    sam.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
    sam.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)
    logger.debug("loaded SAM checkpoint %s", checkpoint)
    return sam.eval()


def save_sam(model: Sam, path: Path) -> Path:
    """Write `model`'s state dict to `path` as a plain `.pth`, the layout `load_sam` reads.

    The file is written under a temporary name and renamed, so an interrupted save leaves no
    partial checkpoint at `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(model.state_dict(), temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
