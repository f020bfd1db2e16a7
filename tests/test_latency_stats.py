"""Latency statistics and calibration on hand-computed inputs."""

from __future__ import annotations

import pytest

from deployvit.errors import DeployvitError
from deployvit.latency.stats import abs_pct_errors, error_stats, fit_affine


def test_error_stats_known_values():
    measured = [100.0, 200.0, 400.0, 800.0]
    predicted = [104.0, 180.0, 400.0, 1000.0]  # errors 4%, 10%, 0%, 25%
    s = error_stats(predicted, measured)
    assert s.n == 4
    assert s.mape == pytest.approx((4 + 10 + 0 + 25) / 4)
    assert s.max_abs_pct == pytest.approx(25.0)
    # numpy linear percentile of sorted [0, 4, 10, 25] at 95: 10 + 0.85 * 15
    assert s.p95_abs_pct == pytest.approx(22.75)
    assert s.within_5 == pytest.approx(0.5)
    assert s.within_10 == pytest.approx(0.75)
    assert s.kendall_tau == pytest.approx(1.0)  # same order


def test_kendall_tau_counts_discordant_pairs():
    # one swapped pair out of 6: tau = (5 - 1) / 6
    s = error_stats([1.0, 3.0, 2.0, 4.0], [1.0, 2.0, 3.0, 4.0])
    assert s.kendall_tau == pytest.approx(4 / 6)
    assert error_stats([4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]).kendall_tau == pytest.approx(-1.0)


def test_tau_undefined_is_zero():
    assert error_stats([5.0], [5.0]).kendall_tau == 0.0
    assert error_stats([5.0, 5.0], [1.0, 2.0]).kendall_tau == 0.0


def test_abs_pct_errors():
    assert list(abs_pct_errors([90.0, 110.0], [100.0, 100.0])) == pytest.approx([10.0, 10.0])


def test_fit_affine_recovers_line():
    sums = [10.0, 20.0, 30.0, 45.0]
    measured = [0.8 * s + 7.0 for s in sums]
    scale, bias = fit_affine(sums, measured)
    assert scale == pytest.approx(0.8)
    assert bias == pytest.approx(7.0)


@pytest.mark.parametrize(
    "pred,meas",
    [([], []), ([1.0], [1.0, 2.0]), ([1.0], [0.0]), ([float("nan")], [1.0]), ([1.0], [-3.0])],
)
def test_bad_inputs(pred, meas):
    with pytest.raises(DeployvitError):
        error_stats(pred, meas)


def test_fit_affine_needs_two_distinct_sums():
    with pytest.raises(DeployvitError, match="at least 2"):
        fit_affine([5.0, 5.0], [1.0, 2.0])
    with pytest.raises(DeployvitError):
        fit_affine([5.0], [1.0])


def test_fit_affine_refuses_a_non_positive_slope():
    """A table must rank archs by size; a slope <= 0 is noise, and a loaded table would refuse it."""
    with pytest.raises(DeployvitError, match="slope"):
        fit_affine([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
