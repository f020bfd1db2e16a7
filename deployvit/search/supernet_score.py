"""Scores that need a trained supernet: inherited-weight accuracy on the held-out split (the
`supernet` score, with which FocusFormer specialisation, `--method focus`, scores its proposals).

The held-out images are the ones `train-supernet` carved from the training data and recorded by id
in the checkpoint (never the validation split users report on). They are streamed in batches, not
preloaded: ImageNet at 25 images per class is about 15 GB of float32 tensors. Batches are kept, on
the scoring device and in the scoring precision, up to a memory budget (`cache_bytes`, 2 GiB by
default), so a small held-out set (digits, CIFAR) is decoded once and a large one streams the part
beyond the budget for every arch. The supernet runs on the device given (a `torch.device`; the
command layer parses `--device` with `deployvit.compute.compute_device`), under autocast on CUDA
(bf16 where the GPU has it, else fp16): accuracy ranks archs, and mixed precision does not change a
ranking measurably while it halves the time. Archs scored per second are kept (`throughput()`).
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from typing import TYPE_CHECKING, Iterator

import torch

from deployvit.arch import Arch
from deployvit.errors import DeployvitError
from deployvit.supernet import Supernet

if TYPE_CHECKING:
    from deployvit.search import ScoreInputs

CPU = torch.device("cpu")
DEFAULT_CACHE_BYTES = 2 << 30
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_precision(device: torch.device, amp: bool | None = None) -> str | None:
    """The autocast precision for scoring on `device`: None (fp32) on the CPU or when `amp` is False;
    on CUDA bf16 where supported, else fp16. `amp=True` on the CPU is refused (CPU autocast is slow
    on most CPUs and changes nothing a user could want here)."""
    if amp is False:
        return None
    if device.type != "cuda":
        if amp:
            raise DeployvitError("mixed-precision scoring needs a CUDA device")
        return None
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


class SupernetAccuracy:
    """Top-1 (percent) of an arch's inherited weights on the held-out set, streamed in batches.

    `dataset` yields (image tensor, label) pairs (a `SplitDataset`). `workers` DataLoader workers
    decode images (default: none on the CPU, where decoding competes with scoring, else up to 8)."""

    name = "supernet"

    def __init__(
        self,
        supernet: Supernet,
        dataset: torch.utils.data.Dataset,
        *,
        device: torch.device = CPU,
        batch_size: int = 256,
        workers: int | None = None,
        amp: bool | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ):
        if batch_size < 1 or cache_bytes < 0:
            raise DeployvitError(f"scoring batch size must be >= 1 and cache >= 0 bytes (got {batch_size}, {cache_bytes})")
        if len(dataset) == 0:
            raise DeployvitError("the held-out set is empty: nothing to score archs on")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise DeployvitError(f"scoring on {self.device}: torch sees no CUDA GPU on this machine (use --device cpu)")
        self.precision = amp_precision(self.device, amp)
        self.supernet = supernet.eval().to(self.device)
        self.dataset, self.batch_size, self.cache_bytes = dataset, batch_size, cache_bytes
        self.workers = workers if workers is not None else (0 if self.device.type == "cpu" else min(8, max(1, (os.cpu_count() or 2) - 1)))
        self.held_out_ids: list[str] = []
        self._cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._cached_images, self._cache_used = 0, 0
        self._cache_closed = cache_bytes == 0
        self._scored, self._seconds = 0, 0.0
        self._loader: tuple[int, torch.utils.data.DataLoader] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    @torch.no_grad()
    def __call__(self, arch: Arch) -> float:
        start = time.perf_counter()
        self.supernet.set_arch(arch)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        autocast = torch.autocast("cuda", dtype=AMP_DTYPES[self.precision]) if self.precision else nullcontext()
        with autocast:
            for images, labels in self._batches():
                correct += (self.supernet(images).argmax(-1) == labels).sum()
        accuracy = 100.0 * int(correct) / len(self.dataset)  # int(): waits for the device
        self._scored += 1
        self._seconds += time.perf_counter() - start
        return accuracy

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The cached batches, then the rest of the held-out set streamed from the dataset; streamed
        batches join the cache while it stays within `cache_bytes` (so it always holds a prefix)."""
        yield from self._cache
        if self._cached_images == len(self.dataset):
            return
        for images, labels in self._stream(self._cached_images):
            images = images.to(self.device, non_blocking=True)
            images = images.to(AMP_DTYPES[self.precision]) if self.precision else images
            labels = labels.to(self.device, non_blocking=True)
            if not self._cache_closed:
                size = images.numel() * images.element_size() + labels.numel() * labels.element_size()
                if self._cache_used + size <= self.cache_bytes:
                    self._cache.append((images, labels))
                    self._cached_images += len(labels)
                    self._cache_used += size
                else:
                    self._cache_closed = True
            yield images, labels

    def _stream(self, first: int):
        """Batches of the held-out images from index `first` on. Once the cache stops growing `first`
        stays the same, so one loader (its workers kept alive) serves every later arch."""
        from deployvit.train.data import one_line_errors

        if self._loader is None or self._loader[0] != first:
            rest = self.dataset if first == 0 else torch.utils.data.Subset(self.dataset, range(first, len(self.dataset)))
            loader = torch.utils.data.DataLoader(
                rest, batch_size=self.batch_size, shuffle=False, num_workers=self.workers,
                pin_memory=self.device.type == "cuda", persistent_workers=self.workers > 0 and self._cache_closed,
            )
            self._loader = (first, loader)
        return one_line_errors(self._loader[1])

    @property
    def cached_images(self) -> int:
        return self._cached_images

    def throughput(self) -> dict:
        """Archs scored, seconds spent scoring, and archs scored per second (what search logs)."""
        per_s = self._scored / self._seconds if self._seconds > 0 else None
        return {
            "archs_scored": self._scored,
            "scoring_seconds": round(self._seconds, 3),
            "archs_per_s": per_s,
            "images_per_s": per_s * len(self.dataset) if per_s else None,
            "device": str(self.device),
            "precision": self.precision or "fp32",
            "held_out_images": len(self.dataset),
            "cached_images": self._cached_images,
            "batch_size": self.batch_size,
        }


