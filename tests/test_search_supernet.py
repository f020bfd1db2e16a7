"""Search with a trained supernet: inherited accuracy on the recorded held-out images, and the
FocusFormer-style sampler's specialisation."""

from __future__ import annotations

import json

import pytest
import torch

from deployvit.arch import load_arch
from deployvit.counting import count_flops
from tests.conftest import assert_one_line_error, run_cli

TRAIN = ["--space", "test", "--data", "digits", "--batch-size", "64", "--aug", "light", "--warmup-epochs", "0",
         "--log-every", "0", "--held-out-per-class", "10", "--epochs", "1", "--sampler", "focus"]
SEARCH = ["--space", "test", "--population", "6", "--generations", "2", "--parents", "3", "--mutations", "3",
          "--crossovers", "3", "--no-progress", "--data", "digits"]


@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("focus")
    torch.set_num_threads(1)
    result = run_cli("train-supernet", *TRAIN, "--out", str(out))
    assert result.code == 0, result.err
    return out / "last.pt"


def test_supernet_score_is_held_out_accuracy(checkpoint, tmp_path):
    out = tmp_path / "s"
    result = run_cli("search", *SEARCH, "--score", "supernet", "--supernet", str(checkpoint), "--flops", "3M", "--out", str(out))
    assert result.code == 0, result.err
    final = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert final["held_out_images"] == 100  # 10 per class, the ids the checkpoint recorded
    winner = next(iter(final["winners"].values()))
    assert 0 <= winner["score"] <= 100
    assert count_flops(load_arch(out / "best.arch.json")) <= 3e6


def test_sampler_specialisation_respects_the_budget(checkpoint, tmp_path):
    out = tmp_path / "f"
    result = run_cli("search", *SEARCH, "--score", "sampler", "--supernet", str(checkpoint), "--flops", "2M",
                     "--sampler-k", "16", "--out", str(out))
    assert result.code == 0, result.err
    assert count_flops(load_arch(out / "best.arch.json")) <= 2e6
    final = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert final["request"]["score"] == "sampler"


def test_checkpoint_for_another_space_or_missing_data_is_refused(checkpoint, tmp_path):
    out = tmp_path / "never"
    assert_one_line_error(
        run_cli("search", "--space", "test-resnas", "--score", "supernet", "--supernet", str(checkpoint), "--data", "digits", "--out", str(out)),
        "trained on space 'test'",
    )
    assert_one_line_error(
        run_cli("search", "--space", "test", "--score", "supernet", "--supernet", str(checkpoint), "--data", str(tmp_path / "nodata"), "--out", str(out)),
        "data not found",
    )
    assert_one_line_error(
        run_cli("search", "--space", "test", "--score", "supernet", "--supernet", str(checkpoint), "--out", str(out)),
        "needs --data",
    )
    assert not out.exists()
