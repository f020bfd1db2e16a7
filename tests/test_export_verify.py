"""Verification metrics on known inputs, threshold defaults and overrides, and the gates themselves:
a correct fp16 export of a trained model passes, a deliberately broken export fails."""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch

from deployvit.errors import DeployvitError
from deployvit.models import build_model
from deployvit.spaces import get_space
from deployvit.runtimes.onnxruntime import OnnxRunner
from exporters.onnx import export_onnx
from deployvit.commands.export import data_samples
from exporters.verify import Thresholds, compare, failures, synthetic_samples, verify


@functools.lru_cache(maxsize=None)  # shared with the CLI tests: train once per session
def train_briefly(steps: int = 60, seed: int = 0):
    """A `test-resnas` model trained for a few steps on the digits train split (about 80% val top-1).

    Random weights give near-tied logits, where fp16 rounding legitimately flips the top-1 of a few
    images; a trained model has the margins real deployments have, so the fp16 gates mean something.
    Callers must not modify the returned model (it is cached)."""
    from deployvit.train.augment import build_transform, get_aug
    from deployvit.train.data import SplitDataset, open_data

    source = open_data("digits")
    ds = SplitDataset(source.train, build_transform(get_aug("none"), 32, source.mean, source.std, False, False, True))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor(ds.targets)
    torch.manual_seed(seed)
    arch = get_space("test-resnas").sample(np.random.default_rng(seed))
    model = build_model(arch)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: a second thread only adds barrier waits on a busy machine
    try:
        for _ in range(steps):
            idx = torch.randint(0, len(x), (64,), generator=gen)
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return arch, model.eval()


@pytest.fixture(scope="module")
def trained():
    return train_briefly()


@pytest.fixture(scope="module")
def digits_val():
    return data_samples("digits", 32, limit=128)


def test_compare_on_known_logits():
    ref = torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, 0.0]])
    same = compare(ref, ref.clone(), torch.tensor([2, 0]), batch_size=2)
    assert same.max_abs_diff == 0 and same.cosine == pytest.approx(1.0) and same.agreement == 1.0
    assert same.top1 == same.top1_reference == 100.0 and same.top1_drop == 0.0
    out = torch.tensor([[1.0, 2.0, 3.5], [0.0, 3.0, 0.0]])  # second sample flips class, orthogonal
    m = compare(ref, out, torch.tensor([2, 0]), batch_size=1)
    assert m.max_abs_diff == pytest.approx(3.0)
    assert m.cosine == pytest.approx(0.0, abs=1e-12)  # the worst sample
    assert m.agreement == 0.5 and m.top1 == 50.0 and m.top1_drop == 50.0


def test_non_finite_output_fails_every_numeric_check():
    ref = torch.ones(2, 3)
    m = compare(ref, torch.tensor([[1.0, float("nan"), 1.0], [1.0, 1.0, 1.0]]), None, 1)
    assert math.isinf(m.max_abs_diff) and m.cosine == -1.0
    assert len(failures(m, Thresholds.for_precision("fp32"))) == 2


def test_threshold_defaults_and_overrides():
    fp32 = Thresholds.for_precision("fp32")
    assert (fp32.max_abs_diff, fp32.min_cosine, fp32.min_agreement) == (1e-3, 0.9999, None)
    fp16 = Thresholds.for_precision("fp16")
    assert (fp16.min_cosine, fp16.min_agreement, fp16.max_top1_drop, fp16.max_abs_diff) == (0.999, 0.995, 0.3, None)
    assert Thresholds.for_precision("bf16") == fp16
    loose = Thresholds.for_precision("fp32", max_abs_diff=0.5, min_cosine=None)
    assert loose.max_abs_diff == 0.5 and loose.min_cosine == 0.9999  # None keeps the default
    with pytest.raises(DeployvitError, match="unknown threshold"):
        Thresholds.for_precision("fp32", atol=1.0)
    with pytest.raises(DeployvitError, match="unknown precision"):
        Thresholds.for_precision("int4")
    # int8/fp8 are judged by the accuracy gate (exporters.quant_gate); verification only runs them
    assert Thresholds.for_precision("int8") == Thresholds.for_precision("fp8") == Thresholds()


