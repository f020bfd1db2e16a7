"""Search speed and quality.

1. Constraint evaluation: archs/s of predicting latency + FLOPs + params for a population (one CPU
   thread), split into encoding (once per new arch) and the vectorised prediction.
2. Wall time of the embedded default `deployvit search --latency 5ms` (fresh process).
3. Evolution vs random search at an equal number of DSS evaluations, median over seeds.

    python benchmarks/search_speed.py [--seeds 3] [--space autoformer-tiny] [--skip-default]

Prints a table and writes benchmarks/results/search_speed.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from _record import RESULTS, save_result
from deployvit.latency.table import LatencyTable, default_table
from deployvit.search.budgets import Constraints
from deployvit.search.evolution import Evolution, EvolutionConfig
from deployvit.search.predictor import MetricModel
from deployvit.search.scores import DSSScore
from deployvit.spaces import get_space



def constraint_speed(space_name: str, n: int = 100_000) -> dict:
    torch.set_num_threads(1)
    space = get_space(space_name)
    table = LatencyTable.load(default_table(space_name), warn=False)
    model = MetricModel(space, table)
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(n)]
    t0 = time.perf_counter()
    enc = model.encode(archs)
    t1 = time.perf_counter()
    model.predict(enc)
    t2 = time.perf_counter()
    return {
        "space": space_name, "archs": n, "table": str(table.path),
        "encode_archs_per_s": n / (t1 - t0), "predict_archs_per_s": n / (t2 - t1),
        "end_to_end_archs_per_s": n / (t2 - t0),
    }


def default_search_wall_time() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "deployvit", "search", "--latency", "5ms", "--no-progress"],
                              cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    return {"command": "deployvit search --latency 5ms", "exit_code": proc.returncode, "wall_s": wall,
            "first_line": (proc.stdout or proc.stderr).splitlines()[0] if (proc.stdout or proc.stderr) else "",
            "stderr_tail": proc.stderr.strip().splitlines()[-1:] if proc.returncode else []}


def evolution_vs_random(space_name: str, seeds: int, config: dict, flops_fraction: float) -> dict:
    torch.set_num_threads(2)
    space = get_space(space_name)
    model = MetricModel(space)
    lo, hi = model.range("flops")
    constraints = Constraints(max_flops=lo + flops_fraction * (hi - lo))
    rows = []
    for seed in range(seeds):
        score = DSSScore(space, seed=0)  # one scoring function for every run: only the search differs
        row = {"seed": seed}
        for method in ("evolution", "random"):
            t0 = time.perf_counter()
            evo = Evolution(space, model, constraints, score, EvolutionConfig(method=method, seed=seed, **config))
            winner = evo.run()[None]
            row[method] = {"best_dss": winner.score, "evaluations": len(evo.state.evaluated),
                           "flops": winner.metrics["flops"], "wall_s": time.perf_counter() - t0}
        rows.append(row)
    med = {m: statistics.median(r[m]["best_dss"] for r in rows) for m in ("evolution", "random")}
    return {"space": space_name, "max_flops": constraints.max_flops, "config": config, "runs": rows,
            "median_best_dss": med, "evolution_beats_random": med["evolution"] > med["random"],
            "evolution_wins": sum(r["evolution"]["best_dss"] > r["random"]["best_dss"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="autoformer-tiny")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--population", type=int, default=20)
    parser.add_argument("--generations", type=int, default=6)
    parser.add_argument("--flops-fraction", type=float, default=0.5, help="FLOPs budget position in the space's range.")
    parser.add_argument("--skip-default", action="store_true", help="Do not time the default search.")
    args = parser.parse_args()
    config = {"population": args.population, "generations": args.generations, "parents": 10,
              "mutations": args.population // 2, "crossovers": args.population // 2}
    results = {"constraints": constraint_speed(args.space)}
    if not args.skip_default:
        results["default_search"] = default_search_wall_time()
    results["evolution_vs_random"] = evolution_vs_random(args.space, args.seeds, config, args.flops_fraction)
    results["machine"] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    c = results["constraints"]
    print(f"{'measure':<46} {'value':>14}")
    print(f"{'constraint eval, encode (archs/s, 1 thread)':<46} {c['encode_archs_per_s']:>14,.0f}")
    print(f"{'constraint eval, predict (archs/s, 1 thread)':<46} {c['predict_archs_per_s']:>14,.0f}")
    print(f"{'constraint eval, end to end (archs/s)':<46} {c['end_to_end_archs_per_s']:>14,.0f}")
    if "default_search" in results:
        d = results["default_search"]
        print(f"{'default search wall time (s), exit ' + str(d['exit_code']):<46} {d['wall_s']:>14.1f}")
    e = results["evolution_vs_random"]
    for method in ("evolution", "random"):
        print(f"{'median best DSS, ' + method:<46} {e['median_best_dss'][method]:>14.1f}")
    print(f"{'evolution wins (of ' + str(args.seeds) + ' seeds)':<46} {e['evolution_wins']:>14}")
    save_result(RESULTS / "search_speed.json", "search_speed", results)


if __name__ == "__main__":
    main()
