"""Splitting a benchmark run across processes: `--shard I/N`, `accelerate launch` and `torchrun`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch

from sam_edit.errors import SameditError
from sam_edit.runtime import Runtime

BARRIER_TIMEOUT = timedelta(days=7)  # how long launched processes wait for the slowest shard

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Entry `k` belongs to shard `k % count`; shard `index` runs those entries."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise SameditError(f"`--shard {self.index}/{self.count}` is invalid; use I/N with 0 <= I < N")

    def select(self, entries: Sequence[T]) -> list[T]:
        return list(entries[self.index :: self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(value: str) -> Shard:
    """Parse `--shard I/N`."""
    index, _, count = value.partition("/")
    try:
        return Shard(int(index), int(count))
    except ValueError:
        raise SameditError(f"`--shard` must be I/N with integers, e.g. 0/4, got {value!r}") from None


def launcher_shard(environ: Mapping[str, str] = os.environ) -> Shard | None:
    """Return the shard of this process under `accelerate launch` or `torchrun`, else None.

    Both launchers set `RANK` (this process, from 0) and `WORLD_SIZE` (the process count).
    """
    world_size = int(environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return None
    return Shard(int(environ.get("RANK", "0") or 0), world_size)


def join_launch(environ: Mapping[str, str] = os.environ) -> Shard | None:
    """Join the process group of `accelerate launch` or `torchrun`; return this process's shard.

    Returns None for a single process. The group (gloo, which works with or without GPUs) is
    used only for the barrier before scoring, so its timeout is long: the barrier waits for the
    slowest shard.
    """
    shard = launcher_shard(environ)
    if shard is not None and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    return shard


def wait_for_all_shards() -> None:
    """Block until every launched process has finished editing, then leave the process group."""
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def process_runtime(runtime: Runtime, environ: Mapping[str, str] = os.environ) -> Runtime:
    """Move a CUDA runtime to the GPU the launcher gave this process, `cuda:LOCAL_RANK`."""
    # NOTE: the launch path was run with torchrun on CPU only; this GPU mapping has not been run.
    if runtime.device.type != "cuda" or "LOCAL_RANK" not in environ:
        return runtime
    device = torch.device("cuda", int(environ["LOCAL_RANK"]) % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return dataclasses.replace(runtime, device=device)
