"""The ViT family ladder (`deployvit.spaces.FAMILIES`): which family a latency budget belongs in,
and the check that the families together reach every budget between DeiT-Tiny's and ViT-H/14's.

A family's **span** on one target (GPU, runtime, precision, batch) is the predicted latency of its
smallest arch to that of its largest (`SearchSpace.min_arch` / `max_arch`) in the latency table
for that target. A budget *binds* in a family when it lies inside the span: some archs are over it
(so the budget, not the space, limits the winner) and some under it. Inside a span the family's
latencies are dense (`reachable_latencies`), so the winner can land just under the budget.

**The rule** (`choose_family`): of the families whose span contains the budget, the one in which it
sits most centrally on a log scale, i.e. the largest min(budget / span min, span max / budget); a
tie goes to the smaller family. Near the top of a span nearly every arch fits and the search is
barely constrained; near the bottom only a few archs fit; in the middle the search has room on
both sides. Spans overlap by design, so a budget near one family's edge is central in its
neighbour. A budget outside every span is refused in one line naming the nearest family's span.

**When the score runs on a CPU** (`prefer_cheap=True`), DSS costs grow steeply with the family
(`benchmarks/family_dss_cost.py`, in DeiT-Ti forward+backward steps per arch: vit-tiny 0.6-3,
vit-small 2-13, vit-base 14-62, vit-large 46-260, vit-huge 150-520), so the *smallest* family in
which the budget has room is taken: its span reaches at least `1 / BIND_SHARE` (1.18x) beyond the
budget on both sides (centrality >= 1.18), so every latency from 85% of the budget to the budget,
where the winner must land, lies inside it, and as wide a band above the budget keeps the budget
binding. Only when no family gives that much room does the most central one win, as on a GPU.

Latencies here are microseconds, as in tables and budgets (`deployvit.units`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from deployvit.arch import mlp_hidden
from deployvit.errors import DeployvitError
from deployvit.parts import BlockPart, HeadPart, StemPart
from deployvit.spaces import FAMILIES, SearchSpace, get_space, reference_archs
from deployvit.units import format_amount

if TYPE_CHECKING:
    from deployvit.latency.gpus import GPU
    from deployvit.latency.table import LatencyTable

#: what a winner must reach: at least this share of its budget (the issue's "within 15% under")
BIND_SHARE = 0.85
#: the published models the ladder must reach below and above, and the family each is a member of
LOW_REFERENCE = ("vit-tiny", "DeiT-Ti")
HIGH_REFERENCE = ("vit-huge", "ViT-H/14")


@dataclass(frozen=True)
class Span:
    """One family's predicted latency range on one target, in microseconds."""

    family: str
    min_us: float
    max_us: float

    def contains(self, budget_us: float) -> bool:
        return self.min_us <= budget_us <= self.max_us

    def centrality(self, budget_us: float) -> float:
        """min(budget / min, max / budget): 1 at either end of the span, largest in its (log) middle."""
        return min(budget_us / self.min_us, self.max_us / budget_us)

    def distance(self, budget_us: float) -> float:
        """How far outside the span the budget lies, as a ratio (1 when inside)."""
        return max(self.min_us / budget_us, budget_us / self.max_us, 1.0)

    def text(self) -> str:
        return f"{self.family} spans {format_amount(self.min_us, 'latency')} - {format_amount(self.max_us, 'latency')}"


def family_span(space: SearchSpace, table: "LatencyTable") -> Span:
    """The span of `space` in `table` (its min and max arch's predicted latency)."""
    return Span(space.name, table.predict(space.min_arch()), table.predict(space.max_arch()))


#: the room a budget needs inside a family for the CPU rule to take the smaller family (module docstring)
ROOM = 1 / BIND_SHARE


def choose_family(budget_us: float, spans: Sequence[Span], prefer_cheap: bool = False) -> str:
    """The family a latency budget belongs in (module docstring: the most central span containing
    it, ties to the earlier, i.e. smaller, family; with `prefer_cheap`, the smallest family with
    `ROOM` around the budget first). `spans` are smallest family first. DeployvitError naming the
    nearest family's span when no span contains the budget."""
    if not spans:
        raise DeployvitError("no family spans to choose from")
    inside = [s for s in spans if s.contains(budget_us)]
    roomy = [s for s in inside if s.centrality(budget_us) >= ROOM]
    if prefer_cheap and roomy:
        return roomy[0].family
    if inside:
        return max(inside, key=lambda s: s.centrality(budget_us)).family  # max keeps the first of equals
    nearest = min(spans, key=lambda s: s.distance(budget_us))
    side = "below" if budget_us < nearest.min_us else "above"
    what = "no arch of any family fits it" if side == "below" else "every arch of every family fits it: it does not bind"
    raise DeployvitError(f"latency budget {format_amount(budget_us, 'latency')} is {side} every family's span ({what}); "
                         f"the nearest: {nearest.text()}")


