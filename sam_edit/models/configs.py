"""Architecture configs: the tiny set for tests and the real sizes for offline benchmarks.

The tiny configs keep the *layout* of the real models (four UNet levels with cross-attention
in the middle ones, a VAE that downsamples by 8, CLIP's 49,408-token vocabulary, SAM's
encoder/prompt-encoder/decoder split) so that every code path runs as it does with real
weights, only smaller.
"""

from __future__ import annotations

from dataclasses import dataclass

CLIP_VOCAB_SIZE = 49408  # OpenAI CLIP BPE vocabulary, shared by SD 1.x and CLIP ViT-L/14
CLIP_BOS_ID = 49406
CLIP_EOS_ID = 49407

TINY_TEXT_DIM = 32  # hidden size of the tiny text encoder = UNet cross-attention dim

TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    # SD has attention on the top level too; at tiny sizes its self-attention over every
    # latent pixel would cost more than the rest of the UNet, so the top level has none.
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(8, 16, 16, 16),
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=TINY_TEXT_DIM,
    attention_head_dim=4,  # 2 to 4 heads per layer, like SD's 8 heads of 40 to 160 dims
)

TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 8, 8),  # four levels: downsampling by 8, as in SD
    layers_per_block=1,
    norm_num_groups=4,
    latent_channels=4,
    sample_size=64,
)

TINY_TEXT_ENCODER = dict(
    vocab_size=CLIP_VOCAB_SIZE,
    hidden_size=TINY_TEXT_DIM,
    intermediate_size=64,
    num_attention_heads=2,
    num_hidden_layers=2,
    max_position_embeddings=77,
    bos_token_id=CLIP_BOS_ID,
    eos_token_id=CLIP_EOS_ID,
    pad_token_id=CLIP_EOS_ID,
    projection_dim=TINY_TEXT_DIM,
)

TINY_CLIP_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=2,
    num_hidden_layers=2,
    image_size=32,
    patch_size=8,
    projection_dim=TINY_TEXT_DIM,
)

# ControlNet shares the UNet's down path; its conditioning embedding downsamples by 8.
TINY_CONTROLNET = dict(
    in_channels=4,
    down_block_types=TINY_UNET["down_block_types"],
    block_out_channels=TINY_UNET["block_out_channels"],
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=TINY_TEXT_DIM,
    attention_head_dim=4,
    conditioning_embedding_out_channels=(4, 8, 8, 16),
)

# Real sizes, for `--models random-full`: the released architectures with random weights, so
# benchmarks measure time, UNet evaluations and memory offline. Each dict sets the keys that
# shape the tensors; the others keep diffusers' and transformers' defaults. The SD 1.x model card
# gives an 860M-parameter UNet and a 123M-parameter text encoder; these configs build 859.5M and
# 123.1M (tests/test_benchmarks.py pins every count).

SD_TEXT_DIM = 768  # CLIP ViT-L/14 text width = SD 1.x cross-attention dim

# SD 1.4 and 1.5 share this UNet. Inpainting (9 input channels), InstructPix2Pix (8) and
# IC-Light fc (8) differ only in `in_channels`, which the loaders set from the registry.
SD15_UNET = dict(
    sample_size=64,  # 512 px / 8
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    norm_num_groups=32,
    cross_attention_dim=SD_TEXT_DIM,
    attention_head_dim=8,  # SD 1.x: 8 heads at every level (diffusers' historical name)
)

SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    norm_num_groups=32,
    latent_channels=4,
    sample_size=512,
    scaling_factor=0.18215,
)

SD15_TEXT_ENCODER = dict(
    vocab_size=CLIP_VOCAB_SIZE,
    hidden_size=SD_TEXT_DIM,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    bos_token_id=CLIP_BOS_ID,
    eos_token_id=CLIP_EOS_ID,
    pad_token_id=CLIP_EOS_ID,
    projection_dim=SD_TEXT_DIM,
)

# CLIP ViT-L/14 (`openai/clip-vit-large-patch14`): the SD text encoder plus this vision tower.
CLIP_L14_VISION = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_attention_heads=16,
    num_hidden_layers=24,
    image_size=224,
    patch_size=14,
    hidden_act="quick_gelu",
    projection_dim=SD_TEXT_DIM,
)

# ControlNet 1.1 for SD 1.5 (`lllyasviel/control_v11p_sd15_seg`): a copy of the UNet's down path.
SD15_CONTROLNET = dict(
    in_channels=4,
    down_block_types=SD15_UNET["down_block_types"],
    block_out_channels=SD15_UNET["block_out_channels"],
    layers_per_block=2,
    norm_num_groups=32,
    cross_attention_dim=SD_TEXT_DIM,
    attention_head_dim=8,
    conditioning_embedding_out_channels=(16, 32, 96, 256),
)

DDIM_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=0,  # timesteps 980, 960, ..., 0 at 50 steps, as in the PnP Inversion code
    num_train_timesteps=1000,
)


@dataclass(frozen=True)
class SamConfig:
    """Sizes of a SAM model, as in segment-anything's `build_sam.py`."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    img_size: int = 1024  # SAM resizes the longer image side to this
    patch_size: int = 16
    prompt_embed_dim: int = 256  # must be divisible by 8 (the decoder upscales by 4, then 8)
    out_chans: int = 256
    window_size: int = 14
    mlp_dim: int = 2048  # two-way transformer MLP width in the mask decoder
    decoder_num_heads: int = 8
    mask_in_chans: int = 16
    iou_head_hidden_dim: int = 256


SAM_CONFIGS = {
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
    "tiny": SamConfig(
        encoder_embed_dim=16,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        img_size=64,
        prompt_embed_dim=16,
        out_chans=16,
        window_size=2,
        mlp_dim=32,
        decoder_num_heads=2,
        mask_in_chans=4,
        iou_head_hidden_dim=16,
    ),
}
