"""How long `deployvit --help` takes, from process start (goal: under 1 s on an idle machine).

Runs `python -m deployvit --help` as a fresh subprocess N times and records the median, min and
max wall time and the median CPU time of the child (user + system: on a loaded machine the CPU time
still says what the command costs, where the wall time only bounds it), plus the same for `python -c pass` (the interpreter's own start-up, which no change
to deployvit can remove) and `deployvit search --help` (imports the search command, not torch).
Wall time needs an idle machine: a loaded one only gives an upper bound.

    python benchmarks/cli_help.py [--repeats 7]

Prints a table and writes benchmarks/results/cli_help.json.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _record import RESULTS, save_result

CASES = {
    "python -c pass": ["-c", "pass"],
    "deployvit --help": ["-m", "deployvit", "--help"],
    "deployvit search --help": ["-m", "deployvit", "search", "--help"],
}


def run_times(args: list[str], repeats: int) -> tuple[list[float], list[float]]:
    """(wall s, child CPU s) of each of `repeats` runs of `python ARGS`, this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    wall, cpu = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, env=env)
        wall.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(RESULTS / "cli_help.json"))
    args = parser.parse_args()
    rows = {}
    print(f"{'command':<26}{'wall median s':>14}{'min s':>8}{'max s':>8}{'CPU median s':>14}")
    for name, argv in CASES.items():
        wall, cpu = run_times(argv, args.repeats)
        rows[name] = {"median_s": statistics.median(wall), "min_s": min(wall), "max_s": max(wall), "cpu_median_s": statistics.median(cpu),
                      "repeats": args.repeats}
        r = rows[name]
        print(f"{name:<26}{r['median_s']:>14.3f}{r['min_s']:>8.3f}{r['max_s']:>8.3f}{r['cpu_median_s']:>14.3f}")
    goal = rows["deployvit --help"]["median_s"] < 1.0
    print(f"goal `deployvit --help` < 1 s (median, wall): {'met' if goal else 'not met'}"
          f" (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    save_result(Path(args.out), "cli_help", {"wall": rows, "goal_met": goal, "load_average_1min": os.getloadavg()[0],
                                              "cpus": os.cpu_count()})


if __name__ == "__main__":
    main()
