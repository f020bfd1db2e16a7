"""Real photographs for checks that have no data set: `natural_samples`, and `neighbour_correlation`,
the statistic that tells photographs from noise.

Why photographs rather than noise: seeded N(0, 1) images (`verify.synthetic_samples`) exercise every
operator, but their activation statistics are nothing like a photograph's (no spatial correlation,
no smooth regions, no edges), so a parity check on them can pass a graph that is wrong on real
inputs, and a range calibrated on them is wrong by construction (INT8 refuses them, see
`exporters.quantize`). When the user gives no `--data`, a check can still see photographs.

Where they come from: the two photographs scikit-learn ships inside its wheel
(`sklearn.datasets.load_sample_images()`: china.jpg and flower.jpg, 640x427, CC-BY licensed, see
sklearn/datasets/images/README.txt). scikit-learn is already a dependency (the built-in `digits`
data set comes from it), so nothing is downloaded and nothing new is installed. scikit-image also
bundles photographs (`skimage.data`), but it is not a dependency and would be one more package for
two pictures.

How the `n` images are made (deterministic: the same `n`, `img_size`, `in_chans` and `seed` give the
same tensor on one installation; JPEG decoding may differ by a grey level between Pillow builds):
image i is a crop of photograph i % 2 whose area is 10-100% of the photo and whose aspect ratio is
3/4-4/3 (torchvision's RandomResizedCrop ranges, drawn from numpy's PCG64 with `seed`), mirrored
for every other pair, resized with bicubic filtering to `img_size`, scaled to [0, 1] and normalised
with the ImageNet mean and std (timm's constants, what the shipped models are trained with) unless
the caller gives the data set's. One channel means luminance (PIL's "L"). The first two images are
the two whole photographs, centre-cropped to a square.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from deployvit.errors import DeployvitError
from exporters.verify import Samples

NATURAL_SEED = 0
CROP_AREA = (0.1, 1.0)  # fraction of the photograph's area
CROP_RATIO = (3 / 4, 4 / 3)  # width / height
#: mean correlation of horizontally adjacent pixels below which a batch is noise, not images
#: (measured: i.i.d. noise 0.00, photographs 0.93-0.99, digits at 32x32 0.85; see `neighbour_correlation`)
MIN_NEIGHBOUR_CORRELATION = 0.3


@functools.lru_cache(maxsize=1)
def _photographs() -> tuple[Image.Image, ...]:
    """Decoded once per process (PIL images are not changed in place here: crop and resize copy)."""
    from sklearn.datasets import load_sample_images

    return tuple(Image.fromarray(np.asarray(im)).convert("RGB") for im in load_sample_images().images)


def _crop_boxes(n: int, sizes: Sequence[tuple[int, int]], seed: int) -> list[tuple[int, int, int, int, int]]:
    """(photo, left, top, width, height) for n crops: two centred squares, then seeded random crops."""
    rng = np.random.default_rng(seed)
    boxes = []
    for i in range(n):
        photo = i % len(sizes)
        w_img, h_img = sizes[photo]
        if i < len(sizes):
            side = min(w_img, h_img)
            boxes.append((photo, (w_img - side) // 2, (h_img - side) // 2, side, side))
            continue
        area = rng.uniform(*CROP_AREA) * w_img * h_img
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        w = min(w_img, max(1, round(math.sqrt(area * ratio))))
        h = min(h_img, max(1, round(math.sqrt(area / ratio))))
        left, top = int(rng.integers(0, w_img - w + 1)), int(rng.integers(0, h_img - h + 1))
        boxes.append((photo, left, top, w, h))
    return boxes


def natural_samples(n: int, img_size: int, in_chans: int = 3, *, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, seed: int = NATURAL_SEED) -> Samples:
    """`n` normalised crops [n, in_chans, img_size, img_size] of scikit-learn's two sample photographs,
    without labels (module docstring: how they are made). `mean`/`std` default to ImageNet's."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    if n < 1 or img_size < 1:
        raise DeployvitError(f"natural samples need n >= 1 and img_size >= 1, got n={n}, img_size={img_size}")
    if in_chans not in (1, 3):
        raise DeployvitError(f"natural samples are RGB or greyscale photographs; a model with {in_chans} input channels needs --data")
    mean = tuple(IMAGENET_DEFAULT_MEAN if mean is None else mean)
    std = tuple(IMAGENET_DEFAULT_STD if std is None else std)
    if in_chans == 1 and len(mean) == 3:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    if len(mean) != in_chans or len(std) != in_chans:
        raise DeployvitError(f"mean and std need {in_chans} values, got {len(mean)} and {len(std)}")
    photos = _photographs()
    images = np.empty((n, in_chans, img_size, img_size), dtype=np.float32)
    for i, (photo, left, top, w, h) in enumerate(_crop_boxes(n, [p.size for p in photos], seed)):
        crop = photos[photo].crop((left, top, left + w, top + h))
        if (i // 2) % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop = crop.resize((img_size, img_size), Image.Resampling.BICUBIC)
        pixels = np.asarray(crop.convert("L" if in_chans == 1 else "RGB"), dtype=np.float32) / 255.0
        images[i] = pixels.reshape(img_size, img_size, in_chans).transpose(2, 0, 1)
    images = (images - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]
    source = f"natural: {n} crops of scikit-learn's sample photographs (china.jpg, flower.jpg), seed {seed}, no labels"
    return Samples(torch.from_numpy(images), None, source)


def neighbour_correlation(images: torch.Tensor | np.ndarray) -> float:
    """Mean Pearson correlation between horizontally adjacent pixels, per image and channel, averaged.

    A photograph (or a digit, a CIFAR image, a rendered scene) is smooth almost everywhere: adjacent
    pixels correlate at 0.8-0.99. Independent noise, seeded or not, Gaussian or uniform, correlates at
    0 (+- 1/sqrt(pixels)). Normalisation does not change it (it is affine per channel), so the test
    works on the tensors a model is fed. Channels without variation (a constant image) count as 0.
    Images narrower than 2 pixels have no neighbours: 0."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images).double()
    if x.ndim != 4 or x.shape[-1] < 2:
        return 0.0
    left, right = x[..., :-1].flatten(2), x[..., 1:].flatten(2)
    left, right = left - left.mean(-1, keepdim=True), right - right.mean(-1, keepdim=True)
    denom = (left.square().sum(-1) * right.square().sum(-1)).sqrt()
    corr = torch.where(denom > 0, (left * right).sum(-1) / denom.clamp_min(1e-300), torch.zeros_like(denom))
    return float(corr.mean())
