"""`retrain`: train the standalone model of one arch (the very `ViT` the exporters consume), from the
supernet's inherited weights (`supernet.extract(arch)`) or from scratch, with the same recipe engine.

Trains on the whole train split (the held-out images only matter for choosing the arch) and reports
val accuracy every epoch. Writes `checkpoint.safetensors` (weights + arch metadata), `arch.json` and
`metrics.jsonl`; `checkpoint.pt` holds the resumable state.

Knowledge distillation (`Distill`): the student also learns from a teacher's logits on the same
(augmented, mixed) images, DeiT's two variants without the distillation token (Touvron et al. 2021):
soft, (1 - alpha) x the recipe's loss + alpha x tau^2 x KL(softmax(teacher / tau) || softmax(student / tau))
(batch mean), and hard, (1 - alpha) x the recipe's loss + alpha x cross-entropy with the teacher's
top-1 as the label. `retrain --init SUPERNET --distill` takes the supernet's largest arch as the
teacher: for an imported supernet, the parent the weights came from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deployvit import io
from deployvit.errors import DeployvitError
from deployvit.arch import Arch
from deployvit.models import ViT, build_model
from deployvit.weights import save_model
from deployvit.train.checkpoint import read_checkpoint
from deployvit.train.data import Source, SplitDataset
from deployvit.train.distributed import DistInfo
from deployvit.train.evaluate import eval_loader, evaluate_accuracy
from deployvit.train.loop import Recipe, RunOptions, fit
from deployvit.train.setup import init_position_embeddings, seed_init, transforms_for


DISTILL_MODES = ("soft", "hard")


@dataclass(frozen=True)
class Distill:
    """DeiT-style distillation: `mode` soft or hard, the teacher's share `alpha`, soft's temperature `tau`
    (DeiT's defaults: 0.5 and 1.0)."""

    mode: str = "soft"
    alpha: float = 0.5
    tau: float = 1.0

    def __post_init__(self):
        if self.mode not in DISTILL_MODES or not 0 <= self.alpha <= 1 or not self.tau > 0:
            raise DeployvitError(f"distillation: mode in {DISTILL_MODES}, alpha in [0, 1], tau > 0; got {self}")

    def loss(self, student: torch.Tensor, teacher: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """The distilled loss from the recipe's loss `base` and both models' logits on the same images."""
        teacher = teacher.float()
        if self.mode == "hard":
            kd = F.cross_entropy(student, teacher.argmax(dim=-1))
        else:
            t = self.tau
            kd = F.kl_div(F.log_softmax(student.float() / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                          reduction="batchmean", log_target=True) * (t * t)
        return (1 - self.alpha) * base + self.alpha * kd


class RetrainTask:
    kind = "retrain"

    def __init__(self, model: ViT, source: Source, recipe: Recipe, init: str, eval_batch: int = 256, num_workers: int = 0,
                 teacher: nn.Module | None = None, distill: Distill | None = None):
        arch = model.arch
        if source.num_classes != arch.num_classes:
            raise DeployvitError(f"arch has {arch.num_classes} classes but the data set has {source.num_classes}")
        tf = transforms_for(source, recipe.aug_config, arch.img_size)
        self.model, self.arch = model, arch
        self.eval_batch, self.num_workers = eval_batch, num_workers
        self.train_set = SplitDataset(source.train, tf.train)
        self.val_set = SplitDataset(source.val, tf.eval)
        self.meta: dict[str, Any] = {
            "num_classes": arch.num_classes,
            "arch": arch.to_dict(),
            "init": init,
            "data": {"kind": source.kind, "root": source.root},
        }
        if (teacher is None) != (distill is None):
            raise DeployvitError("distillation needs both a teacher and its settings")
        self.teacher, self.distill = teacher, distill
        if distill is not None:
            tarch = getattr(teacher, "arch", None)
            self.meta["distill"] = {**asdict(distill), "teacher": tarch.to_dict() if tarch is not None else type(teacher).__name__}
            teacher.eval().requires_grad_(False)

    def train_step(self, x, y, step, epoch, loss_fn, autocast, backward) -> float:
        with autocast():
            out = self.model(x)
            loss = loss_fn(out, y)
            if self.distill is not None:
                with torch.no_grad():
                    target = self.teacher(x)
                loss = self.distill.loss(out, target, loss)
        backward(loss)
        return float(loss.detach())

    def after_step(self, step: int, info: DistInfo) -> dict[str, float]:
        return {}

    def evaluate(self, model: ViT, info: DistInfo) -> dict[str, float]:
        acc = evaluate_accuracy(model, eval_loader(self.val_set, self.eval_batch, info, self.num_workers), info.device, info)
        return {"val_top1": acc["top1"], "val_top5": acc["top5"]}

    def check_resume(self, meta: dict[str, Any]) -> None:
        for key in ("arch", "init", "data", "distill"):
            if meta.get(key) != self.meta.get(key):
                raise DeployvitError(f"cannot resume: the checkpoint's {key} differs from this run's")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def finish(self, out: Path, model: ViT, state: dict[str, Any]) -> None:
        save_model(out / "checkpoint.safetensors", model, self.arch, {"init": self.meta["init"]})
        self.arch.save(out / "arch.json")


def new_model(arch: Arch, recipe: Recipe) -> ViT:
    """Freshly initialised standalone weights for `recipe` (`retrain --init scratch`)."""
    seed_init(recipe.seed)
    model = build_model(arch, recipe.drop_path)
    init_position_embeddings(model, recipe.pos_embed_std)
    return model


def retrain(model: ViT, source: Source, recipe: Recipe, init: str, opts: RunOptions, info: DistInfo,
            teacher: nn.Module | None = None, distill: Distill | None = None) -> dict[str, Any]:
    """Evaluate the starting weights (and the teacher's), train, return {"initial": top1/top5,
    "history": per-epoch rows} (and "teacher": its top1/top5 when distilling)."""
    task = RetrainTask(model, source, recipe, init, num_workers=opts.num_workers, teacher=teacher, distill=distill)
    saved = opts.out / "checkpoint.pt"
    if opts.resume and saved.exists():  # a run that cannot resume says so before any evaluation is printed
        task.check_resume(read_checkpoint(saved)["meta"])
    if info.is_main:  # and so does a run folder that takes no file (a full or read-only disk)
        io.check_writable(opts.out, "run folder (--out)")
    model.to(info.device)
    initial = task.evaluate(model, info)
    if info.is_main:
        opts.log(f"initial ({init}) val top1 {initial['val_top1']:.2f} top5 {initial['val_top5']:.2f}")
    task.meta["initial"] = initial
    if teacher is not None:
        teacher.to(info.device)
        task.meta["teacher"] = task.evaluate(teacher, info)
        if info.is_main:
            opts.log(f"distilling ({distill.mode}, alpha {distill.alpha:g}, tau {distill.tau:g}) from a teacher at val top1 "
                     f"{task.meta['teacher']['val_top1']:.2f}")
    return {"initial": initial, "history": fit(task, recipe, opts, info)}

