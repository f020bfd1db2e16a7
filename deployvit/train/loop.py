"""The training engine shared by `train-supernet` and `retrain`: one recipe (timm optimizer, cosine
schedule with warm-up, AMP on CUDA, gradient clipping, optional EMA), one loop, one checkpoint format.

What a run trains is a `Task` (the supernet with a subnet sampler, or a standalone model); the loop
owns everything else. Reproducibility and resume: the batch order is a pure function of (seed, epoch)
and every step reseeds the global RNGs from (seed, step, rank) before fetching its batch, so
augmentation, mixup, drop path and subnet sampling of step s are the same whether or not the run was
killed before s. With `num_workers=0` and `--deterministic` on CPU a resumed run therefore ends with the
weights of an uninterrupted one; with worker processes the batches are reproducible but the
augmentation draws of a resumed epoch differ (workers are seeded per epoch segment).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, ContextManager, Protocol

import numpy as np
import torch
from torch import nn

from deployvit import io
from deployvit.errors import CheckFailed, DeployvitError
from deployvit.train.augment import build_loss, build_mixup
from deployvit.train.checkpoint import capture_rng, read_checkpoint, restore_rng, save_checkpoint
from deployvit.train.data import SplitDataset, one_line_errors
from deployvit.train.distributed import DistInfo, EpochBatches, all_ranks_sum, average_gradients, broadcast_module
from deployvit.train.recipe import Recipe

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the modes of Recipe.amp but "off"


class TrainingDiverged(CheckFailed):
    """Loss became NaN/inf: training stopped, the last good checkpoint is kept (exit 1)."""


@dataclass
class RunOptions:
    """How a run executes (may change on resume without changing the result)."""

    out: Path
    resume: bool = False
    ckpt_every: int = 0  # also checkpoint every K optimizer steps; 0 = once per epoch
    num_workers: int = 0
    deterministic: bool = False
    log: Callable[[str], None] = print
    log_every: int = 50
    banner: str = ""  # printed once every input check has passed (the recipe line of the commands)


class Task(Protocol):
    """What a run trains; the loop calls these in order every step / epoch."""

    kind: str
    model: nn.Module
    train_set: SplitDataset
    meta: dict[str, Any]

    def train_step(self, x: torch.Tensor, y: torch.Tensor, step: int, epoch: int, loss_fn: nn.Module,
                   autocast: Callable[[], ContextManager], backward: Callable[[torch.Tensor], None]) -> float: ...

    def after_step(self, step: int, info: DistInfo) -> dict[str, float]: ...

    def evaluate(self, model: nn.Module, info: DistInfo) -> dict[str, float]: ...

    def check_resume(self, meta: dict[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def finish(self, out: Path, model: nn.Module, state: dict[str, Any]) -> None: ...


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """timm's optimizer factory, the one regularisation policy of both trainers: weight decay on
    every weight except what `model.no_weight_decay()` names (position embeddings, class token) and
    1-D tensors (norms, biases). ViT and Supernet name and shape those tensors alike."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, recipe.opt, lr=recipe.lr, weight_decay=recipe.weight_decay)


def decayed_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[list[str], list[str]]:
    """(decayed, exempt) parameter names of `optimizer`'s groups: what the policy did, by name."""
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, exempt = [], []
    for group in optimizer.param_groups:
        (decayed if group["weight_decay"] > 0 else exempt).extend(names[id(p)] for p in group["params"])
    return sorted(decayed), sorted(exempt)


def seed_step(seed: int, step: int, rank: int) -> None:
    """Reseed python, numpy and torch for one step: the step's randomness no longer depends on history."""
    a, b = np.random.SeedSequence([seed, step, rank]).generate_state(2)
    random.seed(int(a))
    np.random.seed(int(b))
    torch.manual_seed(int(a) << 32 | int(b))


