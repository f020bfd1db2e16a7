"""How well do latency tables predict fresh archs on this machine?

For each table (default: every shipped table measured on this kind of device), sample N archs of its
space that were used neither for calibration nor for validation, time them end to end exactly as the
table's entries were timed (same runtime, precision, batch, warm-up, repeats, threads), and compare
with the table's prediction: MAPE, p95 error, share within 5% / 10%, Kendall tau, per runtime and
batch. Prints a table and writes JSON to benchmarks/results/lut_accuracy-<device label>.json.

    python benchmarks/lut_accuracy.py                       # shipped tables for this device
    python benchmarks/lut_accuracy.py --table my.json --archs 50
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from _record import RESULTS, save_result
from deployvit.arch import Arch
from deployvit.errors import DeployvitError
from deployvit.devices import device_name, machine_facts, timing_device
from deployvit.latency.profile import apply_threads, distinct_archs, measure_arch
from deployvit.settings import MeasureSettings
from deployvit.latency.stats import error_stats
from deployvit.latency.table import LatencyTable, shipped_tables_dir
from deployvit.spaces import get_space



def tables_for_this_machine() -> list[Path]:
    """Shipped tables measured on the device this machine has (same device type and name)."""
    device = timing_device("auto")
    here = device_name(device)
    found = []
    for path in sorted(shipped_tables_dir().glob("*/*.json")):
        meta = LatencyTable.load(path, warn=False).metadata
        if meta["device_type"] == device and meta["device_name"] == here:
            found.append(path)
    return found


def evaluate(path: Path, n: int, seed: int, repeats: int | None) -> dict:
    table = LatencyTable.load(path, warn=False)
    meta = table.metadata
    space = get_space(meta["space"])
    if space.hash() != meta["space_hash"]:
        raise DeployvitError(f"{path}: space {space.name} changed since the table was profiled")
    used = {Arch.from_dict(row["arch"]).key for row in table.calibration.get("archs", []) + table.validation.get("archs", [])}
    archs = distinct_archs(space, n, np.random.default_rng(seed), used)
    settings = MeasureSettings.from_metadata(meta)
    if repeats:
        settings = replace(settings, repeats=repeats)
    device = meta["device_type"]
    apply_threads(settings, device)
    sums, predicted, measured, cvs = [], [], [], []
    for i, arch in enumerate(archs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            timing = measure_arch(arch, settings, device)
        sums.append(table.sum_us(arch))
        predicted.append(table.predict(arch))
        measured.append(timing.median_us)
        cvs.append(timing.cv)
        print(f"  [{i + 1}/{n}] {path.name}: predicted {predicted[-1] / 1e3:.3f} ms, measured {measured[-1] / 1e3:.3f} ms", file=sys.stderr)
    return {
        "table": str(path.relative_to(shipped_tables_dir().parent)) if path.is_relative_to(shipped_tables_dir().parent) else str(path),
        "space": meta["space"],
        "runtime": meta["runtime"],
        "precision": meta["precision"],
        "batch_size": meta["batch_size"],
        "repeats": settings.repeats,
        "threads": settings.threads,
        "clock": settings.clock,
        "calibrated": error_stats(predicted, measured).to_dict(),
        "uncalibrated": error_stats(sums, measured).to_dict(),
        "table_validation": table.validation.get("calibrated"),
        "median_cv": float(np.median(cvs)),
        "archs": [
            {"arch": a.to_dict(), "sum_us": s, "predicted_us": p, "measured_us": m, "cv": c}
            for a, s, p, m, c in zip(archs, sums, predicted, measured, cvs)
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", action="append", type=Path, help="table to check (repeatable); default: shipped tables for this device")
    parser.add_argument("--archs", type=int, default=30, help="fresh archs per table (default 30)")
    parser.add_argument("--seed", type=int, default=1000, help="seed of the fresh archs (default 1000; tables use 0 and 1)")
    parser.add_argument("--repeats", type=int, help="override the table's repeats")
    parser.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/lut_accuracy-<label>.json)")
    args = parser.parse_args(argv)
    try:
        paths = args.table or tables_for_this_machine()
        if not paths:
            raise DeployvitError("no shipped table was measured on this device; pass --table")
        if args.archs < 2:
            raise DeployvitError("--archs must be >= 2")
        rows = [evaluate(p, args.archs, args.seed, args.repeats) for p in paths]
    except DeployvitError as exc:
        print(f"lut_accuracy: {exc}", file=sys.stderr)
        return exc.exit_code
    label = LatencyTable.load(paths[0], warn=False).metadata["device_label"]
    print(f"\nLUT accuracy on {device_name(timing_device(label))}: {args.archs} fresh archs per table (seed {args.seed})")
    print(f"{'space':<16} {'runtime':<12} {'prec':<5} {'batch':>5} {'MAPE%':>6} {'p95%':>6} {'<=5%':>5} {'<=10%':>6} {'tau':>6} {'raw MAPE%':>9} {'cv':>6}")
    for r in rows:
        c, u = r["calibrated"], r["uncalibrated"]
        print(f"{r['space']:<16} {r['runtime']:<12} {r['precision']:<5} {r['batch_size']:>5} {c['mape']:>6.2f} {c['p95_abs_pct']:>6.2f} "
              f"{c['within_5']:>5.0%} {c['within_10']:>6.0%} {c['kendall_tau']:>6.3f} {u['mape']:>9.2f} {r['median_cv']:>6.1%}")
    out = args.out or RESULTS / f"lut_accuracy-{label}.json"
    save_result(out, "lut_accuracy", {
        "machine": machine_facts(timing_device(label)),
        "archs_per_table": args.archs,
        "seed": args.seed,
        "results": rows,
    }, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
