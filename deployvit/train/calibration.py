"""The images INT8 calibration sees: `calibration_samples`, drawn from a data set's training split.

Why the training split: the verification images (the `val` split, `deployvit export --data`) judge
the quantised model; ranges fitted on them would let the gate grade its own homework. Why drawn at
random rather than the first N: an ImageFolder (and digits) is ordered by class, and ranges from a
few classes miss the others' activations. Why a fixed seed: the same data gives the same images,
so the same ranges and the same INT8 bytes on every run (`exporters.quantize`). How many:
`exporters.quantize.DEFAULT_CALIBRATION` (512), or the whole split when it is smaller.

Preprocessing is the evaluation transform (`transforms_for(...).eval`, no augmentation), exactly
what `deployvit evaluate` and the export's verification feed the model. It lives in `train` because
it joins the data readers with the exporters' `Samples`, which the exporters below may not import.
"""

from __future__ import annotations

import numpy as np
import torch

from deployvit.errors import DeployvitError
from deployvit.train.augment import get_aug
from deployvit.train.data import SplitDataset, open_data
from deployvit.train.setup import transforms_for
from exporters.quantize import DEFAULT_CALIBRATION, MIN_CALIBRATION
from exporters.verify import Samples

CALIBRATION_SEED = 0


def calibration_indices(size: int, n: int, seed: int = CALIBRATION_SEED) -> list[int]:
    """`n` distinct indices of a split of `size` images, drawn with `seed`, in ascending order."""
    if n < 1:
        raise DeployvitError(f"calibration needs at least one image, got {n}")
    rng = np.random.default_rng(seed)
    return sorted(rng.permutation(size)[: min(n, size)].tolist())


def calibration_samples(data: str, img_size: int, in_chans: int = 3, n: int = DEFAULT_CALIBRATION,
                        seed: int = CALIBRATION_SEED) -> Samples:
    """`n` training images of `data` (digits, a CIFAR folder or an ImageFolder root), drawn with
    `seed` and preprocessed for a model of `img_size`, with their labels (unused by calibration,
    kept so the set can be inspected). One-line errors for data sets too small to calibrate on."""
    source = open_data(data)
    split = source.train
    if in_chans != 3:
        raise DeployvitError(f"--data gives RGB images, but the model takes {in_chans} channels")
    if len(split) < MIN_CALIBRATION:
        raise DeployvitError(f"{data}: INT8 calibration needs at least {MIN_CALIBRATION} training images, the train split has {len(split)}")
    picked = calibration_indices(len(split), n, seed)
    dataset = SplitDataset(split, transforms_for(source, get_aug("none"), img_size).eval, indices=picked)
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    where = source.kind if str(data) == source.kind else f"{source.kind} {data}"
    return Samples(torch.stack(images), torch.tensor(labels),
                   f"{where}: {len(dataset)} of {len(split)} train images drawn with seed {seed} (calibration)")
