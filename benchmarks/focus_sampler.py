"""Does the FocusFormer-style sampler beat uniform sampling under a budget, at equal steps?

For each seed: train the supernet with the default recipe on `digits` (`test` space) three times
for the same epochs (so the same optimizer steps and images): `--sampler focus` focused on the
budgets at 25/50/75% of the space's FLOPs range, `--sampler uniform`, and uniform again with another
arch stream (sampler seed + 1000; the noise floor: two uniform runs that differ only in which archs
each step drew). Then, per budget, pick the best of `--candidates` archs within it by inherited
held-out accuracy: for focus, `--candidates` distinct in-budget proposals of the trained sampler
(FocusFormer's specialisation, `focus.specialise`); for uniform, as many uniform archs within the
budget; and, to tell the supernet's quality from the proposals', the focus supernet's pick among those
same uniform candidates. Report the picks' val top-1 (360 images: one image is 0.28 points), per seed
and as the mean over seeds per budget, and the focus draws' FLOPs use.

Why 30 epochs by default: at 10 (`--epochs 10`, the recipe's 340 steps) one-arch-per-step training
sits at loss 2.30 for two or three epochs and how soon it leaves depends on the arch stream: uniform
runs that differed only in it ended 63-81% (largest subnet), and a focus run whose policy was frozen
at uniform did as badly as the trained one, so the sampler cannot be told apart from luck there.
The two uniform streams of this benchmark differ by up to 16 points at 10 epochs, 5 at 30.

    python benchmarks/focus_sampler.py                 # 3 seeds, 30 epochs (about 9 min on one core)
    python benchmarks/focus_sampler.py --epochs 10     # focus_sampler-cpu-10ep.json
    python benchmarks/focus_sampler.py --seeds 3,4     # focus_sampler-cpu-seeds3-4.json
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
DEFAULT_EPOCHS = 30
DEFAULT_SEEDS = "0,1,2"
OTHER_STREAM = 1000  # the second uniform run's sampler seed offset


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
    loaders = {split: eval_loader(eval_dataset(source, split, tf.eval, held if split == "held-out" else None), 512)
               for split in ("held-out", "val")}
    runs = {"focus": ("focus", seed), "uniform": ("uniform", seed), "uniform_other_stream": ("uniform", seed + OTHER_STREAM)}
    out = {}
    for name, (kind, sampler_seed) in runs.items():
        t0 = time.process_time()
        sampler = make_sampler(kind, space, sampler_seed, total_steps=steps, focus_budgets=list(BUDGETS))
        supernet = new_supernet(space, recipe)
        train_supernet(supernet, source, held, sampler, recipe, RunOptions(work / f"{name}{seed}", log=lambda m: None, log_every=0), info)
        rows = [budget_row(supernet, sampler if kind == "focus" else None, space, b, args.candidates, seed, loaders, info)
                for b in BUDGETS]
        out[name] = {"cpu_seconds": time.process_time() - t0, "budgets": rows}
        print(f"seed {seed} {name}: " + ", ".join(f"b={r['budget_position']}: val {r['pick_val_top1']:.1f}%" for r in rows), file=sys.stderr)
    return out


def budget_row(supernet, focus, space, b: float, k: int, seed: int, loaders: dict, info) -> dict:
    """The best of k candidates under budget position b on this supernet: uniform ones, and (for a
    focus run) the sampler's own distinct proposals, with the FLOPs use of 64 plain draws."""
    supernet.eval()

    def acc(arch, split):
        supernet.set_arch(arch)
        return evaluate_accuracy(supernet, loaders[split], info.device)["top1"]

    budget = sampler_budget(space, b)
    same = max(uniform_within(space, budget, k, seed), key=lambda a: acc(a, "held-out"))  # the same candidates on every supernet
    pick, extra = same, {"uniform_candidates_pick_val_top1": acc(same, "val")}
    if focus is not None:
        pick = specialise(focus.policy, budget, lambda a: acc(a, "held-out"), k=k, seed=seed)
        use = [count_flops(a) / budget for a in draws(focus.policy, b, 64, seed)]
        extra |= {"draws_median_flops_over_budget": float(np.median(use)), "draws_within_budget": float(np.mean([u <= 1 for u in use]))}
    return {"budget_position": b, "budget_flops": budget, "pick_flops": count_flops(pick),
            "pick_held_out_top1": acc(pick, "held-out"), "pick_val_top1": acc(pick, "val"), **extra}


