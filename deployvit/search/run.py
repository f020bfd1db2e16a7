"""One search run, end to end, in two steps (DESIGN.md section 3): `resolve_search` turns the user's
`SearchRequest` (names and paths) into a `SearchJob` (objects: space, metric model and table, score,
the search method's inputs, run directory), checking everything; `run_search` runs the method
(`deployvit.search.METHODS`) and writes the run directory. `deployvit search` parses, resolves, runs
and prints.

Every check happens in the resolve step, before the run directory is created, so bad input leaves
nothing behind; `best.arch.json` is written last, so a directory without it is visibly unfinished
(and `--resume` continues it from `search_state.json`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from deployvit import io
from deployvit.errors import DeployvitError
from deployvit.search import METHODS, SCORE_ALIASES, SCORES, ScoreInputs
from deployvit.search.budgets import METRICS, Constraints, budget_label
from deployvit.units import format_amount
from deployvit.search.pareto import pareto_front, plot_pareto, write_pareto
from deployvit.search.predictor import MetricModel
from deployvit.search.scores import Score
from deployvit.search.searcher import Candidate, SearchConfig, Searcher, make_searcher
from deployvit.spaces import SearchSpace, get_space, reference_archs

if TYPE_CHECKING:
    from deployvit.latency.table import LatencyTable


@dataclass
class SearchRequest:
    space: str = "autoformer-tiny"
    constraints: Constraints = field(default_factory=Constraints)
    table: str | None = None          # explicit latency table path
    device: str | None = None         # or: shipped table for device/runtime/precision/batch
    runtime: str | None = None
    precision: str | None = None
    batch_size: int | None = None
    # a key of SCORES (or of SCORE_ALIASES); None: the method's own (METHODS[config.method].score)
    score: str | None = None
    supernet: str | None = None
    data: str | None = None
    config: SearchConfig = field(default_factory=SearchConfig)  # the method (config.method) and its settings
    out: str | None = None
    resume: bool = False
    measure_top: int = 0
    score_device: str | None = None   # where scores are computed: auto (None), cpu, cuda, cuda:N


@dataclass
class SearchResult:
    run_dir: Path
    winners: dict[str, Candidate]
    table: str | None
    notes: list[str]
    measured: dict[str, list[dict]] = field(default_factory=dict)
    failure: str | None = None  # a budget no candidate met (exit 1 in the CLI)
    correlations: dict = field(default_factory=dict)  # Kendall tau of the score with params / FLOPs
    evaluated: int = 0
    correlated_over: str = ""  # which archs the Kendall taus are over, e.g. "50 archs of the random initial population"
    is_main: bool = True  # False on torchrun ranks other than 0, which print and write nothing


def check_budgets(model: MetricModel, constraints: Constraints) -> list[str]:
    """Refuse budgets no arch meets (naming the space's smallest value); explain budgets that admit
    every arch. Returns the explanatory notes."""
    notes = []
    for metric in METRICS:
        hi, lo = constraints.upper(metric), constraints.lower(metric)
        if (hi is None and lo is None) or metric not in model.metrics:
            continue
        smallest, largest = model.range(metric)
        span = f"{model.space.name} spans {format_amount(smallest, metric)} - {format_amount(largest, metric)}"
        tightest = constraints.tightest(metric)
        if tightest is not None and tightest < smallest:
            raise DeployvitError(
                f"--{metric} {format_amount(tightest, metric)} is infeasible: the smallest achievable {metric} in {span.split(' spans ')[0]} is "
                f"{format_amount(smallest, metric)} ({span})"
            )
        if lo is not None and lo > largest:
            raise DeployvitError(f"--min-{metric} {format_amount(lo, metric)} is infeasible: the largest achievable is {format_amount(largest, metric)} "
                                 f"({span})")
        if hi is not None and hi >= largest and lo is None:
            notes.append(
                f"{span}; --{metric} {format_amount(hi, metric)} admits every arch: the budget does not bind "
                f"(try {_larger_space_hint(model.space.name)}or a tighter budget)"
            )
    return notes


def _larger_space_hint(name: str) -> str:
    ladder = ["autoformer-tiny", "autoformer-small", "autoformer-base"]
    if name in ladder[:-1]:
        return f"--space {ladder[ladder.index(name) + 1]}, "
    return "a larger space, "


def method_and_score(request: SearchRequest) -> tuple[str, str, str | None]:
    """The search method and the score a request names: an alias (`SCORE_ALIASES`: `--score sampler`)
    resolved, a missing score filled with the method's own; and a note when an alias was used. An
    alias that names another method than the one asked for is refused (the default method yields)."""
    method, score = request.config.method, request.score
    if score in SCORE_ALIASES:
        alias_method, alias_score = SCORE_ALIASES[score]
        if method not in (alias_method, SearchConfig.method):
            raise DeployvitError(f"--score {score} means --method {alias_method} --score {alias_score}; it cannot be combined with --method {method}")
        return alias_method, alias_score, f"--score {score} is the former spelling of --method {alias_method} --score {alias_score}"
    score = score or METHODS[method].score
    SCORES[score]  # an unknown score: one line naming the registered ones
    return method, score, None


def resolve_space(request: SearchRequest, method: str, score: str) -> tuple[SearchSpace, tuple | None]:
    """The search space, and (supernet, meta) when the score or the method needs a trained supernet.
    With a supernet the space is the one it was trained on (the preset of that name, possibly with
    another class count or size)."""
    space = get_space(request.space)
    needs = [f"--score {score}"] * SCORES[score].needs_supernet + [f"--method {method}"] * METHODS[method].needs_supernet
    if not needs:
        return space, None
    from deployvit.search.supernet_score import load_supernet_for_search

    if request.supernet is None:
        data = " and --data DIR" if SCORES[score].needs_data else ""
        raise DeployvitError(f"{' and '.join(needs)} need{'s' * (len(needs) == 1)} --supernet CHECKPOINT{data} (a supernet trained by train-supernet"
                             + (", --sampler focus)" if METHODS[method].needs_supernet else ")"))
    supernet, meta = load_supernet_for_search(request.supernet, space.name)
    return supernet.space, (supernet, meta)


def make_score(space: SearchSpace, seed: int, score_device: str | None, trained: tuple | None = None,
               data: str | None = None, checkpoint: str | None = None, name: str = "dss") -> Score:
    """The score `name` (`deployvit.search.SCORES`) on `score_device` (auto: None, cpu, cuda, cuda:N);
    `trained` is (supernet, meta) for a score that needs one, with the `data` it was trained on. Under
    torchrun (WORLD_SIZE > 1) it joins the process group and each batch of candidates is shared out
    over the ranks (`search.distributed`)."""
    from deployvit.compute import compute_device
    from deployvit.search.distributed import ShardedScore, join_torchrun, local_rank

    factory = SCORES[name].load()
    device = compute_device(score_device, local_rank())
    ranks = join_torchrun(device)
    supernet, meta = trained or (None, None)
    score = factory(ScoreInputs(space, device, seed, supernet, meta, checkpoint, data))
    return ShardedScore(score, ranks) if ranks.distributed else score


def resolve_latency_table(request: SearchRequest, space: SearchSpace):
    """The table the search predicts with (`deployvit.latency.resolve`, the one resolver), or None
    when nothing needs latency."""
    if request.table is None and not (request.constraints.uses_latency or request.measure_top):
        return None
    from deployvit.latency.resolve import TableQuery, resolve_table

    query = TableQuery(space.name, space.hash(), request.device, request.runtime, request.precision, request.batch_size)
    return resolve_table(query, request.table, space=space)


def latency_provenance(table) -> dict | None:
    """Where a run's latency numbers come from, for best.arch.json, pareto.csv and the log: a
    measurement names its device, an estimate says it is one (and of which GPU model)."""
    if table is None:
        return None
    m = table.metadata
    source = m.get("source", "measured")
    return {"latency_source": source, "latency_table": str(table.path), "device_label": m["device_label"],
            "device_name": m["device_name"], "runtime": m["runtime"], "precision": m["precision"],
            "batch_size": m["batch_size"]}


def _append_log(path: Path, entry: dict) -> None:
    previous = path.read_text() if path.exists() else ""
    io.write_text(path, previous + json.dumps(entry) + "\n")


@dataclass
class SearchJob:
    """A search ready to run (`resolve_search`): every name and path of a `SearchRequest` is an object
    here (space, metric model with its latency table, score, the method's inputs), so the engine never
    parses or opens anything the user named, and a bad name fails before anything is written."""

    space: SearchSpace
    model: MetricModel  # params, FLOPs and, with a table, latency
    constraints: Constraints
    score: Score
    config: SearchConfig  # config.method: the searcher
    run_dir: Path
    resume: bool = False
    table: "LatencyTable | None" = None
    table_line: str | None = None  # which table the resolver chose, and its warnings
    notes: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # content hashes a resume is checked against
    measure_top: int = 0
    inputs: dict = field(default_factory=dict)  # what the method loaded besides the above (focus: its sampler policy)
    record: dict = field(default_factory=dict)  # the request as given, for log.jsonl
    main: bool = True  # rank 0 (or no torchrun): prints and writes


def resolve_search(request: SearchRequest, echo: Callable[[str], None] = print) -> SearchJob:
    """Every check and every lookup of a search, before its run directory exists: the method and
    score, the space (and supernet), the latency table (`deployvit.latency.resolve`), the budgets
    against the space, the run directory, the method's inputs, the score. Prints which table was
    chosen and the notes."""
    from deployvit.search.distributed import is_main_process

    main = is_main_process()
    if not main:
        echo = lambda *_: None  # noqa: E731
    method, score_name, alias = method_and_score(request)
    if alias:
        echo(f"note: {alias}")
    config = replace(request.config, method=method)
    space, trained = resolve_space(request, method, score_name)
    resolved = resolve_latency_table(request, space)
    table = resolved.table if resolved else None
    table_line = "\n".join([resolved.line()] + [f"warning: {w}" for w in resolved.warnings]) if resolved else None
    if table_line:
        echo(table_line)
    model = MetricModel(space, table)
    notes = check_budgets(model, request.constraints)
    for note in notes:
        echo(f"note: {note}")
    if request.measure_top:  # this machine must be able to time like the table before anything runs
        from deployvit.latency.profile import table_settings

        table_settings(table.metadata)
    run_dir = _run_dir(request, space)
    inputs = METHODS[method].load().inputs(request.supernet, space)
    score = make_score(space, config.seed, request.score_device, trained, request.data, request.supernet, score_name)
    return SearchJob(space, model, request.constraints, score, config, run_dir, request.resume, table, table_line,
                     notes, _sources(request, table), request.measure_top, inputs, _request_dict(request), main)


def run_search(job: SearchJob, echo: Callable[[str], None] = print, progress: bool = True) -> SearchResult:
    """Run the search method, optionally time the top candidates, write the run directory. Under
    torchrun every rank searches; only rank 0 prints and writes."""
    if not job.main:
        return _run(job, (lambda *_: None), False)
    with io.output_lock(job.run_dir, "--out"):  # a second search of this folder: one line; the kernel frees it if killed
        _make_dir(job.run_dir)
        return _run(job, echo, progress)


def _run(job: SearchJob, echo: Callable[[str], None], progress: bool) -> SearchResult:
    searcher, winners_by_budget = _search(job, progress)
    measured = {}
    if job.measure_top:
        from deployvit.search.measure import measure_top

        winners_by_budget, measured = measure_top(searcher, job.table, job.measure_top, echo)
    result = _finish(job, searcher, winners_by_budget, measured, echo)
    result.table, result.notes = job.table_line, job.notes
    return result


def _run_dir(request: SearchRequest, space: SearchSpace) -> Path:
    """The run directory, refused when it holds another run (or, with --resume, no state)."""
    if request.out is not None:  # '' is no folder (never "the default"); an over-long name is found before the search
        io.check_out_path(request.out, "--out", folder=True)
    run_dir = Path(request.out) if request.out is not None else Path(f"runs/search-{space.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if request.resume and not (run_dir / "search_state.json").exists():
        raise DeployvitError(f"--resume: no search state in {run_dir}")
    if not request.resume and run_dir.exists() and any(run_dir.iterdir()):
        raise DeployvitError(f"run directory {run_dir} is not empty (use --resume to continue it, or another --out)")
    return run_dir


def _make_dir(run_dir: Path) -> None:
    """Create the run directory and prove it takes a file (a full or read-only disk is one line
    before the search, not after it); folders it created are removed again when it does not."""
    io.check_writable(run_dir, "run directory")


def _search(job: SearchJob, progress: bool) -> tuple[Searcher, dict]:
    """(the searcher, its winner per budget), logging each completed step (a generation; a budget for
    focus) to log.jsonl."""
    log_path = job.run_dir / "log.jsonl"
    bar = None

    def on_step(step: int, searcher: Searcher) -> None:
        best = {budget_label(b): (c[0].score if c else None) for b, c in ((b, searcher.best(b)) for b in job.constraints.budgets())}
        if job.main:
            _append_log(log_path, {"generation": step, "evaluated": len(searcher.state.evaluated), "best_score": best,
                                   "stale_generations": searcher.state.stale})
        if bar is not None:
            bar.n = step + 1
            bar.refresh()

    searcher = make_searcher(job.space, job.model, job.constraints, job.score, job.config, job.run_dir / "search_state.json",
                             on_step, job.sources, write_state=job.main, **job.inputs)
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=searcher.steps, desc=f"search {job.space.name} ({searcher.name})", unit="step", leave=False)
    winners = searcher.search(resume=job.resume)
    if bar is not None:
        bar.close()
    return searcher, winners


def _finish(job: SearchJob, searcher, winners_by_budget, measured, echo) -> SearchResult:
    """Say how the search ended, log its summary, write the outputs, and name unmet budgets."""
    log_path = job.run_dir / "log.jsonl"
    score, config = job.score, job.config
    evaluated = list(searcher.state.evaluated.values())
    winners = {budget_label(b): c for b, c in winners_by_budget.items() if c is not None}
    sample, over = _size_sample(searcher, evaluated)
    summary = {**_correlations(sample, score.name), "kendall_tau_over": over}
    stopped = searcher.stopped_early()
    if stopped:
        echo(stopped)
    provenance = latency_provenance(job.table)
    speed = score.throughput() if hasattr(score, "throughput") else None
    if speed and speed.get("archs_per_s"):
        echo(f"scored {speed['archs_scored']} archs on {speed['device']} ({speed['precision']}): {speed['archs_per_s']:.2f} archs/s")
    if job.main:
        _append_log(log_path, {"final": True, "winners": {k: c.to_dict() for k, c in winners.items()}, **summary, "measured": measured,
                               "held_out_images": len(getattr(score, "held_out_ids", [])) or None,
                               "stopped_at_generation": searcher.state.generation, "latency": provenance,
                               "score_throughput": speed, "method": config.method, "score": score.name, "request": job.record})
    _write_outputs(job, searcher, evaluated, winners, provenance)
    if hasattr(score, "close"):
        score.close()
    result = SearchResult(job.run_dir, winners, None, [], measured, correlations=summary, evaluated=len(evaluated),
                          correlated_over=over, is_main=job.main)
    unmet = [budget_label(b) for b, c in winners_by_budget.items() if c is None]
    if unmet:
        how = "timed on this machine" if job.measure_top else searcher.ended_how
        result.failure = f"no candidate met budget {', '.join(unmet)} when {how} (see {log_path})"
    return result


def _sources(request: SearchRequest, table) -> dict[str, str]:
    """What the run's predictions and scores come from, for `Searcher.resume` to compare: the
    latency table's and the supernet checkpoint's content hashes, and the data directory."""
    sources = {}
    if table is not None and table.path is not None:
        sources["table"] = io.sha256(table.path)
    if request.supernet is not None:
        sources["supernet"] = io.sha256(request.supernet)
    if request.data is not None:  # a built-in name as given, a folder as an absolute path
        from deployvit.train.data import BUILTIN_DATA

        sources["data"] = request.data if request.data in BUILTIN_DATA else str(Path(request.data).expanduser().resolve())
    return sources


def _size_sample(searcher: Searcher, evaluated: list[Candidate]) -> tuple[list[Candidate], str]:
    """The archs to correlate score with size over, and their description: the random initial
    population when there is one. Evolution's later picks are the high scorers, bunched at the top of
    the size range, and over them the tau understates how much the score follows size (`search
    --latency 5ms`: 0.47 with params over all 310 it evaluated, 0.73 over its first 50)."""
    initial = searcher.state.initial
    if 3 <= initial <= len(evaluated):
        return evaluated[:initial], f"the {initial} archs of the random initial population"
    return evaluated, f"{len(evaluated)} evaluated archs"


def _correlations(evaluated: list[Candidate], score_name: str) -> dict:
    """Kendall tau of the score with params and FLOPs over `evaluated`: DSS mostly tracks model size
    (REFERENCES.md section 3), and users should see how much."""
    from scipy.stats import kendalltau

    if len(evaluated) < 3:
        return {}
    scores = [c.score for c in evaluated]
    out = {}
    for metric in ("params", "flops"):
        tau = float(kendalltau(scores, [c.metrics[metric] for c in evaluated]).statistic)
        out[f"kendall_tau_{score_name}_vs_{metric}"] = tau if math.isfinite(tau) else None  # constant scores: undefined
    return out


def _request_dict(request: SearchRequest) -> dict:
    data = asdict(request)
    data["constraints"] = request.constraints.to_dict()
    return data


def _write_outputs(job: SearchJob, searcher, evaluated, winners, provenance) -> None:
    """Rank 0 writes; every rank scores the reference archs (a collective under torchrun)."""
    model, run_dir = job.model, job.run_dir
    cost = "latency" if "latency" in model.metrics else "flops"
    front = pareto_front(evaluated, cost)
    baselines = {}
    for name, arch in reference_archs(job.space).items():
        baselines[name] = (arch, searcher.score_of(arch), model.metrics_of(arch))
    if not job.main:
        return
    write_pareto(run_dir, front, provenance)
    plot_pareto(
        run_dir / "pareto.png", evaluated, front, cost, job.score.name, job.constraints.budgets(), baselines,
        f"{job.space.name}: {len(evaluated)} archs evaluated ({job.config.method}, seed {job.config.seed})",
    )
    labels = list(winners)
    for label, cand in winners.items():
        if len(labels) > 1:
            cand.arch.save(run_dir / f"best-{label}.arch.json", _winner_metadata(cand, label, provenance))
    if winners:
        # best.arch.json last: its presence marks a finished run (the loosest budget's winner).
        cand = winners[labels[-1]]
        cand.arch.save(run_dir / "best.arch.json", _winner_metadata(cand, labels[-1], provenance))


def _winner_metadata(cand: Candidate, label: str, provenance: dict | None) -> dict:
    """What the winner was chosen on: its budget, score, metrics and the latency's provenance."""
    meta = {"budget": label, "score": cand.score, "metrics": dict(cand.metrics)}
    if provenance is not None:
        meta["latency"] = provenance
    return meta
