"""Data sets read from local files only (never downloaded): ImageFolder roots, CIFAR-10/100 python
batches, and the built-in `digits` (scikit-learn's 8x8 digits, upsampled to 32x32 RGB).

Every source has a fixed `train` and `val` split; `held_out_split` carves a per-class held-out set from
`train` and records it by image ids, so the supernet never trains on the images search scores it on.

Undecodable images: a clear error naming the file (exit 2), not a silent skip. A skipped image would
change what "epoch" and "held-out set" mean between runs, and the file list is fixed when the data set
is opened, so the user fixes or removes the file and reruns.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from deployvit import io
from deployvit.errors import DeployvitError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
DIGITS_MEAN, DIGITS_STD = (0.3, 0.3, 0.3), (0.37, 0.37, 0.37)
DIGITS_VAL_FRACTION = 0.2  # fixed: 359 of the 1797 digits are the val split (seed 0)
SPLIT_SEED = 0


@dataclass
class Split:
    """One split of a source: items addressable by integer index, with stable string ids."""

    name: str
    ids: list[str]
    targets: list[int]
    load: Callable[[int], Image.Image]  # index -> PIL RGB image

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Source:
    """A data set on disk: its kind, class names, default image statistics and its two splits."""

    kind: str  # "imagefolder" | "cifar10" | "cifar100" | "digits"
    root: str
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool  # mirrored images are still members of their class (not so for digits)
    train: Split
    val: Split

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> Split:
        if name in ("train", "val"):
            return getattr(self, name)
        raise DeployvitError(f"unknown split {name!r} (train, val, held-out)")


# --- sources --------------------------------------------------------------------------------------


BUILTIN_DATA = ("digits",)  # data names that are not paths


def open_data(data: str | os.PathLike) -> Source:
    """`digits`, a CIFAR python-batch folder, or an ImageFolder root with `train/` and `val/`."""
    text = str(data)
    if text == "digits":
        return _digits()
    root = Path(text).expanduser()
    if not root.exists():
        raise DeployvitError(f"data not found: {root} (expected 'digits', a CIFAR folder or an ImageFolder root)")
    if not root.is_dir():
        raise DeployvitError(f"data must be a directory: {root}")
    for candidate in (root, root / "cifar-10-batches-py", root / "cifar-100-python"):
        if (candidate / "data_batch_1").is_file():
            return _cifar10(candidate)
        if (candidate / "train").is_file() and (candidate / "meta").is_file():
            return _cifar100(candidate)
    if (root / "train").is_dir():
        return _image_folder(root)
    raise DeployvitError(
        f"{root}: not a data set (no train/ and val/ folders, no CIFAR data_batch_1 or train/meta batches)"
    )


@dataclass
class _ArrayImages:
    """uint8 HWC images in memory: CIFAR and digits."""

    images: np.ndarray

    def __call__(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])


def _digits() -> Source:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    targets = bunch.target.tolist()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(targets))
    n_val = int(round(len(targets) * DIGITS_VAL_FRACTION))
    val_idx, train_idx = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())
    load = _ArrayImages(images)

    def split(name: str, idx: list[int]) -> Split:
        return Split(name, [str(i) for i in idx], [targets[i] for i in idx], lambda i, idx=idx: load(idx[i]))

    return Source("digits", "digits", [str(d) for d in range(10)], DIGITS_MEAN, DIGITS_STD, False,
                  split("train", train_idx), split("val", val_idx))


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR python format holds: dicts, lists, strings, bytes, numbers and
    numpy arrays. Pickle can call any importable function while loading, so a planted
    `data_batch_1` could otherwise run code; every global outside this list is refused."""

    _NUMPY = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._NUMPY:
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):  # protocol 2 writes bytes as encode(str, "latin1")
            return _latin1_encode
        raise pickle.UnpicklingError(f"refused to load {module}.{name} (a CIFAR batch holds only arrays, lists and strings)")


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refused a codec call other than latin-1 text to bytes")
    return text.encode("latin-1")


