"""Amounts with units, the one parser every command uses: latency budgets ("5ms", "500us", "0.005s"),
FLOPs ("1.5G", MACs) and params ("6M").

Latency is kept in microseconds (the unit of latency tables), FLOPs in MACs, params in parameters.
A latency needs its unit: "5" could mean 5 ms or 5 us, a factor of 1,000 in a budget, so a bare
number is refused with the same line by `search --latency`, `export --budget` and every other option.
"""

from __future__ import annotations

import math
import re

from deployvit.errors import DeployvitError

_UNITS = {
    "latency": {"ms": 1e3, "us": 1.0, "µs": 1.0, "s": 1e6},
    "flops": {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12},
    "params": {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9},
}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-zµ]*)\s*$", re.IGNORECASE)
_EXAMPLES = {"latency": "5ms or 500us", "flops": "1.5G", "params": "6M"}
MAX_BUDGETS = 64  # latency budgets of one search: each keeps its own parents and share of every generation


def parse_amount(text: str, metric: str, option: str | None = None) -> float:
    """One amount with its unit, in the metric's base unit (us, MACs, params). Latency needs a unit
    (ms/us/s); FLOPs/params take k/M/G(/T) or none. `option` names the flag in the error line.
    An empty string is an error, never "no budget": a budget the user meant to give and left
    blank (`--latency "$BUDGET"` with BUDGET unset) must not become an unconstrained run."""
    flag = option or f"--{metric}"
    if not str(text).strip():
        raise DeployvitError(f"{flag} {text!r}: empty; expected a number with a unit, e.g. {_EXAMPLES[metric]} (omit {flag} for no budget)")
    match = _NUMBER.match(text)
    if not match:
        raise DeployvitError(f"{flag} {text!r}: expected a number with a unit, e.g. {_EXAMPLES[metric]}")
    value, unit = float(match.group(1)), match.group(2).lower()
    units = _UNITS[metric]
    if metric == "latency" and not unit:
        raise DeployvitError(f"{flag} {text!r}: no unit: a latency needs ms, us or s, e.g. {_EXAMPLES[metric]}")
    if unit not in units:
        allowed = ", ".join(u for u in units if u) if metric == "latency" else "k, M, G" + (", T" if metric == "flops" else "")
        raise DeployvitError(f"{flag} {text!r}: unknown unit {unit!r} (use {allowed})")
    if not 0 < value * units[unit] < math.inf:  # 1e999ms parses as inf: that is no budget, not a budget
        raise DeployvitError(f"{flag} {text!r}: must be positive and finite")
    return value * units[unit]


def parse_amounts(text: str, metric: str, option: str | None = None) -> list[float]:
    """A comma-separated list of amounts (several budgets in one run), sorted ascending. An empty
    list or item (`2ms,,5ms`, a trailing comma) and a budget given twice (`5ms,5ms`, or `5ms,5000us`:
    the same amount) are errors: each budget gets its own winner, so a repeat is a typo, not a wish."""
    flag = option or f"--{metric}"
    parts = str(text).split(",")
    if not str(text).strip():
        parse_amount(text, metric, option)  # the one wording of an empty budget
    if any(not part.strip() for part in parts):
        raise DeployvitError(f"{flag} {text!r}: an empty item in the list; expected budgets separated by single commas, "
                             f"e.g. 2ms,5ms")
    if len(parts) > MAX_BUDGETS:
        raise DeployvitError(f"{flag}: {len(parts)} budgets; expected at most {MAX_BUDGETS}")
    seen: dict[float, str] = {}
    for part in parts:
        value = parse_amount(part.strip(), metric, option)
        twin = next((v for v in seen if math.isclose(v, value, rel_tol=1e-9)), None)  # 0.1ms is 100.00000000000001 us
        if twin is not None:
            same = "twice" if seen[twin] == part.strip() else f"as {seen[twin]!r} and {part.strip()!r} (the same amount)"
            raise DeployvitError(f"{flag} {text!r}: budget {format_amount(value, metric)} is given {same}; give each budget once")
        seen[value] = part.strip()
    return sorted(seen)


def _short(x: float) -> str:
    """Three significant digits without exponent notation (5000, 0.479, 12.3)."""
    return f"{x:.0f}" if abs(x) >= 1000 else f"{float(f'{x:.3g}'):g}"


def format_amount(value: float, metric: str) -> str:
    """The inverse of `parse_amount`, for people: "5 ms", "480 us", "1.25 G", "5.7 M"."""
    if metric == "latency":
        return f"{_short(value / 1e3)} ms" if value >= 100 else f"{_short(value)} us"
    return f"{_short(value / 1e9)} G" if metric == "flops" else f"{_short(value / 1e6)} M"
