"""How good a latency prediction is, and the affine calibration that makes block sums predictive.

A lookup table sums per-part timings; at small batch each isolated part carries a fixed launch /
call overhead that the whole model pays once, so raw sums over-predict narrow models (docs/DESIGN.md
section 4). An affine fit `measured = scale * sum + bias` on a few measured whole models removes
both the per-part overhead (scale < 1) and the one-off cost of the whole call (bias). It stays affine
on purpose: the search vectorises predictions over thousands of candidates as `scale * sums + bias`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy.stats import kendalltau, spearmanr

from deployvit.errors import DeployvitError


@dataclass(frozen=True)
class ErrorStats:
    """Agreement of predicted with measured latencies over `n` archs (percent errors are of measured)."""

    n: int
    mape: float  # mean absolute percentage error, percent
    p95_abs_pct: float  # 95th percentile of the absolute percentage error, percent
    max_abs_pct: float
    within_5: float  # share of archs with |error| <= 5%, in [0, 1]
    within_10: float
    kendall_tau: float  # rank agreement (tau-b); NaN-free: 0.0 when undefined (n < 2 or constant)
    p90_abs_pct: float = 0.0  # 90th percentile of the absolute percentage error, percent
    spearman: float = 0.0  # rank correlation; 0.0 when undefined, as tau

    def to_dict(self) -> dict:
        return asdict(self)


def _as_arrays(predicted: Sequence[float], measured: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predicted, dtype=np.float64)
    m = np.asarray(measured, dtype=np.float64)
    if p.ndim != 1 or p.shape != m.shape:
        raise DeployvitError(f"predicted and measured must be two equal-length lists, got {p.shape} and {m.shape}")
    if p.size == 0:
        raise DeployvitError("no latencies to compare")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(m))) or np.any(m <= 0):
        raise DeployvitError("latencies must be finite and measured latencies > 0")
    return p, m


def abs_pct_errors(predicted: Sequence[float], measured: Sequence[float]) -> np.ndarray:
    """|predicted - measured| / measured * 100, per arch."""
    p, m = _as_arrays(predicted, measured)
    return np.abs(p - m) / m * 100.0


def error_stats(predicted: Sequence[float], measured: Sequence[float]) -> ErrorStats:
    """MAPE, p90, p95 and max absolute % error, share within 5% / 10%, Kendall tau and Spearman rho
    of the two rankings."""
    p, m = _as_arrays(predicted, measured)
    err = np.abs(p - m) / m * 100.0
    tau = rho = 0.0
    if p.size >= 2 and np.ptp(p) > 0 and np.ptp(m) > 0:
        tau, rho = (float(np.nan_to_num(f(p, m).statistic)) for f in (kendalltau, spearmanr))
    return ErrorStats(
        n=int(p.size),
        mape=float(err.mean()),
        p95_abs_pct=float(np.percentile(err, 95)),
        max_abs_pct=float(err.max()),
        within_5=float(np.mean(err <= 5.0)),
        within_10=float(np.mean(err <= 10.0)),
        kendall_tau=tau,
        p90_abs_pct=float(np.percentile(err, 90)),
        spearman=rho,
    )


def fit_affine(sums: Sequence[float], measured: Sequence[float]) -> tuple[float, float]:
    """Least-squares (scale, bias) with measured ~= scale * sums + bias and bias >= 0; needs >= 2
    distinct sums.

    The bias is the one-off cost of a whole-model call, which cannot be negative; a negative
    intercept is noise extrapolated below the smallest arch, and with it a small enough arch would
    be predicted to take no time at all. When the free fit's bias is negative, the constrained
    optimum lies on bias = 0 (least squares is convex), i.e. the best line through the origin."""
    x, y = _as_arrays(sums, measured)
    if x.size < 2 or np.ptp(x) == 0:
        raise DeployvitError("calibration needs at least 2 archs with different block sums")
    scale, bias = np.polyfit(x, y, 1)
    if bias < 0:
        scale, bias = float(x @ y / (x @ x)), 0.0
    if not scale > 0:  # bigger archs measured faster: noise swamped the calibration, and a table must rank
        raise DeployvitError(
            f"calibration fit has slope {scale:.3g} <= 0: the whole-model timings are too noisy to calibrate; "
            "rerun with more --repeats / --calib-archs on a quieter machine (the timings so far are kept)"
        )
    return float(scale), float(bias)
