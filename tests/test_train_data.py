"""Data sources, held-out split, augmentation presets (deployvit.train.data / augment)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from deployvit.errors import DeployvitError
from deployvit.train.augment import PRESETS, build_loss, build_mixup, get_aug
from deployvit.train.data import SplitDataset, held_out_from_ids, held_out_split, open_data
from deployvit.train.setup import transforms_for


def make_image_folder(root, classes=("cat", "dog"), per_class=4, size=12):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    return root


def test_digits_fixed_split_and_images():
    a, b = open_data("digits"), open_data("digits")
    assert a.num_classes == 10 and len(a.train) + len(a.val) == 1797
    assert a.val.ids == b.val.ids and set(a.val.ids).isdisjoint(a.train.ids)
    img = a.train.load(0)
    assert img.size == (32, 32) and img.mode == "RGB"
    assert not a.hflip  # a mirrored digit is not the same digit


def test_held_out_split_is_per_class_disjoint_and_reproducible():
    source = open_data("digits")
    held = held_out_split(source, per_class=7)
    assert held == held_out_split(source, per_class=7)
    assert len(held.held_out) == 70 and set(held.train).isdisjoint(held.held_out)
    assert len(held.train) + len(held.held_out) == len(source.train)
    counts = np.bincount([source.train.targets[i] for i in held.held_out], minlength=10)
    assert (counts == 7).all()
    assert held_out_from_ids(source, held.held_out_ids).held_out == held.held_out
    assert held_out_split(source, per_class=7, seed=1).held_out != held.held_out
    with pytest.raises(DeployvitError, match="not in"):
        held_out_from_ids(source, ["no-such-id"])


def test_image_folder_reads_and_reports_bad_input(tmp_path):
    root = make_image_folder(tmp_path / "data")
    source = open_data(root)
    assert source.classes == ["cat", "dog"] and len(source.train) == 8 and len(source.val) == 8
    tf = transforms_for(source, get_aug("light"), 32)
    x, y = SplitDataset(source.train, tf.train)[5]
    assert x.shape == (3, 32, 32) and y == 1
    # undecodable image: a clear error naming the file
    (root / "train" / "cat" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DeployvitError, match="cannot decode image .*0.png"):
        open_data(root).train.load(0)
    # empty class folder
    (root / "train" / "empty").mkdir()
    with pytest.raises(DeployvitError, match="empty class folder"):
        open_data(root)
    with pytest.raises(DeployvitError, match="data not found"):
        open_data(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DeployvitError, match="not a data set"):
        open_data(tmp_path / "plain")


def _write_batch(path, n, label_key, classes, rng):
    data = rng.integers(0, 255, (n, 3 * 32 * 32), dtype=np.uint8)
    with open(path, "wb") as fh:
        pickle.dump({"data": data, label_key: rng.integers(0, classes, n).tolist()}, fh)


def test_cifar10_and_cifar100_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    for i in range(1, 6):
        _write_batch(c10 / f"data_batch_{i}", 4, "labels", 10, rng)
    _write_batch(c10 / "test_batch", 3, "labels", 10, rng)
    source = open_data(tmp_path)  # the parent folder of the extracted archive works too
    assert source.kind == "cifar10" and len(source.train) == 20 and len(source.val) == 3
    assert source.train.load(7).size == (32, 32)
    c100 = tmp_path / "c100"
    c100.mkdir()
    _write_batch(c100 / "train", 5, "fine_labels", 100, rng)
    _write_batch(c100 / "test", 2, "fine_labels", 100, rng)
    with open(c100 / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, fh)
    source = open_data(c100)
    assert source.kind == "cifar100" and source.num_classes == 100 and len(source.train) == 5
    (c10 / "test_batch").write_bytes(b"garbage")
    with pytest.raises(DeployvitError, match="cannot read CIFAR batch"):
        open_data(c10)


def test_vitas_weak_preset_and_losses():
    weak = PRESETS["vitas-weak"]
    assert weak.auto_augment is None and weak.color_jitter == 0 and weak.mixup == 0
    assert weak.cutmix == 1.0 and weak.smoothing == 0.1
    assert PRESETS["deit"].auto_augment.startswith("rand-m9")
    mix = build_mixup(weak, 10)
    x, y = mix(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert y.shape == (4, 10) and torch.allclose(y.sum(-1), torch.ones(4))
    assert type(build_loss(weak)).__name__ == "SoftTargetCrossEntropy"
    assert type(build_loss(get_aug("light"))).__name__ == "LabelSmoothingCrossEntropy"
    assert build_mixup(get_aug("none"), 10) is None
    assert get_aug("deit", mixup=0.0).mixup == 0.0
    with pytest.raises(DeployvitError, match="unknown augmentation"):
        get_aug("strong")
    source = open_data("digits")
    tf = transforms_for(source, PRESETS["deit"], 32)
    x = tf.train(source.train.load(0))
    assert x.shape == (3, 32, 32)
    assert torch.equal(tf.eval(source.train.load(0)), tf.eval(source.train.load(0)))


def test_deit_randaugment_survives_its_strongest_posterize():
    """The DeiT recipe's RandAugment (`-inc1`, mstd 0.5) reaches magnitude 10, where timm posterizes
    to 0 bits; Pillow 13 raises on that (hence `pillow<13`), which killed training at random steps."""
    from timm.data.auto_augment import AugmentOp

    img = open_data("digits").train.load(0)
    out = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)(img)
    assert np.asarray(out).max() == 0  # 0 bits kept: black, as RandAugment intends
