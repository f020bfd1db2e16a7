"""Scoring that scales out: under `torchrun`, every rank runs the same search and scores its share of
each generation's candidates; the scores are gathered so every rank holds the same population.

`torchrun --nproc-per-node N -m deployvit search ...` sets RANK / WORLD_SIZE / LOCAL_RANK. Every
rank draws the same candidates (same seed, same generator, same gathered scores), rank r scores
candidates r, r + N, r + 2N, ... of a batch through the wrapped score's own `score_many` (so DSS still
uses its threads), and one `all_gather_object` gives every rank all scores in the batch's order.
Nothing about the search depends on which rank scored an arch, so the result equals a single
process's whenever the score itself does not depend on the process: DSS evaluates each arch with one
intra-op thread, bit for bit the same anywhere on the same hardware. Only rank 0 writes files.

The engine is torch.distributed (gloo on the CPU, NCCL on GPUs), as in training
(`deployvit.train.distributed`); it works for any `Score`, DSS or supernet accuracy alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from deployvit.arch import Arch
from deployvit.search.scores import Score, score_batch
from deployvit.train.distributed import DistInfo


@dataclass(frozen=True)
class Ranks(DistInfo):
    """The training's rank facts (`DistInfo`), and whether this search started the process group."""

    owns_group: bool = False  # this process group was started here (and is closed by `close`)


def local_rank() -> int:
    """This process's index on its machine (the GPU `cuda` means under torchrun); 0 outside it."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Rank 0, or not under torchrun: the process that prints and writes (known before any group)."""
    return int(os.environ.get("RANK", "0")) == 0


def join_torchrun(device: torch.device) -> Ranks:
    """Join torchrun's process group when WORLD_SIZE > 1 (NCCL for CUDA scoring, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world <= 1:
        return Ranks()
    if dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Ranks(rank, world, owns_group=True)


class ShardedScore:
    """Any `Score`, with each batch spread over the torchrun ranks (see the module docstring)."""

    def __init__(self, score: Score, ranks: Ranks):
        self.score, self.ranks, self.name = score, ranks, score.name

    def __getattr__(self, attr: str):  # what the wrapped score records (e.g. held_out_ids)
        if attr == "score":
            raise AttributeError(attr)
        return getattr(self.score, attr)

    def __call__(self, arch: Arch) -> float:
        return self.score_many([arch])[0]

    def score_many(self, archs: list[Arch]) -> list[float]:
        world, rank = self.ranks.world_size, self.ranks.rank
        mine = score_batch(self.score, archs[rank::world])
        gathered: list[list[float] | None] = [None] * world
        dist.all_gather_object(gathered, mine)
        out: list[float] = [0.0] * len(archs)
        for r, values in enumerate(gathered):
            out[r::world] = values
        return out

    def close(self) -> None:
        """Leave the process group this process started (every rank calls it at the end)."""
        if self.ranks.owns_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def ranks_of(score: Score) -> Ranks:
    return score.ranks if isinstance(score, ShardedScore) else Ranks()
