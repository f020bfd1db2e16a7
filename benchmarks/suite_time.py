"""The test suite's wall time, idle and beside busy processes (the goal: under 5 minutes on 2 idle
cores, under 15 with a load average of 4).

    python benchmarks/suite_time.py                 # the README's test command, as it is
    python benchmarks/suite_time.py --busy 2        # with two CPU-bound processes beside it
    python benchmarks/suite_time.py --pytest-args "-n 0"   # one process instead of one worker per core

Records the wall time, the CPU time of the suite's processes, the load average before, during (sampled
every 5 s) and after, the pass/fail/skip counts and the 15 slowest tests, with the command, to
benchmarks/results/suite_time-<idle|busyN>.json. A busy process is a Python loop that never sleeps:
what another job on a shared CI machine does to the suite.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._record import RESULTS, save_result  # noqa: E402

BUSY = "while True:\n    pass\n"


def sample_load(stop: threading.Event, samples: list[float], every_s: float = 5.0) -> None:
    while not stop.wait(every_s):
        samples.append(os.getloadavg()[0])


def counts(tail: str) -> dict[str, int]:
    """pytest's last line: '800 passed, 30 skipped in ...' -> {'passed': 800, 'skipped': 30}."""
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", tail)}


def slowest(output: str, n: int = 15) -> list[str]:
    return [line.strip() for line in output.splitlines() if re.match(r"^\d+\.\d+s (call|setup|teardown)", line.strip())][:n]


def run_suite(pytest_args: list[str], busy: int) -> dict:
    busy_procs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
    samples: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_load, args=(stop, samples), daemon=True)
    load_before = os.getloadavg()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=15", *pytest_args]
    try:
        sampler.start()
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.monotonic() - started
    finally:
        stop.set()
        for p in busy_procs:
            p.kill()
            p.wait()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return {"pytest_command": shlex.join(["python", *cmd[1:]]), "exit_code": proc.returncode, "wall_s": round(wall, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "busy_processes": busy, "cores": os.cpu_count(),
            "load_before": [round(x, 2) for x in load_before], "load_during_mean": round(sum(samples) / len(samples), 2) if samples else None,
            "load_during_max": round(max(samples), 2) if samples else None, "counts": counts(tail), "last_line": tail,
            "slowest": slowest(proc.stdout), "failed": [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--busy", type=int, default=0, help="CPU-bound processes to run beside the suite (default 0)")
    ap.add_argument("--pytest-args", default="", help="extra pytest arguments, e.g. '-n 0' or a test file")
    ap.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/suite_time-<idle|busyN>.json)")
    args = ap.parse_args(argv)
    result = run_suite(shlex.split(args.pytest_args), args.busy)
    print(f"{'busy':>4} {'cores':>5} {'load before':>11} {'load during':>11} {'wall':>8} {'cpu':>8}  result")
    print(f"{args.busy:>4} {result['cores']:>5} {result['load_before'][0]:>11.2f} {result['load_during_mean'] or 0:>11.2f} "
          f"{result['wall_s'] / 60:>6.1f} m {result['cpu_s'] / 60:>6.1f} m  {result['last_line']}")
    for line in result["slowest"] + result["failed"]:
        print("  " + line)
    out = args.out or RESULTS / f"suite_time-{'idle' if args.busy == 0 else f'busy{args.busy}'}.json"
    save_result(out, "suite_time", result, argv)
    return 0 if result["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
