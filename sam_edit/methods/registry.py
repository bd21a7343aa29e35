"""Every editing method by name: its one-line summary, default steps and the options it reads.

This is the one list of method names. `samedit edit --help`, the `--method` check, the stages
and the docs read it. Six methods share one loop (`sam_edit.methods.inversion_based`, whose
table gives each one's UNet and switches); `everything`, `ip2p` and `blended` each have a
module of their own. The module imports nothing heavy, so the CLI can build its help from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sam_edit.errors import SameditError

# EditRequest fields that every inversion-based method reads (Prompt-to-Prompt and residual
# correction); the other methods ignore them.
INVERSION_OPTIONS = ("residual_weight", "cross_replace", "self_replace", "blend_threshold", "reweight", "attention_mode")


@dataclass(frozen=True)
class MethodInfo:
    """One editing method as the CLI and the stages see it."""

    name: str  # the `--method` value
    summary: str  # one line for `samedit edit --help`
    inversion_based: bool  # True: DDIM inversion + the shared Prompt-to-Prompt loop
    needs_mask: bool  # True: the edit region must be known (from --mask, --rank or SAM + CLIP)
    num_steps: int = 50  # default `--steps`
    model: str | None = None  # registry model a non-inversion method loads
    options: tuple[str, ...] = ()  # EditRequest fields this method reads beyond the shared ones


METHODS: dict[str, MethodInfo] = {
    info.name: info
    for info in (
        MethodInfo("p2p", "DDIM inversion + Prompt-to-Prompt on SD 1.4", True, False,
                   options=INVERSION_OPTIONS),
        MethodInfo("pnp", "p2p with Direct Inversion on the source branch", True, False,
                   options=INVERSION_OPTIONS),
        MethodInfo("controlnet", "p2p on SD 1.5 + segmentation ControlNet fed SAM's segments", True,
                   False, options=INVERSION_OPTIONS + ("control_scale",)),
        MethodInfo("everything", "Edit Everything: SAM + CLIP pick, SD 1.5 inpainting fills", False,
                   True, num_steps=20, model="sd15-inpaint", options=("dilate",)),
        MethodInfo("iclight", "p2p on IC-Light fc, conditioned on the foreground latent", True, True,
                   options=INVERSION_OPTIONS),
        MethodInfo("iclight-pnp", "iclight with Direct Inversion", True, True, options=INVERSION_OPTIONS),
        MethodInfo("residual", "iclight-pnp + residual correction w * r_t on the background", True, True,
                   options=INVERSION_OPTIONS),
        MethodInfo("ip2p", "InstructPix2Pix: follows --instruction; no mask or inversion", False, False,
                   model="ip2p", options=("instruction", "image_guidance_scale")),
        MethodInfo("blended", "Blended Latent Diffusion: SD 1.5 redraws the edit region", False,
                   True, model="sd15"),
    )
}

INVERSION_METHODS = tuple(name for name, info in METHODS.items() if info.inversion_based)


def get_method_info(name: str) -> MethodInfo:
    """Return the registry entry of `name`; raise `SameditError` listing the valid names."""
    try:
        return METHODS[name]
    except KeyError:
        raise SameditError(f"unknown method `{name}`; valid methods: {', '.join(METHODS)}") from None
