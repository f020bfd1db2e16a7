"""Shared set-up of a training run: process group, data, transforms, the space fitted to the data.

Used by `train-supernet`, `retrain` and `evaluate`, so all three read data and build transforms the
same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deployvit.spaces import SearchSpace
from deployvit.train.augment import AugConfig, build_transform
from deployvit.train.data import Source, SplitDataset

NATIVE_32 = ("cifar10", "cifar100", "digits")  # these sources store 32x32 images


@dataclass
class Transforms:
    train: object
    eval: object


def transforms_for(source: Source, aug: AugConfig, img_size: int) -> Transforms:
    native = source.kind in NATIVE_32 and img_size == 32
    make = lambda training: build_transform(aug, img_size, source.mean, source.std, training, source.hflip, native)  # noqa: E731
    return Transforms(make(True), make(False))


def fit_space(space: SearchSpace, source: Source) -> SearchSpace:
    """The space with the data set's class count (a preset's 1000 ImageNet classes become 10 on digits)."""
    if space.num_classes == source.num_classes:
        return space
    return space.with_overrides(num_classes=source.num_classes)


def eval_dataset(source: Source, split: str, transform, held_out=None) -> SplitDataset:
    """`train`, `val`, or `held-out` (needs the HeldOut of the supernet run)."""
    if split == "held-out":
        return SplitDataset(source.train, transform, held_out.held_out)
    return SplitDataset(source.split(split), transform)


def seed_init(seed: int) -> None:
    """Seed model initialisation: every rank builds the same initial weights."""
    torch.manual_seed(seed)


@torch.no_grad()
def init_position_embeddings(model: torch.nn.Module, std: float) -> None:
    """Redraw every position embedding of freshly built weights (ViT or Supernet) at `std`
    (`Recipe.pos_embed_std`: DeiT's 0.02 is too faint for short runs on small data, see
    `deployvit.train.recipe`). Call after `seed_init` and construction; never on inherited weights."""
    from timm.layers import trunc_normal_

    for name, param in model.named_parameters():
        if name.split(".")[-1] == "pos_embed":
            trunc_normal_(param, std=std, a=-2 * std, b=2 * std)
