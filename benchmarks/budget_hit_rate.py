"""Budget hit-rate: the share of `search` winners that meet their latency budget when measured here.

For each latency table kind (a full profile made on this machine, a calibration made here from the
shipped table, and the shipped table of another machine standing in for an estimate, since the
estimator covers GPUs only), each budget (log-spaced fractions of the space's span under that table)
and each seed: search once picking on the table alone (`measure_top=0`) and once picking on a
measurement of the top 3 candidates (the default when the table describes this machine), then time
the winner here like the table and count whether it meets the budget.

CPU timings use the process CPU clock with one thread (robust to neighbours); the tables used are
recorded. A tiny setting proves the script works; the numbers for the README need an idle machine and
the full setting:

    python benchmarks/budget_hit_rate.py [--space test] [--runtime eager] [--budgets 5] [--seeds 3] [--tiny]

Prints a table and writes benchmarks/results/budget_hit_rate-cpu.json (or --out).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _record import RESULTS, save_result
from deployvit.latency.table import LatencyTable, table_filename
from deployvit.search.predictor import MetricModel
from deployvit.spaces import get_space

REPO = Path(__file__).resolve().parent.parent


def make_tables(space: str, runtime: str, home: Path, tiny: bool) -> dict[str, Path]:
    """The three tables: a full profile and a calibration made here (CLI, as a user types them), the shipped one."""
    base = REPO / "latency_tables" / "cpu" / table_filename(space, runtime, "fp32", 1)
    common = ["--device", "cpu", "--space", space, "--runtime", runtime, "--precision", "fp32", "--batch-size", "1", "--threads", "1"]
    fast = ["--calib-archs", "4", "--val-archs", "4", "--max-time", "0"] if tiny else []
    env = {**os.environ, "DEPLOYVIT_HOME": str(home), "PYTHONWARNINGS": "ignore"}
    full, calibrated = home / "full.json", home / "calibrated.json"
    for args in (["profile", *common, "--out", str(full), *fast],
                 ["profile", *common, "--calibrate", "4" if tiny else "10", "--base", str(base), "--out", str(calibrated),
                  *(["--val-archs", "4", "--max-time", "0"] if tiny else [])]):
        proc = subprocess.run([sys.executable, "-m", "deployvit", *args], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args[:2])}: exit {proc.returncode}: {proc.stderr.strip()[-400:]}")
    return {"full profile (here)": full, "calibrated (here)": calibrated, "shipped (another machine)": base}


def budgets_for(space, table_path: Path, n: int) -> list[float]:
    lo, hi = MetricModel(space, LatencyTable.load(table_path, warn=False)).range("latency")
    return [lo * (hi / lo) ** f for f in ([0.5] if n == 1 else [0.2 + 0.6 * i / (n - 1) for i in range(n)])]


def winner_meets(space, table_path: Path, budget_us: float, seed: int, measure_top: int, search_cfg: dict, out: Path) -> dict:
    from deployvit import search
    from deployvit.latency.profile import measure_archs, table_settings

    result = search(latency=budget_us, space=space.name, table=str(table_path), measure_top=measure_top, out=str(out), echo=None,
                    seed=seed, **search_cfg)
    if result.winner is None:
        return {"winner": None, "met": False}
    table = LatencyTable.load(table_path, warn=False)
    settings, device = table_settings(table.metadata)
    t = measure_archs([result.winner], settings, device, seed=seed)[result.winner.key]
    return {"measured_us": t.latency_us, "predicted_us": table.predict(result.winner), "met": t.latency_us <= budget_us}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="test")
    parser.add_argument("--runtime", default="eager")
    parser.add_argument("--budgets", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="a few seconds of search and fast tables: proves the script works")
    parser.add_argument("--out", type=Path, default=RESULTS / "budget_hit_rate-cpu.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    space = get_space(args.space)
    cfg = {"population": 8, "generations": 2, "parents": 3, "mutations": 4, "crossovers": 4} if args.tiny else {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        os.environ["DEPLOYVIT_HOME"] = str(home)
        tables = make_tables(args.space, args.runtime, home, args.tiny)
        for kind, path in tables.items():
            for mode, top in (("table only", 0), ("re-measured top 3", 3)):
                hits = [winner_meets(space, path, b, seed, top, cfg, home / f"run-{len(rows)}-{i}-{seed}")
                        for i, b in enumerate(budgets_for(space, path, args.budgets)) for seed in range(args.seeds)]
                rate = sum(h["met"] for h in hits) / len(hits)
                rows.append({"table": kind, "pick": mode, "hit_rate": rate, "n": len(hits), "runs": hits})
                print(f"{kind:28} {mode:18} {rate:6.0%} of {len(hits)} winners meet their budget when measured here")
    save_result(args.out, "budget_hit_rate", {
        "space": args.space, "runtime": args.runtime, "tiny": args.tiny, "rows": rows,
        "note": "process CPU time clock, one thread; --tiny proves the script works, its rates are not the result "
                "(re-run the full setting on an idle machine)" if args.tiny else "process CPU time clock, one thread",
    })
    if not all(math.isfinite(r["hit_rate"]) for r in rows):
        raise SystemExit("a hit rate is undefined")


if __name__ == "__main__":
    main()
