"""One search run, end to end, in two steps (docs/DESIGN.md section 3): `resolve_search` turns the user's
`SearchRequest` (names and paths) into a `SearchJob` (objects: space, metric model and table, score,
the search method's inputs, run directory), checking everything; `run_search` runs the method
(`deployvit.search.METHODS`) and writes the run directory. `deployvit search` parses, resolves, runs
and prints.

Every check happens in the resolve step, before the run directory is created, so bad input leaves
nothing behind; `best.arch.json` is written last, so a directory without it is visibly unfinished
(and `--resume` continues it from `search_state.json`).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from deployvit import io
from deployvit.errors import DeployvitError
from deployvit.runs import new_run_dir
from deployvit.search import METHODS, SCORE_ALIASES, SCORES, ScoreInputs
from deployvit.search.auto import AUTO
from deployvit.search.budgets import METRICS, Constraints, budget_label, metrics_to_file
from deployvit.units import format_amount
from deployvit.search.pareto import pareto_front, plot_pareto, write_pareto
from deployvit.search.predictor import MetricModel
from deployvit.search.scores import Score
from deployvit.search.searcher import Candidate, SearchConfig, Searcher, make_searcher
from deployvit.spaces import FAMILIES, SearchSpace, get_space, reference_archs

if TYPE_CHECKING:
    from deployvit.latency.table import LatencyTable


@dataclass
class SearchRequest:
    """A search as the user asked for it (names and paths): the CLI's options, the Python API's
    arguments. `space` AUTO picks the space per latency budget (`search.auto`, `plan.plan_search`)."""

    space: str = AUTO
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
    measure_top: int | None = None  # None: AUTO_MEASURE_TOP when the table describes this machine, else 0
    score_device: str | None = None   # where scores are computed: auto (None), cpu, cuda, cuda:N

    def command(self, space: str | None = None) -> str:
        """`deployvit search ...` with this request's space (or `space`), budgets and target: the
        command a hint prints, runnable as printed."""
        from deployvit.units import format_amount as fmt

        c = self.constraints
        parts = ["deployvit search", f"--space {space or self.space}"]
        if c.max_latency:
            parts.append("--latency " + ",".join(fmt(b, "latency").replace(" ", "") for b in c.max_latency))
        for metric in ("flops", "params"):
            for side, value in (("", c.upper(metric)), ("min-", c.lower(metric))):
                if value is not None:
                    parts.append(f"--{side}{metric} {fmt(value, metric).replace(' ', '')}")
        if c.min_latency is not None:
            parts.append(f"--min-latency {fmt(c.min_latency, 'latency').replace(' ', '')}")
        for flag, value in (("--device", self.device), ("--runtime", self.runtime), ("--precision", self.precision),
                            ("--batch-size", self.batch_size), ("--score", self.score), ("--supernet", self.supernet), ("--data", self.data)):
            if value is not None:
                parts.append(f"{flag} {value}")
        if self.config.method != SearchConfig.method:
            parts.append(f"--method {self.config.method}")
        return " ".join(parts)


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
    parts: list["SearchResult"] = field(default_factory=list)  # one per space when a plan searched several (`plan.run_plan`)
    front: list[Candidate] = field(default_factory=list)  # the Pareto front (pareto.json), cheapest first


def check_budgets(model: MetricModel, constraints: Constraints, hint: Callable[[str], str] | None = None) -> list[str]:
    """Refuse budgets no arch meets (naming the space's smallest value); explain budgets that admit
    every arch. Returns the explanatory notes. `hint(metric)`: what to try instead ("try `...`, "),
    for the note (`_space_hint`)."""
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
        loose = [b for b in (constraints.max_latency if metric == "latency" else [hi]) if b is not None and b >= largest]
        if loose and lo is None:
            shown = ", ".join(format_amount(b, metric) for b in loose)
            instead = hint(metric) if hint else ""
            notes.append(f"{span}; --{metric} {shown} admit{'s' * (len(loose) == 1)} every arch: the budget does not bind "
                         f"({instead}or a tighter budget)")
    return notes


AUTOFORMER = ("autoformer-tiny", "autoformer-small", "autoformer-base")


def _space_hint(request: SearchRequest, space: SearchSpace, on_cpu: bool) -> Callable[[str], str]:
    """What a does-not-bind note suggests, as a command runnable as printed: for latency, the
    space `--space auto` would choose for the budgets (`auto.suggest_space`; nothing when no family
    holds them); for FLOPs and params, the next larger space of the same ladder (the ViT families,
    AutoFormer's T/S/B)."""
    from deployvit.search.auto import suggest_space

    def hint(metric: str) -> str:
        if metric == "latency":
            other = suggest_space(request, on_cpu)
        else:
            other = next((ladder[ladder.index(space.name) + 1] for ladder in (FAMILIES, AUTOFORMER) if space.name in ladder[:-1]), None)
        return f"try `{replace(request, space=other).command()}`, " if other and other != space.name else ""

    return hint


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
    needs = needs_supernet(method, score)
    if not needs:
        return get_space(request.space), None
    from deployvit.search.supernet_score import load_supernet_for_search

    if request.supernet is None:
        data = " and --data DIR" if SCORES[score].needs_data else ""
        raise DeployvitError(f"{' and '.join(needs)} need{'s' * (len(needs) == 1)} --supernet CHECKPOINT{data} (a supernet trained by train-supernet"
                             + (", --sampler focus)" if METHODS[method].needs_supernet else ")"))
    wanted = None if request.space == AUTO else get_space(request.space).name
    supernet, meta = load_supernet_for_search(request.supernet, wanted)
    return supernet.space, (supernet, meta)


def scores_on_cpu(request: SearchRequest) -> bool:
    """Whether the score of `request` runs on the CPU (the cheaper-family rule of `--space auto`)."""
    from deployvit.compute import compute_device
    from deployvit.search.distributed import local_rank

    return compute_device(request.score_device, local_rank()).type == "cpu"


def needs_supernet(method: str, score: str) -> list[str]:
    """The options that make a search need a trained supernet (empty when none does)."""
    return [f"--score {score}"] * SCORES[score].needs_supernet + [f"--method {method}"] * METHODS[method].needs_supernet


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


AUTO_MEASURE_TOP = 3  # candidates per budget re-measured by default when the table describes this machine


def measure_count(request: SearchRequest, resolved) -> int:
    """How many top candidates per budget to time here: `--measure-top` as given; by default
    AUTO_MEASURE_TOP when the search has a latency budget and its table describes this machine (a
    profile or a calibration made here, or an estimate of this very GPU), so the winner is picked on
    a measurement; 0 otherwise (a table of another device says nothing a measurement here could check)."""
    if request.measure_top is not None:
        return request.measure_top
    if resolved is None or not request.constraints.uses_latency:
        return 0
    from deployvit.latency.resolve import describes_here, machine_for

    return AUTO_MEASURE_TOP if describes_here(resolved.info, machine_for(resolved.table.metadata["device_type"])) else 0


def latency_provenance(table) -> dict | None:
    """Where a run's latency numbers come from, for best.arch.json, pareto.csv and the log: a
    measurement names its device, an estimate says it is one (and of which GPU model)."""
    if table is None:
        return None
    m = table.metadata
    source = m.get("source", "measured")
    where = str(table.path) if table.path is not None else "(estimate built in memory, not cached)"
    return {"latency_source": source, "latency_table": where, "device_label": m["device_label"],
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
    score: Score | None  # None until `ready()` when prepare_search left it for run time
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
    target_line: str | None = None  # the default target, when it decided the table (`Resolved.default_target`)
    lines: list[str] = field(default_factory=list)  # what resolving found worth saying: alias, table, warnings, notes
    request: SearchRequest | None = None  # as resolved (for the next command's hint)
    build_score: Callable[[], Score] | None = None  # makes `score` when it was left for run time

    def ready(self) -> "SearchJob":
        """The job with its score built (`prepare_search(score_now=False)` leaves that to run time)."""
        if self.score is None:
            self.score = self.build_score()
        return self


def resolve_search(request: SearchRequest, echo: Callable[[str], None] = print, trained: tuple | None = None) -> SearchJob:
    """Every check and every lookup of a search, before its run directory exists: the method and
    score, the space (and supernet), the latency table (`deployvit.latency.resolve`), the budgets
    against the space, the run directory, the method's inputs, the score. Prints the default target
    (when it decided), which table was chosen and the notes. `trained`: (supernet, meta) already
    loaded from `request.supernet`. `request.space` must name one space (`plan.plan_search`
    resolves `auto`)."""
    job = prepare_search(request, trained)
    for line in ([job.target_line] if job.target_line else []) + job.lines:
        (echo if job.main else (lambda *_: None))(line)
    return job


def prepare_search(request: SearchRequest, trained: tuple | None = None, score_now: bool = True) -> SearchJob:
    """`resolve_search` without printing: what it would print is in the job (`target_line`, `lines`).
    `score_now=False` builds the score only when the job runs (`SearchJob.ready`): a plan of several
    ViT families would otherwise hold every family's seeded supernet (GBs each) at once."""
    from deployvit.search.distributed import is_main_process

    if request.space == AUTO and not needs_supernet(*method_and_score(request)[:2]):
        raise DeployvitError("space 'auto' names no space yet: plan the search with deployvit.search.plan.plan_search")
    method, score_name, alias = method_and_score(request)
    lines = [f"note: {alias}"] if alias else []
    config = replace(request.config, method=method)
    space, trained = (trained[0].space, trained) if trained is not None else resolve_space(request, method, score_name)
    resolved = resolve_latency_table(request, space)
    table = resolved.table if resolved else None
    table_line = "\n".join([resolved.line()] + [f"warning: {w}" for w in resolved.warnings]) if resolved else None
    lines += [table_line] if table_line else []
    model = MetricModel(space, table)
    concrete = replace(request, space=space.name if request.space == AUTO else request.space)
    notes = check_budgets(model, request.constraints, _space_hint(concrete, space, scores_on_cpu(request)))
    lines += [f"note: {note}" for note in notes]
    measure = measure_count(request, resolved)
    if measure:  # this machine must be able to time like the table before anything runs
        from deployvit.latency.profile import table_settings

        table_settings(table.metadata)
    run_dir = _run_dir(request, space)
    inputs = METHODS[method].load().inputs(request.supernet, space)
    build = functools.partial(make_score, space, config.seed, request.score_device, trained, request.data, request.supernet, score_name)
    return SearchJob(space, model, request.constraints, build() if score_now else None, config, run_dir, request.resume, table,
                     table_line, notes, _sources(request, table), measure, inputs, _request_dict(request), is_main_process(),
                     resolved.default_target if resolved else None, lines, concrete, build)


def run_search(job: SearchJob, echo: Callable[[str], None] = print, progress: bool = True) -> SearchResult:
    """Run the search method, optionally time the top candidates, write the run directory. Under
    torchrun every rank searches; only rank 0 prints and writes. A search that fails leaves no
    run directory behind unless it got as far as a resumable state (`--resume` continues it)."""
    if not job.main:
        return _run(job.ready(), (lambda *_: None), False)
    with io.output_dir(job.run_dir, keep=lambda d: (d / "search_state.json").is_file()):
        with io.output_lock(job.run_dir, "--out"):  # a second search of this folder: one line; the kernel frees it if killed
            _make_dir(job.run_dir)
            return _run(job.ready(), echo, progress)


def _run(job: SearchJob, echo: Callable[[str], None], progress: bool) -> SearchResult:
    searcher, winners_by_budget = _search(job, progress, echo)
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
    run_dir = Path(request.out) if request.out is not None else new_run_dir(f"search-{space.name}")
    if request.resume and not (run_dir / "search_state.json").exists():
        raise DeployvitError(f"--resume: no search state in {run_dir}")
    if not request.resume and run_dir.exists() and any(run_dir.iterdir()):
        raise DeployvitError(f"run directory {run_dir} is not empty (use --resume to continue it, or another --out)")
    return run_dir


def _make_dir(run_dir: Path) -> None:
    """Create the run directory and prove it takes a file (a full or read-only disk is one line
    before the search, not after it); folders it created are removed again when it does not."""
    io.check_writable(run_dir, "run directory")


def _search(job: SearchJob, progress: bool, echo: Callable[[str], None]) -> tuple[Searcher, dict]:
    """(the searcher, its winner per budget), logging each completed step (a generation; a budget for
    focus) to log.jsonl; progress counts the archs scored, with the time left (`ScoringProgress`)."""
    from deployvit.search.progress import ScoringProgress

    log_path = job.run_dir / "log.jsonl"

    def on_step(step: int, searcher: Searcher) -> None:
        best = {budget_label(b): (c[0].score if c else None) for b, c in ((b, searcher.best(b)) for b in job.constraints.budgets())}
        if job.main:
            _append_log(log_path, {"generation": step, "evaluated": len(searcher.state.evaluated), "best_score": best,
                                   "stale_generations": searcher.state.stale})

    tracker = ScoringProgress(job.space, job.score, echo, bar=progress)
    searcher = make_searcher(job.space, job.model, job.constraints, tracker.wrap(job.score), job.config, job.run_dir / "search_state.json",
                             on_step, job.sources, write_state=job.main, **job.inputs)
    tracker.start(searcher, f"search {job.space.name} ({searcher.name})", extra=len(reference_archs(job.space)))
    try:
        winners = searcher.search(resume=job.resume)
    finally:
        tracker.close()
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
    front = _write_outputs(job, searcher, evaluated, winners, provenance)
    if hasattr(score, "close"):
        score.close()
    result = SearchResult(job.run_dir, winners, None, [], measured, correlations=summary, evaluated=len(evaluated),
                          correlated_over=over, is_main=job.main, front=front)
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
    (docs/REFERENCES.md section 3), and users should see how much."""
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


def _write_outputs(job: SearchJob, searcher, evaluated, winners, provenance) -> list[Candidate]:
    """Rank 0 writes; every rank scores the reference archs (a collective under torchrun). Returns the front."""
    model, run_dir = job.model, job.run_dir
    cost = "latency" if "latency" in model.metrics else "flops"
    front = pareto_front(evaluated, cost)
    baselines = {}
    for name, arch in reference_archs(job.space).items():
        baselines[name] = (arch, searcher.score_of(arch), model.metrics_of(arch))
    if not job.main:
        return front
    write_pareto(run_dir, front, provenance)
    plot_pareto(
        run_dir / "pareto.png", evaluated, front, cost, job.score.name, job.constraints.budgets(), baselines,
        f"{job.space.name}: {len(evaluated)} archs evaluated ({job.config.method}, seed {job.config.seed})",
        winners=winners, provenance=provenance,
    )
    labels = list(winners)
    for label, cand in winners.items():
        if len(labels) > 1:
            cand.arch.save(run_dir / f"best-{label}.arch.json", winner_metadata(cand, label, provenance))
    if winners:
        # best.arch.json last: its presence marks a finished run (the loosest budget's winner).
        cand = winners[labels[-1]]
        cand.arch.save(run_dir / "best.arch.json", winner_metadata(cand, labels[-1], provenance))
    return front


def winner_metadata(cand: Candidate, label: str, provenance: dict | None) -> dict:
    """What the winner was chosen on: its budget, score, metrics and the latency's provenance."""
    meta = {"budget": label, "space": cand.arch.space, "score": cand.score, "metrics": metrics_to_file(cand.metrics)}
    if provenance is not None:
        meta["latency"] = provenance
    return meta
