"""A search as `deployvit search` runs it: plan (which space per budget, the supernet it needs),
resolve every job, then run them; one run folder.

`plan_search(request)` does every check and lookup before anything is written:

1. a supernet when the score or method needs one: `--supernet` (a checkpoint or a supernet run
   folder, `deployvit.runs`), else the newest supernet run under `runs/`, with the data recorded
   in its checkpoint unless `--data` is given (each said in one line);
2. the space of each latency budget (`search.auto`: `--space auto` picks a ViT family per budget);
3. one `SearchJob` per space (`run.prepare_search`: table, budgets, score, run folder).

`run_plan(plan)` runs them. One space: the run folder is that search's, as with `--space NAME`.
Several (`--latency 2ms,3ms,5ms` across families): the run folder holds `search_plan.json` (the
plan, written first), one search run per family in a folder of its name, and, written last,
`best-<budget>.arch.json` per budget and `best.arch.json` (the loosest budget's), so every
command that takes a search run folder finds the winner where it always is. `--resume` continues
each family's search where it stopped (a family not started yet starts).
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from deployvit import io
from deployvit.errors import DeployvitError
from deployvit.runs import new_run_dir
from deployvit.search import METHODS, SCORES
from deployvit.search.auto import AUTO, DEFAULT_SPACE, SpacePlan, plan_spaces
from deployvit.search.budgets import budget_label
from deployvit.search.run import (SearchJob, SearchRequest, SearchResult, latency_provenance, method_and_score, needs_supernet,
                                  prepare_search, resolve_space, run_search, scores_on_cpu, winner_metadata)

PLAN_FILE = "search_plan.json"
PLAN_FORMAT = "deployvit.search_plan/1"


@dataclass
class SearchPlan:
    """The jobs of one search command, ready to run, and where their run folder is."""

    jobs: list[SearchJob]
    run_dir: Path
    spaces: SpacePlan
    lines: list[str] = field(default_factory=list)  # what planning printed

    @property
    def multi(self) -> bool:
        return len(self.jobs) > 1

    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, "spaces": [{"space": s, "budgets_us": b, "run": s} for s, b in self.spaces.groups],
                "spans_us": {s.family: [s.min_us, s.max_us] for s in self.spaces.spans}, "lines": self.lines,
                "request": self.jobs[0].record}


def plan_search(request: SearchRequest, echo: Callable[[str], None] = print) -> SearchPlan:
    """Every check and lookup of a search command (module docstring); prints the default target
    (when it decided), the supernet and data it found, the space per budget, then each job's
    table and notes. Nothing is written."""
    from deployvit.search.distributed import is_main_process

    method, score_name, _ = method_and_score(request)
    found, trained = [], None
    if needs_supernet(method, score_name):
        request, found = _with_supernet(request, needs_supernet(method, score_name), method)
        space, trained = resolve_space(request, method, score_name)
        request, data_line = _with_data(request, score_name, trained[1])
        found += data_line
    spaces = plan_spaces(request, scores_on_cpu=scores_on_cpu(request), fixed=trained[0].space.name if trained else None)
    multi = len(spaces.groups) > 1
    top = _top_dir(request, spaces) if multi else None
    jobs = []
    for space, budgets in spaces.groups:
        sub = replace(request, space=space, constraints=replace(request.constraints, max_latency=budgets))
        if multi:
            sub = replace(sub, out=str(top / space), resume=request.resume and (top / space / "search_state.json").is_file())
        jobs.append(prepare_search(sub, trained, score_now=not multi))
    target = next((j.target_line for j in jobs if j.target_line), None)
    lines = ([target] if target else []) + found + spaces.lines
    say = echo if is_main_process() else (lambda *_: None)
    for line in lines + [line for job in jobs for line in job.lines]:
        say(line)
    return SearchPlan(jobs, top or jobs[0].run_dir, spaces, lines)


def _with_supernet(request: SearchRequest, needs: list[str], method: str) -> tuple[SearchRequest, list[str]]:
    """`--supernet` as a checkpoint file (a run folder becomes its checkpoint), else the newest
    supernet run under runs/ (said in one line). `needs`: the options that need it, for the refusal."""
    from deployvit.runs import RUNS, newest_supernet_run, supernet_file

    if request.supernet is not None:
        return replace(request, supernet=str(supernet_file(request.supernet))), []
    newest = newest_supernet_run()
    if newest is None:
        train = f"deployvit train-supernet --space {request.space if request.space != AUTO else DEFAULT_SPACE} --data {request.data or 'digits'}"
        train += " --sampler focus" * METHODS[method].needs_supernet
        raise DeployvitError(f"{' and '.join(needs)} need{'s' * (len(needs) == 1)} a supernet (--supernet CHECKPOINT): none under {RUNS}/ "
                             f"(train one with `{train}`)")
    return replace(request, supernet=str(newest)), [f"supernet: {newest}, the newest supernet run under {RUNS}/ "
                                                    "(--supernet PATH chooses another)"]


def _with_data(request: SearchRequest, score: str, meta: dict) -> tuple[SearchRequest, list[str]]:
    """`--data` as given, else the data the checkpoint records (said in one line)."""
    recorded = (meta.get("data") or {}).get("root")
    if request.data is not None or not SCORES[score].needs_data or not recorded:
        return request, []
    return replace(request, data=recorded), [f"data: {recorded}, recorded in {request.supernet} (--data chooses another)"]


def _top_dir(request: SearchRequest, spaces: SpacePlan) -> Path:
    """The run folder of a search over several spaces: empty, or (--resume) holding the same plan."""
    top = Path(request.out) if request.out else new_run_dir("search-auto")
    saved = top / PLAN_FILE
    if request.resume:
        if not saved.is_file():
            raise DeployvitError(f"--resume: no search plan in {top} ({PLAN_FILE})")
        before = [(g["space"], g["budgets_us"]) for g in io.read_json(saved, "search plan").get("spaces", [])]
        now = [(s, list(b)) for s, b in spaces.groups]
        if before != now:
            raise DeployvitError(f"cannot resume {top}: it searched {_groups(before)}, this plan searches {_groups(now)} "
                                 "(a table changed the families' spans?); start a new search in another --out")
    elif top.exists() and any(top.iterdir()):
        raise DeployvitError(f"run directory {top} is not empty (use --resume to continue it, or another --out)")
    return top


def _groups(groups) -> str:
    return "; ".join(f"{space} for {', '.join(budget_label(b) for b in budgets)}" for space, budgets in groups)


def run_plan(plan: SearchPlan, echo: Callable[[str], None] = print, progress: bool = True) -> SearchResult:
    """Run every job of the plan; one result (the winners of every budget, in budget order)."""
    if not plan.multi:
        return run_search(plan.jobs[0], echo, progress)
    main = plan.jobs[0].main
    keep = lambda d: any((d / job.space.name / "search_state.json").is_file() for job in plan.jobs)  # noqa: E731
    with io.output_dir(plan.run_dir, keep=keep) if main else contextlib.nullcontext():
        if main and not (plan.run_dir / PLAN_FILE).is_file():
            io.write_json(plan.run_dir / PLAN_FILE, plan.to_dict())
        parts = []
        for i, job in enumerate(plan.jobs, 1):
            labels = ", ".join(budget_label(b) for b in job.constraints.max_latency)
            echo(f"search {i} of {len(plan.jobs)}: {job.space.name} for {labels} -> {job.run_dir}")
            parts.append(run_search(job, echo, progress))
            job.score = None  # this family's seeded supernet is not needed by the next (GBs for the big families)
            gc.collect()
        return _combine(plan, parts)


def _combine(plan: SearchPlan, parts: list[SearchResult]) -> SearchResult:
    """One result from the searches of several spaces; the winners' files at the top of the run."""
    winners = {label: cand for part in parts for label, cand in part.winners.items()}
    order = sorted(winners, key=lambda label: next(b for j in plan.jobs for b in j.constraints.max_latency if budget_label(b) == label))
    winners = {label: winners[label] for label in order}
    if plan.jobs[0].main:
        labels = list(winners)
        job_of = {budget_label(b): job for job in plan.jobs for b in job.constraints.max_latency}
        for label in labels:
            winners[label].arch.save(plan.run_dir / f"best-{label}.arch.json", _top_metadata(job_of[label], winners[label], label))
        if labels:  # best.arch.json last: its presence marks a finished run
            winners[labels[-1]].arch.save(plan.run_dir / "best.arch.json", _top_metadata(job_of[labels[-1]], winners[labels[-1]], labels[-1]))
    failures = [p.failure for p in parts if p.failure]
    return SearchResult(plan.run_dir, winners, "\n".join(p.table for p in parts if p.table) or None, [n for p in parts for n in p.notes],
                        {k: v for p in parts for k, v in p.measured.items()}, "; ".join(failures) or None,
                        evaluated=sum(p.evaluated for p in parts), is_main=parts[0].is_main, parts=parts)


def _top_metadata(job: SearchJob, cand, label: str) -> dict:
    meta = winner_metadata(cand, label, latency_provenance(job.table))
    meta["run"] = job.run_dir.name  # the family's search run, beside this file
    return meta
