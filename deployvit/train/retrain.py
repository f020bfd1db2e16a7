"""`retrain`: train the standalone model of one arch (the very `ViT` the exporters consume), from the
supernet's inherited weights (`supernet.extract(arch)`) or from scratch, with the same recipe engine.

Trains on the whole train split (the held-out images only matter for choosing the arch) and reports
val accuracy every epoch. Writes `checkpoint.safetensors` (weights + arch metadata), `arch.json` and
`metrics.jsonl`; `checkpoint.pt` holds the resumable state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deployvit.errors import DeployvitError
from deployvit.arch import Arch
from deployvit.models import ViT, build_model
from deployvit.weights import save_model
from deployvit.train.data import Source, SplitDataset
from deployvit.train.distributed import DistInfo
from deployvit.train.evaluate import eval_loader, evaluate_accuracy
from deployvit.train.loop import Recipe, RunOptions, fit
from deployvit.train.setup import init_position_embeddings, seed_init, transforms_for


class RetrainTask:
    kind = "retrain"

    def __init__(self, model: ViT, source: Source, recipe: Recipe, init: str, eval_batch: int = 256, num_workers: int = 0):
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

    def train_step(self, x, y, step, epoch, loss_fn, autocast, backward) -> float:
        with autocast():
            loss = loss_fn(self.model(x), y)
        backward(loss)
        return float(loss.detach())

    def after_step(self, step: int, info: DistInfo) -> dict[str, float]:
        return {}

    def evaluate(self, model: ViT, info: DistInfo) -> dict[str, float]:
        acc = evaluate_accuracy(model, eval_loader(self.val_set, self.eval_batch, info, self.num_workers), info.device, info)
        return {"val_top1": acc["top1"], "val_top5": acc["top5"]}

    def check_resume(self, meta: dict[str, Any]) -> None:
        for key in ("arch", "init", "data"):
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


def retrain(model: ViT, source: Source, recipe: Recipe, init: str, opts: RunOptions, info: DistInfo) -> dict[str, Any]:
    """Evaluate the starting weights, train, return {"initial": top1/top5, "history": per-epoch rows}."""
    task = RetrainTask(model, source, recipe, init, num_workers=opts.num_workers)
    model.to(info.device)
    initial = task.evaluate(model, info)
    if info.is_main:
        opts.log(f"initial ({init}) val top1 {initial['val_top1']:.2f} top5 {initial['val_top5']:.2f}")
    task.meta["initial"] = initial
    return {"initial": initial, "history": fit(task, recipe, opts, info)}