def test_failures_name_each_missed_gate():
    ref = torch.tensor([[0.0, 1.0], [1.0, 0.0]] * 4)
    out = ref.clone()
    out[0] = torch.tensor([1.0, 0.0])
    m = compare(ref, out, torch.tensor([1, 0] * 4), batch_size=8)
    lines = failures(m, Thresholds.for_precision("fp16"))
    assert any("agreement 87.50%" in l for l in lines)
    assert any("top-1 drop 12.50 points" in l for l in lines)
    assert any("cosine" in l for l in lines)


def test_fp16_export_of_a_trained_model_passes_fp16_gates(trained, digits_val, tmp_path):
    _, model = trained
    path = export_onnx(model, tmp_path / "m.onnx", img_size=32, precision="fp16", dynamic_batch=(1, 8, 32))
    result = verify(model, OnnxRunner(path), digits_val, batch_sizes=(1, 32), precision="fp16")
    assert result.passed, result.failed
    big = result.summary
    assert big.batch_size == 32 and big.samples == 128 and big.top1 is not None
    assert big.top1_reference > 50  # trained: accuracy vs labels is meaningful
    assert "digits" in result.source


def test_a_deliberately_broken_export_fails(trained, digits_val, tmp_path):
    """One weight perturbed by 1% in the exported copy: the gates must catch it."""
    _, model = trained
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.stages[0][0].mlp.fc1.weight.mul_(1.01)
    path = export_onnx(broken, tmp_path / "bad.onnx", img_size=32, dynamic_batch=(1, 8, 32))
    result = verify(model, OnnxRunner(path), digits_val, batch_sizes=(1, 32), precision="fp32")
    assert not result.passed
    assert any("max |diff|" in f for f in result.failed)  # a 1% weight change keeps cosine > 0.9999


def test_an_artifact_that_crashes_fails_its_check(trained):
    _, model = trained

    def crashes_above_batch_one(x):
        if len(x) > 1:
            raise RuntimeError("Got invalid dimensions for input: batch")
        return model(x)

    result = verify(model, crashes_above_batch_one, synthetic_samples(16, 32), batch_sizes=(1, 8), precision="fp32")
    assert [m.batch_size for m in result.checks] == [1]
    assert result.failed == ["batch 8: the artifact failed to run: Got invalid dimensions for input: batch"]


def test_wrong_logit_shape_fails_its_check(trained):
    _, model = trained
    result = verify(model, lambda x: model(x)[:, :5], synthetic_samples(8, 32), batch_sizes=(1, 8), precision="fp32")
    assert not result.passed and result.checks == []
    assert result.failed[0] == "batch 1: logits of shape (8, 5), expected (8, 10)"


def test_static_batch_uses_whole_batches_only(trained):
    _, model = trained
    seen = []

    def static5(x):
        seen.append(len(x))
        assert len(x) == 5
        return model(x)

    result = verify(model, static5, synthetic_samples(12, 32), batch_sizes=(5,), precision="fp32")
    assert result.passed and set(seen) == {5} and result.summary.samples == 10


def test_too_few_samples_for_the_batch_is_bad_input(trained):
    _, model = trained
    with pytest.raises(DeployvitError, match="at least 32 images"):
        verify(model, model, synthetic_samples(8, 32), batch_sizes=(1, 32), precision="fp32")


def test_synthetic_samples_are_seeded_and_said_so():
    a, b = synthetic_samples(4, 16), synthetic_samples(4, 16)
    assert torch.equal(a.images, b.images) and a.labels is None
    assert "synthetic" in a.source and "seed 0" in a.source


def test_missing_data_dir_is_bad_input(tmp_path):
    with pytest.raises(DeployvitError, match="data not found"):
        data_samples(str(tmp_path / "nope"), 32)


def test_data_samples_cover_every_class_of_a_class_ordered_folder(tmp_path):
    from tests.test_train_data import make_image_folder

    root = make_image_folder(tmp_path / "data", classes=("a", "b", "c", "d"), per_class=5)
    samples = data_samples(str(root), 32, limit=4)  # the first 4 images would all be class "a"
    assert sorted(samples.labels.tolist()) == [0, 1, 2, 3]
    assert samples.images.shape == (4, 3, 32, 32) and "evenly spaced" in samples.source
