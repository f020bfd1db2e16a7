"""Search speed and quality.

1. Constraint evaluation: archs/s of predicting latency + FLOPs + params for a population (one CPU
   thread), split into encoding (once per new arch) and the vectorised prediction.
2. One DSS evaluation (autoformer-tiny, 224 px): ms per arch on the previous sequential path
   (`DSSScore.reference`, torch's thread setting, and with one thread) and on the current one
   (`score_many`: one intra-op thread per evaluation, archs side by side), wall and CPU time.
3. The default command `deployvit search --flops 1.5G` from process start (fresh process, wall and
   CPU time, load average), and AutoFormer's loop as it ran before (`--screen 1 --mutations 25
   --crossovers 25`, every generation: 1,050 evaluations): the default's winner must score at least
   as high.
4. Screened evolution (the default), AutoFormer's unscreened loop and random search at an equal
   number of DSS evaluations, median over seeds.

The machine is often shared: CPU times and the load average are recorded next to wall times.

    python benchmarks/search_speed.py [--seeds 3] [--space autoformer-tiny] [--skip-default]

Prints a table and writes benchmarks/results/search_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from pathlib import Path

import numpy as np
import torch

from _record import RESULTS, save_result
from deployvit.latency.resolve import TableQuery, resolve_table
from deployvit.search.budgets import Constraints
from deployvit.search.evolution import Evolution, EvolutionConfig
from deployvit.search.predictor import MetricModel
from deployvit.search.scores import DSSScore
from deployvit.spaces import get_space



def constraint_speed(space_name: str, n: int = 100_000) -> dict:
    torch.set_num_threads(1)
    space = get_space(space_name)
    table = resolve_table(TableQuery(space.name, space.hash()), space=space).table  # what `search` would use
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


def _cpu_s(who: int = resource.RUSAGE_SELF) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _timed(fn) -> tuple[object, float, float]:
    t0, c0 = time.perf_counter(), _cpu_s()
    out = fn()
    return out, time.perf_counter() - t0, _cpu_s() - c0


def dss_evaluation(space_name: str, n: int) -> dict:
    """ms per DSS evaluation before (sequential) and after (side by side), on the same archs."""
    space = get_space(space_name)
    score = DSSScore(space, seed=0)
    rng = np.random.default_rng(1)
    archs = [space.sample(rng) for _ in range(n)]
    for arch in archs:  # the per-position weight norms are cached in both paths: fill the cache first
        score.reference(arch)
    default_threads = torch.get_num_threads()
    before, wall_b, cpu_b = _timed(lambda: [score.reference(a) for a in archs])
    torch.set_num_threads(1)
    before1, wall_b1, cpu_b1 = _timed(lambda: [score.reference(a) for a in archs])
    torch.set_num_threads(default_threads)
    after, wall_a, cpu_a = _timed(lambda: score.score_many(archs))
    single = DSSScore(space, seed=0, threads=1)  # the current evaluation alone: no extraction, one thread
    single.score_many(archs)  # fill its weight-norm cache like the others'
    _, wall_a1, cpu_a1 = _timed(lambda: single.score_many(archs))
    rel = max(abs(a - b) / abs(b) for a, b in zip(after, before1))  # same arithmetic: one thread each
    rel_threads = max(abs(a - b) / abs(b) for a, b in zip(after, before))  # another OpenMP split of the sums
    ms = lambda t: 1000 * t / n  # noqa: E731
    return {"space": space_name, "archs": n, "torch_threads": default_threads, "scoring_threads": score.threads,
            "before_ms": ms(wall_b), "before_cpu_ms": ms(cpu_b), "before_1thread_ms": ms(wall_b1), "before_1thread_cpu_ms": ms(cpu_b1),
            "after_ms": ms(wall_a), "after_cpu_ms": ms(cpu_a), "after_1thread_ms": ms(wall_a1), "after_1thread_cpu_ms": ms(cpu_a1),
            "max_rel_diff": rel, "max_rel_diff_vs_default_threads": rel_threads}


def search_command(args: list[str]) -> dict:
    """One `deployvit search` in a fresh process (wall from process start, CPU of the child) and its winner."""
    with tempfile.TemporaryDirectory() as tmp:
        c0, load = _cpu_s(resource.RUSAGE_CHILDREN), os.getloadavg()
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "deployvit", "search", *args, "--no-progress", "--out", "run"],
                              cwd=tmp, capture_output=True, text=True)
        wall, cpu = time.perf_counter() - t0, _cpu_s(resource.RUSAGE_CHILDREN) - c0
        lines = (Path(tmp) / "run/log.jsonl").read_text().splitlines() if proc.returncode == 0 else []
    final = json.loads(lines[-1]) if lines else {}
    winner = next(iter(final.get("winners", {}).values()), None)
    return {"command": " ".join(["deployvit", "search", *args]), "exit_code": proc.returncode, "wall_s": wall, "cpu_s": cpu,
            "load_average_before": load, "evaluated": json.loads(lines[-2])["evaluated"] if len(lines) > 1 else None,
            "stopped_at_generation": final.get("stopped_at_generation"), "winner_dss": winner and winner["score"],
            "winner": winner and winner["arch"], "stderr_tail": proc.stderr.strip().splitlines()[-2:]}


def default_search(generations: int) -> dict:
    """The default command against AutoFormer's whole loop as the search ran before screening and
    patience (every drawn child scored, all generations: 1,050 evaluations), same seed."""
    default = search_command(["--flops", "1.5G"])
    full = search_command(["--flops", "1.5G", "--screen", "1", "--mutations", "25", "--crossovers", "25", "--patience", str(generations)])
    ok = None if default["winner_dss"] is None or full["winner_dss"] is None else default["winner_dss"] >= full["winner_dss"]
    return {"default": default, "all_generations": full, "default_at_least_as_good": ok}


#: searchers compared at equal evaluations: screened evolution (the default), AutoFormer's loop, random
SEARCHERS = {"evolution": EvolutionConfig().screen, "evolution_unscreened": 1, "random": 1}


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
        for method, screen in SEARCHERS.items():
            t0 = time.perf_counter()
            kind = "random" if method == "random" else "evolution"
            evo = Evolution(space, model, constraints, score,
                            EvolutionConfig(method=kind, seed=seed, patience=None, screen=screen, **config))
            winner = evo.run()[None]
            row[method] = {"best_dss": winner.score, "evaluations": len(evo.state.evaluated),
                           "flops": winner.metrics["flops"], "wall_s": time.perf_counter() - t0}
        rows.append(row)
    med = {m: statistics.median(r[m]["best_dss"] for r in rows) for m in SEARCHERS}
    return {"space": space_name, "max_flops": constraints.max_flops, "config": config, "runs": rows,
            "median_best_dss": med, "evolution_beats_random": med["evolution"] > med["random"],
            "evolution_wins": sum(r["evolution"]["best_dss"] > r["random"]["best_dss"] for r in rows),
            "screened_beats_unscreened": sum(r["evolution"]["best_dss"] > r["evolution_unscreened"]["best_dss"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="autoformer-tiny")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--population", type=int, default=20)
    parser.add_argument("--generations", type=int, default=6)
    parser.add_argument("--flops-fraction", type=float, default=0.5, help="FLOPs budget position in the space's range.")
    parser.add_argument("--dss-archs", type=int, default=4, help="Archs timed per DSS path.")
    parser.add_argument("--skip-default", action="store_true", help="Do not time the default search.")
    args = parser.parse_args()
    config = {"population": args.population, "generations": args.generations, "parents": 10,
              "mutations": args.population // 2, "crossovers": args.population // 2}
    results = {"constraints": constraint_speed(args.space)}
    torch.set_num_threads(os.cpu_count() or 1)
    results["dss_evaluation"] = dss_evaluation("autoformer-tiny", args.dss_archs)
    if not args.skip_default:
        results["default_search"] = default_search(EvolutionConfig().generations)
    results["evolution_vs_random"] = evolution_vs_random(args.space, args.seeds, config, args.flops_fraction)
    results["machine"] = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                          "load_average_end": os.getloadavg()}
    c = results["constraints"]
    print(f"{'measure':<46} {'value':>14}")
    print(f"{'constraint eval, encode (archs/s, 1 thread)':<46} {c['encode_archs_per_s']:>14,.0f}")
    print(f"{'constraint eval, predict (archs/s, 1 thread)':<46} {c['predict_archs_per_s']:>14,.0f}")
    print(f"{'constraint eval, end to end (archs/s)':<46} {c['end_to_end_archs_per_s']:>14,.0f}")
    d = results["dss_evaluation"]
    print(f"{'DSS ms/eval before (' + str(d['torch_threads']) + ' threads), wall / CPU':<46} {d['before_ms']:>7.0f} / {d['before_cpu_ms']:.0f}")
    print(f"{'DSS ms/eval before (1 thread), wall / CPU':<46} {d['before_1thread_ms']:>7.0f} / {d['before_1thread_cpu_ms']:.0f}")
    print(f"{'DSS ms/eval after (' + str(d['scoring_threads']) + ' side by side), wall / CPU':<46} {d['after_ms']:>7.0f} / {d['after_cpu_ms']:.0f}")
    print(f"{'DSS ms/eval after (1 thread), wall / CPU':<46} {d['after_1thread_ms']:>7.0f} / {d['after_1thread_cpu_ms']:.0f}")
    print(f"{'DSS max relative difference':<46} {d['max_rel_diff']:>14.1e}")
    if "default_search" in results:
        for key in ("default", "all_generations"):
            r = results["default_search"][key]
            print(f"{r['command'][:46]:<46} {r['wall_s']:>7.1f} s wall, {r['cpu_s']:.1f} s CPU, {r['evaluated']} evals, "
                  f"DSS {r['winner_dss'] or float('nan'):,.1f}, exit {r['exit_code']}")
        print(f"{'default winner at least as good':<46} {str(results['default_search']['default_at_least_as_good']):>14}")
    e = results["evolution_vs_random"]
    for method in SEARCHERS:
        print(f"{'median best DSS, ' + method:<46} {e['median_best_dss'][method]:>14.1f}")
    print(f"{'evolution beats random (of ' + str(args.seeds) + ' seeds)':<46} {e['evolution_wins']:>14}")
    print(f"{'screened beats unscreened (of ' + str(args.seeds) + ' seeds)':<46} {e['screened_beats_unscreened']:>14}")
    save_result(RESULTS / "search_speed.json", "search_speed", results)


if __name__ == "__main__":
    main()
