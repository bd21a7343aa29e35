"""Time, UNet evaluations and memory of every editing method on one real photo.

    python benchmarks/methods.py --models tiny --size 64 --steps 2 --json        # smoke test, CI
    python benchmarks/methods.py --models random-full --size 256 --steps 4       # CPU measurement
    python benchmarks/methods.py --markdown rows.jsonl                            # table for the docs

`--models random-full` builds the released architectures with random weights in memory, so
the numbers are those of the real models without a download (their images are noise). The
photo is scikit-image's chelsea with its longer side resized to `--size`.

Every row runs in a child process of its own, so that its peak RSS is its own. The children
fork from a server process that has imported the libraries and run nothing (`multiprocessing`'s
forkserver), because a process forked after PyTorch has used its OpenMP threads can hang. The
edit rows get the edit region (a mask of the photo's central half) and a masks file as files,
so they measure the edit alone. The `segment` and `rank` rows measure SAM and CLIP. The
`+inversion-file` rows edit from an inversion file that `samedit invert` wrote beforehand in
another child.

Fields of a row (`--json` prints one object per line):

- `unet_calls`, `unet_batch_items`: UNet forward passes and the sum of their batch sizes,
  inversion included; `inversion_unet_*` counts those inside DDIM inversion.
- `wall_seconds`: the row's run without model loading (`load_seconds`, reported apart).
  `cpu_seconds`: CPU time of all the child's threads over the same span.
- `model_seconds`: time inside model forward passes (UNet, ControlNet, VAE, text encoder,
  SAM, CLIP; `model_seconds_by` splits it), synchronised on CUDA.
- `overhead_share`: 1 - model_seconds / wall_seconds.
- `peak_rss_bytes`: the child's peak resident memory (`getrusage`), including the libraries
  it inherits (`baseline_rss_bytes`); `peak_vram_bytes`: `torch.cuda.max_memory_allocated`.
- `peak_tensor_bytes_by` (with `--trace-memory`): peak bytes of live tensors made by torch
  operations, per model running at the time; `benchmarks/memory_plan.py` reads it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
from PIL import Image

PRELOAD = ("torch", "diffusers", "transformers", "sam_edit.stages", "sam_edit.cli.app", "probe")
STAGES = ("segment", "rank")
SOURCE_WORDS, TARGET_WORDS, CAPTION = "cat", "tiger", "a photo of a cat"


def method_names() -> list[str]:
    """Every editing method, from the one registry the CLI reads."""
    from sam_edit.methods.registry import METHODS

    return list(METHODS)


# Inputs, made in the parent with PIL and numpy only ----------------------------------------------


def write_inputs(folder: Path, size: int, model_set: str, sam_model: str) -> dict:
    """Write the photo, the edit mask and a two-segment masks file; return their paths."""
    from skimage import data

    from sam_edit import artifacts
    from sam_edit.images import load_image
    from sam_edit.models.loaders import model_id
    from sam_edit.segment import Segment

    photo = Image.fromarray(data.chelsea())
    scale = size / max(photo.size)
    photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.LANCZOS)
    image_path = folder / "chelsea.png"
    photo.save(image_path)

    width, height = photo.size
    mask = np.zeros((height, width), dtype=bool)  # [H, W] bool, the central half of each side
    mask[height // 4 : height - height // 4, width // 4 : width - width // 4] = True
    mask_path = folder / "mask.png"
    Image.fromarray(mask).save(mask_path)

    segments = []
    for index, region in enumerate((~mask, mask)):
        ys, xs = np.nonzero(region)
        bbox = (int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1)
        segments.append(Segment(index, region, bbox, int(region.sum()), 1.0, 1.0))
    masks_path = folder / "masks.json"
    loaded = load_image(image_path)
    artifacts.write_masks(masks_path, loaded, segments, {"sam": model_id(sam_model, model_set)}, {"segment": "benchmark"})
    return {"image": image_path, "mask": mask_path, "masks": masks_path}


# One row, in a child process ----------------------------------------------------------------


def run_task(task: dict, connection) -> None:
    """Child entry point: run one row and send its record (or the error) to the parent."""
    try:
        record = measure(task)
    except NotImplementedError as error:
        record = {"skipped": f"{type(error).__name__}: {error}"}
    except Exception as error:  # the parent reports it in the row and carries on
        record = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    connection.send(record)
    connection.close()


def measure(task: dict) -> dict:
    import diffusers.utils.logging
    import torch
    import transformers.utils.logging

    from probe import Probe
    from sam_edit import artifacts, stages
    from sam_edit.images import load_image
    from sam_edit.runtime import GIB, resolve_runtime

    for library in (diffusers.utils.logging, transformers.utils.logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
    if task["threads"]:
        torch.set_num_threads(task["threads"])
    memory = None
    if task["plan_memory_gib"] is not None:
        memory = (int(task["plan_memory_gib"] * GIB),) * 2
    runtime = resolve_runtime(task["device"], task["dtype"], task["offload"], memory)
    if runtime.device.type == "cuda" and memory is not None:
        # Hold PyTorch to the planned memory, so a profile that does not fit fails here too.
        torch.cuda.set_per_process_memory_fraction(min(1.0, memory[0] / torch.cuda.mem_get_info()[1]))
    context = stages.Context(runtime=runtime, model_set=task["models"], sam_model=task["sam_model"])
    loaded = load_image(Path(task["image"]))

    probe = Probe(runtime.device, trace=task["trace_memory"])
    probe.install()
    baseline_rss = peak_rss_bytes()
    started, started_cpu = time.perf_counter(), time.process_time()
    found = run_row(task, loaded, context)
    wall = time.perf_counter() - started - probe.load_seconds
    cpu = time.process_time() - started_cpu - probe.load_cpu_seconds
    if task["stage"] == "segment":  # the rank row ranks them
        artifacts.write_masks(Path(task["segments"]), loaded, *found)

    record = probe.record()
    if task["stage"] != "edit":
        record["segments"] = len(found[0])
    record.update(
        wall_seconds=round(wall, 3),
        cpu_seconds=round(cpu, 3),
        overhead_share=round(1 - sum(probe.model_seconds.values()) / wall, 3) if wall > 0 else None,
        baseline_rss_bytes=baseline_rss,
        peak_rss_bytes=peak_rss_bytes(),
        device=str(runtime.device),
        threads=torch.get_num_threads(),
        dtype=runtime.dtype_name,
        offload=runtime.offload,
        profile=runtime.profile.describe() if runtime.profile else None,
    )
    if runtime.device.type == "cuda":
        record.update(peak_vram_bytes=torch.cuda.max_memory_allocated(),
                      peak_vram_reserved_bytes=torch.cuda.max_memory_reserved())
    return record


def run_row(task: dict, loaded, context):
    """Run the row's stage; the segment and rank rows return (segments, ...) as their stage does."""
    from sam_edit import artifacts, stages
    from sam_edit.methods.request import EditRequest

    if task["stage"] == "segment":
        return stages.segment(loaded, context)
    if task["stage"] == "rank":
        found = Path(task["segments"])
        segments, _ = artifacts.read_masks(found if found.is_file() else Path(task["masks"]), loaded)
        stages.rank(loaded, segments, SOURCE_WORDS, context)
        return segments, None
    request = EditRequest(source_words=SOURCE_WORDS, target_words=TARGET_WORDS, method=task["method"],
                          caption=CAPTION, num_steps=task["steps"], max_side=task["size"])
    source = stages.MaskSource(mask=Path(task["mask"]), masks=Path(task["masks"]))
    inversion = Path(task["inversion"]) if task.get("inversion") else None
    stages.run_edit(loaded, request, context, source=source, inversion=inversion)
    return None


