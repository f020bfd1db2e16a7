"""Do the ViT families reach every latency budget between DeiT-Tiny's and ViT-H/14's on every GPU?

For every catalogue GPU x runtime (tensorrt, cudagraph) x batch (1, 64), fp16, build each family's
estimated table in memory (`deployvit.latency.estimate`), and report each family's span (min / max
arch), the neighbours' overlaps, the largest hole between a family's reachable latencies, and where
DeiT-Ti and ViT-H/14 sit. Two levels of check (`deployvit.search.families.LadderCheck.problems`):

- requirement: spans contiguous, holes small enough for a winner within 15% under any budget in
  range, the ladder starting below DeiT-Ti and ending above ViT-H/14. Exit 1 when one fails.
- design margins (so a re-fitted estimator, +-30% per regime, keeps the requirement): each family
  spans >= 1.5x, neighbours overlap by >= 1.2x, holes <= 1.10x, ends >= 1.1x beyond the references.

The estimate is a model, not a measurement (see README "Estimated latency tables"); re-run this
after the estimator or the catalogue changes:

    python benchmarks/family_spans.py [--gpus h100,t4] [--runtimes tensorrt] [--batches 1]

Prints a table (ms) and writes benchmarks/results/family_spans.json (us).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _record import RESULTS, save_result
from deployvit.latency.estimate import MODEL_VERSION, fitted
from deployvit.latency.gpus import load_catalogue
from deployvit.search.families import estimated_ladder
from deployvit.spaces import FAMILIES

DESIGN = {"min_span": 1.5, "min_overlap": 1.2, "max_step": 1.10, "reach": 1.1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", default="", help="Comma-separated catalogue keys (default: the whole catalogue).")
    parser.add_argument("--runtimes", default="tensorrt,cudagraph")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--out", default=str(RESULTS / "family_spans.json"))
    args = parser.parse_args()
    catalogue = load_catalogue()
    gpus = [catalogue.get(k) for k in args.gpus.split(",") if k] or list(catalogue.gpus.values())
    rows, failed, short = [], [], []
    print(f"{'target':<38}" + "".join(f"{f:>16}" for f in FAMILIES) + f"{'overlap':>8}{'hole':>7}{'DeiT-Ti':>9}{'ViT-H/14':>9}")
    for runtime in args.runtimes.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            for gpu in gpus:
                check = estimated_ladder(gpu, runtime, "fp16", batch)
                failed += check.problems()
                short += check.problems(**DESIGN)
                rows.append({"gpu": gpu.key, "runtime": runtime, "precision": "fp16", "batch_size": batch,
                             "spans_us": {s.family: [round(s.min_us, 1), round(s.max_us, 1)] for s in check.spans},
                             "overlaps": [round(o, 3) for o in check.overlaps], "max_step": {k: round(v, 4) for k, v in check.steps.items()},
                             "deit_ti_us": round(check.low_us, 1), "vit_h14_us": round(check.high_us, 1)})
                print(f"{check.target:<38}" + "".join(f"{s.min_us / 1e3:>7.2f}-{s.max_us / 1e3:<8.2f}" for s in check.spans)
                      + f"{min(check.overlaps):>8.2f}{max(check.steps.values()):>7.3f}{check.low_us / 1e3:>9.2f}{check.high_us / 1e3:>9.2f}")
    worst = {
        "min_span": min(min(s[1] / s[0] for s in r["spans_us"].values()) for r in rows),
        "min_overlap": min(min(r["overlaps"]) for r in rows),
        "max_step": max(max(r["max_step"].values()) for r in rows),
        "below_deit_ti": min(r["deit_ti_us"] / r["spans_us"][FAMILIES[0]][0] for r in rows),
        "above_vit_h14": min(r["spans_us"][FAMILIES[-1]][1] / r["vit_h14_us"] for r in rows),
    }
    print("worst over all targets: " + ", ".join(f"{k} {v:.3f}" for k, v in worst.items()))
    print(f"requirement: {'holds' if not failed else 'FAILS'}" + "".join(f"\n  {p}" for p in failed))
    print(f"design margins {DESIGN}: {'hold' if not short else 'short'}" + "".join(f"\n  {p}" for p in short))
    fit = fitted()
    save_result(Path(args.out), "family_spans",
                {"source": "estimated (deployvit.latency.estimate), not measured",
                 "estimator": {"model_version": MODEL_VERSION, "fitted_on": fit.date, "catalogue_gpus": len(catalogue.gpus)},
                 "design_margins": DESIGN, "worst": worst,
                 "requirement_problems": failed, "design_problems": short, "targets": rows})
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
