"""Which subnets a supernet training step trains (`--sampler`; the registry is
`sampler_base.SAMPLERS`).

Every sampler draws from `numpy.random.default_rng([seed, step])`: a pure function of the shared seed
and the global step, so all ranks train the same subnets without communicating, and a resumed run
draws exactly what the uninterrupted run would have drawn.

- `uniform` (AutoFormer): one uniformly random subnet per step.
- `sandwich` (BigNAS-style): largest + smallest + k random subnets per step, each on the whole batch;
  the losses are averaged, so the learning rate means the same as for `uniform`.
- `multi-arch` (ViT-ResNAS, docs/REFERENCES.md section 7): the batch is split into G groups of >= 16
  images, one subnet per group, the G losses summed (weighted by group size) into one backward;
  width choices (embed dims, heads, MLP ratios) are unlocked gradually, largest first, over the
  first `unlock_epochs` epochs.
- `focus` (FocusFormer idea): see `deployvit.train.focus`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from deployvit.errors import DeployvitError
from deployvit.spaces import Axis, SearchSpace
from deployvit.train.sampler_base import SAMPLERS, ArchSampler, StepPlan

MIN_GROUP = 16  # ViT-ResNAS: each subnet needs enough images for a meaningful gradient


@dataclass(frozen=True)
class SamplerOptions:
    """The samplers' own settings and their defaults (the CLI's flags read them from here)."""

    sandwich_random: int = 2  # sandwich: random subnets per step besides the largest and smallest
    groups: int = 4  # multi-arch: subnets per batch
    unlock_epochs: int = 5  # multi-arch: epochs until every width is unlocked


class UniformSampler(ArchSampler):
    name = "uniform"

    def plan(self, step: int, epoch: int, batch_size: int) -> StepPlan:
        return StepPlan((self.space.sample(self.rng(step)),))


class SandwichSampler(ArchSampler):
    name = "sandwich"

    def __init__(self, space: SearchSpace, seed: int, num_random: int = SamplerOptions.sandwich_random):
        super().__init__(space, seed)
        if num_random < 0:
            raise DeployvitError(f"--sandwich-random must be >= 0, got {num_random}")
        self.num_random = num_random

    @classmethod
    def from_options(cls, space: SearchSpace, seed: int, total_steps: int, options: dict) -> "SandwichSampler":
        return cls(space, seed, options.get("sandwich_random", SamplerOptions.sandwich_random))

    def plan(self, step: int, epoch: int, batch_size: int) -> StepPlan:
        rng = self.rng(step)
        randoms = tuple(self.space.sample(rng) for _ in range(self.num_random))
        return StepPlan((self.space.max_arch(), self.space.min_arch()) + randoms)


def unlocked_space(space: SearchSpace, fraction: float) -> SearchSpace:
    """The space with only the largest ceil(fraction * K) of each width choice (every axis but depth:
    embed dim, heads, MLP ratio) per stage; depths untouched. fraction 1 is the whole space."""

    def top(stage: int, axis: Axis, values: tuple) -> tuple:
        k = len(values) if axis.name == "depth" else max(1, math.ceil(fraction * len(values)))
        return tuple(sorted(values)[-k:])

    return space.with_choices(top)


class MultiArchSampler(ArchSampler):
    name = "multi-arch"

    def __init__(self, space: SearchSpace, seed: int, groups: int = SamplerOptions.groups,
                 unlock_epochs: int = SamplerOptions.unlock_epochs):
        super().__init__(space, seed)
        if groups < 1 or unlock_epochs < 0:
            raise DeployvitError(f"--groups must be >= 1 and --unlock-epochs >= 0 (got {groups}, {unlock_epochs})")
        self.groups, self.unlock_epochs = groups, unlock_epochs

    @classmethod
    def from_options(cls, space: SearchSpace, seed: int, total_steps: int, options: dict) -> "MultiArchSampler":
        return cls(space, seed, options.get("groups", SamplerOptions.groups), options.get("unlock_epochs", SamplerOptions.unlock_epochs))

    def space_at(self, epoch: int) -> SearchSpace:
        if epoch >= self.unlock_epochs:
            return self.space
        return unlocked_space(self.space, (epoch + 1) / (self.unlock_epochs + 1))

    def plan(self, step: int, epoch: int, batch_size: int) -> StepPlan:
        rng, space = self.rng(step), self.space_at(epoch)
        groups = max(1, min(self.groups, batch_size // MIN_GROUP))
        return StepPlan(tuple(space.sample(rng) for _ in range(groups)), split=True)


def make_sampler(name: str, space: SearchSpace, seed: int, total_steps: int = 1, **options) -> ArchSampler:
    """The sampler `name` (`SAMPLERS`) with its options (unused options of other samplers are
    ignored); `total_steps` of the run sets the focus sampler's epsilon decay."""
    return SAMPLERS[name].load().from_options(space, seed, total_steps, options)
