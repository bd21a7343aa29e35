"""Estimate the GPU memory of every method at 512 px from a `--trace-memory` CPU run.

    python benchmarks/methods.py --models random-full --size 256 --steps 4 --trace-memory --json > trace.jsonl
    python benchmarks/memory_plan.py trace.jsonl

For each row the estimate is the largest, over the models that ran, of

    weights on the GPU while that model runs + live tensors while that model runs

- Weights are exact: the parameters of the models the row placed, 2 bytes each in fp16
  (SAM and CLIP: 4, they always run in fp32; the VAE: 4 where the profile keeps it in fp32).
  With model offload, only the running unit is on the GPU: the UNet with its ControlNet, the
  text encoder or the VAE (see `sam_edit.models.offload`). Without offload, every model of
  the row is.
- Live tensors are the CPU trace's peak per model, in fp32 at the traced size. They are
  halved for fp16 (not for SAM and CLIP, which run in fp32) and multiplied by the area ratio
  (512 / size)^2, except for the models whose inputs have a fixed size: the text encoder
  (77 tokens), SAM (1024 px) and CLIP (224 px crops). Outside the models ("other"), a row
  that runs SAM or CLIP alone holds their fp32 masks and crops, which are kept as traced.

This is an estimate. It leaves out the CUDA context (outside PyTorch's allocator), cuDNN and
attention-kernel workspaces, and the caching allocator's fragmentation; attention runs
`F.scaled_dot_product_attention` on both devices, but CPU and CUDA kernels keep different
temporaries. A CUDA run of `benchmarks/gpu_check.sh` measures the real peak.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from sam_edit.runtime import GIB, MemoryProfile, plan_profile

TARGET_SIZE = 512
CARD_FREE_GIB = 7.5  # free memory of an 8 GiB card with a desktop running (assumed)
UNITS = {"unet": "unet", "controlnet": "unet", "text_encoder": "text_encoder", "vae": "vae", "sam": "sam", "clip": "clip"}
FP32 = ("sam", "clip")  # models the loaders always place in fp32
FIXED_SIZE = ("text_encoder", "sam", "clip")  # inputs of the same size at any working size


def weight_bytes(row: dict, vae_fp32: bool) -> dict[str, int]:
    """Bytes of each offload unit's weights on the GPU."""
    units: dict[str, int] = {}
    for kind, count in row.get("parameters_by", {}).items():
        fp32 = kind in FP32 or (kind == "vae" and vae_fp32)
        unit = UNITS.get(kind, kind)
        units[unit] = units.get(unit, 0) + count * (4 if fp32 else 2)
    return units


def activation_bytes(row: dict, size: int, vae_fp32: bool) -> dict[str, float]:
    """Live tensor bytes per model at `size` px in the GPU dtype, from the fp32 trace."""
    area = (size / row["size"]) ** 2
    stage_alone = set(row.get("parameters_by", {})) <= set(FP32)  # the segment or rank stage
    scaled = {}
    for phase, traced in row.get("peak_tensor_bytes_by", {}).items():
        if phase in FP32 or (phase == "other" and stage_alone):
            scaled[phase] = traced
            continue
        live = traced if phase in FIXED_SIZE else traced * area
        if not (phase == "vae" and vae_fp32):
            live *= 0.5  # fp16
        scaled[phase] = live
    return scaled


def estimate_peak(row: dict, profile: MemoryProfile, size: int = TARGET_SIZE) -> tuple[float, str]:
    """Return (estimated peak bytes, the model running at the peak) for `row` under `profile`."""
    vae_fp32 = profile.vae_dtype == torch.float32
    units = weight_bytes(row, vae_fp32)
    peak, at = 0.0, "none"
    for phase, live in activation_bytes(row, size, vae_fp32).items():
        if profile.offload == "none":
            resident = sum(units.values())
        elif phase == "other":
            resident = max(units.values(), default=0)  # the unit that ran last stays on the GPU
        else:
            resident = units.get(UNITS.get(phase, phase), 0)
        if resident + live > peak:
            peak, at = resident + live, phase
    return peak, at


def plan_table(rows: list[dict], size: int = TARGET_SIZE, free_gib: float = CARD_FREE_GIB) -> list[dict]:
    """Build one record per traced row: weights, the 8 GiB profile's estimate, the all-on-GPU one."""
    card = plan_profile(torch.device("cuda"), int(free_gib * GIB), 8 * GIB)
    resident = plan_profile(torch.device("cuda"), 24 * GIB, 24 * GIB)  # every model on the GPU
    table = []
    for row in rows:
        if "peak_tensor_bytes_by" not in row:
            continue
        offloaded, at = estimate_peak(row, card, size)
        whole, _ = estimate_peak(row, resident, size)
        table.append({
            "row": row["row"],
            "weights_gib": sum(weight_bytes(row, False).values()) / GIB,  # fp16; SAM and CLIP fp32
            "largest_unit_gib": max(weight_bytes(row, False).values(), default=0) / GIB,
            "profile": card.offload,
            "estimate_gib": offloaded / GIB,
            "peak_during": at,
            "fits": offloaded <= free_gib * GIB,
            "all_on_gpu_gib": whole / GIB,
        })
    return table


def markdown(table: list[dict], size: int, free_gib: float) -> str:
    lines = [
        f"| row | weights (GiB) | largest unit (GiB) | {free_gib:g} GiB profile: estimate (GiB) | peak during "
        f"| fits {free_gib:g} GiB | all on GPU, VAE fp32: estimate (GiB) |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for record in table:
        lines.append(
            f"| {record['row']} | {record['weights_gib']:.2f} | {record['largest_unit_gib']:.2f} "
            f"| {record['estimate_gib']:.2f} ({record['profile']} offload) | {record['peak_during']} "
            f"| {'yes' if record['fits'] else 'no'} | {record['all_on_gpu_gib']:.2f} |"
        )
    return "\n".join(lines)


def read_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("traces", nargs="+", type=Path, help="JSON lines of `methods.py --trace-memory --json`")
    parser.add_argument("--size", type=int, default=TARGET_SIZE, help="working size to estimate for, pixels")
    parser.add_argument("--free-gib", type=float, default=CARD_FREE_GIB, help="free GPU memory to plan for, GiB")
    args = parser.parse_args(argv)
    table = plan_table(read_rows(args.traces), args.size, args.free_gib)
    if not table:
        print("no row with `peak_tensor_bytes_by`; run methods.py with --trace-memory", file=sys.stderr)
        return 1
    print(markdown(table, args.size, args.free_gib))
    return 0


if __name__ == "__main__":
    sys.exit(main())
