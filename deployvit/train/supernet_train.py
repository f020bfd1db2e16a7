"""`train-supernet`: the weight-sharing supernet trained with a subnet sampler on the train split minus
the held-out images (which search scores on).

Identity shifting: each step passes its global step as the shift to `set_arch`, so with the supernet's
`identity_shift` on the identity positions rotate step to step; evaluation uses offset 0.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deployvit.arch import Arch
from deployvit.errors import DeployvitError
from deployvit.supernet import Supernet
from deployvit.train.checkpoint import save_checkpoint
from deployvit.train.data import HeldOut, Source, SplitDataset
from deployvit.train.distributed import DistInfo, broadcast_module
from deployvit.train.evaluate import eval_loader, evaluate_accuracy
from deployvit.train.loop import Recipe, RunOptions, fit
from deployvit.train.sampler_base import ArchSampler
from deployvit.train.recipe import REGIMES
from deployvit.train.setup import init_position_embeddings, seed_init, transforms_for
from deployvit.spaces import SearchSpace

SCORE_BATCH = 128  # held-out images per focus-sampler reward


class SupernetTask:
    kind = "supernet"

    def __init__(self, supernet: Supernet, source: Source, held: HeldOut, sampler: ArchSampler,
                 recipe: Recipe, eval_batch: int = 256, num_workers: int = 0):
        tf = transforms_for(source, recipe.aug_config, supernet.space.img_size)
        self.model, self.sampler, self.seed = supernet, sampler, recipe.seed
        self.eval_batch, self.num_workers = eval_batch, num_workers
        self.train_set = SplitDataset(source.train, tf.train, held.train)
        self.val_set = SplitDataset(source.val, tf.eval)
        self.held_set = SplitDataset(source.train, tf.eval, held.held_out)
        self.meta: dict[str, Any] = {
            "num_classes": supernet.space.num_classes,
            "supernet": supernet.config,
            "sampler": sampler.name,
            "data": {"kind": source.kind, "root": source.root},
            "held_out": {"per_class": held.per_class, "seed": held.seed, "ids": list(held.held_out_ids)},
        }

    def train_step(self, x, y, step, epoch, loss_fn, autocast, backward) -> float:
        plan = self.sampler.plan(step, epoch, len(x))
        if plan.split:
            total = 0.0
            with autocast():
                for arch, xs, ys in zip(plan.archs, x.tensor_split(len(plan.archs)), y.tensor_split(len(plan.archs))):
                    self.model.set_arch(arch, shift=step)
                    total = total + loss_fn(self.model(xs), ys) * (len(xs) / len(x))
            backward(total)
            return float(total.detach())
        value = 0.0
        for arch in plan.archs:
            self.model.set_arch(arch, shift=step)
            with autocast():
                loss = loss_fn(self.model(x), y) / len(plan.archs)
            backward(loss)
            value += float(loss.detach())
        return value

    def _score_fn(self, step: int, info: DistInfo):
        """Held-out minibatch accuracy under the current weights; the minibatch is drawn from the step
        (the same on every rank, and again after a resume)."""
        n = len(self.held_set)
        if n == 0:
            raise DeployvitError("the focus sampler needs held-out images (--held-out-per-class > 0)")
        idx = np.random.default_rng([self.seed, step, 0x5C0]).choice(n, size=min(SCORE_BATCH, n), replace=False)
        batch = [self.held_set[int(i)] for i in idx]
        x = torch.stack([b[0] for b in batch]).to(info.device)
        y = torch.tensor([b[1] for b in batch], device=info.device)

        @torch.no_grad()
        def score(arch: Arch) -> float:
            was = self.model.training
            self.model.eval()
            self.model.set_arch(arch)
            acc = float((self.model(x).argmax(-1) == y).float().mean())
            self.model.train(was)
            return acc

        return score

    def after_step(self, step: int, info: DistInfo) -> dict[str, float]:
        score = functools.cache(lambda: self._score_fn(step, info))  # load the minibatch only if used
        return self.sampler.after_step(step, lambda arch: score()(arch), lambda m: broadcast_module(m, info))

    def evaluate(self, model: Supernet, info: DistInfo) -> dict[str, float]:
        """Val top-1 of the largest and smallest subnet (canonical offset 0)."""
        loader = eval_loader(self.val_set, self.eval_batch, info, self.num_workers)
        out = {}
        for tag, arch in (("max", model.space.max_arch()), ("min", model.space.min_arch())):
            model.set_arch(arch)
            out[f"val_top1_{tag}"] = evaluate_accuracy(model, loader, info.device, info)["top1"]
        return out

    def check_resume(self, meta: dict[str, Any]) -> None:
        if meta["supernet"]["space_hash"] != self.meta["supernet"]["space_hash"]:
            raise DeployvitError(
                f"checkpoint is from space {meta['supernet']['space'].get('name')!r} "
                f"(hash {meta['supernet']['space_hash']}), not this run's space {self.model.space.name!r}"
            )
        for key in ("sampler", "held_out", "data"):
            if meta.get(key) != self.meta.get(key):
                raise DeployvitError(f"cannot resume: the checkpoint's {key} differs from this run's")
        for key in ("cyclic", "identity_shift", "drop_path_rate"):
            if meta["supernet"][key] != self.meta["supernet"][key]:
                raise DeployvitError(f"cannot resume: the checkpoint's supernet {key} differs from this run's")

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)

    def finish(self, out: Path, model: Supernet, state: dict[str, Any]) -> None:
        """last.pt: the trained supernet (EMA weights when on) and sampler, without optimizer state."""
        keep = {k: v for k, v in state.items() if k not in ("optimizer", "scheduler", "scaler", "rng")}
        save_checkpoint(out / "last.pt", keep)


def default_sampler(recipe: Recipe) -> str:
    """The subnet sampler of a resolved recipe's regime (`--sampler auto`)."""
    return REGIMES[recipe.recipe].sampler


