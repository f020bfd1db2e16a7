"""How well does a supernet trained with each sampler rank subnets, and does retraining the winner help?

Protocol (the same training budget for every sampler: the same epochs, i.e. optimizer steps and images;
sandwich therefore spends more compute per step):
1. Ground truth: each of N random subnets (fixed seed) is trained from scratch, standalone, for a
   short recipe; its val top-1 is the reference accuracy (shared by all samplers).
2. For each sampler: train the supernet, then for the same N subnets measure inherited top-1 on the
   held-out split (what search scores on) and on val. Report Kendall tau between inherited held-out
   accuracy and the ground truth, the largest/smallest subnets' val accuracy, and the
   best-under-budget pick: the subnet with the best inherited accuracy among those within a FLOPs
   budget (default: the median FLOPs of the N subnets), its ground truth, and the best ground truth
   under the budget (oracle).
3. The pick is then retrained from its inherited weights (`retrain --init supernet`) with the short
   recipe: inherited val top-1 vs retrained val top-1.
4. For `focus`, the sampler's measurable property (docs/REFERENCES.md section 7): for budgets at 25/50/75%
   of the FLOPs range, archs drawn from the trained sampler vs uniform archs that satisfy the budget:
   share of draws within budget, mean FLOPs / budget of those within, mean held-out top-1 of those.

Every run uses the default recipe for the data (`Recipe.resolve`: on digits the small-data regime),
so the numbers are what a user gets without flags; `--batch-size`, `--lr`, `--aug` override it.
CPU fallback on `digits` with the `test` space; on a GPU the same defaults run, faster.

    python benchmarks/supernet_quality.py                      # all four samplers, digits
    python benchmarks/supernet_quality.py --samplers uniform,focus --epochs 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

from _record import RESULTS, save_result
from deployvit.counting import count_flops
from deployvit.supernet.sharing import channel_windows
from deployvit.devices import device_name
from deployvit.spaces import get_space
from deployvit.train.augment import get_aug
from deployvit.train.data import data_facts, held_out_split, open_data
from deployvit.train.distributed import DistInfo, pick_device
from deployvit.train.evaluate import eval_loader, evaluate_accuracy
from deployvit.train.loop import Recipe, RunOptions
from deployvit.train.retrain import new_model, retrain
from deployvit.train.samplers import SAMPLERS, make_sampler
from deployvit.train.setup import eval_dataset, fit_space, seed_init, transforms_for
from deployvit.train.supernet_train import new_supernet, train_supernet



def distinct_archs(space, n: int, seed: int):
    rng, seen = np.random.default_rng(seed), {}
    while len(seen) < n:
        arch = space.sample(rng)
        seen.setdefault(arch.key, arch)
    return list(seen.values())


VARIANTS = {"prefix": (False, False, None), "cyclic": (True, False, None), "vitas": (True, True, "vitas-weak")}


def channel_usage(sampler, supernet, steps: int) -> dict:
    """How evenly the token-embedding channels were trained: per-channel count of steps whose subnets
    used it (from the sampler's plans, a pure function of seed and step), and max/min of the counts."""
    windows = channel_windows(supernet.space.stages[0].embed_dims, supernet.cyclic)
    counts = np.zeros(supernet.space.stages[0].max_embed_dim)
    for step in range(steps):
        for arch in sampler.plan(step, step // max(steps, 1), 64).archs:
            counts[windows[arch.stages[0].embed_dim]] += 1
    return {"min": float(counts.min()), "max": float(counts.max()), "max_over_min": float(counts.max() / max(counts.min(), 1))}


def focus_property(policy, space, score, draws: int, seed: int) -> list[dict]:
    """Sampler draws vs uniform draws within each budget: closeness to the budget and score."""
    rows, rng = [], np.random.default_rng(seed)
    for b in (0.25, 0.5, 0.75):
        budget = policy.flops_min + b * (policy.flops_max - policy.flops_min)
        drawn = [a for a in (policy.propose(b, 1, seed + i)[0] for i in range(draws))]
        fit = [a for a in drawn if count_flops(a) <= budget]
        uniform = [a for a in (space.sample(rng) for _ in range(20 * draws)) if count_flops(a) <= budget][:draws]
        summary = lambda archs: {  # noqa: E731
            "n": len(archs),
            "flops_over_budget": float(np.mean([count_flops(a) / budget for a in archs])) if archs else None,
            "held_out_top1": float(np.mean([score(a) for a in archs])) if archs else None,
        }
        rows.append({"budget_position": b, "budget_flops": budget, "sampler_within_budget": len(fit) / draws,
                     "sampler": summary(fit), "uniform": summary(uniform)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="test")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--epochs", type=int, default=40, help="supernet epochs (same for every sampler)")
    ap.add_argument("--retrain-epochs", type=int, default=15, help="standalone epochs (ground truth and winner retrain)")
    ap.add_argument("--archs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the recipe's for the data (Recipe.resolve)")
    ap.add_argument("--lr", type=float, default=None, help="default: the recipe's, scaled to the batch")
    ap.add_argument("--aug", default="auto", help="default: the recipe's preset for the data")
    ap.add_argument("--budget-flops", type=float, default=None, help="default: median FLOPs of the sampled subnets")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (tiny models are fastest on one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="prefix", help="ViTAS comparison: comma list of prefix, cyclic, vitas "
                    "(cyclic sharing + identity shifting + --aug vitas-weak); each runs every sampler")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    info = DistInfo(device=pick_device(args.device))
    source = open_data(args.data)
    space = fit_space(get_space(args.space), source)
    held = held_out_split(source)
    tf = transforms_for(source, get_aug("none"), space.img_size)
    held_loader = eval_loader(eval_dataset(source, "held-out", tf.eval, held), 512)
    val_loader = eval_loader(eval_dataset(source, "val", tf.eval), 512)
    archs = distinct_archs(space, args.archs, args.seed)
    flops = [count_flops(a) for a in archs]
    budget = args.budget_flops or float(statistics.median(flops))
    facts = data_facts(source)
    def recipe(epochs: int, aug: str | None = None) -> Recipe:
        """The default recipe for the data (what `train-supernet` and `retrain` run without flags), with
        the benchmark's overrides; a ViTAS variant's augmentation brings its own weight decay and drop path."""
        return Recipe(epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, aug=aug or args.aug).resolve(facts)
    quiet = lambda msg: None  # noqa: E731
    work = Path(tempfile.mkdtemp(prefix="supernet_quality-"))
    t_start = time.perf_counter()

    print(f"ground truth: {len(archs)} subnets x {args.retrain_epochs} epochs from scratch on {args.data}", file=sys.stderr)
    truth = []
    for i, arch in enumerate(archs):
        out = retrain(new_model(arch, recipe(args.retrain_epochs)), source, recipe(args.retrain_epochs), "scratch",
                      RunOptions(work / f"gt{i}", log=quiet, log_every=0), info)
        truth.append(out["history"][-1]["val_top1"])
    in_budget = [i for i, f in enumerate(flops) if f <= budget]

    rows = []
    for variant, name in ((v, n) for v in args.variants.split(",") for n in args.samplers.split(",")):
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")
        cyclic, shift, aug = VARIANTS[variant]
        t0 = time.perf_counter()
        r = recipe(args.epochs, aug)
        steps = len(held.train) // r.batch_size * args.epochs
        sampler = make_sampler(name, space, args.seed, total_steps=steps)
        supernet = new_supernet(space, r, cyclic=cyclic, identity_shift=shift)
        history = train_supernet(supernet, source, held, sampler, r, RunOptions(work / f"{variant}-{name}", log=quiet, log_every=0), info)
        supernet.eval()
        inherited_held, inherited_val = [], []
        for arch in archs:
            supernet.set_arch(arch)
            inherited_held.append(evaluate_accuracy(supernet, held_loader, info.device)["top1"])
            inherited_val.append(evaluate_accuracy(supernet, val_loader, info.device)["top1"])
        pick = max(in_budget, key=lambda i: inherited_held[i])
        winner = archs[pick]
        seed_init(args.seed)
        rt = retrain(supernet.extract(winner), source, recipe(args.retrain_epochs), "supernet",
                     RunOptions(work / f"{variant}-{name}-winner", log=quiet, log_every=0), info)
        row = {
            "variant": variant,
            "channel_usage": channel_usage(sampler, supernet, steps),
            "sampler": name,
            "supernet_epochs": args.epochs,
            "train_seconds": time.perf_counter() - t0,
            "val_top1_max": history[-1]["val_top1_max"],
            "val_top1_min": history[-1]["val_top1_min"],
            "kendall_tau": float(kendalltau(inherited_held, truth).statistic),
            "kendall_tau_val": float(kendalltau(inherited_val, truth).statistic),
            "budget_flops": budget,
            "pick_flops": flops[pick],
            "pick_inherited_val_top1": inherited_val[pick],
            "pick_ground_truth_top1": truth[pick],
            "oracle_ground_truth_top1": max(truth[i] for i in in_budget),
            "pick_retrained_val_top1": rt["history"][-1]["val_top1"],
            "pick_arch": winner.to_dict(),
            "inherited_held_out_top1": inherited_held,
            "inherited_val_top1": inherited_val,
        }
        if name == "focus":
            held_score = lambda a: (supernet.set_arch(a), evaluate_accuracy(supernet, held_loader, info.device)["top1"])[1]  # noqa: E731
            row["focus_property"] = focus_property(sampler.policy, space, held_score, 30, args.seed)
            for f in row["focus_property"]:
                print(f"focus b={f['budget_position']}: {f['sampler_within_budget']:.0%} of draws within budget; "
                      f"FLOPs/budget {f['sampler']['flops_over_budget']} vs uniform {f['uniform']['flops_over_budget']}; "
                      f"held-out top1 {f['sampler']['held_out_top1']} vs uniform {f['uniform']['held_out_top1']}", file=sys.stderr)
        rows.append(row)
        print(f"{variant}/{name}: channel usage max/min {row['channel_usage']['max_over_min']:.2f}, tau {row['kendall_tau']:.3f}, max "
              f"{row['val_top1_max']:.1f}%, min {row['val_top1_min']:.1f}%, "
              f"pick inherited {row['pick_inherited_val_top1']:.1f}% -> retrained {row['pick_retrained_val_top1']:.1f}%", file=sys.stderr)

    print(f"\nsupernet quality on {args.data}, space {space.name}, {len(archs)} subnets, budget {budget / 1e6:.2f} MMACs, "
          f"{args.epochs} supernet epochs, {args.retrain_epochs} retrain epochs, device {device_name(info.device.type)}")
    head = (f"{'variant':<7} {'sampler':<11} {'use max/min':>11} {'tau':>6} {'max%':>6} {'min%':>6} {'pick inh%':>9} {'pick GT%':>8} {'oracle%':>7} "
            f"{'retrained%':>10} {'train s':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['variant']:<7} {r['sampler']:<11} {r['channel_usage']['max_over_min']:>11.2f} {r['kendall_tau']:>6.3f} {r['val_top1_max']:>6.1f} "
              f"{r['val_top1_min']:>6.1f} "
              f"{r['pick_inherited_val_top1']:>9.1f} {r['pick_ground_truth_top1']:>8.1f} {r['oracle_ground_truth_top1']:>7.1f} "
              f"{r['pick_retrained_val_top1']:>10.1f} {r['train_seconds']:>8.1f}")
    result = {
        "device": device_name(info.device.type),
        "torch": torch.__version__,
        "threads": args.threads,
        "settings": {k: v for k, v in vars(args).items()},
        "archs": [a.to_dict() for a in archs],
        "flops": flops,
        "ground_truth_val_top1": truth,
        "total_seconds": time.perf_counter() - t_start,
        "samplers": rows,
    }
    tag = "" if args.variants == "prefix" else "-vitas"
    save_result(RESULTS / f"supernet_quality{tag}-{info.device.type}.json", "supernet_quality", result, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