def _check_resumable(saved: dict[str, Any], recipe: Recipe, kind: str, path: Path, check_task: Callable[[], None]) -> None:
    """Kind, then what is trained (space, arch, data), then the recipe: the first difference is the error."""
    if saved.get("kind") != kind:
        raise DeployvitError(f"{path} is a {saved.get('kind')} checkpoint, cannot resume {kind} training from it")
    check_task()
    old = Recipe.from_dict(saved["recipe"])
    for f in fields(Recipe):
        if getattr(old, f.name) != getattr(recipe, f.name):
            raise DeployvitError(
                f"cannot resume {path}: --{f.name.replace('_', '-')} was {getattr(old, f.name)!r}, now {getattr(recipe, f.name)!r}"
            )


def fit(task: Task, recipe: Recipe, opts: RunOptions, info: DistInfo) -> list[dict[str, Any]]:
    """Train `task` with `recipe`; returns the per-epoch metrics. Only rank 0 writes files."""
    recipe.validate()
    if opts.ckpt_every < 0:
        raise DeployvitError(f"--ckpt-every must be >= 0, got {opts.ckpt_every}")
    if recipe.amp != "off" and info.device.type != "cuda":
        raise DeployvitError(f"--amp {recipe.amp} needs a CUDA device (running on {info.device.type})")
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(opts.deterministic or was_deterministic)
    try:
        return _fit(task, recipe, opts, info)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _fit(task: Task, recipe: Recipe, opts: RunOptions, info: DistInfo) -> list[dict[str, Any]]:
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    device = info.device
    n_train = len(task.train_set)
    batches = EpochBatches(n_train, recipe.batch_size, info, recipe.seed)
    if batches.steps_per_epoch == 0:
        raise DeployvitError(
            f"batch size {recipe.batch_size} x {info.world_size} rank(s) is larger than the {n_train} training images"
        )
    steps = batches.steps_per_epoch
    ckpt_path, out = opts.out / "checkpoint.pt", opts.out

    model = task.model.to(device)
    broadcast_module(model, info)
    optimizer = build_optimizer(model, recipe)
    scheduler, _ = create_scheduler_v2(
        optimizer, "cosine", num_epochs=recipe.epochs, warmup_epochs=recipe.warmup_epochs,
        min_lr=recipe.min_lr, warmup_lr=recipe.warmup_lr, step_on_epochs=False, updates_per_epoch=steps,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=recipe.amp == "fp16")
    ema = ModelEmaV3(model, decay=recipe.ema_decay) if recipe.ema_decay > 0 else None
    aug = recipe.aug_config
    mixup, loss_fn = build_mixup(aug, task.meta["num_classes"]), build_loss(aug).to(device)
    amp_dtype = AMP_DTYPES.get(recipe.amp)

    def autocast() -> ContextManager:
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    def backward(loss: torch.Tensor) -> None:
        scaler.scale(loss).backward()

    epoch, start_step, history = 0, 0, []
    so_far: dict[str, Any] = {"loss_sum": 0.0, "loss_n": 0, "extra": {}}  # the epoch's running loss, all ranks
    if opts.resume:
        saved = read_checkpoint(ckpt_path) if ckpt_path.exists() else None
        if saved is None:
            raise DeployvitError(f"--resume: no checkpoint to resume in {out} (checkpoint.pt not found)")
        _check_resumable(saved, recipe, task.kind, ckpt_path, lambda: task.check_resume(saved["meta"]))
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        if ema is not None:
            ema.module.load_state_dict(saved["ema"])
        task.load_state_dict(saved["sampler"])
        restore_rng(saved["rng"])  # rank 0's; every step reseeds from (seed, step, rank) anyway
        progress = saved["progress"]
        if progress["steps_per_epoch"] != steps:
            raise DeployvitError(
                f"cannot resume {ckpt_path}: it ran {progress['steps_per_epoch']} steps per epoch, this run has {steps} "
                f"(another number of ranks?); resume with the world size it was started with"
            )
        epoch, start_step = progress["epoch"], progress["step"]
        so_far = progress.get("epoch_so_far", so_far)  # absent in checkpoints from before it was saved
        history = list(saved["history"])
        opts.log(f"resumed {ckpt_path} at epoch {epoch} step {start_step}")
    elif ckpt_path.exists():
        raise DeployvitError(f"{out} already holds a training run (checkpoint.pt); pass --resume or choose another --out")

    def state(epoch_: int, step_: int, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        """`partial`: the epoch's running loss over all ranks and its extra stats, for a mid-epoch save."""
        return {
            "kind": task.kind,
            "meta": task.meta,
            "recipe": recipe.to_dict(),
            "progress": {"epoch": epoch_, "step": step_, "global_step": epoch_ * steps + step_, "steps_per_epoch": steps,
                         "epoch_so_far": partial or {"loss_sum": 0.0, "loss_n": 0, "extra": {}}},
            "model": model.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "sampler": task.state_dict(),
            "rng": capture_rng(),
            "history": history,
        }

    def save(epoch_: int, step_: int, partial: dict[str, Any] | None = None) -> None:
        if info.is_main:
            save_checkpoint(ckpt_path, state(epoch_, step_, partial))

    if opts.banner:
        opts.log(opts.banner)
    model.train()
    while epoch < recipe.epochs:
        t0, extra = time.perf_counter(), dict(so_far["extra"])
        loss_sum, loss_n = (so_far["loss_sum"], so_far["loss_n"]) if info.is_main else (0.0, 0)
        so_far = {"loss_sum": 0.0, "loss_n": 0, "extra": {}}
        # seeds the loader workers' RNGs: per rank too, or every rank would draw the same augmentations
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([recipe.seed, epoch, start_step, info.rank]).generate_state(1)[0]))
        loader = torch.utils.data.DataLoader(
            task.train_set, batch_sampler=batches.epoch(epoch, start_step), num_workers=opts.num_workers,
            pin_memory=device.type == "cuda", generator=gen,
        )
        it = one_line_errors(loader)
        for step in range(start_step, steps):
            gstep = epoch * steps + step
            seed_step(recipe.seed, gstep, info.rank)
            x, y = next(it)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if mixup is not None:
                x, y = mixup(x, y)
            scheduler.step_update(num_updates=gstep)
            loss = task.train_step(x, y, gstep, epoch, loss_fn, autocast, backward)
            if all_ranks_sum(0.0 if math.isfinite(loss) else 1.0, info):
                raise TrainingDiverged(
                    f"loss is {loss} at epoch {epoch} step {step}: training stopped; last good checkpoint "
                    f"{ckpt_path if ckpt_path.exists() else '(none yet)'} kept (try a lower --lr or --clip-grad 1)"
                )
            average_gradients(model.parameters(), info)
            if recipe.clip_grad > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model, step=gstep)
            extra.update(task.after_step(gstep, info))
            loss_sum, loss_n = loss_sum + loss, loss_n + 1
            if info.is_main and opts.log_every and (gstep + 1) % opts.log_every == 0:
                opts.log(f"epoch {epoch + 1} step {step + 1}/{steps} loss {loss:.4f} lr {optimizer.param_groups[0]['lr']:.2e}")
            if opts.ckpt_every and (gstep + 1) % opts.ckpt_every == 0 and step + 1 < steps:
                partial = {"loss_sum": all_ranks_sum(loss_sum, info), "loss_n": int(all_ranks_sum(loss_n, info)), "extra": extra}
                save(epoch, step + 1, partial)
        train_loss = all_ranks_sum(loss_sum, info) / max(all_ranks_sum(loss_n, info), 1)
        metrics = task.evaluate(ema.module if ema is not None else model, info)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "lr": optimizer.param_groups[0]["lr"],
               **metrics, **extra, "seconds": time.perf_counter() - t0}
        history.append(row)
        if info.is_main:
            opts.log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
            io.write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        epoch, start_step = epoch + 1, 0
        save(epoch, 0)
    if info.is_main:
        task.finish(out, ema.module if ema is not None else model, state(epoch, 0))
    return history