def write_inversion(task: dict, connection) -> None:
    """Child entry point: write the inversion file of `task` with `samedit invert`."""
    from typer.testing import CliRunner

    from sam_edit.cli.app import app

    arguments = [
        "invert", task["image"], "--prompt", CAPTION, "--from", SOURCE_WORDS, "--method", task["method"],
        "--mask", task["mask"], "--masks", task["masks"], "--steps", str(task["steps"]),
        "--max-side", str(task["size"]), "--models", task["models"], "--device", task["device"],
        "--dtype", task["dtype"], "--offload", task["offload"], "--progress", "never", "-q",
        "-o", task["inversion"],
    ]
    result = CliRunner().invoke(app, arguments, prog_name="samedit")
    connection.send({} if result.exit_code == 0 else {"error": f"samedit invert failed: {result.output.strip()}"})
    connection.close()


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes


# The parent ---------------------------------------------------------------------------------


def in_child(context, target, task: dict) -> dict:
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=target, args=(task, sender))
    process.start()
    sender.close()
    try:
        record = receiver.recv()
    except EOFError:
        record = {"error": "the child process died without a result (killed for memory?)"}
    process.join()
    if process.exitcode not in (0, None) and "error" not in record:
        record["error"] = f"the child process exited with code {process.exitcode}"
    return record


