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
from deployvit.weights import check_shapes

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
    """Train `task` with `recipe`: resume or start, then one epoch after another, checkpointing at
    every epoch end (and every `opts.ckpt_every` steps), so a killed run resumes exactly."""
    run = _Run.build(task, recipe, opts, info)
    epoch, start_step, so_far = run.resume() if opts.resume else run.start()
    if info.is_main:  # every input has passed: prove the run folder takes a file before the first step
        io.check_writable(opts.out, "run folder (--out)")
    if opts.banner:
        opts.log(opts.banner)
    run.model.train()
    while epoch < recipe.epochs:
        run.epoch(epoch, start_step, so_far)
        so_far, epoch, start_step = _NO_PROGRESS, epoch + 1, 0
        run.save(epoch, 0)
    if info.is_main:
        task.finish(opts.out, run.eval_model, run.state(epoch, 0))
    return run.history


#: the running loss of an epoch with no step done yet (what a mid-epoch checkpoint carries instead)
_NO_PROGRESS: dict[str, Any] = {"loss_sum": 0.0, "loss_n": 0, "extra": {}}


@dataclass
class _Run:
    """What one training run holds from step to step: the model and everything its checkpoint saves."""

    task: Task
    recipe: Recipe
    opts: RunOptions
    info: DistInfo
    batches: EpochBatches
    model: nn.Module
    optimizer: Any
    scheduler: Any
    scaler: Any
    ema: Any
    mixup: Any
    loss_fn: nn.Module
    history: list[dict[str, Any]]

    @classmethod
    def build(cls, task: Task, recipe: Recipe, opts: RunOptions, info: DistInfo) -> "_Run":
        from timm.scheduler import create_scheduler_v2
        from timm.utils import ModelEmaV3

        n_train = len(task.train_set)
        batches = EpochBatches(n_train, recipe.batch_size, info, recipe.seed)
        if batches.steps_per_epoch == 0:
            raise DeployvitError(
                f"batch size {recipe.batch_size} x {info.world_size} rank(s) is larger than the {n_train} training images"
            )
        model = task.model.to(info.device)
        broadcast_module(model, info)
        optimizer = build_optimizer(model, recipe)
        scheduler, _ = create_scheduler_v2(
            optimizer, "cosine", num_epochs=recipe.epochs, warmup_epochs=recipe.warmup_epochs,
            min_lr=recipe.min_lr, warmup_lr=recipe.warmup_lr, step_on_epochs=False, updates_per_epoch=batches.steps_per_epoch,
        )
        scaler = torch.amp.GradScaler("cuda", enabled=recipe.amp == "fp16")
        ema = ModelEmaV3(model, decay=recipe.ema_decay) if recipe.ema_decay > 0 else None
        aug = recipe.aug_config
        return cls(task, recipe, opts, info, batches, model, optimizer, scheduler, scaler, ema,
                   build_mixup(aug, task.meta["num_classes"]), build_loss(aug).to(info.device), [])

    @property
    def steps(self) -> int:
        return self.batches.steps_per_epoch

    @property
    def ckpt_path(self) -> Path:
        return self.opts.out / "checkpoint.pt"

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def autocast(self) -> ContextManager:
        dtype = AMP_DTYPES.get(self.recipe.amp)
        return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=self.info.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def start(self) -> tuple[int, int, dict[str, Any]]:
        if self.ckpt_path.exists():
            raise DeployvitError(f"{self.opts.out} already holds a training run (checkpoint.pt); pass --resume or choose another --out")
        return 0, 0, _NO_PROGRESS

    def resume(self) -> tuple[int, int, dict[str, Any]]:
        """(epoch, step, the epoch's running loss so far) of the checkpoint, every state restored."""
        path = self.ckpt_path
        saved = read_checkpoint(path) if path.exists() else None
        if saved is None:
            raise DeployvitError(f"--resume: no checkpoint to resume in {self.opts.out} (checkpoint.pt not found)")
        _check_resumable(saved, self.recipe, self.task.kind, path, lambda: self.task.check_resume(saved["meta"]))
        self._restore(saved, path)
        progress = saved["progress"]
        if progress["steps_per_epoch"] != self.steps:
            raise DeployvitError(
                f"cannot resume {path}: it ran {progress['steps_per_epoch']} steps per epoch, this run has {self.steps} "
                f"(another number of ranks?); resume with the world size it was started with"
            )
        self.history = list(saved["history"])
        self.opts.log(f"resumed {path} at epoch {progress['epoch']} step {progress['step']}")
        return progress["epoch"], progress["step"], progress.get("epoch_so_far", _NO_PROGRESS)  # absent before it was saved

    def _restore(self, saved: dict[str, Any], path: Path) -> None:
        """Every state of the checkpoint into this run. The weights are checked key by key first (a
        checkpoint.pt copied from a run of other shapes names the first key that differs); the rest
        (optimizer, schedule, scaler, sampler, RNG) is plain data whose mismatch is one line too."""
        expected = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        check_shapes(saved["model"], expected, path, "this run's model")
        if self.ema is not None:
            if saved.get("ema") is None:
                raise DeployvitError(f"cannot resume {path}: it holds no EMA weights, this run keeps an EMA (--ema-decay)")
            check_shapes(saved["ema"], expected, path, "this run's EMA model")
        try:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            self.scaler.load_state_dict(saved["scaler"])
            if self.ema is not None:
                self.ema.module.load_state_dict(saved["ema"])
            self.task.load_state_dict(saved["sampler"])
            restore_rng(saved["rng"])  # rank 0's; every step reseeds from (seed, step, rank) anyway
        except DeployvitError:
            raise
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as exc:
            text = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise DeployvitError(f"cannot resume {path}: its training state does not fit this run ({type(exc).__name__}: {text})") from None

    def state(self, epoch: int, step: int, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        """`partial`: the epoch's running loss over all ranks and its extra stats, for a mid-epoch save."""
        return {
            "kind": self.task.kind,
            "meta": self.task.meta,
            "recipe": self.recipe.to_dict(),
            "progress": {"epoch": epoch, "step": step, "global_step": epoch * self.steps + step, "steps_per_epoch": self.steps,
                         "epoch_so_far": partial or _NO_PROGRESS},
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.task.state_dict(),
            "rng": capture_rng(),
            "history": self.history,
        }

    def save(self, epoch: int, step: int, partial: dict[str, Any] | None = None) -> None:
        if self.info.is_main:
            save_checkpoint(self.ckpt_path, self.state(epoch, step, partial))

    def loader(self, epoch: int, start_step: int):
        """This rank's batches of `epoch` from `start_step` on; loader workers are seeded per rank
        too, or every rank would draw the same augmentations."""
        seed = np.random.SeedSequence([self.recipe.seed, epoch, start_step, self.info.rank]).generate_state(1)[0]
        loader = torch.utils.data.DataLoader(
            self.task.train_set, batch_sampler=self.batches.epoch(epoch, start_step), num_workers=self.opts.num_workers,
            pin_memory=self.info.device.type == "cuda", generator=torch.Generator().manual_seed(int(seed)),
        )
        return one_line_errors(loader)

    def epoch(self, epoch: int, start_step: int, so_far: dict[str, Any]) -> None:
        """Train one epoch from `start_step`, evaluate, log and record its row."""
        t0, extra = time.perf_counter(), dict(so_far["extra"])
        loss_sum, loss_n = (so_far["loss_sum"], so_far["loss_n"]) if self.info.is_main else (0.0, 0)
        it = self.loader(epoch, start_step)
        for step in range(start_step, self.steps):
            seed_step(self.recipe.seed, epoch * self.steps + step, self.info.rank)  # before the batch: it seeds its augmentation
            x, y = next(it)
            loss = self.step(x, y, epoch, step)
            extra.update(self.task.after_step(epoch * self.steps + step, self.info))
            loss_sum, loss_n = loss_sum + loss, loss_n + 1
            self.after_step(epoch, step, loss, loss_sum, loss_n, extra)
        train_loss = all_ranks_sum(loss_sum, self.info) / max(all_ranks_sum(loss_n, self.info), 1)
        metrics = self.task.evaluate(self.eval_model, self.info)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "lr": self.optimizer.param_groups[0]["lr"],
               **metrics, **extra, "seconds": time.perf_counter() - t0}
        self.history.append(row)
        if self.info.is_main:
            self.opts.log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
            io.write_text(self.opts.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))

    def step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int) -> float:
        """One optimizer step on one batch; the loss (NaN/inf on any rank stops the run, exit 1)."""
        gstep, device = epoch * self.steps + step, self.info.device
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        self.scheduler.step_update(num_updates=gstep)
        loss = self.task.train_step(x, y, gstep, epoch, self.loss_fn, self.autocast, self.backward)
        if all_ranks_sum(0.0 if math.isfinite(loss) else 1.0, self.info):
            raise TrainingDiverged(
                f"loss is {loss} at epoch {epoch} step {step}: training stopped; last good checkpoint "
                f"{self.ckpt_path if self.ckpt_path.exists() else '(none yet)'} kept (try a lower --lr or --clip-grad 1)"
            )
        average_gradients(self.model.parameters(), self.info)
        if self.recipe.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, step=gstep)
        return loss

    def after_step(self, epoch: int, step: int, loss: float, loss_sum: float, loss_n: int, extra: dict) -> None:
        """The step's log line and mid-epoch checkpoint, when due."""
        gstep = epoch * self.steps + step
        if self.info.is_main and self.opts.log_every and (gstep + 1) % self.opts.log_every == 0:
            self.opts.log(f"epoch {epoch + 1} step {step + 1}/{self.steps} loss {loss:.4f} lr {self.optimizer.param_groups[0]['lr']:.2e}")
        if self.opts.ckpt_every and (gstep + 1) % self.opts.ckpt_every == 0 and step + 1 < self.steps:
            partial = {"loss_sum": all_ranks_sum(loss_sum, self.info), "loss_n": int(all_ranks_sum(loss_n, self.info)), "extra": extra}
            self.save(epoch, step + 1, partial)


