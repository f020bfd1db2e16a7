"""Scores that need a trained supernet: inherited-weight accuracy on the held-out split, and the
FocusFormer-style sampler's specialisation.

The held-out images are the ones `train-supernet` carved from the training data and recorded by id
in the checkpoint (never the validation split users report on); they are decoded and transformed
once, then every candidate arch is evaluated on the same tensors in batches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from deployvit.arch import Arch
from deployvit.errors import DeployvitError
from deployvit.spaces import SearchSpace
from deployvit.supernet import Supernet

if TYPE_CHECKING:
    from deployvit.search.run import SearchRequest


class SupernetAccuracy:
    """Top-1 (percent) of an arch's inherited weights on fixed held-out tensors."""

    name = "supernet"

    def __init__(self, supernet: Supernet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256):
        self.supernet, self.images, self.labels, self.batch_size = supernet.eval(), images, labels, batch_size
        self.held_out_ids: list[str] = []

    @torch.no_grad()
    def __call__(self, arch: Arch) -> float:
        self.supernet.set_arch(arch)
        correct = 0
        for start in range(0, len(self.labels), self.batch_size):
            logits = self.supernet(self.images[start : start + self.batch_size])
            correct += int((logits.argmax(-1) == self.labels[start : start + self.batch_size]).sum())
        return 100.0 * correct / len(self.labels)


def load_supernet_for_search(path: str, space_name: str) -> tuple[Supernet, dict]:
    from deployvit.train.checkpoint import load_supernet

    supernet, meta = load_supernet(path)
    if supernet.space.name != space_name:
        raise DeployvitError(f"supernet checkpoint {path} was trained on space {supernet.space.name!r}, not {space_name!r} (pass --space {supernet.space.name})")
    return supernet, meta


def supernet_accuracy(request: "SearchRequest", supernet: Supernet, meta: dict) -> SupernetAccuracy:
    """The `supernet` score on the checkpoint's recorded held-out images of `request.data`."""
    from deployvit.train.augment import get_aug
    from deployvit.train.data import held_out_from_ids, open_data
    from deployvit.train.setup import eval_dataset, transforms_for

    if request.data is None:
        raise DeployvitError("--score supernet/sampler needs --data (the data the supernet was trained on)")
    source = open_data(request.data)
    ids = meta.get("held_out", {}).get("ids") or []
    if not ids:
        raise DeployvitError(f"supernet checkpoint {request.supernet} has no held-out images to score on (train it with --held-out-per-class > 0)")
    if source.num_classes != supernet.space.num_classes:
        raise DeployvitError(f"{request.data} has {source.num_classes} classes, the supernet {supernet.space.num_classes}")
    held = held_out_from_ids(source, ids)
    dataset = eval_dataset(source, "held-out", transforms_for(source, get_aug("none"), supernet.space.img_size).eval, held)
    pairs = [dataset[i] for i in range(len(dataset))]
    score = SupernetAccuracy(supernet, torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs]))
    score.held_out_ids = list(held.held_out_ids)
    return score


def sampler_proposals(request: "SearchRequest", space: SearchSpace, budget_position: float, seed: int) -> list[Arch]:
    """FocusFormer specialisation, step one: k archs from the trained sampler for a normalised budget."""
    from deployvit.train.focus import load_sampler

    policy = load_sampler(request.supernet)
    if policy.space.hash() != space.hash():
        raise DeployvitError(f"the sampler in {request.supernet} was trained on another space than {space.name!r}")
    return policy.propose(budget_position, request.sampler_k, seed)
