"""`deployvit.search(...)`: the search command as a function (the Python API; README "Python API").

It builds the same `SearchRequest` and `SearchConfig` as `deployvit search`, so every default is
the command's (the dataclasses hold them once), plans and runs it (`search.plan`), and returns a
`SearchOutcome`: the winner, the winner of every budget, the Pareto front and the output paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from deployvit.arch import Arch
from deployvit.errors import DeployvitError
from deployvit.search.budgets import Amount, Constraints
from deployvit.search.run import SearchRequest, SearchResult
from deployvit.search.searcher import Candidate, SearchConfig

_REQUEST = {f.name: f.default for f in fields(SearchRequest)}


@dataclass
class SearchOutcome:
    """What a search found and wrote.

    `winner`: the arch of `best.arch.json` (the loosest budget's winner); `winners`: the winner of
    every budget by its label ("5ms"), each a `Candidate` (arch, score, metrics in the library's
    units: latency us, FLOPs MACs, params); `front`: the Pareto front of the winner's space, cheapest
    first; `paths`: best_arch, pareto_json, pareto_csv, pareto_png, log; `result`: the rest."""

    winner: Arch | None
    winners: dict[str, Candidate]
    front: list[Candidate]
    run_dir: Path
    paths: dict[str, Path] = field(default_factory=dict)
    result: SearchResult | None = None

    def __repr__(self) -> str:
        best = self.winner.summary() if self.winner else "none"
        return f"SearchOutcome(run_dir={str(self.run_dir)!r}, winners={list(self.winners)}, winner={best!r})"


def search(latency: Amount | list[Amount] | None = None, *, flops: Amount | None = None, params: Amount | None = None,
           min_latency: Amount | None = None, min_flops: Amount | None = None, min_params: Amount | None = None,
           space: str = _REQUEST["space"], device: str | None = None, runtime: str | None = None, precision: str | None = None,
           batch_size: int | None = None, score: str | None = None, supernet: str | None = None, data: str | None = None,
           table: str | None = None, out: str | None = None, resume: bool = False, measure_top: int | None = _REQUEST["measure_top"],
           score_device: str | None = None, progress: bool = False, echo: Callable[[str], None] | None = print,
           **config) -> SearchOutcome:
    """`deployvit search` as a function, with the same defaults.

    Budgets are strings with units, as on the command line (`latency="5ms"`, `"2ms,3ms,5ms"` or a
    list; `flops="1.5G"`, `params="6M"`), or numbers in the library's units: latency in
    microseconds, FLOPs in MACs, params in parameters. `config`: the fields of `SearchConfig`
    (method, population, generations, parents, mutations, crossovers, layer_prob, stage_prob, seed,
    patience, screen, sampler_k), each defaulting to the command's. `echo`: where the command's
    lines go (None: nowhere). Bad input raises `DeployvitError` before anything is written."""
    from deployvit.search.plan import plan_search, run_plan

    known = {f.name for f in fields(SearchConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise TypeError(f"search() got unexpected argument(s) {', '.join(unknown)} (search settings: {', '.join(sorted(known))})")
    constraints = Constraints([] if latency is None else latency, flops, params, min_latency, min_flops, min_params)
    request = SearchRequest(space=str(space), constraints=constraints, table=table, device=device, runtime=runtime, precision=precision,
                            batch_size=batch_size, score=score, supernet=supernet, data=data, config=SearchConfig(**config), out=out,
                            resume=resume, measure_top=measure_top, score_device=score_device)
    say = echo or (lambda *_: None)
    result = run_plan(plan_search(request, echo=say), echo=say, progress=progress)
    return outcome(result)


def outcome(result: SearchResult) -> SearchOutcome:
    """A `SearchOutcome` from a finished run's result."""
    labels = list(result.winners)
    winner = result.winners[labels[-1]] if labels else None
    part = next((p for p in result.parts if winner is not None and winner.arch.space == p.run_dir.name), None) if result.parts else result
    paths = {"best_arch": result.run_dir / "best.arch.json"}
    if part is not None:
        paths.update(pareto_json=part.run_dir / "pareto.json", pareto_csv=part.run_dir / "pareto.csv",
                     pareto_png=part.run_dir / "pareto.png", log=part.run_dir / "log.jsonl")
    if not paths["best_arch"].is_file():
        if winner is not None:
            raise DeployvitError(f"{paths['best_arch']} was not written")
        paths.pop("best_arch")
    return SearchOutcome(winner.arch if winner else None, dict(result.winners), list(part.front) if part is not None else [],
                         result.run_dir, paths, result)
