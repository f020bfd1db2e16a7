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
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from deployvit import io
from deployvit.arch import Arch
from deployvit.errors import DeployvitError
from deployvit.search.budgets import METRICS, Constraints
from deployvit.search.predictor import MetricModel
from deployvit.spaces import SearchSpace

if TYPE_CHECKING:
    from deployvit.search.scores import Score
    from deployvit.search.surrogate import Surrogate


PATIENCE = 4
METHODS = ("evolution", "random")  # the searchers: the click choice and the config's check
SCREEN = 16
MAX_EVALUATIONS = 50_000  # 48x AutoFormer's 1,050
# search_state.json holds 1.3 kB and ~60 JSON values (autoformer) to 2.3 kB and ~90 values (resnas) per candidate
STATE_MAX_BYTES, STATE_MAX_VALUES = 256 << 20, 20_000_000


@dataclass
class EvolutionConfig:
    """AutoFormer's loop (evolution.py of microsoft/Cream: population 50, top-10 parents, mutation
    probabilities 0.2 / 0.4, 20 generations), with each generation's children screened: 20 scored
    per generation instead of 50, each the surrogate's pick of 16 drawn. Chosen on
    benchmarks/search_seeds.py: on autoformer-tiny under 1.5 GFLOPs the default (patience 4) stops
    after 250-370 evaluations with the best arch any run found, on 5 of 5 search seeds, the one
    AutoFormer's unscreened 1,050 evaluations reach (seeds 0-2); `screen=1, mutations=25,
    crossovers=25, patience=None` is AutoFormer's loop as published."""

    method: str = "evolution"  # or "random": same number of evaluations, uniform samples
    population: int = 50
    generations: int = 20
    parents: int = 10
    mutations: int = 10
    crossovers: int = 10
    layer_prob: float = 0.2
    stage_prob: float = 0.4
    max_tries: int = 200  # rejected draws allowed per wanted candidate
    # candidate children drawn per scored child, the surrogate's favourite scored (search.surrogate);
    # 1: every drawn child scored
    screen: int = SCREEN
    seed: int = 0
    # stop after this many generations without a better feasible arch for any budget; None: never
    patience: int | None = PATIENCE

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise DeployvitError(f"unknown search method {self.method!r} ({', '.join(METHODS)})")
        for name in ("population", "parents", "max_tries", "screen"):
            if getattr(self, name) < 1:
                raise DeployvitError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("generations", "mutations", "crossovers"):
            if getattr(self, name) < 0:
                raise DeployvitError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.patience is not None and self.patience < 1:
            raise DeployvitError(f"patience must be at least 1 generation, got {self.patience}")
        for name in ("layer_prob", "stage_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise DeployvitError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.evaluations > MAX_EVALUATIONS:  # every candidate stays in memory and in search_state.json
            raise DeployvitError(
                f"--population + --generations x (--mutations + --crossovers) is {self.evaluations:,} evaluations; "
                f"expected at most {MAX_EVALUATIONS:,}"
            )

    @property
    def evaluations(self) -> int:
        return self.population + self.generations * self.children

    @property
    def children(self) -> int:
        """Archs scored per generation."""
        return self.mutations + self.crossovers


@dataclass
class Candidate:
    arch: Arch
    score: float
    metrics: dict[str, float]

    def to_dict(self) -> dict:
        return {"arch": self.arch.to_dict(), "score": self.score, "metrics": self.metrics}

    @classmethod
    def from_dict(cls, data: dict) -> "Candidate":
        return cls(Arch.from_dict(data["arch"]), data["score"], data["metrics"])


@dataclass
class SearchState:
    """Everything needed to continue a search exactly where it stopped."""

    config: dict
    constraints: dict
    score: str
    space_hash: str
    # content hashes of the latency table / supernet, the data path; None in a state from before they were recorded
    sources: dict | None = field(default_factory=dict)
    generation: int = -1  # last completed generation; -1: initial population not done
    rng: dict = field(default_factory=dict)
    stale: int = 0  # generations since the last better feasible arch (for --patience)
    # archs of the random initial population: the first entries of `evaluated` (0: not recorded, a state from before)
    initial: int = 0
    evaluated: dict[str, Candidate] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "format": "deployvit.search_state/1",
            **{k: v for k, v in asdict(self).items() if k != "evaluated"},
            "evaluated": [c.to_dict() for c in self.evaluated.values()],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "SearchState":
        evaluated = [Candidate.from_dict(c) for c in data["evaluated"]]
        fields = {k: data[k] for k in ("config", "constraints", "score", "space_hash", "generation", "rng")}
        fields["sources"] = data.get("sources")
        fields["stale"] = data.get("stale", 0)
        fields["initial"] = data.get("initial", 0)
        return cls(**fields, evaluated={c.arch.key: c for c in evaluated})


def score_batch(score: "Score", archs: list[Arch]) -> list[float]:
    from deployvit.search.scores import score_batch as batch  # torch: only once something is scored

    return batch(score, archs)


_SOURCE_NAMES = {"table": "latency table", "supernet": "supernet checkpoint", "data": "data directory"}
#: what `resume` checks a search_state.json against before anything uses it (`io.check_schema`)
_STATE_SCHEMA = {
    "config": dict, "constraints": dict, "score": str, "space_hash": str, "generation": (int, -1, 10**9),
    "rng": dict, "sources?": io.nullable({str: io.nullable(str)}), "initial?": (int, 0, 10**9),
    "evaluated": [{"arch": dict, "score": float, "metrics": {str: float}}],
}


def _differences(saved, now) -> str:
    """' (population 30, not 50; ...)' for two settings dicts: what to pass to resume as it was."""
    if not (isinstance(saved, dict) and isinstance(now, dict)):
        return ""
    diff = [f"{k} {saved.get(k)}, not {now.get(k)}" for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    return f" ({'; '.join(diff)})" if diff else ""


def _favourite(options: list[tuple[Arch, dict]], surrogate: "Surrogate | None") -> tuple[Arch, dict]:
    """The candidate the surrogate ranks highest (the first drawn when there is no surrogate)."""
    if surrogate is None or len(options) == 1:
        return options[0]
    return options[int(np.argmax(surrogate.predict([arch for arch, _ in options])))]


class Evolution:
    def __init__(
        self,
        space: SearchSpace,
        model: MetricModel,
        constraints: Constraints,
        score: "Score",
        config: EvolutionConfig,
        state_path: str | os.PathLike | None = None,
        on_generation: Callable[[int, "Evolution"], None] | None = None,
        sources: dict | None = None,
        write_state: bool = True,
    ):
        """`sources` identifies what the predictions and scores come from (see `SearchState.sources`):
        a resume with another table or checkpoint would mix two of them in one population.
        `write_state=False` (torchrun ranks other than 0) reads `state_path` on resume, never writes it."""
        self.write_state = write_state
        self.space, self.model, self.constraints, self.score, self.config = space, model, constraints, score, config
        self.state_path, self.on_generation = state_path, on_generation
        self.state = SearchState(asdict(config), constraints.to_dict(), score.name, space.hash(), dict(sources or {}))
        self.rng = np.random.default_rng(config.seed)

    # --- state ------------------------------------------------------------------------------------

    def resume(self) -> None:
        """Continue from `state_path`; refuse a state written for other settings."""
        data = io.read_json(self.state_path, what="search state", max_bytes=STATE_MAX_BYTES, max_values=STATE_MAX_VALUES)
        io.check_schema(data, _STATE_SCHEMA, f"{self.state_path}: corrupt search state")
        try:
            saved = SearchState.from_dict(data)
            self.rng.bit_generator.state = saved.rng
        except DeployvitError as exc:  # an evaluated arch that is not a valid arch
            raise io.in_file(self.state_path, exc) from None
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:  # OverflowError: a mangled rng state
            raise DeployvitError(f"corrupt search state {self.state_path}: {type(exc).__name__} {exc}") from None
        saved.config.setdefault("patience", self.state.config["patience"])  # a state from before --patience
        saved.config.setdefault("screen", 1)  # a state from before screening ran AutoFormer's loop
        for name in ("config", "constraints", "score", "space_hash"):
            if getattr(saved, name) != getattr(self.state, name):
                raise DeployvitError(f"cannot resume {self.state_path}: it was started with another {name.replace('_', ' ')}"
                                     + _differences(getattr(saved, name), getattr(self.state, name)))
        if saved.sources is not None:  # an older state recorded none: nothing to compare
            for source in sorted(set(saved.sources) | set(self.state.sources)):
                if saved.sources.get(source) != self.state.sources.get(source):
                    raise DeployvitError(f"cannot resume {self.state_path}: it was started with another {_SOURCE_NAMES.get(source, source)}")
        saved.sources = self.state.sources
        self.state = saved

    def checkpoint(self, generation: int) -> None:
        self.state.generation = generation
        self.state.rng = self.rng.bit_generator.state
        if self.state_path is not None and self.write_state:
            io.write_json(self.state_path, self.state.to_dict())

    # --- constraints ------------------------------------------------------------------------------

    def metrics(self, arch: Arch) -> dict[str, float]:
        return self.model.metrics_of(arch)

    def feasible(self, metrics: dict[str, float], latency_budget: float | None = None) -> bool:
        for metric in METRICS:
            if metric not in metrics:
                continue
            lo = self.constraints.lower(metric)
            hi = latency_budget if metric == "latency" and latency_budget is not None else self.constraints.upper(metric)
            if (lo is not None and metrics[metric] < lo) or (hi is not None and metrics[metric] > hi):
                return False
        return True

    def _draw(self, make: Callable[[], Arch], budget: float | None, *taken: dict) -> tuple[Arch, dict] | None:
        """A new feasible arch from `make` (not scored, not in any of `taken`), or None after
        max_tries rejections."""
        for _ in range(self.config.max_tries):
            arch = make()
            if arch.key in self.state.evaluated or any(arch.key in t for t in taken):
                continue
            metrics = self.metrics(arch)
            if self.feasible(metrics, budget):
                return arch, metrics
        return None

    # --- the loop ---------------------------------------------------------------------------------

    def best(self, budget: float | None, k: int = 1) -> list[Candidate]:
        """Top-k evaluated candidates within `budget` (ties broken by key, for determinism)."""
        fits = [c for c in self.state.evaluated.values() if self.feasible(c.metrics, budget)]
        return sorted(fits, key=lambda c: (-c.score, c.arch.key))[:k]

    def evaluate(self, pending: dict[str, tuple[Arch, dict]]) -> None:
        """Score new candidates (each arch once, as one batch the score may spread over threads or
        torchrun ranks) and remember them."""
        new = [(key, arch, metrics) for key, (arch, metrics) in pending.items() if key not in self.state.evaluated]
        for (key, arch, metrics), value in zip(new, score_batch(self.score, [arch for _, arch, _ in new])):
            self.state.evaluated[key] = Candidate(arch, value, metrics)

    def score_of(self, arch: Arch) -> float:
        """The score of any arch, from the run's record when it was evaluated (never scored twice)."""
        done = self.state.evaluated.get(arch.key)
        return done.score if done is not None else score_batch(self.score, [arch])[0]

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

    def _children(self) -> dict[str, tuple[Arch, dict]]:
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

    def _random_batch(self) -> dict[str, tuple[Arch, dict]]:
        pending: dict[str, tuple[Arch, dict]] = {}
        for _ in range(self.config.children):
            drawn = self._draw(lambda: self.space.sample(self.rng), None, pending)
            if drawn is not None:
                pending[drawn[0].key] = drawn
        return pending

    @property
    def converged(self) -> bool:
        """No better feasible arch for `patience` generations: further generations are not run."""
        return self.config.patience is not None and self.state.stale >= self.config.patience

    def run(self) -> dict[float | None, Candidate | None]:
        """Run (or finish) the search; returns the winner of each budget."""
        if self.state.generation < 0:
            pending = self._initial_population()
            if not pending:
                raise DeployvitError(
                    f"no arch of space {self.space.name!r} satisfies the constraints after {self.config.max_tries} tries"
                )
            self.evaluate(pending)
            self.state.initial = len(self.state.evaluated)
            self.checkpoint(0)
            if self.on_generation:
                self.on_generation(0, self)
        for generation in range(self.state.generation + 1, self.config.generations + 1):
            if self.converged:
                break
            before = self._bests()
            self.evaluate(self._children() if self.config.method == "evolution" else self._random_batch())
            self.state.stale = 0 if self._improved(before) else self.state.stale + 1
            self.checkpoint(generation)
            if self.on_generation:
                self.on_generation(generation, self)
        return {b: next(iter(self.best(b)), None) for b in self.constraints.budgets()}
