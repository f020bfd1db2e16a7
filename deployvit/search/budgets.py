"""The constraint set of a search: upper bounds (several latency budgets, one winner each) and lower
bounds. Budget strings are read by `deployvit.units.parse_amount`, the one parser of every command."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Union

from deployvit.errors import DeployvitError
from deployvit.units import format_amount, parse_amount, parse_amounts


def _amount(value: "Amount | None", metric: str, name: str) -> float | None:
    """A bound as a number in the metric's unit: a string through `parse_amount`, a number as is."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_amount(value, metric, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise DeployvitError(f"{name}: expected a positive number or a string with a unit, got {value!r}")
    return float(value)


def _latency_budgets(value) -> list[float]:
    """Latency budgets from "2ms,3ms", a number (us), or a list of either: sorted, unique."""
    if isinstance(value, str):
        return parse_amounts(value, "latency", "max_latency")
    items = [value] if isinstance(value, (int, float)) else list(value)
    budgets = []
    for item in items:
        budgets += parse_amounts(item, "latency", "max_latency") if isinstance(item, str) else [_amount(item, "latency", "max_latency")]
    return sorted(set(budgets))


def budget_label(budget: float | None) -> str:
    """File- and table-friendly name of a latency budget ("5ms", "500us"); "no-latency" for the single
    target of a search without a latency budget (FLOPs/params bounds may still apply)."""
    return "no-latency" if budget is None else format_amount(budget, "latency").replace(" ", "")


METRICS = ("latency", "flops", "params")
#: the key of each metric in files, unit in the name: files keep the library's units (microseconds, as
#: latency tables and budgets; MACs; parameters), the console and plots show ms and GMACs
FILE_KEYS = {"latency": "latency_us", "flops": "flops_macs", "params": "params"}
_FROM_FILE = {**{k: k for k in METRICS}, **{v: k for k, v in FILE_KEYS.items()}}  # older run folders: keys without units


def metrics_to_file(metrics: dict[str, float]) -> dict[str, float]:
    """A candidate's metrics with their units in the keys (`FILE_KEYS`)."""
    return {FILE_KEYS.get(k, k): v for k, v in metrics.items()}


def metrics_from_file(data: dict[str, float]) -> dict[str, float]:
    """The inverse of `metrics_to_file`; keys without units (run folders written before them) read too."""
    return {_FROM_FILE.get(k, k): v for k, v in data.items()}


def _bound_key(key: str) -> str:
    """`max_latency` -> `max_latency_us` (a bound's file key carries its metric's unit)."""
    side, metric = key.split("_", 1)
    return f"{side}_{FILE_KEYS[metric]}"


Amount = Union[str, float, int]


@dataclass
class Constraints:
    """Upper bounds (a list per metric: one winner per latency budget) and lower bounds.

    Only latency may carry several budgets; FLOPs and params bound every budget alike. Each bound is
    a string with its unit, read by the one parser of every command (`"5ms"`, `"500us"`, `"1.5G"`,
    `"6M"`; `max_latency` also `"2ms,3ms,5ms"`), or a number in the library's unit: latency in
    microseconds, FLOPs in MACs, params in parameters. They are stored as numbers in those units."""

    max_latency: list[float] = field(default_factory=list)
    max_flops: float | None = None
    max_params: float | None = None
    min_latency: float | None = None
    min_flops: float | None = None
    min_params: float | None = None

    def __post_init__(self) -> None:
        self.max_latency = _latency_budgets(self.max_latency)
        for metric in METRICS:
            for side in ("max", "min"):
                name = f"{side}_{metric}"
                if name != "max_latency":
                    setattr(self, name, _amount(getattr(self, name), metric, f"{side}_{metric}"))
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
        """The bounds that are set, units in the keys (`max_latency_us`, `max_flops_macs`, `min_params`, ...)."""
        return {_bound_key(k): v for k, v in self.__dict__.items() if v not in (None, [])}

    @classmethod
    def from_dict(cls, data: dict) -> "Constraints":
        """From `to_dict`'s keys, or the keys without units of run folders written before them."""
        names = {_bound_key(f): f for f in cls.__dataclass_fields__} | {f: f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise DeployvitError(f"unknown constraint(s) {', '.join(unknown)}")
        return cls(**{names[k]: v for k, v in data.items()})
