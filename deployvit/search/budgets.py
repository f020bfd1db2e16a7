"""Budget strings ("5ms", "500us", "1.5G", "6M", "2ms,3ms,5ms") and the constraint set of a search.

Latency is kept in microseconds (the unit of latency tables), FLOPs in MACs, params in parameters.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from deployvit.errors import DeployvitError

_UNITS = {
    "latency": {"ms": 1e3, "us": 1.0, "µs": 1.0, "s": 1e6},
    "flops": {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12},
    "params": {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9},
}
MAX_BUDGETS = 64  # latency budgets of one search
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-zµ]*)\s*$", re.IGNORECASE)


def parse_amount(text: str, metric: str) -> float:
    """One amount with its unit; latency needs a unit (ms/us/s), FLOPs/params take k/M/G/T or none."""
    match = _NUMBER.match(text)
    if not match:
        raise DeployvitError(f"--{metric} {text!r}: expected a number with a unit, e.g. {_example(metric)}")
    value, unit = float(match.group(1)), match.group(2).lower()
    units = _UNITS[metric]
    if unit not in units or (metric == "latency" and not unit):
        allowed = ", ".join(u for u in units if u) if metric == "latency" else "k, M, G" + (", T" if metric == "flops" else "")
        raise DeployvitError(f"--{metric} {text!r}: unknown unit {unit!r} (use {allowed})")
    if not 0 < value * units[unit] < math.inf:  # 1e999ms parses as inf: that is no budget, not a budget
        raise DeployvitError(f"--{metric} {text!r}: must be positive and finite")
    return value * units[unit]


def parse_amounts(text: str, metric: str) -> list[float]:
    """A comma-separated list of amounts (several budgets in one run), sorted ascending, unique."""
    values = sorted({parse_amount(part, metric) for part in text.split(",") if part.strip()})
    if not values:
        raise DeployvitError(f"--{metric}: empty budget")
    if len(values) > MAX_BUDGETS:  # each budget keeps its own parents and share of every generation
        raise DeployvitError(f"--{metric}: {len(values)} budgets; expected at most {MAX_BUDGETS}")
    return values


def _example(metric: str) -> str:
    return {"latency": "5ms or 500us", "flops": "1.5G", "params": "6M"}[metric]


def _short(x: float) -> str:
    """Three significant digits without exponent notation (5000, 0.479, 12.3)."""
    return f"{x:.0f}" if abs(x) >= 1000 else f"{float(f'{x:.3g}'):g}"


def format_amount(value: float, metric: str) -> str:
    if metric == "latency":
        return f"{_short(value / 1e3)} ms" if value >= 100 else f"{_short(value)} us"
    return f"{_short(value / 1e9)} G" if metric == "flops" else f"{_short(value / 1e6)} M"


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
