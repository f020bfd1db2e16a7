"""`deployvit profile --calibrate K` on this CPU, from the shipped CPU tables (made on another machine).

For every space and runtime: the calibration command exactly as a user types it, in a fresh process
with a fresh `DEPLOYVIT_HOME`; recorded are its validation on the held-out archs measured here (MAPE,
p90, share within 5% / 10%, Spearman, Kendall tau), the same numbers for the shipped table as it was,
for every correction model, and the **process CPU time** of the whole command (imports, building
and exporting the archs, timing). The issue's target: K = 10 gives >= 90% of 20 held-out archs
within 10% in under 2 minutes of CPU.

The tables are timed with `--threads 1` on the process CPU clock (`--clock auto`), which other jobs
on a shared machine barely move; wall-clock seconds are recorded too but only mean something on an
idle machine (re-run there before quoting them).

    python benchmarks/calibration.py [--spaces test autoformer-tiny] [--runtimes onnxruntime eager] [-k 10] [--val-archs 20]

Prints a table and writes benchmarks/results/calibration-cpu.json (or --out).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _record import RESULTS, save_result
from deployvit.latency.table import LatencyTable, table_filename

REPO = Path(__file__).resolve().parent.parent


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_case(space: str, runtime: str, k: int, val_archs: int, seed: int) -> dict:
    """One calibration in a fresh process and home; its table's validation and its CPU time."""
    base = REPO / "latency_tables" / "cpu" / table_filename(space, runtime, "fp32", 1)
    args = ["profile", "--device", "cpu", "--space", space, "--runtime", runtime, "--precision", "fp32", "--batch-size", "1",
            "--threads", "1", "--calibrate", str(k), "--val-archs", str(val_archs), "--seed", str(seed), "--base", str(base)]
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "DEPLOYVIT_HOME": home, "PYTHONWARNINGS": "ignore"}
        cpu0, wall0 = children_cpu_s(), time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "deployvit", *args], capture_output=True, text=True, env=env)
        cpu, wall = children_cpu_s() - cpu0, time.perf_counter() - wall0
        if proc.returncode != 0:
            raise SystemExit(f"{space} {runtime}: exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
        table = LatencyTable.load(Path(home) / "latency_tables" / "cpu" / table_filename(space, runtime, "fp32", 1, calibrated=True),
                                  warn=False)
    val = table.validation
    return {
        "space": space, "runtime": runtime, "k": k, "val_archs": val_archs, "seed": seed,
        "command": "deployvit " + " ".join(args),
        "process_cpu_s": round(cpu, 1), "wall_s_loaded_machine": round(wall, 1),
        "source": table.metadata["calibrated_on"], "base": table.calibration["base"]["describe"],
        "model": table.calibration["model"], "correction": table.calibration["correction"],
        "calibrated": val["calibrated"], "base_as_it_was": val["uncalibrated"], "models": val["models"],
        "models_not_fitted": val["models_not_fitted"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spaces", nargs="+", default=["test", "autoformer-tiny"])
    parser.add_argument("--runtimes", nargs="+", default=["onnxruntime", "eager"])
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--val-archs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "calibration-cpu.json")
    args = parser.parse_args()
    rows = [run_case(space, runtime, args.k, args.val_archs, args.seed) for space in args.spaces for runtime in args.runtimes]
    print(f"{'space':16} {'runtime':12} {'CPU s':>6} {'MAPE':>6} {'p90':>6} {'<=5%':>5} {'<=10%':>6} {'rho':>6} {'tau':>6}  base as it was")
    for r in rows:
        c, b = r["calibrated"], r["base_as_it_was"]
        print(f"{r['space']:16} {r['runtime']:12} {r['process_cpu_s']:6.1f} {c['mape']:5.2f}% {c['p90_abs_pct']:5.2f}% {c['within_5']:5.0%} "
              f"{c['within_10']:6.0%} {c['spearman']:6.3f} {c['kendall_tau']:6.3f}  MAPE {b['mape']:.1f}%, within 10% {b['within_10']:.0%}")
    met = all(r["calibrated"]["within_10"] >= 0.9 and r["process_cpu_s"] < 120 for r in rows)
    print(f"target (>= 90% within 10%, < 120 s of CPU) {'met' if met else 'NOT met'} in every case")
    save_result(args.out, "calibration", {
        "note": "process CPU time of the whole command (children's rusage); wall seconds were taken on a shared, loaded machine: "
                "re-run on an idle machine before quoting them",
        "target_met": met, "cases": rows,
    })


if __name__ == "__main__":
    main()
