"""The latency contract's verdict is decided by the 95% interval of the measurement, not its point
value: MET / NOT MET only when the whole interval is on one side of the budget, WITHIN NOISE (exit 3)
when the budget lies inside it. Pure logic on made-up intervals: nothing here is timed."""

from __future__ import annotations

import pytest

from deployvit.commands.export import failure_error
from deployvit.errors import CheckFailed, WithinNoise
from exporters.report import COLUMNS, VERIFIED, WITHIN_NOISE, Contract, Row


def contract(value: float, ci: tuple[float, float] | None, budget: float | None = 1.0) -> Contract:
    c = Contract("onnxruntime", "fp32", 1, "cpu", {"repeats": 10}, budget)
    c.measured_ms, c.measured_ci_ms = value, ci
    return c


@pytest.mark.parametrize("value,ci,verdict", [
    (0.90, (0.88, 0.95), "MET"),
    (0.90, (0.88, 1.00), "MET"),  # the interval's top on the budget: within it
    (0.98, (0.95, 1.02), WITHIN_NOISE),
    (1.01, (0.99, 1.04), WITHIN_NOISE),  # the point above, the interval not wholly: no NOT MET
    (1.10, (1.05, 1.20), "NOT MET"),
    (0.90, None, "MET"),  # a measurement without an interval: judged on its value
    (1.10, None, "NOT MET"),
])
def test_verdict_follows_the_interval(value, ci, verdict):
    assert contract(value, ci).status == verdict


def test_no_budget_no_verdict_and_no_measurement_not_met():
    assert contract(0.9, (0.8, 1.0), budget=None).status is None
    c = contract(0.9, None)
    c.measured_ms = None
    assert c.status == "NOT MET"


def test_one_latency_per_row():
    row = Row("m", "onnx", "fp32", VERIFIED, latency_ms=0.95, latency_cv=0.01, budget_ms=1.0, latency=contract(0.95, (0.9, 1.0)))
    cells = dict(zip(COLUMNS, row.cells()))
    assert cells["Latency ms"] == "0.950" and cells["95% CI ms"] == "0.900-1.000" and cells["Contract as"] == "onnxruntime fp32 b1"
    assert sum("latency" in c.lower() or "measured" in c.lower() for c in COLUMNS) == 1
    d = row.to_dict()
    assert d["latency_ms"] == 0.95 and d["latency_setting"] == "onnxruntime fp32 b1" and d["contract"] == "MET"
    assert d["latency_contract"]["measurement"]["ci95_ms"] == [0.9, 1.0]


def test_within_noise_has_its_own_exit_code():
    noisy = failure_error(f"latency budget 1 ms {WITHIN_NOISE}: measured 0.98 ms (onnxruntime fp32 b1, 95% interval 0.95-1.02 ms)")
    assert isinstance(noisy, WithinNoise) and noisy.exit_code == 3
    missed = failure_error("latency budget 1 ms NOT MET: measured 1.1 ms (onnxruntime fp32 b1)")
    assert type(missed) is CheckFailed and missed.exit_code == 1