def draws(policy, b: float, n: int, seed: int) -> list:
    """n plain draws of the policy for position b, repeats kept (what training samples)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return [policy.sample(b, gen)[0] for _ in range(n)]


def summarise(seeds: dict) -> dict:
    """Per budget, the mean over seeds of each run's pick; and the per-pair counts."""
    val = lambda run, i, key="pick_val_top1": [r[run]["budgets"][i][key] for r in seeds.values()]  # noqa: E731
    per_budget = [{"budget_position": b, "uniform": float(np.mean(val("uniform", i))),
                   "uniform_other_stream": float(np.mean(val("uniform_other_stream", i))), "focus": float(np.mean(val("focus", i))),
                   "focus_supernet_uniform_candidates": float(np.mean(val("focus", i, "uniform_candidates_pick_val_top1")))}
                  for i, b in enumerate(BUDGETS)]
    pairs = [(f, u, o) for i in range(len(BUDGETS)) for f, u, o in zip(val("focus", i), val("uniform", i), val("uniform_other_stream", i))]
    return {"per_budget": per_budget, "budgets_focus_at_least_uniform": sum(r["focus"] >= r["uniform"] for r in per_budget),
            "pairs_focus_at_least_uniform": sum(f >= u for f, u, _ in pairs), "pairs": len(pairs),
            "max_abs_uniform_stream_difference": max(abs(u - o) for _, u, o in pairs)}


def sampler_budget(space, b: float) -> float:
    lo, hi = count_flops(space.min_arch()), count_flops(space.max_arch())
    return lo + b * (hi - lo)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default=DEFAULT_SEEDS)
    ap.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
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
    summary = summarise(seeds)
    print(f"\nbest inherited val top-1 under each budget, {args.epochs} epochs, default recipe, device {device_name(info.device.type)}")
    print(f"{'seed':>4} {'budget':>6} {'uniform%':>9} {'uniform, other stream%':>23} {'focus%':>7} {'focus supernet, uniform candidates%':>36} "
          f"{'focus draws FLOPs/budget':>25} {'within':>7}")
    for seed, r in seeds.items():
        for u, o, f in zip(r["uniform"]["budgets"], r["uniform_other_stream"]["budgets"], r["focus"]["budgets"]):
            print(f"{seed:>4} {u['budget_position']:>6} {u['pick_val_top1']:>9.1f} {o['pick_val_top1']:>23.1f} {f['pick_val_top1']:>7.1f} "
                  f"{f['uniform_candidates_pick_val_top1']:>36.1f} {f['draws_median_flops_over_budget']:>25.2f} {f['draws_within_budget']:>7.0%}")
    for row in summary["per_budget"]:
        print(f"mean {row['budget_position']:>6} {row['uniform']:>9.1f} {row['uniform_other_stream']:>23.1f} {row['focus']:>7.1f} "
              f"{row['focus_supernet_uniform_candidates']:>36.1f}")
    print(f"focus >= uniform under {summary['budgets_focus_at_least_uniform']} of {len(BUDGETS)} budgets (mean over seeds); "
          f"in {summary['pairs_focus_at_least_uniform']} of {summary['pairs']} (seed, budget) pairs "
          f"(two uniform streams agree within {summary['max_abs_uniform_stream_difference']:.1f} points)")
    suffix = ("" if args.epochs == DEFAULT_EPOCHS else f"-{args.epochs}ep") + ("" if args.seeds == DEFAULT_SEEDS else f"-seeds{args.seeds.replace(',', '-')}")
    save_result(RESULTS / f"focus_sampler-{info.device.type}{suffix}.json", "focus_sampler",
                {"device": device_name(info.device.type), "torch": torch.__version__, "settings": vars(args),
                 "seeds": seeds, "summary": summary}, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
