"""The process group of a data-parallel training run (one process per GPU, or per CPU slot).

Owns: reading the launcher's environment (`accelerate launch` and `torchrun` set WORLD_SIZE,
RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), joining and leaving the torch.distributed group
(NCCL on GPUs, gloo on CPUs), the device of each rank, and the three collectives the loop needs:
summing gradients, summing numbers, and waiting for each other. With one process every function
is the identity, so a single-process run is unchanged bit for bit.

Data parallel here means: every rank holds the whole model, takes its share of each step's
micro-batches, and the gradients are summed before the optimizer step, so all ranks take the
same step as one process would (up to the order of float additions). Rank 0 alone writes the run
folder. Must not: shard parameters (FSDP is refused: see refuse_sharding).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.distributed as dist

from neurorit.errors import ConfigError

BUCKET_ELEMENTS = 1 << 25  # 32 Mi elements per all-reduce (128 MiB of float32)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current_world() -> World:
    """The world the launcher describes in the environment (one process when it says nothing)."""
    def read(name: str, default: int) -> int:
        raw = os.environ.get(name, "") or str(default)
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name} = {raw!r} in the environment; expected an integer.") from None

    world = World(rank=read("RANK", 0), size=read("WORLD_SIZE", 1), local_rank=read("LOCAL_RANK", 0))
    if world.size < 1 or not 0 <= world.rank < world.size:
        raise ConfigError(f"RANK = {world.rank}, WORLD_SIZE = {world.size}: expected 0 <= RANK < WORLD_SIZE.")
    return world


def refuse_sharding() -> None:
    """FSDP launches (accelerate sets ACCELERATE_USE_FSDP) are refused: the loop does not shard."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true", "yes"):
        raise ConfigError(
            "this run was launched with FSDP, which the training loop does not implement (it would train "
            "an unsharded copy on every GPU); launch data parallel instead (accelerate config without fsdp, or torchrun)."
        )


def rank_device(world: World, device: torch.device) -> torch.device:
    """Each rank's own GPU (cuda:LOCAL_RANK) in a distributed CUDA run; else the device as given."""
    if world.distributed and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


@contextlib.contextmanager
def joined(world: World, device: torch.device) -> Iterator[None]:
    """Join the process group for the block (no-op for one process or one already joined)."""
    if not world.distributed or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=world.size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def my_share(n: int, world: World) -> range:
    """The micro-batch indices of 0..n-1 this rank computes (round robin)."""
    return range(world.rank, n, world.size)


def sum_gradients(params: Sequence[torch.nn.Parameter], world: World) -> None:
    """Replace every gradient by its sum over the ranks (missing gradients count as zeros)."""
    if not world.distributed:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    buckets: list[list[torch.Tensor]] = []
    for p in params:  # one all-reduce per bucket of <= BUCKET_ELEMENTS same-typed gradients
        g = p.grad
        last = buckets[-1] if buckets else None
        if (last is None or (last[0].dtype, last[0].device) != (g.dtype, g.device)
                or sum(x.numel() for x in last) + g.numel() > BUCKET_ELEMENTS):
            buckets.append([g])
        else:
            last.append(g)
    for grads in buckets:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def sum_numbers(values: Sequence[float], world: World, device: torch.device) -> list[float]:
    """Each number summed over the ranks."""
    if not world.distributed:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def wait_for_all(world: World) -> None:
    if world.distributed:
        dist.barrier()
