"""`deployvit profile` end to end on the tiny `test` space (CPU, few repeats), resume after an
interruption, and every bad input the issue lists: exit 2, one line, nothing half written."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import deployvit.latency.profile as profile_mod
from deployvit.latency.table import LatencyTable
from deployvit.parts import space_parts
from deployvit.spaces import get_space

from tests.conftest import assert_one_line_error, interrupting_time_runs, run_cli

def _foreign_gpu_label() -> str:
    """A known GPU label that is not this machine (h100 is this machine on an H100)."""
    import torch

    from deployvit.devices import device_name, label_matches

    if not torch.cuda.is_available():
        return "h100"
    return next(label for label in ("h100", "a100", "t4") if not label_matches(label, device_name("cuda")))


def _foreign_gpu_needles() -> tuple[str, ...]:
    """Without CUDA, a catalogue GPU is offered as an estimate; on another GPU, the label mismatch."""
    import torch

    return ("does not match", "--force") if torch.cuda.is_available() else ("no CUDA GPU here", "--estimate")


# 10 repeats after a short warm-up: with 3 cold repeats one spike could invert the two-arch calibration
FAST = ["--warmup", "0.01", "--repeats", "10", "--calib-archs", "3", "--val-archs", "3", "--threads", "1"]


def profile_args(out, *extra: str) -> list[str]:
    return ["profile", "--device", "cpu", "--space", "test", "--runtime", "eager", "--precision", "fp32",
            "--batch-size", "1", "--out", str(out), *FAST, *extra]


def test_profile_end_to_end(tmp_path):
    out = tmp_path / "t.json"
    result = run_cli(*profile_args(out))
    assert result.code == 0, result.err
    assert "validation on 3 held-out archs" in result.out and "Kendall tau" in result.out
    table = LatencyTable.load(out)
    space = get_space("test")
    assert set(table.entries) == {p.key for p in space_parts(space)}
    meta = table.metadata
    assert (meta["runtime"], meta["precision"], meta["batch_size"], meta["space_hash"]) == ("eager", "fp32", 1, space.hash())
    assert meta["torch_threads"] == 1 and meta["settings"]["repeats"] == 10
    assert len(table.calibration["archs"]) == 3 and len(table.validation["archs"]) == 3
    calib_keys = {str(a["arch"]) for a in table.calibration["archs"]}
    assert not calib_keys & {str(a["arch"]) for a in table.validation["archs"]}  # held out
    for key in ("mape", "p95_abs_pct", "within_5", "within_10", "kendall_tau"):
        assert key in table.validation["calibrated"]
    # the stored prediction of each validation arch is what the table predicts now
    from deployvit.arch import Arch

    for row in table.validation["archs"]:
        assert table.predict(Arch.from_dict(row["arch"])) == pytest.approx(row["predicted_us"])
    assert not (tmp_path / "t.json.progress.json").exists()
    assert table.predict(space.sample(np.random.default_rng(9))) > 0


def test_profile_two_batch_sizes(tmp_path):
    result = run_cli(*profile_args(tmp_path / "t-b{batch}.json", "--batch-size", "2"))
    assert result.code == 0, result.err
    b1 = LatencyTable.load(tmp_path / "t-b1.json")
    b2 = LatencyTable.load(tmp_path / "t-b2.json")
    assert (b1.metadata["batch_size"], b2.metadata["batch_size"]) == (1, 2)


def test_every_table_is_checked_before_the_first_is_timed(tmp_path):
    (tmp_path / "t-b2.json").write_text("keep me")
    assert_one_line_error(run_cli(*profile_args(tmp_path / "t-b{batch}.json", "--batch-size", "2")), "t-b2.json exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t-b2.json"]  # b1 was not profiled first
    assert_one_line_error(run_cli(*profile_args(tmp_path / "u-b{batch}.json", "--batch-size", "1")), "--batch-size given twice")


def test_resume_after_interruption(tmp_path, monkeypatch):
    """A kill during the interleaved rounds keeps every finished round; the rerun times only the
    rounds still missing (exactly: `max_s` 0 stops at `rounds`)."""
    out = tmp_path / "t.json"
    settings = profile_mod.MeasureSettings("eager", "fp32", 1, warmup_s=0.0, repeats=1, threads=1, rounds=6, round_s=0.0, max_s=0.0)
    total = len(space_parts(get_space("test"))) + 3 + 3
    seen = {"rounds": 0, "done": []}

    timed = interrupting_time_runs(seen)

    monkeypatch.setattr(profile_mod, "time_runs", timed(4))
    with pytest.raises(KeyboardInterrupt):
        profile_mod.profile(get_space("test"), label="cpu", settings=settings, out=out, calib_archs=3, val_archs=3, echo=lambda s: None)
    assert not out.exists()  # nothing half written
    progress = profile_mod.io.read_json(out.with_name("t.json.progress.json"))
    assert progress["timings"] == {} and len(progress["rounds"]) == total
    assert all(len(samples) == 4 for samples in progress["rounds"].values())

    seen.update(rounds=0, done=[])
    monkeypatch.setattr(profile_mod, "time_runs", timed(10**9))
    said = []
    profile_mod.profile(get_space("test"), label="cpu", settings=settings, out=out, calib_archs=3, val_archs=3, echo=said.append)
    assert seen["done"] == [4] and seen["rounds"] == 2  # only the missing rounds were timed
    assert any("resuming" in s and "4 rounds" in s for s in said)
    table = LatencyTable.load(out)
    assert all(entry["rounds"] == 6 for entry in table.entries.values())


def test_changed_settings_start_over(tmp_path):
    out = tmp_path / "t.json"
    stale = {"format": profile_mod.PROGRESS_FORMAT, "key": {"space": "other"}, "entries": {"x": {}}, "calib": {}, "val": {}}
    profile_mod.io.write_json(out.with_name("t.json.progress.json"), stale)
    result = run_cli(*profile_args(out))
    assert result.code == 0, result.err
    assert "starting over" in result.out


def test_existing_table_needs_force(tmp_path):
    out = tmp_path / "t.json"
    out.write_text("keep me")
    assert_one_line_error(run_cli(*profile_args(out)), "exists", "--force")
    assert out.read_text() == "keep me"


@pytest.mark.parametrize(
    "swap,needles",
    [
        (("--runtime", "warp-drive"), ("unknown runtime", "warp-drive")),
        (("--batch-size", "0"), ("--batch-size", "1<=x<=4096")),
        (("--batch-size", "-3"), ("--batch-size", "1<=x<=4096")),
        (("--device", _foreign_gpu_label()), _foreign_gpu_needles()),
        (("--precision", "int4"), ("unknown precision",)),
        (("--precision", "fp8"), ("runtime eager does not run fp8",)),  # a precision now, of TensorRT only
        (("--space", "no-such-space"), ("unknown space",)),
    ],
)
def test_bad_input_exit_2(tmp_path, swap, needles):
    args = profile_args(tmp_path / "t.json")
    i = args.index(swap[0])
    args[i + 1] = swap[1]
    assert_one_line_error(run_cli(*args), *needles)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a progress file


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks CPU-only refusals")
@pytest.mark.parametrize("runtime", ["cudagraph", "tensorrt"])
def test_gpu_runtimes_refused_on_cpu(tmp_path, runtime):
    args = profile_args(tmp_path / "t.json")
    args[args.index("--runtime") + 1] = runtime
    result = run_cli(*args)
    assert_one_line_error(result, runtime)
    assert list(tmp_path.iterdir()) == []


def test_runtime_not_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    args = profile_args(tmp_path / "t.json")
    args[args.index("--runtime") + 1] = "onnxruntime"
    assert_one_line_error(run_cli(*args), "onnxruntime is not installed", "pip install onnxruntime")
    assert list(tmp_path.iterdir()) == []


def test_tensorrt_not_installed_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    args = profile_args(tmp_path / "t.json")
    args[args.index("--runtime") + 1] = "tensorrt"
    assert_one_line_error(run_cli(*args), "tensorrt is not installed", "pip install tensorrt")


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_one_line_error(run_cli(*profile_args(blocker / "sub" / "t.json")), "cannot write --out", f"{blocker} is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_cpu_clock_needs_one_thread(tmp_path):
    args = profile_args(tmp_path / "t.json", "--clock", "cpu")
    args[args.index("--threads") + 1] = "2"
    assert_one_line_error(run_cli(*args), "--clock cpu", "--threads 1")
    assert list(tmp_path.iterdir()) == []


def test_cpu_clock_is_recorded(tmp_path):
    out = tmp_path / "t.json"
    assert run_cli(*profile_args(out, "--clock", "cpu")).code == 0
    table = LatencyTable.load(out)
    assert table.metadata["settings"]["clock"] == "cpu" and table.metadata["settings"]["timer"] == "process_time"
    assert "process CPU time" in table.describe()


def test_several_batches_need_a_template(tmp_path):
    assert_one_line_error(run_cli(*profile_args(tmp_path / "t.json", "--batch-size", "8")), "{batch}")


def test_latency_measure_on_cpu(tmp_path):
    out = tmp_path / "t.json"
    assert run_cli(*profile_args(out)).code == 0
    get_space("test").sample(np.random.default_rng(4)).save(tmp_path / "a.json")
    result = run_cli("latency", str(tmp_path / "a.json"), "--table", str(out), "--measure")
    assert result.code == 0, result.err
    assert "predicted:" in result.out and "measured:" in result.out and "error:" in result.out


def test_resume_after_sigkill(tmp_path):
    """A real `kill -9` of a running `deployvit profile`: the rerun keeps what was measured."""
    import json
    import os
    import signal
    import subprocess
    import time

    out = tmp_path / "t.json"
    progress = tmp_path / "t.json.progress.json"
    args = profile_args(out)[1:]
    args += ["--rounds", "40", "--round-time", "0", "--max-time", "0"]  # slow enough to be killed mid-way
    cmd = [sys.executable, "-m", "deployvit", "profile", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    done = 0
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if progress.exists():
            state = json.loads(progress.read_text())  # atomic writes: always whole JSON
            done = min((len(r) for r in state["rounds"].values()), default=0)  # finished rounds
            if done >= 3:
                break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the profile finished before it could be killed")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout
    assert LatencyTable.load(out).validation["calibrated"]["n"] == 3
