"""Two gloo processes under torchrun train exactly what one process with the doubled batch trains.

This caught a real bug: zero-filling the gradients of layers the subnet skipped made momentum move
them under DDP but not in one process."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from deployvit.train.checkpoint import read_checkpoint
from tests.conftest import run_cli

ARGS = ["--space", "test", "--data", "digits", "--epochs", "1", "--aug", "none", "--drop-path", "0", "--warmup-epochs", "0",
        "--held-out-per-class", "40", "--log-every", "0", "--device", "cpu", "--sampler", "uniform", "--identity-shift",
        "--opt", "sgd", "--lr", "0.1"]  # SGD: linear in the gradients, so float noise stays ~1e-7 (Adam amplifies it)


def test_two_process_gloo_matches_single_process(tmp_path, _two_threads):
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "deployvit",
         "train-supernet", *ARGS, "--batch-size", "32", "--out", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stderr.count("supernet saved to") == 1  # only rank 0 reports (and writes)
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["checkpoint.pt", "last.pt", "metrics.jsonl"]
    single = run_cli("train-supernet", *ARGS, "--batch-size", "64", "--out", str(tmp_path / "one"))
    assert single.code == 0, single.err
    a, b = read_checkpoint(tmp_path / "ddp" / "last.pt"), read_checkpoint(tmp_path / "one" / "last.pt")
    assert a["progress"] == b["progress"]  # same number of optimizer steps: the batch was sharded
    for name, tensor in a["model"].items():
        torch.testing.assert_close(tensor, b["model"][name], rtol=1e-4, atol=1e-5, msg=name)
    assert abs(a["history"][0]["val_top1_max"] - b["history"][0]["val_top1_max"]) < 0.6  # at most 2 of 359 images flip
