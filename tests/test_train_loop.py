"""Supernet training, retraining, evaluation and checkpoints end to end on `digits` (CPU, tiny)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deployvit.spaces import get_space
from deployvit.train.checkpoint import load_model, load_supernet, read_checkpoint, save_checkpoint
from deployvit.train.focus import load_sampler
from tests.conftest import assert_one_line_error, run_cli

@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    """Tiny models run faster on one thread, and much faster when other jobs share the two cores."""
    torch.set_num_threads(1)
    yield


TINY = ["--space", "test", "--data", "digits", "--batch-size", "64", "--aug", "light", "--warmup-epochs", "0", "--sampler", "uniform",
        "--log-every", "0", "--held-out-per-class", "10"]


def train(out: Path, *extra: str):
    return run_cli("train-supernet", *TINY, "--out", str(out), *extra)


@pytest.fixture(scope="module")
def supernet_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("supernet")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    result = train(out, "--epochs", "2", "--sampler", "focus", "--focus-update-every", "5", "--ema-decay", "0.9", "--cyclic")
    torch.set_num_threads(threads)
    assert result.code == 0, result.err
    return out


def test_train_supernet_writes_run_files(supernet_run):
    rows = [json.loads(l) for l in (supernet_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "val_top1_max", "val_top1_min", "focus_reward"} <= set(rows[-1])
    supernet, meta = load_supernet(supernet_run / "last.pt")
    assert meta["sampler"] == "focus" and meta["used_ema"] and len(meta["held_out"]["ids"]) == 100
    assert meta["progress"]["epoch"] == 2 and supernet.cyclic and not supernet.identity_shift
    space = get_space("test")
    supernet.set_arch(space.min_arch())
    assert supernet(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    policy = load_sampler(supernet_run / "last.pt")
    assert all(space.contains(a) for a in policy.propose(0.5, 5))


def test_retrain_from_supernet_and_evaluate(supernet_run, tmp_path):
    arch = get_space("test").min_arch()
    arch.save(tmp_path / "a.json")
    out = tmp_path / "rt"
    r = run_cli("retrain", "--arch", str(tmp_path / "a.json"), "--init", str(supernet_run / "last.pt"), "--data", "digits",
                "--epochs", "1", "--batch-size", "64", "--aug", "none", "--warmup-epochs", "0", "--log-every", "0", "--out", str(out))
    assert r.code == 0, r.err
    assert {"checkpoint.safetensors", "arch.json", "metrics.jsonl", "checkpoint.pt"} <= {p.name for p in out.iterdir()}
    model, loaded = load_model(out / "checkpoint.safetensors")
    assert loaded == arch
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    e = run_cli("evaluate", "--model", str(out / "checkpoint.safetensors"), "--data", "digits", "--json", str(tmp_path / "e.json"))
    assert e.code == 0, e.err
    assert json.loads((tmp_path / "e.json").read_text())["top1"] == pytest.approx(row["val_top1"], abs=1e-6)
    h = run_cli("evaluate", "--supernet", str(supernet_run / "last.pt"), "--arch", str(tmp_path / "a.json"),
                "--data", "digits", "--split", "held-out")
    assert h.code == 0 and "100 images, held-out" in h.out


def test_bad_inputs_exit_2_with_one_line(supernet_run, tmp_path):
    assert_one_line_error(train(tmp_path / "x", "--epochs", "-1"), "--epochs")
    assert_one_line_error(train(tmp_path / "x", "--epochs", "1", "--batch-size", "4000"), "larger than")
    assert_one_line_error(train(tmp_path / "x", "--epochs", "1", "--batch-size", "5000"), "1<=x<=4096")
    assert_one_line_error(run_cli("train-supernet", "--space", "test", "--data", str(tmp_path / "none"), "--epochs", "1"), "data not found")
    empty = tmp_path / "folder"
    for split in ("train", "val"):
        (empty / split / "a").mkdir(parents=True)
    assert_one_line_error(run_cli("train-supernet", "--space", "test", "--data", str(empty)), "empty class folder")
    # arch outside the supernet's space, and an arch of another space
    arch = get_space("test").max_arch().to_dict()
    arch["embed_dim"] = 40
    (tmp_path / "bad.json").write_text(json.dumps(arch))
    args = ["--data", "digits", "--epochs", "1", "--out", str(tmp_path / "r")]
    assert_one_line_error(run_cli("retrain", "--arch", str(tmp_path / "bad.json"), "--init", str(supernet_run / "last.pt"), *args), "embed_dim")
    get_space("test-resnas").min_arch().save(tmp_path / "other.json")
    assert_one_line_error(run_cli("retrain", "--arch", str(tmp_path / "other.json"), "--init", str(supernet_run / "last.pt"), *args), "space")
    # resuming a checkpoint of another space, and an existing run without --resume
    assert_one_line_error(run_cli("train-supernet", *TINY[2:], "--space", "test-resnas", "--sampler", "focus", "--epochs", "2", "--ema-decay", "0.9",
                                  "--cyclic",
                                  "--out", str(supernet_run), "--resume"), "space")
    assert_one_line_error(train(supernet_run, "--epochs", "2"), "--resume")
    assert_one_line_error(train(tmp_path / "x", "--epochs", "1", "--amp", "bf16", "--device", "cpu"), "CUDA")
    assert_one_line_error(train(tmp_path / "x", "--epochs", "2", "--warmup-epochs", "5"), "--warmup-epochs")
    assert_one_line_error(train(tmp_path / "x", "--epochs", "1", "--opt", "foo"), "unknown --opt 'foo'")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert_one_line_error(run_cli("evaluate", "--supernet", str(tmp_path / "junk.pt"), "--arch", str(tmp_path / "other.json"),
                                  "--data", "digits"), "checkpoint")


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path):
    r = train(tmp_path, "--epochs", "1", "--lr", "1e30", "--weight-decay", "0", "--ckpt-every", "1")
    assert r.code == 1, r.err
    lines = [l for l in r.err.splitlines() if l.startswith("deployvit:")]
    assert len(lines) == 1 and "loss is" in lines[0] and "last good checkpoint" in lines[0]
    state = read_checkpoint(tmp_path / "checkpoint.pt")
    assert state["progress"]["global_step"] >= 1
    assert not (tmp_path / "last.pt").exists()


def test_resume_with_another_world_size_is_refused(tmp_path):
    """Another number of ranks changes the steps per epoch, so the step counter and the LR schedule
    of the checkpoint would no longer line up."""
    assert train(tmp_path, "--epochs", "1").code == 0
    state = read_checkpoint(tmp_path / "checkpoint.pt")
    state["progress"]["steps_per_epoch"] *= 2  # what a run on twice the ranks would have saved
    save_checkpoint(tmp_path / "checkpoint.pt", {k: v for k, v in state.items() if k != "format"})
    assert_one_line_error(train(tmp_path, "--epochs", "1", "--resume"), "steps per epoch", "world size")


def _subprocess_train(out: Path, args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, "-m", "deployvit", "train-supernet", *args, "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_kill_9_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    """Same seed, CPU, deterministic: a run killed with SIGKILL mid-epoch and resumed ends with the
    weights of an uninterrupted run (augmentation, drop path, identity shifting, EMA, clipping on)."""
    args = [*TINY, "--epochs", "2", "--held-out-per-class", "80", "--deterministic", "--ckpt-every", "4", "--identity-shift",
            "--ema-decay", "0.9", "--clip-grad", "1.0", "--mixup", "0.5"]
    killed = tmp_path / "killed"
    proc = _subprocess_train(killed, args)
    deadline = time.time() + 120
    while not (killed / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere inside the next few steps, possibly while writing the next checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "last.pt").exists(), "the run finished before it could be killed"
    progress = read_checkpoint(killed / "checkpoint.pt")["progress"]  # never corrupt
    assert 0 < progress["global_step"] < 2 * progress["steps_per_epoch"]
    resumed = run_cli("train-supernet", *args, "--out", str(killed), "--resume")
    assert resumed.code == 0, resumed.err
    reference = run_cli("train-supernet", *args, "--out", str(tmp_path / "ref"))
    assert reference.code == 0, reference.err
    a, b = (read_checkpoint(p / "last.pt") for p in (killed, tmp_path / "ref"))
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            torch.testing.assert_close(tensor, b[key][name], rtol=1e-5, atol=1e-6, msg=f"{key}.{name}")
    assert a["history"][-1]["val_top1_max"] == pytest.approx(b["history"][-1]["val_top1_max"])
    # the interrupted epoch's logged loss covers its steps from before the kill too
    assert [r["train_loss"] for r in a["history"]] == pytest.approx([r["train_loss"] for r in b["history"]], rel=1e-5)


@pytest.mark.parametrize("workers", ["0", "1"])
def test_undecodable_image_stops_training_with_one_line(tmp_path, workers):
    from tests.test_train_data import make_image_folder

    root = make_image_folder(tmp_path / "data", per_class=6)
    (root / "train" / "dog" / "3.png").write_bytes(b"\x89PNG broken")
    r = run_cli("train-supernet", "--space", "test", "--data", str(root), "--epochs", "1", "--batch-size", "4",
                "--held-out-per-class", "0", "--aug", "none", "--warmup-epochs", "0", "--out", str(tmp_path / "run"),
                "--num-workers", workers)
    assert_one_line_error(r, "cannot decode image", "3.png")


@pytest.mark.gpu
def test_amp_bf16_supernet_training_on_cuda(tmp_path):
    r = train(tmp_path, "--epochs", "1", "--amp", "bf16", "--device", "cuda", "--sampler", "sandwich", "--clip-grad", "1")
    assert r.code == 0, r.err
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["train_loss"] == row["train_loss"] and row["val_top1_max"] > 0  # finite, evaluated
    supernet, _ = load_supernet(tmp_path / "last.pt")
    assert all(torch.isfinite(p).all() for p in supernet.parameters())
