"""Refit a stored latency table's calibration with the current `fit_affine` and recompute its
validation statistics, from the whole-model timings the table itself records (no new timing).

Why: `fit_affine` now constrains the bias (the one-off cost of a whole-model call) to be >= 0, and
`LatencyTable.from_dict` refuses a negative bias. A table fitted before that keeps its measured part
entries, calibration archs (`sum_us`, `measured_us`) and validation archs; only `scale`, `bias`, the
validation archs' `predicted_us` and the calibrated statistics change. The uncalibrated statistics
(plain part sums) do not depend on the fit and are kept.

    python benchmarks/refit_calibration.py latency_tables/cpu/test-eager-fp32-b1.json [...] \
        --fresh benchmarks/results/lut_accuracy-cpu.json

Prints old and new calibration and calibrated validation statistics per table; rewrites each file
atomically and then loads it through the checked reader. With --fresh, the fresh-arch check of
`lut_accuracy.py` (which records each arch's part sum and measurement) is re-scored with the new
calibration too (that file itself is left as it was recorded). Refitting is idempotent: a second run
changes nothing. A result JSON goes to benchmarks/results/refit_calibration.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._record import RESULTS, save_result  # noqa: E402
from deployvit import io  # noqa: E402
from deployvit.latency.stats import error_stats, fit_affine  # noqa: E402
from deployvit.latency.table import LatencyTable  # noqa: E402

METHOD = "least squares measured_us = scale * sum(part median_us) + bias, bias >= 0"


def refit(data: dict) -> dict:
    """The table dict with calibration and calibrated validation recomputed (in place, returned)."""
    calib, val = data["calibration"], data["validation"]
    scale, bias = fit_affine([a["sum_us"] for a in calib["archs"]], [a["measured_us"] for a in calib["archs"]])
    calib.update(scale=scale, bias=bias, method=METHOD)
    for row in val["archs"]:
        row["predicted_us"] = scale * row["sum_us"] + bias
    val["calibrated"] = error_stats([a["predicted_us"] for a in val["archs"]], [a["measured_us"] for a in val["archs"]]).to_dict()
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="+", type=Path)
    parser.add_argument("--fresh", type=Path, help="lut_accuracy result JSON to re-score with the refitted calibrations")
    args = parser.parse_args()
    fresh = {r["table"]: r for r in io.read_json(args.fresh, "lut_accuracy result")["results"]} if args.fresh else {}
    rows = []
    for path in args.tables:
        data = io.read_json(path, "latency table")
        before = {"scale": data["calibration"]["scale"], "bias": data["calibration"]["bias"], "calibrated": dict(data["validation"]["calibrated"])}
        refit(data)
        io.write_json(path, data)
        LatencyTable.load(path, warn=False)  # the rewritten table passes the checked reader
        after = {"scale": data["calibration"]["scale"], "bias": data["calibration"]["bias"], "calibrated": data["validation"]["calibrated"]}
        row = {"table": str(path), "before": before, "after": after, "uncalibrated": data["validation"]["uncalibrated"]}
        if str(path) in fresh:
            archs = fresh[str(path)]["archs"]
            predicted = [after["scale"] * a["sum_us"] + after["bias"] for a in archs]
            row["fresh"] = {"before": fresh[str(path)]["calibrated"],
                            "after": error_stats(predicted, [a["measured_us"] for a in archs]).to_dict()}
        rows.append(row)
    print(f"{'table':<48} {'scale':>13} {'bias us':>15} {'MAPE %':>13} {'p95 %':>13} {'<=5%':>9} {'<=10%':>9} {'tau':>13}")
    for r in rows:
        b, a = r["before"], r["after"]
        bc, ac = b["calibrated"], a["calibrated"]
        print(f"{r['table']:<48} {b['scale']:.3f}->{a['scale']:.3f} {b['bias']:>6.1f}->{a['bias']:<6.1f} "
              f"{bc['mape']:5.2f}->{ac['mape']:<5.2f} {bc['p95_abs_pct']:5.2f}->{ac['p95_abs_pct']:<5.2f} "
              f"{bc['within_5']:.0%}->{ac['within_5']:.0%} {bc['within_10']:.0%}->{ac['within_10']:.0%} "
              f"{bc['kendall_tau']:.3f}->{ac['kendall_tau']:.3f}")
    for r in rows:
        if "fresh" in r:
            b, a = r["fresh"]["before"], r["fresh"]["after"]
            print(f"  fresh archs (n {a['n']}): MAPE {b['mape']:.2f}->{a['mape']:.2f}, p95 {b['p95_abs_pct']:.2f}->{a['p95_abs_pct']:.2f}, "
                  f"within 5% {b['within_5']:.0%}->{a['within_5']:.0%}, within 10% {b['within_10']:.0%}->{a['within_10']:.0%}, "
                  f"tau {b['kendall_tau']:.3f}->{a['kendall_tau']:.3f}")
    save_result(RESULTS / "refit_calibration.json", "refit_calibration", {"tables": rows})


if __name__ == "__main__":
    main()
