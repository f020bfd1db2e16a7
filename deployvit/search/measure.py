"""`--measure-top K`: close the loop by timing the best candidates end to end on this machine, the
same way the table's whole-model calibration archs were timed, and choosing on the measured number."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from deployvit.search.budgets import budget_label

if TYPE_CHECKING:
    from deployvit.latency.table import LatencyTable
    from deployvit.search.searcher import Candidate, Searcher


def measure_top(evolution: "Searcher", table: "LatencyTable", k: int, echo: Callable[[str], None]):
    """Per budget: time the top-k candidates (by score) here; the winner is the best-scoring one whose
    measured latency meets the budget (None when none does). Returns (winners, measured rows)."""
    from deployvit.latency.profile import apply_threads, measure_arch, table_settings

    settings, device = table_settings(table.metadata)
    apply_threads(settings, device)
    cache: dict[str, float] = {}
    winners: dict[float | None, "Candidate | None"] = {}
    rows: dict[str, list[dict]] = {}
    for budget in evolution.constraints.budgets():
        label = budget_label(budget)
        rows[label], winners[budget] = [], None
        for cand in evolution.best(budget, k):
            if cand.arch.key not in cache:
                echo(f"measuring {cand.arch.summary()} ...")
                cache[cand.arch.key] = measure_arch(cand.arch, settings, device).median_us
            measured = cache[cand.arch.key]
            rows[label].append({"arch": cand.arch.to_dict(), "summary": cand.arch.summary(), "score": cand.score,
                                "predicted_us": cand.metrics["latency"], "measured_us": measured})
            if winners[budget] is None and (budget is None or measured <= budget):
                winners[budget] = cand
    return winners, rows
