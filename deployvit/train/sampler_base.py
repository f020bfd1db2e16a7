"""What every subnet sampler is: the plan of one step, the base class and the registry (`SAMPLERS`,
read by `train-supernet --sampler`'s choices and help and by `samplers.make_sampler`), in a module of
their own so that the samplers (`deployvit.train.samplers`) and the FocusFormer sampler
(`deployvit.train.focus`) can both build on it without importing each other. A new sampler: an
`ArchSampler` subclass in its module (`from_options` if it has settings) plus one record in `SAMPLERS`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from deployvit.arch import Arch
from deployvit.errors import DeployvitError
from deployvit.registry import Entry, Registry
from deployvit.spaces import SearchSpace


@dataclass(frozen=True)
class StepPlan:
    """The subnets of one step. split: each arch gets its own slice of the batch (multi-arch);
    otherwise each arch sees the whole batch and the gradients accumulate."""

    archs: tuple[Arch, ...]
    split: bool = False


Score = Callable[[Arch], float]  # held-out minibatch accuracy of an arch under the current weights


class ArchSampler:
    """Base: a seeded, stateless sampler; stateful ones (focus) override the state methods."""

    name = ""

    def __init__(self, space: SearchSpace, seed: int):
        self.space, self.seed = space, seed

    @classmethod
    def from_options(cls, space: SearchSpace, seed: int, total_steps: int, options: dict[str, Any]) -> "ArchSampler":
        """The sampler for a run of `total_steps` steps, with the settings it reads from `options`
        (every sampler's flags: each ignores the others')."""
        return cls(space, seed)

    def rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, step, 0x5A])

    def plan(self, step: int, epoch: int, batch_size: int) -> StepPlan:
        raise NotImplementedError

    def after_step(self, step: int, score: Score, sync: Callable) -> dict[str, float]:
        """Hook after the optimizer step (the focus sampler learns here); returns log values."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise DeployvitError(f"checkpoint was trained with sampler {state.get('name')!r}, not {self.name!r}")


SAMPLERS: Registry[Entry] = Registry("sampler", [
    Entry("uniform", "deployvit.train.samplers:UniformSampler", "one uniformly random subnet per step (AutoFormer)"),
    Entry("sandwich", "deployvit.train.samplers:SandwichSampler",
          "the largest, the smallest and --sandwich-random random subnets per step (BigNAS)"),
    Entry("multi-arch", "deployvit.train.samplers:MultiArchSampler",
          "--groups subnets per batch, widths unlocked largest first over --unlock-epochs (ViT-ResNAS)"),
    Entry("focus", "deployvit.train.focus:FocusArchSampler",
          "a budget-conditioned sampler learnt alongside the supernet (FocusFormer; search --method focus draws from it)"),
])
