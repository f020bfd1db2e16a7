"""The constraint set of a search: upper bounds (several latency budgets, one winner each) and lower
bounds. Budget strings are read by `deployvit.units.parse_amount`, the one parser of every command."""

from __future__ import annotations

from dataclasses import dataclass, field

from deployvit.errors import DeployvitError
from deployvit.units import format_amount


def budget_label(budget: float | None) -> str:
    """File- and table-friendly name of a latency budget ("5ms", "500us"); "no-latency" for the single
    target of a search without a latency budget (FLOPs/params bounds may still apply)."""
    return "no-latency" if budget is None else format_amount(budget, "latency").replace(" ", "")


METRICS = ("latency", "flops", "params")


@dataclass
class Constraints:
    """Upper bounds (a list per metric: one winner per latency budget) and lower bounds.

    Only latency may carry several budgets; FLOPs and params bound every budget alike."""

    max_latency: list[float] = field(default_factory=list)
    max_flops: float | None = None
    max_params: float | None = None
    min_latency: float | None = None
    min_flops: float | None = None
    min_params: float | None = None

    def __post_init__(self) -> None:
        for metric in METRICS:
            lo, hi = self.lower(metric), self.tightest(metric)
            if lo is not None and hi is not None and lo >= hi:
                raise DeployvitError(
                    f"--min-{metric} {format_amount(lo, metric)} is not below --{metric} {format_amount(hi, metric)}"
                )
        labels = [budget_label(b) for b in self.max_latency]
        for label in labels:
            if labels.count(label) > 1:  # winners and files are named by label: one would overwrite the other
                raise DeployvitError(f"--latency: two budgets are both named {label!r}; make them differ within three significant digits")

    def lower(self, metric: str) -> float | None:
        return getattr(self, f"min_{metric}")

    def upper(self, metric: str) -> float | None:
        """The loosest upper bound of a metric (what the population as a whole must satisfy)."""
        if metric == "latency":
            return max(self.max_latency) if self.max_latency else None
        return getattr(self, f"max_{metric}")

    def tightest(self, metric: str) -> float | None:
        """The tightest upper bound of a metric (what every budget's winner must satisfy)."""
        if metric == "latency":
            return min(self.max_latency) if self.max_latency else None
        return getattr(self, f"max_{metric}")

    @property
    def uses_latency(self) -> bool:
        return bool(self.max_latency) or self.min_latency is not None

    def budgets(self) -> list[float | None]:
        """One search target per latency budget (a single unlabelled target without one)."""
        return list(self.max_latency) or [None]

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [])}
