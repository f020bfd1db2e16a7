"""Evolutionary search (AutoFormer's loop, valid across depths) and a random-search baseline, both
under constraints, both resumable bit for bit from an atomic state file.

Several latency budgets share one population: each budget keeps its own top-k parents and its own
share of the children (which must satisfy that budget), and each budget's winner is the best
evaluated arch that satisfies it. Candidates that violate a constraint are rejected before
scoring (bounded retries), and an arch is scored at most once (canonical `Arch.key`). Once the
parents converge, crossovers only reproduce scored archs; such a crossover is replaced by a mutation,
so a generation still scores its full share (AutoFormer's loop scored ~25% fewer archs by the end
of its default search here), and evolution and random search spend the same number of evaluations.
A search stops early once no budget's best feasible score has improved for `patience` generations
(the count is part of the saved state, so a resumed search stops where the uninterrupted one does).
Children are screened (`screen` > 1): each slot draws several feasible candidates and scores only
the one a surrogate fit on every scored arch ranks highest (`search.surrogate`); the surrogate is
refit from the saved record, so screening is as resumable and as rank-independent as the rest.

The two methods differ only in a generation's children (`children`, ModelOpt's `sample()`); the
template, the state and the constraints test are `search.searcher`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from deployvit.arch import Arch
from deployvit.errors import DeployvitError
from deployvit.search.searcher import Candidate, SearchConfig, SearchState, Searcher, make_searcher  # noqa: F401  (SearchState: callers' name)

if TYPE_CHECKING:
    from deployvit.search.surrogate import Surrogate


EvolutionConfig = SearchConfig  # the settings' name before searchers were a seam (benchmarks, tests, the Python API)
Evolution = make_searcher  # likewise: Evolution(space, model, constraints, score, config) is config.method's searcher


def _favourite(options: list[tuple[Arch, dict]], surrogate: "Surrogate | None") -> tuple[Arch, dict]:
    """The candidate the surrogate ranks highest (the first drawn when there is no surrogate)."""
    if surrogate is None or len(options) == 1:
        return options[0]
    return options[int(np.argmax(surrogate.predict([arch for arch, _ in options])))]


class GenerationalSearch(Searcher):
    """A random initial population, then up to `generations` generations of `children()`, each
    scored as one batch, stopping once no budget's best feasible score has improved for `patience`
    generations. Subclasses say what a generation's children are."""

    def children(self) -> dict[str, tuple[Arch, dict]]:
        """One generation's new feasible archs, by key, with their metrics."""
        raise NotImplementedError

    @property
    def steps(self) -> int:
        return self.config.generations + 1

    @property
    def max_evaluations(self) -> int:
        return self.config.evaluations

    def stopped_early(self) -> str | None:
        if self.converged and self.state.generation < self.config.generations:
            return (f"stopped after generation {self.state.generation}: no better feasible arch for {self.config.patience} "
                    "generations (--patience)")
        return None

    @property
    def converged(self) -> bool:
        """No better feasible arch for `patience` generations: further generations are not run."""
        return self.config.patience is not None and self.state.stale >= self.config.patience

    def _bests(self) -> list[float | None]:
        return [c[0].score if c else None for c in (self.best(b) for b in self.constraints.budgets())]

    def _improved(self, before: list[float | None]) -> bool:
        return any(a is not None and (b is None or a > b) for a, b in zip(self._bests(), before))

    def _initial_population(self) -> dict[str, tuple[Arch, dict]]:
        pending: dict[str, tuple[Arch, dict]] = {}
        for _ in range(self.config.population):
            drawn = self._draw(lambda: self.space.sample(self.rng), None, pending)
            if drawn is None:
                break
            pending[drawn[0].key] = drawn
        if not pending:
            drawn = self._draw(self.space.min_arch, None, pending)
            if drawn is not None:
                pending[drawn[0].key] = drawn
        return pending

    def run_search(self) -> dict[float | None, Candidate | None]:
        """Run (or finish) the generations; returns the winner of each budget."""
        if self.state.generation < 0:
            pending = self._initial_population()
            if not pending:
                raise DeployvitError(
                    f"no arch of space {self.space.name!r} satisfies the constraints after {self.config.max_tries} tries"
                )
            self.evaluate(pending)
            self.state.initial = len(self.state.evaluated)
            self._step_done(0)
        for generation in range(self.state.generation + 1, self.config.generations + 1):
            if self.converged:
                break
            before = self._bests()
            self.evaluate(self.children())
            self.state.stale = 0 if self._improved(before) else self.state.stale + 1
            self._step_done(generation)
        return self.winners()


class EvolutionSearch(GenerationalSearch):
    """AutoFormer's evolution: per budget the top `parents`, whose mutations and (depth-valid)
    crossovers are the children, each slot screened by the surrogate (module docstring)."""

    name = "evolution"

    def children(self) -> dict[str, tuple[Arch, dict]]:
        """One generation's new archs: per slot (a mutation or crossover for one budget) `screen`
        feasible candidates, of which the surrogate's favourite is kept (`search.surrogate`)."""
        budgets = self.constraints.budgets()
        parents = {b: [c.arch for c in self.best(b, self.config.parents)] for b in budgets}
        surrogate = self._surrogate()
        pending: dict[str, tuple[Arch, dict]] = {}
        plan = [("mutate", i) for i in range(self.config.mutations)] + [("cross", i) for i in range(self.config.crossovers)]
        for kind, i in plan:
            budget = budgets[i % len(budgets)]
            pool = parents[budget] or next(p for p in parents.values() if p)
            options: dict[str, tuple[Arch, dict]] = {}
            for _ in range(self.config.screen if surrogate is not None else 1):
                drawn = self._child(kind, pool, budget, pending, options)
                if drawn is None:
                    break
                options[drawn[0].key] = drawn
            if options:
                arch, metrics = _favourite(list(options.values()), surrogate)
                pending[arch.key] = (arch, metrics)
        return pending

    def _child(self, kind: str, pool: list[Arch], budget: float | None, *taken: dict) -> tuple[Arch, dict] | None:
        drawn = None
        if kind == "cross":
            drawn = self._draw(lambda: self.space.crossover(self._pick(pool), self._pick(pool), self.rng), budget, *taken)
        if drawn is None:  # a converged population's crossovers only repeat scored archs: mutate instead
            drawn = self._draw(
                lambda: self.space.mutate(self._pick(pool), self.rng, self.config.layer_prob, self.config.stage_prob),
                budget, *taken,
            )
        return drawn

    def _surrogate(self) -> "Surrogate | None":
        """The score model fit on every scored arch, or None when screening is off or nothing can be
        learnt yet."""
        if self.config.screen <= 1:
            return None
        from deployvit.search.surrogate import Surrogate

        surrogate = Surrogate(self.model)
        done = list(self.state.evaluated.values())
        surrogate.fit([c.arch for c in done], [c.score for c in done])
        return surrogate if surrogate.fitted else None

    def _pick(self, pool: list[Arch]) -> Arch:
        return pool[int(self.rng.integers(len(pool)))]


class RandomSearch(GenerationalSearch):
    """Random search: each generation's children are `mutations + crossovers` uniform feasible
    archs, so it scores as many archs as evolution (the baseline evolution has to beat)."""

    name = "random"

    def children(self) -> dict[str, tuple[Arch, dict]]:
        pending: dict[str, tuple[Arch, dict]] = {}
        for _ in range(self.config.children):
            drawn = self._draw(lambda: self.space.sample(self.rng), None, pending)
            if drawn is not None:
                pending[drawn[0].key] = drawn
        return pending
