"""What every search method is: one template (ModelOpt's searcher), its settings and its saved state.

`Searcher.search()` runs the template: `reset` (a fresh state and the seeded generator), load the
checkpoint (`resume`, when asked), `before_search`, `run_search`, `after_search`. The methods are
subclasses registered in `deployvit.search.METHODS` that override `run_search` (FocusFormer
specialisation, `search.specialise`) or one step of it (evolution and random search override
`children`, `search.evolution`). What they share lives here: the constraints test with bounded
retries, scoring each arch once as one batch, the best feasible candidates per budget, and the
atomic state file that makes every method resumable bit for bit.

The state records the method and the score. A resume with another method or another score is
refused, naming both: a population chosen by one method (or ranked by one score) is not the start
of another's.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar

import numpy as np

from deployvit import io
from deployvit.arch import Arch
from deployvit.errors import DeployvitError
from deployvit.search import METHODS
from deployvit.search.budgets import METRICS, Constraints, metrics_from_file, metrics_to_file
from deployvit.search.predictor import MetricModel
from deployvit.spaces import SearchSpace

if TYPE_CHECKING:
    from deployvit.search.scores import Score


PATIENCE = 4
SCREEN = 16
MAX_EVALUATIONS = 50_000  # 48x AutoFormer's 1,050
SAMPLER_K = 64  # focus: proposals scored per budget
# search_state.json holds 1.3 kB and ~60 JSON values (autoformer) to 2.3 kB and ~90 values (resnas) per candidate
STATE_MAX_BYTES, STATE_MAX_VALUES = 256 << 20, 20_000_000


@dataclass
class SearchConfig:
    """A search's settings, one place for the command line's defaults and the Python API's.

    evolution and random (`search.evolution`): AutoFormer's loop (evolution.py of microsoft/Cream:
    population 50, top-10 parents, mutation probabilities 0.2 / 0.4, 20 generations), with each
    generation's children screened: 20 scored per generation instead of 50, each the surrogate's
    pick of 16 drawn. Chosen on benchmarks/search_seeds.py: on autoformer-tiny under 1.5 GFLOPs the
    default (patience 4) stops after 250-370 evaluations with the best arch any run found, on 5 of
    5 search seeds, the one AutoFormer's unscreened 1,050 evaluations reach (seeds 0-2); `screen=1,
    mutations=25, crossovers=25, patience=None` is AutoFormer's loop as published. Random search
    scores the same number of uniform archs. focus (`search.specialise`) reads `sampler_k` and
    `seed` only."""

    method: str = "evolution"  # a key of deployvit.search.METHODS
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
    sampler_k: int = SAMPLER_K  # focus: distinct archs within the constraints proposed and scored per budget

    def __post_init__(self) -> None:
        METHODS[self.method]  # an unknown method: one line naming the registered ones
        for name in ("population", "parents", "max_tries", "screen", "sampler_k"):
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
        """Archs evolution and random search score at most."""
        return self.population + self.generations * self.children

    @property
    def children(self) -> int:
        """Archs evolution and random search score per generation."""
        return self.mutations + self.crossovers


@dataclass
class Candidate:
    arch: Arch
    score: float
    metrics: dict[str, float]

    def to_dict(self) -> dict:
        """For files: the metrics' units in their keys (`budgets.FILE_KEYS`: latency_us, flops_macs, params)."""
        return {"arch": self.arch.to_dict(), "score": self.score, "metrics": metrics_to_file(self.metrics)}

    @classmethod
    def from_dict(cls, data: dict) -> "Candidate":
        """From `to_dict`, or from a search state written before units were in the keys."""
        return cls(Arch.from_dict(data["arch"]), data["score"], metrics_from_file(data["metrics"]))


@dataclass
class SearchState:
    """Everything needed to continue a search exactly where it stopped."""

    config: dict
    constraints: dict
    score: str
    space_hash: str
    # content hashes of the latency table / supernet, the data path; None in a state from before they were recorded
    sources: dict | None = field(default_factory=dict)
    generation: int = -1  # last completed step (evolution: generation; focus: budget); -1: nothing done yet
    rng: dict = field(default_factory=dict)
    stale: int = 0  # generations since the last better feasible arch (for --patience)
    # archs of the random initial population: the first entries of `evaluated` (0: none, or a state from before the count)
    initial: int = 0
    method: str | None = None  # the searcher (METHODS); None in a state from before it was recorded
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
        fields["method"] = data.get("method")
        return cls(**fields, evaluated={c.arch.key: c for c in evaluated})


def score_batch(score: "Score", archs: list[Arch]) -> list[float]:
    from deployvit.search.scores import score_batch as batch  # torch: only once something is scored

    return batch(score, archs)


_SOURCE_NAMES = {"table": "latency table", "supernet": "supernet checkpoint", "data": "data directory"}
#: what `resume` checks a search_state.json against before anything uses it (`io.check_schema`)
_STATE_SCHEMA = {
    "config": dict, "constraints": dict, "score": str, "space_hash": str, "generation": (int, -1, 10**9),
    "rng": dict, "sources?": io.nullable({str: io.nullable(str)}), "initial?": (int, 0, 10**9), "method?": str,
    "evaluated": [{"arch": dict, "score": float, "metrics": {str: float}}],
}


def _differences(saved, now) -> str:
    """' (population 30, not 50; ...)' for two settings dicts: what to pass to resume as it was."""
    if not (isinstance(saved, dict) and isinstance(now, dict)):
        return ""
    diff = [f"{k} {saved.get(k)}, not {now.get(k)}" for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    return f" ({'; '.join(diff)})" if diff else ""


def _constraints_now(saved: dict, path) -> dict:
    """A state's constraints with today's keys (a state written before units were in them resumes)."""
    try:
        return Constraints.from_dict(saved).to_dict()
    except (DeployvitError, TypeError) as exc:
        raise DeployvitError(f"corrupt search state {path}: constraints: {exc}") from None


def method_of_older_state(saved: SearchState, path) -> str:
    """The method of a search state from before methods were recorded. Such a state came from
    evolution or random search (its config says which) unless it was a `--score sampler` run, which
    recorded score 'supernet', method 'evolution' and no initial population. So a state with a
    random initial population, or scored by anything but the supernet, resumes as its config's
    method; any other cannot be told apart from a sampler run and is refused."""
    if saved.score != "supernet" or saved.initial > 0:
        return str(saved.config.get("method", "evolution"))
    raise DeployvitError(f"cannot resume {path}: it predates recorded search methods and may be a --score sampler run "
                         "(now --method focus), which cannot be continued as another method; start a new search in another --out")


class Searcher:
    """The search template; subclasses are the methods (module docstring). Construct one through
    `make_searcher`, which picks the class of `config.method`."""

    name: ClassVar[str] = ""  # the method's key in METHODS
    ended_how: ClassVar[str] = "searched"  # "no candidate met budget X when <ended_how>"

    def __init__(
        self,
        space: SearchSpace,
        model: MetricModel,
        constraints: Constraints,
        score: "Score",
        config: SearchConfig,
        state_path: str | os.PathLike | None = None,
        on_generation: Callable[[int, "Searcher"], None] | None = None,
        sources: dict | None = None,
        write_state: bool = True,
    ):
        """`sources` identifies what the predictions and scores come from (see `SearchState.sources`):
        a resume with another table or checkpoint would mix two of them in one population.
        `on_generation(step, searcher)` runs after every completed step (a generation; a budget for
        focus). `write_state=False` (torchrun ranks other than 0) reads `state_path` on resume,
        never writes it."""
        if config.method != self.name:
            raise DeployvitError(f"the {self.name} searcher was given the settings of method {config.method!r}")
        self.write_state = write_state
        self.space, self.model, self.constraints, self.score, self.config = space, model, constraints, score, config
        self.state_path, self.on_generation, self.sources = state_path, on_generation, dict(sources or {})
        self.reset()

    @classmethod
    def inputs(cls, checkpoint: str | None, space: SearchSpace) -> dict:
        """What this method needs besides the shared arguments, loaded at the resolve step (before
        anything is written) and passed to the constructor as keywords: none by default; focus
        loads its sampler policy from the supernet `checkpoint`."""
        return {}

    # --- the template -------------------------------------------------------------------------------

    def search(self, resume: bool = False) -> dict[float | None, Candidate | None]:
        """Run the search from scratch, or finish the one saved at `state_path`; the winner per budget."""
        self.reset()
        if resume:
            self.resume()
        return self.run()

    def run(self) -> dict[float | None, Candidate | None]:
        """Run (or finish, after `resume`) the search: before_search, run_search, after_search."""
        self.before_search()
        winners = self.run_search()
        self.after_search()
        return winners

    def reset(self) -> None:
        """A fresh state and the seeded generator: nothing evaluated."""
        self.state = SearchState(asdict(self.config), self.constraints.to_dict(), self.score.name, self.space.hash(),
                                 dict(self.sources), method=self.name)
        self.rng = np.random.default_rng(self.config.seed)

    def before_search(self) -> None:
        """Hook before the search proper (after a resume)."""

    def run_search(self) -> dict[float | None, Candidate | None]:
        """The method: evaluate archs (`evaluate`), `checkpoint(step)` after each step; the winner per budget."""
        raise NotImplementedError

    def after_search(self) -> None:
        """Hook after the search proper."""

    @property
    def steps(self) -> int:
        """Steps of a whole search (a generation; a budget for focus)."""
        return 1

    @property
    def max_evaluations(self) -> int | None:
        """The most archs a whole search scores (the progress bar's length), None if unknown."""
        return None

    def stopped_early(self) -> str | None:
        """Why the search stopped before its last step, for the run's output; None when it did not."""
        return None

    def winners(self) -> dict[float | None, Candidate | None]:
        return {b: next(iter(self.best(b)), None) for b in self.constraints.budgets()}

    # --- state ------------------------------------------------------------------------------------

    def resume(self) -> None:
        """Continue from `state_path`; refuse a state written by another method or score, or for other settings."""
        data = io.read_json(self.state_path, what="search state", max_bytes=STATE_MAX_BYTES, max_values=STATE_MAX_VALUES)
        io.check_schema(data, _STATE_SCHEMA, f"{self.state_path}: corrupt search state")
        try:
            saved = SearchState.from_dict(data)
            self.rng.bit_generator.state = saved.rng
        except DeployvitError as exc:  # an evaluated arch that is not a valid arch
            raise io.in_file(self.state_path, exc) from None
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:  # OverflowError: a mangled rng state
            raise DeployvitError(f"corrupt search state {self.state_path}: {type(exc).__name__} {exc}") from None
        if saved.method is None:
            saved.method = method_of_older_state(saved, self.state_path)
        if (saved.method, saved.score) != (self.state.method, self.state.score):
            raise DeployvitError(f"cannot resume {self.state_path}: it was started with --method {saved.method} --score {saved.score}, "
                                 f"not --method {self.state.method} --score {self.state.score}")
        for name, value in (("patience", self.state.config["patience"]), ("screen", 1), ("sampler_k", self.state.config["sampler_k"])):
            # settings a state from before them did not record: --patience (none: as now), screening (none: AutoFormer's loop), --sampler-k
            saved.config.setdefault(name, value)
        saved.constraints = _constraints_now(saved.constraints, self.state_path)
        for name in ("config", "constraints", "space_hash"):
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

    def _step_done(self, step: int) -> None:
        """Checkpoint a completed step and report it."""
        self.checkpoint(step)
        if self.on_generation:
            self.on_generation(step, self)

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

    # --- evaluation -------------------------------------------------------------------------------

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


def make_searcher(space: SearchSpace, model: MetricModel, constraints: Constraints, score: "Score", config: SearchConfig,
                  *args, **kwargs) -> Searcher:
    """The searcher of `config.method` (`deployvit.search.METHODS`); further arguments go to its
    constructor (`Searcher.__init__`, and what the method's `inputs` loaded)."""
    cls = METHODS[config.method].load()
    return cls(space, model, constraints, score, config, *args, **kwargs)