def _unpickle(path: Path) -> dict:
    try:
        with io.open_regular(path, "CIFAR batch") as fh:  # a FIFO or device is refused, never read
            data = _CifarUnpickler(fh, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, RecursionError, UnicodeDecodeError) as exc:
        raise DeployvitError(f"cannot read CIFAR batch {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise DeployvitError(f"cannot read CIFAR batch {path}: expected a dict with string keys, got {type(data).__name__}")
    return data


def _array_split(name: str, batches: Sequence[dict], label_key: str, num_classes: int) -> Split:
    """uint8 images (N x 3072, CHW-flattened) and N integer labels in [0, num_classes) per batch."""
    for b in batches:
        data, labels = b.get("data"), b.get(label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise DeployvitError(f"malformed CIFAR {name} batch: data: expected a uint8 array of N x 3072, got {got}")
        if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
            raise DeployvitError(f"malformed CIFAR {name} batch: {label_key}: expected {len(data)} labels")
        if not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) and 0 <= t < num_classes for t in labels):
            raise DeployvitError(f"malformed CIFAR {name} batch: {label_key}: expected integers in [0, {num_classes})")
    data = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    targets = [int(t) for b in batches for t in b[label_key]]
    load = _ArrayImages(np.ascontiguousarray(data))
    return Split(name, [str(i) for i in range(len(targets))], targets, load)


def _class_names(meta: dict, key: str, count: int, path: Path) -> list[str]:
    names = meta.get(key, [str(i) for i in range(count)])
    if not isinstance(names, list) or len(names) != count or not all(isinstance(n, (str, bytes)) for n in names):
        raise DeployvitError(f"{path}: {key}: expected a list of {count} class names")
    return [n.decode("latin-1") if isinstance(n, bytes) else n for n in names]


def _cifar10(root: Path) -> Source:
    train = [_unpickle(root / f"data_batch_{i}") for i in range(1, 6)]
    test = [_unpickle(root / "test_batch")]
    meta = _unpickle(root / "batches.meta") if (root / "batches.meta").exists() else {}
    classes = _class_names(meta, "label_names", 10, root / "batches.meta")
    return Source("cifar10", str(root), classes, CIFAR_MEAN, CIFAR_STD, True,
                  _array_split("train", train, "labels", 10), _array_split("val", test, "labels", 10))


def _cifar100(root: Path) -> Source:
    meta = _unpickle(root / "meta")
    classes = _class_names(meta, "fine_label_names", 100, root / "meta")
    return Source("cifar100", str(root), classes, CIFAR_MEAN, CIFAR_STD, True,
                  _array_split("train", [_unpickle(root / "train")], "fine_labels", 100),
                  _array_split("val", [_unpickle(root / "test")], "fine_labels", 100))


def _load_image(path: Path) -> Image.Image:
    try:
        with io.open_regular(path, "image") as fh, Image.open(fh) as img:  # the file list holds regular files only
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DeployvitError(f"cannot decode image {path}: {exc}") from None


def _scan(folder: Path, classes: list[str] | None) -> tuple[list[str], list[str], list[int]]:
    """Sorted class folders and their image files; an empty class folder is an error."""
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise DeployvitError(f"no class folders in {folder}")
    if classes is None:
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DeployvitError(f"{folder}: class folder {extra[0]!r} is not a class of train/")
    ids, targets = [], []
    index = {c: i for i, c in enumerate(classes)}
    for name in found:
        files = sorted(
            p for p in (folder / name).rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file()
        )
        if not files:
            raise DeployvitError(f"empty class folder: {folder / name} (no {', '.join(IMG_EXTENSIONS[:3])}... images)")
        ids.extend(str(p.relative_to(folder)) for p in files)
        targets.extend([index[name]] * len(files))
    return classes, ids, targets


def _image_folder(root: Path) -> Source:
    if not (root / "val").is_dir():
        raise DeployvitError(f"{root}: missing val/ folder (an ImageFolder root needs train/ and val/)")
    classes, train_ids, train_t = _scan(root / "train", None)
    _, val_ids, val_t = _scan(root / "val", classes)

    def split(name: str, ids: list[str], targets: list[int]) -> Split:
        base = root / name
        return Split(name, ids, targets, lambda i: _load_image(base / ids[i]))

    return Source("imagefolder", str(root), classes, IMAGENET_MEAN, IMAGENET_STD, True,
                  split("train", train_ids, train_t), split("val", val_ids, val_t))


# --- size and resolution facts (what the automatic recipe is chosen from) -------------------------


@dataclass(frozen=True)
class DataFacts:
    """How many training images a source has and how large they are (short side in pixels)."""

    kind: str
    num_train: int
    resolution: int
    num_classes: int