def reachable_latencies(space: SearchSpace, table: "LatencyTable") -> np.ndarray:
    """Sorted predicted latencies (us) of archs of a one-stage `space` that fill its span densely.

    For every (embed dim, depth): start with every layer at the cheapest (heads, MLP ratio) block,
    then raise one layer at a time through the blocks sorted by latency, until every layer is at the
    dearest. Each step changes the sum by one gap between neighbouring block latencies, so these
    archs leave no larger hole than that inside each (embed, depth) range; the largest ratio
    between neighbours of the union is how far under a budget inside the span the best fitting arch
    can be at worst (`LadderCheck.steps`)."""
    if space.multi_stage:
        raise DeployvitError(f"space {space.name!r} has {len(space.stages)} stages; reachable latencies are for one-stage families")
    s, tokens = space.stages[0], space.tokens(0)
    points = []
    for e in s.embed_dims:
        fixed = table.part_us(StemPart(space.img_size, space.patch_size, space.in_chans, e)) + table.part_us(HeadPart(tokens, e, space.num_classes))
        blocks = np.sort([table.part_us(BlockPart(tokens, e, h, s.head_dim, mlp_hidden(e, r))) for h in s.num_heads for r in s.mlp_ratios])
        steps = blocks - blocks[0]  # one layer raised from the cheapest block to each other block
        for d in s.depths:
            raised = np.arange(d)[:, None] * (blocks[-1] - blocks[0])  # i layers already at the dearest block
            points.append(fixed + d * blocks[0] + (raised + steps[None, :]).ravel())  # ends at every layer dearest
    return np.unique(table.scale * np.concatenate(points) + table.bias)


@dataclass
class LadderCheck:
    """The families' spans on one target and how well they reach every budget (see `problems`)."""

    target: str
    spans: list[Span]
    steps: dict[str, float]  # per family: largest ratio between neighbouring reachable latencies
    low_us: float  # DeiT-Ti's predicted latency (the ladder must start below it)
    high_us: float  # ViT-H/14's (the ladder must end above it)
    notes: list[str] = field(default_factory=list)

    @property
    def overlaps(self) -> list[float]:
        """Per neighbouring pair: the smaller family's max over the larger's min (> 1: they overlap)."""
        return [a.max_us / b.min_us for a, b in zip(self.spans, self.spans[1:])]

    def problems(self, min_span: float = 1.0, min_overlap: float = 1.0, max_step: float = 1 / BIND_SHARE, reach: float = 1.0) -> list[str]:
        """Why some budget between DeiT-Ti's and ViT-H/14's latency would not bind (empty when every
        one does). The defaults are the requirement; stricter arguments check design margins:
        `min_span` (each family's max/min), `min_overlap` (neighbours), `max_step` (density),
        `reach` (how far below DeiT-Ti and above ViT-H/14 the ends must lie, as a ratio)."""
        out = []
        for s in self.spans:
            if s.max_us / s.min_us < min_span:
                out.append(f"{s.text()}: {s.max_us / s.min_us:.2f}x, under {min_span:g}x")
            if self.steps[s.family] > max_step:
                out.append(f"{s.family}: a {self.steps[s.family]:.3f}x hole between reachable latencies (at most {max_step:.3f}x)")
        for (a, b), overlap in zip(zip(self.spans, self.spans[1:]), self.overlaps):
            if overlap < min_overlap:
                out.append(f"{a.family} and {b.family} overlap by {overlap:.2f}x, under {min_overlap:g}x ({a.text()}; {b.text()})")
        if self.spans[0].min_us * reach > self.low_us:
            out.append(f"{self.spans[0].text()}: does not start {reach:g}x below DeiT-Ti ({format_amount(self.low_us, 'latency')})")
        if self.spans[-1].max_us < self.high_us * reach:
            out.append(f"{self.spans[-1].text()}: does not end {reach:g}x above ViT-H/14 ({format_amount(self.high_us, 'latency')})")
        return [f"{self.target}: {p}" for p in out]


def check_ladder(tables: Mapping[str, "LatencyTable"], target: str = "") -> LadderCheck:
    """The ladder check for one target from one table per family (`FAMILIES` order)."""
    missing = [f for f in FAMILIES if f not in tables]
    if missing:
        raise DeployvitError(f"no latency table for famil{'ies' if len(missing) > 1 else 'y'} {', '.join(missing)}")
    spaces = {f: get_space(f) for f in FAMILIES}
    spans, steps = [], {}
    for f in FAMILIES:
        spans.append(family_span(spaces[f], tables[f]))
        reach = reachable_latencies(spaces[f], tables[f])
        steps[f] = float((reach[1:] / reach[:-1]).max()) if len(reach) > 1 else math.inf
    low = tables[LOW_REFERENCE[0]].predict(reference_archs(spaces[LOW_REFERENCE[0]])[LOW_REFERENCE[1]])
    high = tables[HIGH_REFERENCE[0]].predict(reference_archs(spaces[HIGH_REFERENCE[0]])[HIGH_REFERENCE[1]])
    return LadderCheck(target, spans, steps, low, high)


def estimated_tables(gpu: "GPU", runtime: str, precision: str, batch: int) -> dict[str, "LatencyTable"]:
    """One estimated table per family for a catalogue GPU (`deployvit.latency.estimate`), in memory."""
    from deployvit.latency.estimate import estimate_table

    return {f: estimate_table(get_space(f), gpu, runtime, precision, batch) for f in FAMILIES}


def estimated_ladder(gpu: "GPU", runtime: str, precision: str, batch: int) -> LadderCheck:
    """`check_ladder` on the estimate for a catalogue GPU."""
    return check_ladder(estimated_tables(gpu, runtime, precision, batch), f"{gpu.key} {runtime} {precision} b{batch}")
