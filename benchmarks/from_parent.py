"""Start from a parent you already have: does importance ordering make its slices worth searching,
and does distillation from the parent help fine-tuning them?

1. The parent: a small ViT (timm's VisionTransformer layout; `--embed` wide, `--depth` deep, 32 px /
   patch 8, 10 classes) trained on `digits` with deployvit's default small-data recipe for
   `--parent-epochs`, on the train split minus the 25-per-class held-out images, then saved as a timm
   state dict (checked: timm's own model gives the same logits) - the "pretrained" weights a user owns.
2. Import it (`deployvit.importers`, the code `deployvit import --from timm:... --data digits` runs)
   three times: `--order none` (the parent's own channel order), `magnitude` (weights only, the
   default) and `activation` (4 batches of training images).
3. Per budget at 25/50/75% of the parent's FLOPs: the same `--candidates` archs drawn uniformly from
   the imported space at 85-100% of the budget, scored by inherited held-out top-1 (250 images) on
   each import; the best one's val top-1 (360 images: one image is 0.28 points), and the mean held-out
   top-1 over all candidates (the less noisy measure of what the order buys).
4. Fine-tune each budget's pick of the `activation` import (`import`'s default with `--data`) for
   `--ft-epochs` epochs (the whole train split, the small-data recipe at `--ft-lr`), plain, with DeiT
   soft distillation and with hard distillation from the parent, and the `none` import's pick plain:
   val top-1 after every epoch (the table shows the first and the last).

Expected shape: ordered >> unordered before fine-tuning; distillation >= plain after.

    python benchmarks/from_parent.py                       # about 20 min of one CPU core
    python benchmarks/from_parent.py --parent-epochs 10 --ft-epochs 3 --candidates 12   # small setting
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
from deployvit.arch import Arch, Layer, Stage
from deployvit.counting import count_flops
from deployvit.devices import device_name
from deployvit.importers.common import build_import, held_out_and_batches
from deployvit.importers.timm_vit import timm_parent
from deployvit.spaces import SearchSpace, StageSpace
from deployvit.train.augment import get_aug
from deployvit.train.data import SplitDataset, data_facts, held_out_split, open_data
from deployvit.train.distributed import DistInfo, pick_device
from deployvit.train.evaluate import eval_loader, evaluate_accuracy
from deployvit.train.loop import RunOptions, fit
from deployvit.train.recipe import Recipe
from deployvit.train.retrain import Distill, RetrainTask, new_model, retrain
from deployvit.train.setup import eval_dataset, transforms_for

BUDGETS = (0.25, 0.5, 0.75)
ORDERS = ("none", "magnitude", "activation")
TIMM_NAME = "vit_tiny_patch16_224"  # the timm config the parent's dims override


def quiet(_msg: str) -> None:
    pass


def parent_arch(embed: int, depth: int, heads: int) -> Arch:
    stage = StageSpace((embed,), (depth,), (heads,), (4.0,), embed // heads)
    space = SearchSpace("parent", 32, 8, 3, 10, (stage,))
    return space.make_arch([Stage(embed, embed // heads, tuple(Layer(heads, 4.0) for _ in range(depth)))])


def to_timm_state(model) -> dict[str, torch.Tensor]:
    """deployvit's ViT state dict under timm's VisionTransformer names."""
    renames = [("stem.patch_embed.", "patch_embed."), ("stem.cls_token", "cls_token"), ("stem.pos_embed", "pos_embed"),
               ("stages.0.", "blocks."), ("head.norm.", "norm."), ("head.fc.", "head.")]
    out = {}
    for name, tensor in model.state_dict().items():
        for old, new in renames:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        out[name] = tensor.detach().clone()
    return out


def train_parent(args, source, held, info, work: Path) -> tuple[dict, dict]:
    """The parent trained on train minus held-out, as a timm state dict, and its record."""
    import timm

    t0 = time.process_time()
    arch = parent_arch(args.embed, args.depth, args.heads)
    recipe = Recipe(epochs=args.parent_epochs, seed=args.seed).resolve(data_facts(source))
    model = new_model(arch, recipe)
    task = RetrainTask(model, source, recipe, "scratch")
    task.train_set = SplitDataset(source.train, transforms_for(source, recipe.aug_config, 32).train, held.train)
    history = fit(task, recipe, RunOptions(work / "parent", log=quiet, log_every=0), info)
    model.eval()
    state = to_timm_state(model)
    reference = timm.create_model(TIMM_NAME, pretrained=False, img_size=32, patch_size=8, num_classes=10,
                                  embed_dim=args.embed, depth=args.depth, num_heads=args.heads).eval()
    reference.load_state_dict(state)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        diff = float((reference(x) - model(x)).abs().max())
    record = {"arch": arch.summary(), "flops": count_flops(arch), "val_top1": history[-1]["val_top1"],
              "timm_vs_deployvit_max_diff": diff, "cpu_seconds": round(time.process_time() - t0, 1)}
    print(f"parent: {arch.summary()}, {count_flops(arch) / 1e6:.2f} MFLOPs, val top-1 {record['val_top1']:.1f}% "
          f"({args.parent_epochs} epochs; timm's logits agree to {diff:.1e})", file=sys.stderr)
    return state, record


BAND = 0.85  # candidates cost between 85% and 100% of the budget: subnets *at* 25/50/75% of the parent


def candidates(space: SearchSpace, budget: float, n: int, seed: int) -> list[Arch]:
    rng, found = np.random.default_rng(seed), {}
    for _ in range(2000 * n):
        arch = space.sample(rng)
        if BAND * budget <= count_flops(arch) <= budget:
            found.setdefault(arch.key, arch)
        if len(found) == n:
            break
    return list(found.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--embed", type=int, default=128)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--parent-epochs", type=int, default=30)
    ap.add_argument("--candidates", type=int, default=30)
    ap.add_argument("--ft-epochs", type=int, default=10)
    ap.add_argument("--ft-lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    defaults = vars(ap.parse_args([]))
    started = time.process_time()
    torch.set_num_threads(args.threads)
    info = DistInfo(device=pick_device("auto"))
    source = open_data("digits")
    held = held_out_split(source)
    work = Path(tempfile.mkdtemp(prefix="from_parent-"))
    state, parent = train_parent(args, source, held, info, work)

    tf = transforms_for(source, get_aug("none"), 32).eval
    loaders = {"held-out": eval_loader(eval_dataset(source, "held-out", tf, held), 512), "val": eval_loader(eval_dataset(source, "val", tf), 512)}
    model_args = {"embed_dim": args.embed, "depth": args.depth, "num_heads": args.heads}
    imports = {}
    for order in ORDERS:
        imp = timm_parent(TIMM_NAME, model_args, state, "parent (trained above)")
        _, batches = held_out_and_batches(source, 32, 25)
        supernet, record = build_import(imp, None, order, batches, log=quiet)
        imports[order] = (supernet, record)
    space = imports["none"][0].space

    def accuracy(supernet, arch, split):
        supernet.set_arch(arch)
        return evaluate_accuracy(supernet, loaders[split], info.device)["top1"]

    rows = []
    for b in BUDGETS:
        budget = b * parent["flops"]
        cands = candidates(space, budget, args.candidates, args.seed)
        row = {"budget": b, "budget_flops": budget, "candidates": len(cands)}
        for order, (supernet, _) in imports.items():
            held_acc = [accuracy(supernet, a, "held-out") for a in cands]
            pick = cands[int(np.argmax(held_acc))]
            row[order] = {"pick": pick.summary(), "pick_flops": count_flops(pick), "pick_held_out_top1": max(held_acc),
                          "pick_val_top1": accuracy(supernet, pick, "val"), "mean_held_out_top1": float(np.mean(held_acc)),
                          "pick_arch": pick.to_dict()}
        row["finetuned"] = finetune(row, imports, args, source, info, work)
        rows.append(row)
        print(f"budget {b:.0%}: " + ", ".join(f"{o} {row[o]['pick_val_top1']:.1f}% (mean {row[o]['mean_held_out_top1']:.1f})" for o in ORDERS)
              + "; fine-tuned " + ", ".join(f"{k} {v['val_top1']:.1f}%" for k, v in row["finetuned"].items()), file=sys.stderr)

    print(f"\nparent {parent['arch']}: val top-1 {parent['val_top1']:.1f}%, {parent['flops'] / 1e6:.2f} MFLOPs "
          f"(digits; device {device_name(info.device.type)})")
    print(f"{'budget':>6} {'inherited val top-1 of the best of ' + str(args.candidates) + ' (held-out mean)':>58}   "
          f"{'fine-tuned, val top-1 after 1 / ' + str(args.ft_epochs) + ' epochs':>60}")
    print(f"{'':>6} {'none':>18} {'magnitude':>18} {'activation':>18}   {'none plain':>14} {'plain':>14} {'soft KD':>14} {'hard KD':>14}")
    for r in rows:
        inh = " ".join(f"{r[o]['pick_val_top1']:>9.1f} ({r[o]['mean_held_out_top1']:>5.1f})" for o in ORDERS)
        ft = " ".join(f"{r['finetuned'][k]['val_top1_per_epoch'][0]:>7.1f} / {r['finetuned'][k]['val_top1']:>4.1f}"
                      for k in ("none_plain", "plain", "soft", "hard"))
        print(f"{r['budget']:>6.0%} {inh}   {ft}")
    print(f"process CPU time {time.process_time() - started:.0f} s")
    suffix = "" if vars(args) == defaults else "-small"
    save_result(RESULTS / f"from_parent-{info.device.type}{suffix}.json", "from_parent",
                {"device": device_name(info.device.type), "torch": torch.__version__, "settings": vars(args), "parent": parent,
                 "cpu_seconds": round(time.process_time() - started, 1),
                 "ordering": {o: r for o, (_, r) in imports.items()}, "budgets": rows}, argv)
    return 0


def finetune(row: dict, imports: dict, args, source, info, work: Path) -> dict:
    """Fine-tune the activation import's pick plain / soft / hard, and the unordered import's pick plain."""
    out = {}
    runs = {"none_plain": ("none", None), "plain": ("activation", None), "soft": ("activation", "soft"), "hard": ("activation", "hard")}
    for name, (order, mode) in runs.items():
        t0 = time.process_time()
        supernet = imports[order][0]
        arch = Arch.from_dict(row[order]["pick_arch"])
        recipe = Recipe(epochs=args.ft_epochs, seed=args.seed, lr=args.ft_lr, warmup_epochs=0).resolve(data_facts(source))
        model = supernet.extract(arch, drop_path_rate=recipe.drop_path)
        teacher = supernet.extract(supernet.space.max_arch()).eval() if mode else None
        distill = Distill(mode) if mode else None
        opts = RunOptions(work / f"ft-{row['budget']}-{name}", log=quiet, log_every=0)
        result = retrain(model, source, recipe, f"{order} import", opts, info, teacher=teacher, distill=distill)
        out[name] = {"val_top1": result["history"][-1]["val_top1"], "initial_val_top1": result["initial"]["val_top1"],
                     "val_top1_per_epoch": [r["val_top1"] for r in result["history"]], "cpu_seconds": round(time.process_time() - t0, 1)}
    return out


if __name__ == "__main__":
    sys.exit(main())
