"""FocusFormer specialisation as a search method (`--method focus`): per budget, `sampler_k` distinct
archs that meet every constraint, drawn from the budget-conditioned sampler trained with the supernet
(`train-supernet --sampler focus`, `deployvit.train.focus`), scored (by default on the supernet's
held-out images), the best wins. No evolution: the trained sampler is the search.

The sampler is conditioned on a normalised FLOPs budget; a latency budget is mapped to the same
position in the space's latency range (the two are monotone-related within a space; feasibility is
still checked on latency). Each budget is one step: checkpointed, logged, and on `--resume` not drawn
again, so a resumed run ends with the archs the uninterrupted one scored.
"""

from __future__ import annotations

from typing import Callable, Protocol

from deployvit.arch import Arch
from deployvit.errors import DeployvitError
from deployvit.search.searcher import Candidate, Searcher
from deployvit.spaces import SearchSpace


class Proposer(Protocol):
    """What the method draws from (a trained `deployvit.train.focus.FocusPolicy`)."""

    def propose(self, b: float, k: int, seed: int = 0, accept: Callable[[Arch], bool] | None = None) -> list[Arch]: ...


class FocusSearch(Searcher):
    """The module docstring's method; `policy` is the trained sampler (`inputs` loads it)."""

    name = "focus"
    ended_how = "drawn from the sampler"

    def __init__(self, *args, policy: Proposer, **kwargs):
        super().__init__(*args, **kwargs)
        self.policy = policy

    @classmethod
    def inputs(cls, checkpoint: str | None, space: SearchSpace) -> dict:
        """The sampler trained with the supernet `checkpoint`, checked against `space`."""
        from deployvit.train.focus import load_sampler

        if checkpoint is None:
            raise DeployvitError("--method focus needs --supernet CHECKPOINT (a supernet trained with --sampler focus)")
        policy = load_sampler(checkpoint)
        if policy.space.hash() != space.hash():
            raise DeployvitError(f"the sampler in {checkpoint} was trained on another space than {space.name!r}")
        return {"policy": policy}

    @property
    def steps(self) -> int:
        return len(self.constraints.budgets())

    @property
    def max_evaluations(self) -> int:
        return self.config.sampler_k * len(self.constraints.budgets())

    def position(self, budget: float | None) -> float:
        """The sampler's normalised budget for a latency budget (or, without one, the FLOPs bound)."""
        metric, target = ("latency", budget) if budget is not None else ("flops", self.constraints.upper("flops"))
        lo, hi = self.model.range(metric)
        return 1.0 if target is None else min(max((target - lo) / max(hi - lo, 1e-12), 0.0), 1.0)

    def run_search(self) -> dict[float | None, Candidate | None]:
        budgets = self.constraints.budgets()
        for i in range(self.state.generation + 1, len(budgets)):
            budget = budgets[i]
            metrics: dict[str, dict] = {}

            def fresh(arch: Arch, budget=budget) -> bool:  # a new arch within every constraint; its metrics kept for scoring
                metrics[arch.key] = self.metrics(arch)
                return arch.key not in self.state.evaluated and self.feasible(metrics[arch.key], budget)

            proposals = self.policy.propose(self.position(budget), self.config.sampler_k, self.config.seed + i, accept=fresh)
            self.evaluate({a.key: (a, metrics[a.key]) for a in proposals})
            self._step_done(i)
        return self.winners()