def load_supernet_for_search(path: str, space_name: str | None) -> tuple[Supernet, dict]:
    """(supernet, meta) of a checkpoint, refused when `space_name` is given and is not its space."""
    from deployvit.train.checkpoint import load_supernet

    supernet, meta = load_supernet(path)
    if space_name is not None and supernet.space.name != space_name:
        raise DeployvitError(f"supernet checkpoint {path} was trained on space {supernet.space.name!r}, not {space_name!r} (pass --space "
                             f"{supernet.space.name})")
    return supernet, meta


def supernet_score(inputs: "ScoreInputs") -> SupernetAccuracy:
    """The `supernet` score (`deployvit.search.SCORES`): the loaded supernet's held-out accuracy."""
    return supernet_accuracy(inputs.data, inputs.checkpoint, inputs.supernet, inputs.meta or {}, device=inputs.device)


def supernet_accuracy(data: str | None, checkpoint: str, supernet: Supernet, meta: dict, device: torch.device = CPU,
                      **options) -> SupernetAccuracy:
    """The `supernet` score on the held-out images of `data` that the supernet `checkpoint`
    recorded, computed on `device`; `options` go to `SupernetAccuracy` (batch_size, workers, amp,
    cache_bytes)."""
    from deployvit.train.augment import get_aug
    from deployvit.train.data import held_out_from_ids, open_data
    from deployvit.train.setup import eval_dataset, transforms_for

    if data is None:
        raise DeployvitError("--score supernet needs --data (the data the supernet was trained on)")
    source = open_data(data)
    ids = meta.get("held_out", {}).get("ids") or []
    if not ids:
        raise DeployvitError(f"supernet checkpoint {checkpoint} has no held-out images to score on (train it with --held-out-per-class > 0, "
                             "or import it with --data)")
    if source.num_classes != supernet.space.num_classes:
        raise DeployvitError(f"{data} has {source.num_classes} classes, the supernet {supernet.space.num_classes}")
    held = held_out_from_ids(source, ids)
    dataset = eval_dataset(source, "held-out", transforms_for(source, get_aug("none"), supernet.space.img_size).eval, held)
    score = SupernetAccuracy(supernet, dataset, device=device, **options)
    score.held_out_ids = list(held.held_out_ids)
    return score

