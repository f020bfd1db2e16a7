"""Running under torchrun: ranks, per-rank data shards, gradient averaging, rank-0-only writes.

`torchrun --nproc-per-node N -m deployvit train-supernet ...` sets RANK / WORLD_SIZE / LOCAL_RANK;
`init_distributed` joins the process group (NCCL on CUDA, gloo on CPU). Gradients are averaged with
one all-reduce per step over a flat buffer after all of the step's backward passes. That is data
parallelism with the same semantics as torch's DistributedDataParallel, but it also holds for
sandwich and multi-arch steps (several forwards per optimizer step, different parameters used per
subnet), which DDP's reducer does not support without find_unused_parameters tricks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.distributed as dist



@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` (CUDA when available), `cpu`, `cuda` (this rank's GPU) or `cuda:N`: the one parser of
    `deployvit.compute`, so training and search say the same line for CUDA without a GPU."""
    from deployvit.compute import compute_device

    return compute_device(name, local_rank)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join torchrun's process group when WORLD_SIZE > 1; otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local, dev)


def shutdown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: torch.nn.Module, info: DistInfo) -> None:
    """Make every rank hold rank 0's parameters and buffers. Tensors travel on the rank's device:
    NCCL cannot send CPU tensors, and the FocusFormer policy lives on the CPU beside a GPU supernet."""
    if info.distributed:
        for t in list(module.parameters()) + list(module.buffers()):
            buf = t.data.to(info.device)
            dist.broadcast(buf, src=0)
            if buf.data_ptr() != t.data.data_ptr():
                t.data.copy_(buf)


def average_gradients(params: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """Mean of the gradients over ranks, one collective on a flat buffer.

    A parameter that no rank used this step (a layer the subnet skips) keeps grad None, exactly as in
    a single process, so the optimizer leaves it alone (zero-filled grads would still move it through
    momentum and weight decay). One that only some ranks used counts zeros on the others."""
    if not info.distributed:
        return
    params = [p for p in params if p.requires_grad]
    used = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=info.device)
    dist.all_reduce(used)
    params = [p for p, u in zip(params, used.tolist()) if u > 0]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def all_ranks_sum(value: float, info: DistInfo) -> float:
    """Sum a number over ranks (loss checks, accuracy counts): every rank gets the same result."""
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t.item())


@dataclass(frozen=True)
class EpochBatches:
    """The batches of one rank in one epoch: a seeded permutation per epoch, cut into global batches of
    batch_size x world_size, of which this rank takes its slice; the tail that does not fill a global
    batch is dropped, so every rank runs the same number of steps. A pure function of (seed, epoch),
    which is what makes a mid-epoch resume start at exactly the next batch."""

    num_items: int
    batch_size: int
    info: DistInfo
    seed: int
    shuffle: bool = True

    @property
    def steps_per_epoch(self) -> int:
        return self.num_items // (self.batch_size * self.info.world_size)

    def epoch(self, epoch: int, start_step: int = 0) -> list[list[int]]:
        order = (
            np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
            if self.shuffle
            else np.arange(self.num_items)
        )
        b, w, r = self.batch_size, self.info.world_size, self.info.rank
        return [order[(s * w + r) * b : (s * w + r + 1) * b].tolist() for s in range(start_step, self.steps_per_epoch)]