NATIVE_RESOLUTION = {"digits": 32, "cifar10": 32, "cifar100": 32}
RESOLUTION_PROBES = 16  # ImageFolder: median short side of this many images, evenly spaced


def data_facts(source: Source) -> DataFacts:
    """Facts of `source`; an ImageFolder's resolution is read from image headers (no decoding)."""
    resolution = NATIVE_RESOLUTION.get(source.kind)
    if resolution is None:
        resolution = _probe_resolution(source)
    return DataFacts(source.kind, len(source.train), resolution, source.num_classes)


def _probe_resolution(source: Source) -> int:
    n = len(source.train)
    picks = sorted({int(i) for i in np.linspace(0, n - 1, min(RESOLUTION_PROBES, n))})
    sides = []
    for i in picks:
        path = Path(source.root) / "train" / source.train.ids[i]
        try:
            with io.open_regular(path, "image") as fh, Image.open(fh) as img:  # lazy: reads the header only
                sides.append(min(img.size))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DeployvitError(f"cannot decode image {path}: {exc}") from None
    return int(np.median(sides))


# --- the held-out split ----------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOut:
    """Train split minus a per-class held-out set; both as indices into `source.train`, plus the ids.

    Search's `supernet` score evaluates on `held_out` (never trained on); the supernet trains on `train`.
    The ids (file paths relative to train/, or CIFAR/digits indices) are stored in the supernet
    checkpoint, so a search on another machine scores on exactly the same images."""

    train: tuple[int, ...]
    held_out: tuple[int, ...]
    held_out_ids: tuple[str, ...]
    per_class: int
    seed: int


def held_out_split(source: Source, per_class: int = 25, seed: int = SPLIT_SEED) -> HeldOut:
    """Carve `per_class` images of every class from the train split (ViT-ResNAS uses 25 per class),
    chosen with `seed`, deterministic. A class keeps at least half its images for training."""
    if per_class < 0:
        raise DeployvitError(f"held-out images per class must be >= 0, got {per_class}")
    targets = np.asarray(source.train.targets)
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for c in range(source.num_classes):
        members = np.flatnonzero(targets == c)
        take = min(per_class, len(members) // 2)
        held.extend(rng.permutation(members)[:take].tolist())
    held_set = set(held)
    train = tuple(i for i in range(len(targets)) if i not in held_set)
    held_sorted = tuple(sorted(held))
    return HeldOut(train, held_sorted, tuple(source.train.ids[i] for i in held_sorted), per_class, seed)


def held_out_from_ids(source: Source, ids: Sequence[str]) -> HeldOut:
    """Rebuild a recorded held-out split (from a checkpoint) on this machine's copy of the data."""
    position = {id_: i for i, id_ in enumerate(source.train.ids)}
    missing = [i for i in ids if i not in position]
    if missing:
        raise DeployvitError(f"held-out image {missing[0]!r} of the checkpoint is not in {source.root}")
    held = tuple(sorted(position[i] for i in ids))
    held_set = set(held)
    train = tuple(i for i in range(len(source.train)) if i not in held_set)
    return HeldOut(train, held, tuple(source.train.ids[i] for i in held), -1, -1)


# --- torch data sets -------------------------------------------------------------------------------


class SplitDataset(torch.utils.data.Dataset):
    """A subset of a split with a transform: what the DataLoader sees."""

    def __init__(self, split: Split, transform: Callable | None, indices: Sequence[int] | None = None):
        self.split, self.transform = split, transform
        self.indices = list(range(len(split))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    @cached_property
    def targets(self) -> list[int]:
        return [self.split.targets[i] for i in self.indices]

    def __getitem__(self, i: int):
        j = self.indices[i]
        img = self.split.load(j)
        return (self.transform(img) if self.transform else img), self.split.targets[j]


def one_line_errors(loader: Iterable) -> Iterator:
    """Iterate `loader`; a DeployvitError raised in a loader worker (an image that fails to decode)
    comes back as its own one line: the DataLoader re-raises it with the worker's traceback inside
    the message."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as exc:
            marker = "DeployvitError: "
            if marker in str(exc):
                raise DeployvitError(str(exc).rsplit(marker, 1)[1].strip().splitlines()[0]) from None
            raise
        yield batch
