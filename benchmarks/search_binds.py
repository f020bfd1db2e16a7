"""Does a latency budget bind on every GPU? The family chosen, the winner's latency / budget, the time.

For each catalogue GPU x batch (1, 64) x budget (0.5, 1, 2, 5, 10, 20 ms), TensorRT fp16 by default:

1. `deployvit search --space auto --device GPU --runtime R --precision fp16 --batch-size B --latency
   BUDGET` planned as the command plans it (`search.plan.plan_search`): the families' spans on that
   target from the estimates the resolver builds on demand, and the family `--space auto` picks
   (deployvit/search/families.py: the most central span containing the budget; with the score on a
   CPU, the smallest family with room around it), or the one line saying no family reaches it;
2. that search, run (`run_plan`, DSS score, on this machine), with a small evolution so the
   benchmark ends: population 12, 3 generations of 4 mutations + 4 crossovers (`--population`,
   `--generations`);
3. the winner's predicted latency / budget (binds: >= 0.85 and no "does not bind" note), the
   search's wall and CPU time, and the yardstick: one DeiT-Tiny forward+backward at 224 on one
   thread of this machine (`_yardstick.py`), so times compare across machines.

DSS on the big families costs minutes of CPU per arch here (`family_dss_cost.py`):
`--search-families vit-tiny,vit-small` records the choice everywhere but searches only in those.
Wall times need an idle machine; CPU times hold on a busy one.

    python benchmarks/search_binds.py [--gpus h100,l4] [--batches 1] [--budgets 0.5,1] [--runtime tensorrt]

Prints a table and writes benchmarks/results/search_binds.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _record import RESULTS, save_result
from _yardstick import deit_tiny_step
from deployvit.errors import DeployvitError
from deployvit.latency.gpus import load_catalogue
from deployvit.search.budgets import Constraints, budget_label
from deployvit.search.evolution import EvolutionConfig
from deployvit.search.families import BIND_SHARE
from deployvit.search.auto import plan_spaces
from deployvit.search.plan import plan_search, run_plan
from deployvit.search.run import SearchRequest, scores_on_cpu
from deployvit.spaces import FAMILIES


def one_budget(gpu, runtime: str, batch: int, budget_ms: float, config: EvolutionConfig, search_in: set[str], workdir: Path) -> dict:
    """The family `--space auto` chooses for the budget on the target, and the search there (when
    the family is in `search_in`): its winner, whether it binds, and its times."""
    row = {"gpu": gpu.key, "runtime": runtime, "precision": "fp16", "batch_size": batch, "budget_ms": budget_ms}
    request = SearchRequest(constraints=Constraints(max_latency=[budget_ms * 1e3]), device=gpu.key, runtime=runtime, precision="fp16",
                            batch_size=batch, config=config, out=str(workdir / f"run-{time.monotonic_ns()}"))
    row["command"] = request.command() + f" --population {config.population} --generations {config.generations}"
    lines: list[str] = []
    c0, w0 = time.process_time(), time.perf_counter()
    try:
        ((family, _),) = plan_spaces(request, scores_on_cpu(request)).groups
    except DeployvitError as exc:
        return {**row, "family": None, "refused": str(exc)}
    row["family"] = family
    if family not in search_in:
        return row
    result = run_plan(plan_search(request, echo=lines.append), echo=lines.append, progress=False)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    winner = result.winners.get(budget_label(budget_ms * 1e3))
    ratio = winner.metrics["latency"] / (budget_ms * 1e3) if winner else None
    binds = ratio is not None and ratio >= BIND_SHARE and not any("does not bind" in line for line in lines)
    return {**row, "winner_latency_us": winner.metrics["latency"] if winner else None, "latency_over_budget": ratio, "binds": binds,
            "winner": winner.arch.summary() if winner else None, "evaluated": result.evaluated, "lines": lines,
            "search_wall_s": wall, "search_cpu_s": cpu}


def one_target(gpu, runtime: str, batch: int, budgets_ms: list[float], config: EvolutionConfig, search_in: set[str],
               workdir: Path) -> list[dict]:
    rows = []
    for budget_ms in budgets_ms:
        rows.append(one_budget(gpu, runtime, batch, budget_ms, config, search_in, workdir))
        print(_line(rows[-1]), flush=True)
    return rows


def _line(row: dict) -> str:
    target = f"{row['gpu']} {row['runtime']} b{row['batch_size']}"
    if row["family"] is None:
        side = "above" if " is above " in row["refused"] else "below"
        return f"{target:<24}{row['budget_ms']:>8g}  {'-':<10}  {side} every family's span ({row['refused'].split('; ')[-1]})"
    if "binds" not in row:
        return f"{target:<24}{row['budget_ms']:>8g}  {row['family']:<10}  (search skipped: --search-families)"
    ratio = f"{row['latency_over_budget']:.3f}" if row["latency_over_budget"] is not None else "-"
    return (f"{target:<24}{row['budget_ms']:>8g}  {row['family']:<10}{ratio:>8}{'yes' if row['binds'] else 'NO':>6}"
            f"{row['search_wall_s']:>9.1f}{row['search_cpu_s']:>9.1f}{row['evaluated']:>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", default="", help="Comma-separated catalogue keys (default: the whole catalogue).")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--budgets", default="0.5,1,2,5,10,20", help="Latency budgets in ms.")
    parser.add_argument("--runtime", default="tensorrt")
    parser.add_argument("--population", type=int, default=12)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--search-families", default=",".join(FAMILIES), help="Search only in these families (others: choice only).")
    parser.add_argument("--out", default=str(RESULTS / "search_binds.json"))
    args = parser.parse_args()
    catalogue = load_catalogue()
    gpus = [catalogue.get(k) for k in args.gpus.split(",") if k] or list(catalogue.gpus.values())
    config = EvolutionConfig(population=args.population, generations=args.generations, parents=4, mutations=4, crossovers=4)
    yardstick = deit_tiny_step()
    print(f"yardstick: {yardstick['what']}: {yardstick['cpu_s'] * 1e3:.0f} ms CPU, {yardstick['wall_s'] * 1e3:.0f} ms wall")
    print(f"{'target':<24}{'budget ms':>8}  {'family':<10}{'lat/bud':>8}{'binds':>6}{'wall s':>9}{'CPU s':>9}{'evals':>6}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="search_binds-") as tmp:
        os.environ["DEPLOYVIT_HOME"] = str(Path(tmp) / "home")  # estimates built on demand land here, not in the user's home
        for batch in (int(b) for b in args.batches.split(",")):
            for gpu in gpus:
                rows += one_target(gpu, args.runtime, batch, [float(b) for b in args.budgets.split(",")], config,
                                   set(args.search_families.split(",")), Path(tmp))
    searched = [r for r in rows if "binds" in r]
    print(f"{sum(r['binds'] for r in searched)} of {len(searched)} searched budgets bind; "
          f"{sum(r['family'] is None for r in rows)} of {len(rows)} reach no family")
    save_result(Path(args.out), "search_binds", {
        "latency_source": "estimated (deployvit.latency.estimate, built on demand by the resolver), not measured", "yardstick": yardstick,
        "search": {"score": "dss", **{k: getattr(config, k) for k in ("population", "generations", "parents", "mutations", "crossovers")}},
        "rows": rows})


if __name__ == "__main__":
    main()