#: below this many epochs on small data, one subnet per step (uniform, focus) had not left the loss
#: plateau reliably: two uniform arch streams ended 16 points apart at 10 epochs, 5 at 30
#: (benchmarks/results/focus_sampler-cpu-10ep.json, focus_sampler-cpu.json)
SINGLE_PATH_SMALL_EPOCHS = 30


def sampler_caveat(recipe: Recipe, sampler: str) -> str:
    """A warning for the run's banner when the chosen sampler is a poor fit for the run, else ''."""
    if recipe.recipe == "small" and sampler in ("uniform", "focus") and recipe.epochs < SINGLE_PATH_SMALL_EPOCHS:
        return (f"note: --sampler {sampler} trains one subnet per step; on small data it needs about {SINGLE_PATH_SMALL_EPOCHS} epochs "
                f"(this run has {recipe.epochs}) to learn reliably, where the default sandwich sampler learns in 10")
    return ""


def new_supernet(space: SearchSpace, recipe: Recipe, cyclic: bool = False, identity_shift: bool = False) -> Supernet:
    """Fresh supernet weights for `recipe` (seeded, position embeddings at the recipe's std): what
    `train-supernet` trains, so the Python API and the CLI start from the same weights."""
    seed_init(recipe.seed)
    supernet = Supernet(space, cyclic=cyclic, identity_shift=identity_shift, drop_path_rate=recipe.drop_path)
    init_position_embeddings(supernet, recipe.pos_embed_std)
    return supernet


def train_supernet(supernet: Supernet, source: Source, held: HeldOut, sampler: ArchSampler, recipe: Recipe,
                   opts: RunOptions, info: DistInfo) -> list[dict[str, Any]]:
    task = SupernetTask(supernet, source, held, sampler, recipe, num_workers=opts.num_workers)
    return fit(task, recipe, opts, info)
