"""`search --space auto` (the default): which space each latency budget is searched in.

- **With latency budgets**, each budget goes to the ViT family (`deployvit.spaces.FAMILIES`) whose
  span on the target contains it (`families.choose_family`: the most central span; when the score
  runs on a CPU, the smallest family with room around the budget, since DSS costs grow steeply with
  the family). The spans come from each family's latency table for the target, through the one
  resolver (a measured table where there is one, else the estimate built on demand). Budgets that
  land in one family are searched together; `--latency 2ms,3ms,5ms` may so run one search per
  family (`plan.plan_search`). A budget outside every span is one line naming the nearest span.
- **Without a latency budget**, `DEFAULT_SPACE` (autoformer-tiny: the published AutoFormer-T space,
  where `search --flops 1.5G` binds), unless something else fixes the space:
- a supernet checkpoint (`--score supernet`, `--method focus`) fixes it to the space it was
  trained on, and `--table PATH` to the space its table was made for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deployvit.errors import DeployvitError
from deployvit.search.budgets import budget_label
from deployvit.search.families import ROOM, Span, choose_family, family_span
from deployvit.spaces import FAMILIES, get_space
from deployvit.units import format_amount

#: `request` below is a `search.run.SearchRequest` (not imported: run imports this module)
AUTO = "auto"
#: the space of `--space auto` without a latency budget (module docstring)
DEFAULT_SPACE = "autoformer-tiny"


@dataclass
class SpacePlan:
    """Which space each latency budget is searched in: `groups` of (space, budgets), smallest
    budget first, and the lines that say so (one per space)."""

    groups: list[tuple[str, list[float]]]
    lines: list[str] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)  # every family's span on the target (auto with budgets)

    @property
    def family_of(self) -> dict[str, str]:
        """budget label -> space."""
        return {budget_label(b): space for space, budgets in self.groups for b in budgets}


def plan_spaces(request: Any, scores_on_cpu: bool, fixed: str | None = None) -> SpacePlan:
    """The spaces of a search request (module docstring). `fixed`: the space a supernet checkpoint
    fixes; `scores_on_cpu`: the score runs on the CPU (the cheaper-family rule applies)."""
    budgets = list(request.constraints.max_latency)
    if request.space != AUTO:
        return SpacePlan([(request.space, budgets)])
    if fixed is not None:
        return SpacePlan([(fixed, budgets)], [f"space: {fixed}, the space the supernet checkpoint was trained on"])
    if request.table is not None:
        space = _table_space(request.table)
        return SpacePlan([(space, budgets)], [f"space: {space}, the space of --table {request.table}"])
    if not budgets:
        return SpacePlan([(DEFAULT_SPACE, [])], [f"space: {DEFAULT_SPACE} (the default without a latency budget; --space NAME chooses another)"])
    return _families_for(request, budgets, scores_on_cpu)


def _table_space(path: str) -> str:
    from deployvit.latency.table import LatencyTable

    name = LatencyTable.load(path, warn=False).metadata["space"]
    try:
        get_space(name)
    except DeployvitError:
        raise DeployvitError(f"--table {path} was made for space {name!r}, which is no preset: pass its file with --space") from None
    return name


def _families_for(request: Any, budgets: list[float], scores_on_cpu: bool) -> SpacePlan:
    """Each budget's family from the families' spans on the target (one table per family, from the
    resolver, as the search in that family will use)."""
    from deployvit.latency.resolve import Machine, TableQuery, resolve_table

    machine = Machine.detect(request.device)
    spans = []
    for family in FAMILIES:
        space = get_space(family)
        query = TableQuery(family, space.hash(), request.device, request.runtime, request.precision, request.batch_size)
        spans.append(family_span(space, resolve_table(query, machine=machine, space=space).table))
    chosen: dict[str, list[float]] = {}
    for budget in budgets:
        chosen.setdefault(choose_family(budget, spans, prefer_cheap=scores_on_cpu), []).append(budget)
    by_name = {s.family: s for s in spans}
    lines = [_why(family, group, by_name[family], spans, scores_on_cpu) for family, group in chosen.items()]
    return SpacePlan(list(chosen.items()), lines, spans)


def suggest_space(request: Any, scores_on_cpu: bool) -> str | None:
    """The space to suggest when a budget does not bind in the one asked for: what `--space auto`
    would choose (the family, or `auto` when the budgets go to several), or None when some latency
    budget lies in no family's span (then no space helps)."""
    budgets = list(request.constraints.max_latency)
    if not budgets:
        return None
    try:
        groups = _families_for(request, budgets, scores_on_cpu).groups
    except DeployvitError:
        return None
    return groups[0][0] if len(groups) == 1 else AUTO


def _why(family: str, budgets: list[float], span: Span, spans: list[Span], scores_on_cpu: bool) -> str:
    """One line: the family, its span on the target, and the rule that picked it."""
    shown = ", ".join(format_amount(b, "latency") for b in budgets)
    it = "it" if len(budgets) == 1 else "them"
    others = [s.family for s in spans if s.family != family and any(s.contains(b) for b in budgets)]
    if not others:
        rule = f"the only family whose span contains {it}"
    elif scores_on_cpu and all(span.centrality(b) >= ROOM for b in budgets) and FAMILIES.index(family) < min(FAMILIES.index(o) for o in others):
        rule = (f"of the families containing {it} ({', '.join([family, *others])}), the smallest with room around {it}: "
                "DSS on a CPU costs less there")
    else:
        rule = f"of the families containing {it} ({', '.join([family, *others])}), the one {it} sit{'s' * (it == 'it')} in most centrally"
    return f"space: {family} for {shown}: {span.text()} on this target; {rule} (--space NAME forces a space)"