def plan_rows(args: argparse.Namespace, inputs: dict) -> list[dict]:
    """One task per stage, method and inversion-file method, in that order."""
    base = {
        "size": args.size, "steps": args.steps, "models": args.models, "device": args.device,
        "dtype": args.dtype, "offload": args.offload, "plan_memory_gib": args.plan_memory,
        "trace_memory": args.trace_memory, "sam_model": args.sam_model, "threads": args.threads,
        "segments": str(Path(inputs["image"]).with_name("segments.json")),  # written by the segment row
        **{key: str(path) for key, path in inputs.items()},
    }
    tasks = [{**base, "row": stage, "stage": stage, "method": None} for stage in args.stages]
    tasks += [{**base, "row": name, "stage": "edit", "method": name} for name in args.methods]
    for name in args.inversion_file:
        inversion = str(Path(inputs["image"]).with_name(f"{name}.inversion.safetensors"))
        tasks.append({**base, "row": f"{name}+inversion-file", "stage": "edit", "method": name, "inversion": inversion})
    return tasks


def run_all(args: argparse.Namespace, emit) -> list[dict]:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    rows = []
    with tempfile.TemporaryDirectory(prefix="samedit-bench-") as folder:
        inputs = write_inputs(Path(folder), args.size, args.models, args.sam_model)
        for task in plan_rows(args, inputs):
            record = {}
            if task.get("inversion"):
                record = in_child(context, write_inversion, task)
            if not record:
                record = in_child(context, run_task, task)
            row = {"row": task["row"], "method": task["method"], "stage": task["stage"],
                   "inversion_file": bool(task.get("inversion")), "size": args.size, "steps": args.steps,
                   "models": args.models, **record}
            emit(row)
            rows.append(row)
    return rows


def format_row(row: dict) -> str:
    if "error" in row or "skipped" in row:
        return f"{row['row']:<28} {row.get('error') or row.get('skipped')}"
    vram = row.get("peak_vram_bytes")
    return (f"{row['row']:<28} {row['wall_seconds']:>8.2f} {row['model_seconds']:>8.2f} {row['overhead_share']:>8.1%} "
            f"{row['unet_calls']:>6} {row['unet_batch_items']:>6} {row['inversion_unet_calls']:>6} "
            f"{row['peak_rss_bytes'] / 2**20:>9.0f} {'' if vram is None else f'{vram / 2**20:>9.0f}'}")


