"""Does the FocusFormer-style sampler beat uniform sampling under a budget, at equal steps?

For each seed: train the supernet twice with the default recipe on `digits` (`test` space), once
with `--sampler uniform` and once with `--sampler focus` focused on the budgets at 25/50/75% of the
space's FLOPs range (same epochs, so the same optimizer steps and images). Then, per budget, pick the
best of `--candidates` archs within it by inherited held-out accuracy: for focus, the trained
sampler's own proposals (FocusFormer's specialisation, `focus.specialise`); for uniform, uniform
archs within the budget; and, to tell the supernet's quality from the proposals', the focus supernet's
pick among those same uniform candidates. Report the picks' inherited val top-1, and the focus draws'
FLOPs use.

    python benchmarks/focus_sampler.py                 # 3 seeds, 10 epochs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _record import RESULTS, save_result
from deployvit.counting import count_flops
from deployvit.devices import device_name
from deployvit.spaces import get_space
from deployvit.train.augment import get_aug
from deployvit.train.data import data_facts, held_out_split, open_data
from deployvit.train.distributed import DistInfo, pick_device
from deployvit.train.evaluate import eval_loader, evaluate_accuracy
from deployvit.train.focus import specialise
from deployvit.train.loop import RunOptions
from deployvit.train.recipe import Recipe
from deployvit.train.samplers import make_sampler
from deployvit.train.setup import eval_dataset, fit_space, transforms_for
from deployvit.train.supernet_train import new_supernet, train_supernet

BUDGETS = (0.25, 0.5, 0.75)


def uniform_within(space, budget: float, n: int, seed: int) -> list:
    rng, found = np.random.default_rng(seed), {}
    for _ in range(200 * n):
        arch = space.sample(rng)
        if count_flops(arch) <= budget:
            found.setdefault(arch.key, arch)
        if len(found) == n:
            break
    return list(found.values())


def run_seed(seed: int, args, source, space, held, info, work: Path) -> dict:
    recipe = Recipe(epochs=args.epochs, seed=seed).resolve(data_facts(source))
    steps = len(held.train) // recipe.batch_size * recipe.epochs
    tf = transforms_for(source, get_aug("none"), space.img_size)
    held_loader = eval_loader(eval_dataset(source, "held-out", tf.eval, held), 512)
    val_loader = eval_loader(eval_dataset(source, "val", tf.eval), 512)
    out = {}
    for name in ("uniform", "focus"):
        t0 = time.process_time()
        sampler = make_sampler(name, space, seed, total_steps=steps, focus_budgets=list(BUDGETS))
        supernet = new_supernet(space, recipe)
        train_supernet(supernet, source, held, sampler, recipe, RunOptions(work / f"{name}{seed}", log=lambda m: None, log_every=0), info)
        supernet.eval()

        def acc(arch, loader):
            supernet.set_arch(arch)
            return evaluate_accuracy(supernet, loader, info.device)["top1"]

        rows = []
        for b in BUDGETS:
            budget = sampler_budget(space, b)
            cands = uniform_within(space, budget, args.candidates, seed)
            same = max(cands, key=lambda a: acc(a, held_loader))  # the same candidates on both supernets
            extra = {"uniform_candidates_pick_val_top1": acc(same, val_loader)}
            if name == "focus":
                pick = specialise(sampler.policy, budget, lambda a: acc(a, held_loader), k=args.candidates, seed=seed)
                draws = sampler.policy.propose(b, 64, seed)
                use = [count_flops(a) / budget for a in draws]
                extra |= {"draws_median_flops_over_budget": float(np.median(use)), "draws_within_budget": float(np.mean([u <= 1 for u in use]))}
            else:
                pick = same
            rows.append({"budget_position": b, "budget_flops": budget, "pick_flops": count_flops(pick),
                         "pick_held_out_top1": acc(pick, held_loader), "pick_val_top1": acc(pick, val_loader), **extra})
        out[name] = {"cpu_seconds": time.process_time() - t0, "budgets": rows}
        print(f"seed {seed} {name}: " + ", ".join(f"b={r['budget_position']}: val {r['pick_val_top1']:.1f}%" for r in rows), file=sys.stderr)
    return out


def sampler_budget(space, b: float) -> float:
    lo, hi = count_flops(space.min_arch()), count_flops(space.max_arch())
    return lo + b * (hi - lo)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = DistInfo(device=pick_device("auto"))
    source = open_data("digits")
    space = fit_space(get_space("test"), source)
    held = held_out_split(source)
    work = Path(tempfile.mkdtemp(prefix="focus_sampler-"))
    seeds = {int(s): run_seed(int(s), args, source, space, held, info, work) for s in args.seeds.split(",")}
    print(f"\nbest inherited val top-1 under each budget, {args.epochs} epochs, default recipe, device {device_name(info.device.type)}")
    print(f"{'seed':>4} {'budget':>6} {'uniform%':>9} {'focus%':>7} {'focus supernet, same candidates%':>33} {'focus FLOPs/budget':>19} {'within':>7}")
    wins, supernet_wins = [], []
    for seed, r in seeds.items():
        for u, f in zip(r["uniform"]["budgets"], r["focus"]["budgets"]):
            wins.append(f["pick_val_top1"] >= u["pick_val_top1"])
            supernet_wins.append(f["uniform_candidates_pick_val_top1"] >= u["pick_val_top1"])
            print(f"{seed:>4} {u['budget_position']:>6} {u['pick_val_top1']:>9.1f} {f['pick_val_top1']:>7.1f} "
                  f"{f['uniform_candidates_pick_val_top1']:>33.1f} {f['draws_median_flops_over_budget']:>19.2f} {f['draws_within_budget']:>7.0%}")
    print(f"focus (its own proposals) >= uniform in {sum(wins)} of {len(wins)} (seed, budget) pairs; "
          f"the focus supernet on uniform's candidates >= uniform in {sum(supernet_wins)} of {len(supernet_wins)}")
    suffix = "" if args.epochs == 10 else f"-{args.epochs}ep"
    save_result(RESULTS / f"focus_sampler-{info.device.type}{suffix}.json", "focus_sampler",
                {"device": device_name(info.device.type), "torch": torch.__version__, "settings": vars(args),
                 "seeds": seeds, "focus_at_least_uniform": sum(wins), "focus_supernet_at_least_uniform": sum(supernet_wins),
                 "pairs": len(wins)}, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
