"""Every model samedit can load: short names mapped to hub repos, files and pinned revisions."""

from __future__ import annotations

from dataclasses import dataclass

from sam_edit.errors import SameditError

# Files of a diffusers model repo that samedit loads component by component: no safety
# checker, no EMA or .ckpt duplicates, safetensors only.
SD_FILES = (
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/*",
    "scheduler/*",
    "model_index.json",
)
SINGLE_MODEL_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
CLIP_FILES = ("*.json", "*.txt", "model.safetensors")


@dataclass(frozen=True)
class ModelSpec:
    """One downloadable model: a hub repo snapshot, one file of a hub repo, or a plain URL."""

    name: str  # short name used on the command line
    kind: str  # "sd" | "controlnet" | "iclight" | "clip" | "sam" | "dino" | "lpips"
    description: str
    repo_id: str | None = None  # Hugging Face Hub repo
    revision: str | None = None  # pinned commit of the hub repo
    files: tuple[str, ...] = ()  # hub: allow patterns of the snapshot
    filename: str | None = None  # a single file, from the hub repo or `url`
    url: str | None = None  # non-hub download
    size: int | None = None  # bytes of `filename`, checked after download when known
    sha256: str | None = None  # of `filename`, checked after download when known
    variant: str = ""  # architecture detail: UNet input channels, SAM encoder type


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "sd14", "sd", "Stable Diffusion 1.4 (p2p, pnp)",
            repo_id="CompVis/stable-diffusion-v1-4",
            revision="133a221b8aa7292a167afc5127cb63fb5005638b",
            files=SD_FILES, variant="4",
        ),
        ModelSpec(
            "sd15", "sd", "Stable Diffusion 1.5 (controlnet, blended)",
            repo_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
            revision="451f4fe16113bff5a5d2269ed5ad43b0592e9a14",
            files=SD_FILES, variant="4",
        ),
        ModelSpec(
            "sd15-inpaint", "sd", "Stable Diffusion 1.5 inpainting (everything)",
            repo_id="stable-diffusion-v1-5/stable-diffusion-inpainting",
            revision="8a4288a76071f7280aedbdb3253bdb9e9d5d84bb",
            files=SD_FILES, variant="9",
        ),
        ModelSpec(
            "controlnet-seg", "controlnet", "ControlNet 1.1 segmentation for SD 1.5",
            repo_id="lllyasviel/control_v11p_sd15_seg",
            # NOTE: no published commit of this repo could be verified offline, so it follows `main`.
            revision="main",
            files=SINGLE_MODEL_FILES,
        ),
        ModelSpec(
            "iclight-base", "sd", "Realistic Vision 5.1, the SD 1.5 base IC-Light was trained on",
            repo_id="stablediffusionapi/realistic-vision-v51",
            revision="19e3643d7d963c156d01537188ec08f0b79a514a",
            files=SD_FILES, variant="4",
        ),
        ModelSpec(
            "iclight-fc", "iclight", "IC-Light fc offsets (text + foreground conditioned UNet)",
            repo_id="lllyasviel/ic-light",
            revision="9cad1878695f546a7fb9eaca14e2a89131ba5ffe",
            filename="iclight_sd15_fc.safetensors", size=1_719_148_312,
            sha256="a033fbaaa2f3f7859fa6a4477ee63ebbf9c116bf3569d5811856d2807f3468cd",
            variant="8",
        ),
        ModelSpec(
            "clip-l14", "clip", "CLIP ViT-L/14 (ranking segments, CLIP score)",
            repo_id="openai/clip-vit-large-patch14",
            revision="32bd64288804d66eefd0ccbe215aa642df71cc41",
            files=CLIP_FILES,
        ),
        ModelSpec(
            "ip2p", "sd", "InstructPix2Pix",
            repo_id="timbrooks/instruct-pix2pix",
            revision="31519b5cb02a7fd89b906d88731cd4d6a7bbf88d",
            files=SD_FILES, variant="8",
        ),
        ModelSpec(
            "sam-vit-b", "sam", "Segment Anything ViT-B",
            url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
            filename="sam_vit_b_01ec64.pth", size=375_042_383,
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            variant="vit_b",
        ),
        ModelSpec(
            "sam-vit-l", "sam", "Segment Anything ViT-L",
            url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
            filename="sam_vit_l_0b3195.pth", size=1_249_524_607,
            sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            variant="vit_l",
        ),
        ModelSpec(
            "sam-vit-h", "sam", "Segment Anything ViT-H",
            url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
            filename="sam_vit_h_4b8939.pth", size=2_564_550_879,
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            variant="vit_h",
        ),
        ModelSpec(
            "dino-vitb8", "dino", "DINO ViT-B/8 (PIE-Bench structure distance)",
            repo_id="facebook/dino-vitb8",
            # NOTE: no published commit of this repo could be verified offline, so it follows `main`.
            revision="main",
            files=("config.json", "model.safetensors", "preprocessor_config.json"),
        ),
        ModelSpec(
            "lpips-squeeze", "lpips", "SqueezeNet 1.1 ImageNet weights, the LPIPS backbone (PIE-Bench)",
            url="https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
            filename="squeezenet1_1-b8a52dc0.pth",
            sha256="b8a52dc049b60e4b6ab68ad0df457362afab8b6304b2febdc1650a5dab4d7e7b",
        ),
    )
}

DEFAULT_SAM = "sam-vit-b"  # fits beside nothing else on an 8 GB card and is fast on CPU


def get_spec(name: str) -> ModelSpec:
    """Return the registry entry for `name`; raise `SameditError` listing the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise SameditError(
            f"unknown model `{name}`; known models: {', '.join(sorted(MODELS))}"
        ) from None