def markdown_table(rows: list[dict]) -> str:
    """Return the rows as a Markdown table, as docs/performance.md shows them."""
    cuda = any("peak_vram_bytes" in row for row in rows)
    memory = "peak VRAM (GiB)" if cuda else "peak RSS (GiB)"
    lines = [
        "| row | wall (s) | in models (s) | overhead share | UNet calls | UNet batch items | of them inversion "
        f"| {memory} | seconds per model |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        if "error" in row or "skipped" in row:
            lines.append(f"| {row['row']} | {row.get('error') or row.get('skipped')} |||||||")
            continue
        by_model = ", ".join(f"{kind} {seconds:.1f}" for kind, seconds in row["model_seconds_by"].items())
        peak = row["peak_vram_bytes"] if cuda else row["peak_rss_bytes"]
        lines.append(
            f"| {row['row']} | {row['wall_seconds']:.1f} | {row['model_seconds']:.1f} | {row['overhead_share']:.1%} "
            f"| {row['unet_calls']} | {row['unet_batch_items']} | {row['inversion_unet_batch_items']} "
            f"| {peak / 2**30:.2f} | {by_model} |"
        )
    return "\n".join(lines)


TABLE_HEADER = (f"{'row':<28} {'wall s':>8} {'model s':>8} {'overhead':>8} {'calls':>6} {'items':>6} "
                f"{'inv':>6} {'RSS MiB':>9} {'VRAM MiB':>9}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])

    # What runs
    parser.add_argument("--size", type=int, default=256, help="longer side of the photo and working size, pixels")
    parser.add_argument("--steps", type=int, default=4, help="DDIM steps of inversion and editing")
    parser.add_argument("--methods", default="all", help="comma-separated methods, or all")
    parser.add_argument("--stages", default="segment,rank", help="comma-separated stage rows (segment, rank), or none")
    parser.add_argument("--inversion-file", default="auto",
                        help="comma-separated methods to also run from an inversion file, or none; "
                             "auto: residual if it runs")
    parser.add_argument("--models", default="tiny", choices=("tiny", "random-full", "default"),
                        help="tiny (CI smoke test), random-full (real sizes, random weights) or default (cached weights)")
    parser.add_argument("--sam-model", default="sam-vit-b", help="SAM checkpoint of the segment row")

    # Device, precision and memory
    parser.add_argument("--device", default="auto", help="as samedit's --device: auto, cuda, mps or cpu")
    parser.add_argument("--dtype", default="auto", help="as samedit's --dtype: auto, fp16, bf16 or fp32")
    parser.add_argument("--offload", default="auto", help="as samedit's --offload: auto, none, model or sequential")
    parser.add_argument("--plan-memory", type=float, default=None, metavar="GIB",
                        help="plan the memory profile for GIB free (and on CUDA, cap PyTorch at it)")
    parser.add_argument("--trace-memory", action="store_true",
                        help="record peak live tensor bytes per model (slower; for memory_plan.py)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per row (torch.set_num_threads); default: 1 with tiny models, "
                             "whose operations are too small to split, else PyTorch's default")

    # Output
    parser.add_argument("--json", action="store_true", help="print one JSON object per row")
    parser.add_argument("--save", type=Path, default=None, metavar="FILE", help="also append the JSON rows to FILE")
    parser.add_argument("--markdown", type=Path, nargs="+", metavar="FILE",
                        help="print the JSON rows saved in FILE as a Markdown table, and run nothing")
    args = parser.parse_args(argv)

    args.methods = method_names() if args.methods == "all" else split(args.methods)
    args.stages = split(args.stages)
    if args.threads is None and args.models == "tiny":
        args.threads = 1
    if args.inversion_file == "auto":
        args.inversion_file = "residual" if "residual" in args.methods else "none"
    args.inversion_file = split(args.inversion_file)
    unknown = (set(args.methods + args.inversion_file) - set(method_names())) | (set(args.stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown method or stage: {', '.join(sorted(unknown))}; methods: "
                     f"{', '.join(method_names())}; stages: {', '.join(STAGES)}")
    return args


def split(value: str) -> list[str]:
    return [] if value in ("", "none") else [item.strip() for item in value.split(",")]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        rows = [json.loads(line) for path in args.markdown for line in path.read_text().splitlines()
                if line.startswith("{")]
        print(markdown_table(rows))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.json:
        print(f"{args.models} models, {args.size} px, {args.steps} steps", flush=True)
        print(TABLE_HEADER, flush=True)

    def emit(row: dict) -> None:
        line = json.dumps({key: value for key, value in row.items() if key != "traceback"})
        print(line if args.json else format_row(row), flush=True)
        if args.save is not None:
            with open(args.save, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        if "traceback" in row:
            print(row["traceback"], file=sys.stderr, flush=True)

    rows = run_all(args, emit)
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
