"""`--measure-top K`: close the loop by timing the best candidates end to end on this machine, the
same way the table's whole-model calibration archs were timed, and choosing on the measured number."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from deployvit.search.budgets import budget_label

if TYPE_CHECKING:
    from deployvit.latency.table import LatencyTable
    from deployvit.search.searcher import Candidate, Searcher


def measure_top(evolution: "Searcher", table: "LatencyTable", k: int, echo: Callable[[str], None]):
    """Per budget: time the top-k candidates (by score) here, all of them together in interleaved
    rounds (`latency.profile.measure_archs`, like the table's whole models); the winner is the
    best-scoring one whose measured latency meets the budget (None when none does). Returns
    (winners, measured rows); the winner's row says so with its verdict (MET, or WITHIN NOISE when
    the budget lies inside its 95% interval)."""
    from deployvit.latency.profile import apply_threads, measure_archs, table_settings

    settings, device = table_settings(table.metadata)
    apply_threads(settings, device)
    budgets = evolution.constraints.budgets()
    tops = {budget: evolution.best(budget, k) for budget in budgets}
    archs = {c.arch.key: c.arch for cands in tops.values() for c in cands}
    echo(f"measuring the top {k} candidates per budget here ({len(archs)} archs, timed together like the table) ...")
    timings = measure_archs(list(archs.values()), settings, device) if archs else {}
    winners: dict[float | None, "Candidate | None"] = {}
    rows: dict[str, list[dict]] = {}
    for budget in budgets:
        label = budget_label(budget)
        rows[label], winners[budget] = [], None
        for cand in tops[budget]:
            t = timings[cand.arch.key]
            row = {"arch": cand.arch.to_dict(), "summary": cand.arch.summary(), "score": cand.score, "predicted_us": cand.metrics["latency"],
                   "measured_us": t.latency_us, "ci_us": [t.ci_low_us, t.ci_high_us], "budget_us": budget}
            if winners[budget] is None and (budget is None or t.latency_us <= budget):
                winners[budget] = cand
                row.update(winner=True, verdict=None if budget is None else ("MET" if t.ci_high_us <= budget else "WITHIN NOISE"))
            rows[label].append(row)
    return winners, rows
