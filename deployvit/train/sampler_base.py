"""What every subnet sampler is (`deployvit.train.samplers` holds the samplers and their factory):
the plan of one step and the base class, in a module of their own so that the samplers' factory
and the FocusFormer sampler can both build on it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from deployvit.arch import Arch
from deployvit.errors import DeployvitError
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
