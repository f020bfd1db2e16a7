"""What one DSS evaluation costs per ViT family on this CPU, in DeiT-Tiny forward+backward steps.

`search --space auto` on a machine without a GPU must say how long a big family's search will take
before spending it; this measures the unit it can scale by. For each family (each in a fresh
subprocess, so its peak memory is its own): building the seeded DSS scorer (`DSSScore`, the
supernet of the whole family), then one evaluation of the family's smallest and of its largest arch,
cold (first evaluation: the weights' nuclear norms are computed and cached) and warm (the same arch
again: only the gradients' norms), each as process CPU time on one thread (`time.process_time`,
meaningful on a loaded machine), divided by the yardstick (`_yardstick.py`: one DeiT-Tiny
forward+backward at 224, one thread, median of 5).

    python benchmarks/family_dss_cost.py [--families vit-tiny,vit-small]

Prints a table and writes benchmarks/results/family_dss_cost-cpu.json. Slow: the vit-huge family's
largest arch takes minutes of CPU per evaluation and its supernet several GB of memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from _record import RESULTS, save_result
from _yardstick import deit_tiny_step


def measure_family(name: str) -> dict:
    """The worker: scorer build and min/max arch evaluations of one family, process CPU seconds."""
    import torch

    from deployvit.counting import count_flops, count_params
    from deployvit.search.scores import DSSScore
    from deployvit.spaces import get_space

    torch.set_num_threads(1)
    space = get_space(name)
    c0 = time.process_time()
    score = DSSScore(space, seed=0, threads=1)
    out = {"family": name, "build_cpu_s": time.process_time() - c0}
    for which, arch in (("min", space.min_arch()), ("max", space.max_arch())):
        for state in ("cold", "warm"):
            c0 = time.process_time()
            score(arch)
            out[f"{which}_{state}_cpu_s"] = time.process_time() - c0
        out[f"{which}_params"], out[f"{which}_flops"] = count_params(arch), count_flops(arch)
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="", help="Comma-separated (default: every family).")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS / "family_dss_cost-cpu.json"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure_family(args.worker)))
        return
    from deployvit.spaces import FAMILIES

    names = [f for f in args.families.split(",") if f] or list(FAMILIES)
    yardstick = deit_tiny_step()
    unit = yardstick["cpu_s"]
    print(f"yardstick: {yardstick['what']}: {unit * 1e3:.0f} ms CPU (median of {yardstick['repeats']})")
    print(f"{'family':<11}{'build':>8}{'min cold':>10}{'min warm':>10}{'max cold':>10}{'max warm':>10}{'peak RSS':>10}   (yardsticks; RSS GB)")
    rows = []
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--worker", name], capture_output=True, text=True, check=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        for key in [k for k in row if k.endswith("_cpu_s")]:
            row[key.replace("_cpu_s", "_yardsticks")] = row[key] / unit
        rows.append(row)
        print(f"{name:<11}" + "".join(f"{row[k]:>10.1f}" if k != "build_yardsticks" else f"{row[k]:>8.1f}"
                                      for k in ("build_yardsticks", "min_cold_yardsticks", "min_warm_yardsticks", "max_cold_yardsticks",
                                                "max_warm_yardsticks")) + f"{row['peak_rss_gb']:>10.1f}", flush=True)
    save_result(Path(args.out), "family_dss_cost", {"yardstick": yardstick, "families": rows,
                                                      "note": "process CPU time on one thread; the machine was shared (CPU time, not wall)"})


if __name__ == "__main__":
    main()
