"""Issue 25, the file-system classes: names that escape their folder, special files, errors of the
operating system (a full disk, a read-only one, a name too long, a folder where a file goes, an
unreadable folder, standard output on a full device), two writers of one output, and options that
contradict each other. Each hostile input is built for real (a tmpfs with no free byte, `os.mkfifo`,
a space named `../x`), and each refusal is exit 2 with one line, no traceback, nothing half written
and nothing outside its folder."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from deployvit import io
from deployvit.errors import DeployvitError
from deployvit.spaces import get_space
from tests.conftest import assert_one_line_error, run_cli

ROOT = Path(__file__).resolve().parent.parent
TINY_TRAIN = ["--space", "test", "--data", "digits", "--batch-size", "128", "--aug", "none", "--warmup-epochs", "0", "--sampler",
              "uniform", "--log-every", "0", "--held-out-per-class", "5", "--epochs", "1"]


@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    torch.set_num_threads(1)
    yield


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _space_file(path: Path, **changes) -> Path:
    data = {**get_space("test").to_dict(), "name": "mine", **changes}
    path.write_text(json.dumps(data))
    return path


def _model_file(path: Path) -> Path:
    """A retrain-style checkpoint.safetensors of the test space's smallest arch (digits: 10 classes)."""
    from deployvit.models import build_model
    from deployvit.weights import save_model

    arch = get_space("test").min_arch()
    save_model(path, build_model(arch), arch)
    return path


def _within(seconds: float, fn, fifos: list[Path] = ()):
    """fn() in a thread: it must return (or raise) within `seconds`. A reader that blocks on a FIFO
    fails the test instead of hanging it (the FIFO is then opened for writing to free the thread)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        thread.join(5)
        pytest.fail(f"blocked for over {seconds} s (a FIFO was opened for reading)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# --- one check for every name that becomes a path component ---------------------------------------


@pytest.mark.parametrize("name", ["../x", "../../etc/x", "/etc/x", "a/b", "..", ".", ".hidden", "-rf", "a\x00b", "a\nb", "tab\there",
                                  " lead", "trail ", "", "x" * 300, "back\\slash"])
def test_safe_component_refuses_every_name_that_is_not_one_file_name(name):
    with pytest.raises(DeployvitError, match="^space.name") as info:
        io.safe_component(name, "space.name")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["mine", "deit_small_patch16_224", "autoformer-tiny-released", "vit_base.augreg", "Ünïcode-ok", "a" * 128])
def test_safe_component_keeps_ordinary_names(name):
    assert io.safe_component(name, "space.name") == name


@pytest.mark.parametrize("name", ["../x", "../../outside", "/tmp/abs", "a/b", ".hidden"])
def test_a_space_named_to_escape_its_folder_is_refused_by_every_command(tmp_path, name, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = _space_file(tmp_path / "space.json", name=name)
    before = _listing(tmp_path)
    for args in (["inspect", "--space", str(space), "--sample", "2"],
                 ["search", "--space", str(space), "--flops", "1G", "--population", "4", "--generations", "1", "--no-progress"],
                 ["profile", "--device", "h100", "--estimate", "--space", str(space), "--runtime", "tensorrt", "--precision", "fp16",
                  "--batch-size", "1"],
                 ["profile", "--device", "cpu", "--space", str(space), "--runtime", "eager", "--precision", "fp32", "--batch-size", "1"],
                 ["train-supernet", "--space", str(space), *TINY_TRAIN[2:], "--out", str(tmp_path / "run")]):
        assert_one_line_error(run_cli(*args), "space.name", str(space))
        assert _listing(tmp_path) == before, args
    assert not (tmp_path.parent / "x").exists() and not Path("/tmp/abs").exists()


def test_table_file_names_and_device_labels_use_the_same_check():
    from deployvit.devices import check_label
    from deployvit.latency.table import table_filename

    with pytest.raises(DeployvitError, match="space name '../x'"):
        table_filename("../x", "eager", "fp32", 1)
    with pytest.raises(DeployvitError, match="device label '../x'"):
        check_label("../x")
    assert table_filename("mine", "eager", "fp32", 4, estimated=True) == "mine-eager-fp32-b4-estimated.json"


@pytest.mark.parametrize("args, needle", [
    (["--from", "timm:hf-hub:timm/vit_tiny_patch16_224.augreg_in21k"], "model hub reference"),
    (["--from", "timm:timm/vit_tiny_patch16_224"], "model hub reference"),
    (["--from", "timm:./parent.pth"], "looks like a path"),
    (["--from", "timm:../x"], "looks like a path"),
    (["--from", "timm:vit_tiny_patch16_224", "--name", "../x"], "--name '../x'"),
    (["--from", "timm:vit_tiny_patch16_224", "--name", ""], "--name"),
    (["--from", "timm:vit_tiny_patch16_224", "--name", "test"], "preset"),
])
def test_import_refuses_names_that_are_paths_or_downloads_before_reading(tmp_path, args, needle):
    out = tmp_path / "imp"
    result = run_cli("import", *args, "--weights", str(tmp_path / "absent.pth"), "--out", str(out))
    assert_one_line_error(result, needle)  # refused before the (absent) weights file is even looked at
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("name, needle", [
    ("hf-hub:timm/vit_tiny_patch16_224", "model hub reference"), ("hf_hub:timm/x", "model hub reference"),
    ("timm/vit_tiny_patch16_224", "model hub reference"), ("./model.pth", "looks like a path"), ("~/m", "looks like a path"),
    ("model.safetensors", "looks like a path"), ("vit tiny", "not a timm model name"),
])
def test_export_timm_model_never_downloads_and_refuses_paths(tmp_path, name, needle):
    result = run_cli("export", "--timm-model", name, "--format", "onnx", "--out", str(tmp_path / "exp"))
    assert_one_line_error(result, "--timm-model", needle)
    assert _listing(tmp_path) == []


# --- special files: refused before anything opens them ---------------------------------------------


def test_every_reader_refuses_a_fifo_without_blocking(tmp_path):
    from deployvit.arch import load_arch
    from deployvit.spaces import load_space
    from deployvit.train.checkpoint import read_checkpoint
    from deployvit.weights import read_weights, safe_torch_load

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    links = {}
    for suffix in (".json", ".yaml", ".pt", ".pth", ".safetensors"):
        links[suffix] = tmp_path / f"pipe{suffix}"
        links[suffix].symlink_to(fifo)
    readers = [
        (lambda: load_arch(links[".json"]), "arch file must be a regular file"),
        (lambda: load_space(links[".yaml"]), "space file must be a regular file"),
        (lambda: io.read_json(links[".json"], "search state"), "search state must be a regular file"),
        (lambda: read_checkpoint(links[".pt"]), "checkpoint must be a regular file"),
        (lambda: safe_torch_load(links[".pth"]), "checkpoint must be a regular file"),
        (lambda: read_weights(links[".safetensors"]), "checkpoint must be a regular file"),
        (lambda: read_weights(links[".pt"]), "checkpoint must be a regular file"),
        (lambda: io.sha256(fifo), "must be a regular file"),
        (lambda: get_space(str(links[".yaml"])), "space file must be a regular file"),
    ]
    for reader, needle in readers:
        with pytest.raises(DeployvitError, match=needle) as info:
            _within(20, reader, [fifo])
        assert "FIFO" in str(info.value)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_a_device_given_as_a_file_is_refused(device):
    if not Path(device).exists():
        pytest.skip(f"{device} does not exist here")
    with pytest.raises(DeployvitError, match="character device"):
        _within(20, lambda: io.read_json(device, "arch file"))


def test_the_cli_refuses_fifos_as_arch_space_weights_and_state(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({**get_space("test").min_arch().to_dict(), "space": str(fifo.with_suffix(".yaml"))}))
    os.mkfifo(fifo.with_suffix(".yaml"))
    os.mkfifo(tmp_path / "w.pth")
    cases = [
        (["inspect", str(fifo)], "FIFO"),
        (["inspect", str(arch)], "FIFO"),  # an arch whose `space` names a path
        (["import", "--from", "timm:vit_tiny_patch16_224", "--weights", str(tmp_path / "w.pth"), "--out", str(tmp_path / "i")], "FIFO"),
        (["retrain", "--arch", str(fifo), "--data", "digits", "--out", str(tmp_path / "r")], "FIFO"),
        (["evaluate", "--model", str(tmp_path / "w.pth"), "--data", "digits"], "FIFO"),
    ]
    for args, needle in cases:
        assert_one_line_error(_within(60, lambda args=args: run_cli(*args), [fifo, fifo.with_suffix(".yaml"), tmp_path / "w.pth"]), needle)
    # a search state that is a FIFO, on resume
    run = tmp_path / "run"
    search = ["search", "--space", "test", "--flops", "1G", "--population", "4", "--generations", "1", "--parents", "2",
              "--mutations", "2", "--crossovers", "2", "--out", str(run), "--no-progress"]
    assert run_cli(*search).code == 0
    (run / "search_state.json").unlink()
    os.mkfifo(run / "search_state.json")
    assert_one_line_error(_within(60, lambda: run_cli(*search, "--resume"), [run / "search_state.json"]), "search_state.json", "FIFO")


def test_a_space_file_that_is_a_fifo_is_refused_by_every_command_that_takes_one(tmp_path):
    fifo = tmp_path / "space.yaml"
    os.mkfifo(fifo)
    arch = tmp_path / "a.json"
    arch.write_text(json.dumps({**get_space("test").min_arch().to_dict(), "space": str(fifo)}))
    cases = [
        ["search", "--space", str(fifo), "--flops", "1G", "--out", str(tmp_path / "s")],
        ["profile", "--device", "cpu", "--space", str(fifo), "--runtime", "eager", "--precision", "fp32", "--batch-size", "1",
         "--out", str(tmp_path / "t.json")],
        ["profile", "--device", "h100", "--estimate", "--space", str(fifo), "--runtime", "tensorrt", "--batch-size", "1",
         "--out", str(tmp_path / "t.json")],
        ["train-supernet", *[a if a != "test" else str(fifo) for a in TINY_TRAIN], "--out", str(tmp_path / "run")],
        ["latency", str(arch), "--device", "cpu"],  # an arch whose `space` names a FIFO
    ]
    for args in cases:
        assert_one_line_error(_within(60, lambda args=args: run_cli(*args), [fifo]), "space file must be a regular file, got a FIFO")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "space.yaml"]


def test_a_cifar_batch_that_is_a_fifo_is_refused_and_image_fifos_are_skipped(tmp_path):
    import pickle

    import numpy as np
    from PIL import Image

    from deployvit.train.data import open_data

    cifar = tmp_path / "cifar"
    cifar.mkdir()
    for name in ["data_batch_1", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        (cifar / name).write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}, protocol=2))
    os.mkfifo(cifar / "data_batch_2")
    with pytest.raises(DeployvitError, match="CIFAR batch must be a regular file, got a FIFO"):
        _within(20, lambda: open_data(cifar), [cifar / "data_batch_2"])
    images = tmp_path / "images"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (images / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(images / split / cls / f"{i}.png")
            os.mkfifo(images / split / cls / "blocked.png")  # not a regular file: never listed, never opened
    source = _within(20, lambda: open_data(images), [images / s / c / "blocked.png" for s in ("train", "val") for c in ("a", "b")])
    assert len(source.train) == 4 and not any("blocked" in i for i in source.train.ids)
    assert source.train.load(0).size == (8, 8)


# --- the operating system says no -------------------------------------------------------------------


def _mount_tmpfs(mnt: Path, options: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a full (or read-only) disk needs root: it is a mounted tmpfs; not root here")
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    mnt.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in this container: {done.stderr.strip() or done.returncode}")


@pytest.fixture
def full_disk(tmp_path):
    """A tmpfs with no free byte: a 1 MiB tmpfs filled by `.filler` until the kernel says ENOSPC."""
    mnt = tmp_path / "full"
    _mount_tmpfs(mnt, "size=1m,mode=0777")
    try:
        fd = os.open(mnt / ".filler", os.O_WRONLY | os.O_CREAT)
        for chunk in (1 << 16, 1 << 12, 1):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
        os.close(fd)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def read_only_disk(tmp_path):
    mnt = tmp_path / "ro"
    _mount_tmpfs(mnt, "size=1m,ro")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _only_filler(folder: Path) -> None:
    """Nothing but the filler on the full disk: no file, half or whole, no temp file, no empty folder."""
    assert _listing(folder) == [".filler"]


def test_library_writes_on_a_full_disk_are_one_line_and_leave_nothing(full_disk):
    from deployvit.models import build_model
    from deployvit.weights import save_model

    arch = get_space("test").max_arch()
    writes = [
        ("x.json", lambda p: io.write_json(p, {"a": list(range(10_000))})),
        ("x.pt", lambda p: io.save_torch(p, {"w": torch.zeros(100_000)})),
        ("x.safetensors", lambda p: save_model(p, build_model(arch), arch)),
        ("x.png", lambda p: io.write_bytes(p, b"\0" * 100_000)),
    ]
    for name, write in writes:
        with pytest.raises(DeployvitError) as info:
            write(full_disk / "sub" / name)
        message = str(info.value)
        assert message == f"cannot write {full_disk / 'sub' / name}: No space left on device", message
        _only_filler(full_disk)
    with pytest.raises(DeployvitError, match="No space left on device"):
        io.check_writable(full_disk / "run", "--out")  # the probe writes a block: a full disk is found before work


def test_train_supernet_and_retrain_on_a_full_disk_stop_before_the_first_step(full_disk, tmp_path):
    result = run_cli("train-supernet", *TINY_TRAIN, "--out", str(full_disk / "run"))
    assert_one_line_error(result, str(full_disk / "run"), "No space left on device")
    _only_filler(full_disk)
    arch = tmp_path / "a.json"
    get_space("test").min_arch().save(arch)
    result = run_cli("retrain", "--arch", str(arch), "--data", "digits", "--epochs", "1", "--batch-size", "128", "--log-every", "0",
                     "--out", str(full_disk / "re"))
    assert_one_line_error(result, "No space left on device")
    _only_filler(full_disk)


def test_a_checkpoint_save_that_meets_a_full_disk_is_one_line_and_leaves_no_temp(tmp_path):
    """The disk fills during training: the probe before the first step passes, the checkpoint save at
    the epoch's end does not. One line, exit 2, no checkpoint and no temp file."""
    mnt = tmp_path / "disk"
    _mount_tmpfs(mnt, "size=64k,mode=0777")  # room for the probe and metrics.jsonl, not for a checkpoint
    try:
        out = mnt / "run"
        result = run_cli("train-supernet", *TINY_TRAIN, "--out", str(out))
        assert result.code == 2 and "Traceback" not in result.err  # the run's log lines, then one error line
        errors = [line for line in result.err.splitlines() if line.startswith("deployvit:")]
        assert errors == [f"deployvit: cannot write {out / 'checkpoint.pt'}: No space left on device"], result.err
        assert result.err.splitlines()[-1] == errors[0]
        assert not (out / "checkpoint.pt").exists()
        assert not [p for p in _listing(mnt) if p.endswith(".tmp")]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_search_whose_disk_fills_at_its_plot_is_one_line_and_resumes_to_its_winner(tmp_path):
    """Room for the probe, the state and the logs, not for pareto.png: one line naming the file, no
    temp file, no winner file (its presence marks a finished run); with room again, --resume writes
    the outputs from the finished state without scoring anything again."""
    mnt = tmp_path / "disk"
    _mount_tmpfs(mnt, "size=48k,mode=0777")
    try:
        args = [*_SEARCH, "--out", str(mnt / "run")]
        result = run_cli(*args)
        if result.code == 0:
            pytest.skip("this matplotlib's pareto.png fitted in 48 KiB")
        errors = [line for line in result.err.splitlines() if line.startswith("deployvit:")]
        assert result.code == 2 and "Traceback" not in result.err and len(errors) == 1, result.err
        assert str(mnt / "run") in errors[0] and "No space left on device" in errors[0]
        left = _listing(mnt)
        assert "run/search_state.json" in left and "run/best.arch.json" not in left
        assert not [p for p in left if p.endswith((".tmp", ".lock"))] and not [p for p in _listing(tmp_path) if p.endswith(".lock")]
        evaluated = len(json.loads((mnt / "run" / "search_state.json").read_text())["evaluated"])
        subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True, capture_output=True)
        result = run_cli(*args, "--resume")
        assert result.code == 0, result.err
        assert {"best.arch.json", "pareto.png"} <= {p.name for p in (mnt / "run").iterdir()}
        assert len(json.loads((mnt / "run" / "search_state.json").read_text())["evaluated"]) == evaluated
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_evaluate_json_on_a_full_disk_and_onto_a_folder(full_disk, tmp_path):
    model = _model_file(tmp_path / "m.safetensors")
    result = run_cli("evaluate", "--model", str(model), "--data", "digits", "--json", str(full_disk / "e.json"))
    assert_one_line_error(result, str(full_disk / "e.json"), "No space left on device")
    _only_filler(full_disk)
    (tmp_path / "folder.json").mkdir()
    result = run_cli("evaluate", "--model", str(model), "--data", "digits", "--json", str(tmp_path / "folder.json"))
    assert_one_line_error(result, "--json", "is a directory")  # click's own check of the option
    assert result.out == ""  # refused before the evaluation ran


def test_import_on_a_full_disk_leaves_no_folder_and_no_temp(full_disk, tmp_path):
    weights = _parent_weights(tmp_path)
    result = run_cli("import", "--from", "timm:vit_tiny_patch16_224", "--weights", str(weights), *_SMALL_ARGS, "--out", str(full_disk / "imp"))
    assert_one_line_error(result, "No space left on device")
    _only_filler(full_disk)


def test_writes_on_a_read_only_disk_are_one_line(read_only_disk, tmp_path):
    with pytest.raises(DeployvitError, match="Read-only file system"):
        io.write_json(read_only_disk / "x.json", {})
    result = run_cli("train-supernet", *TINY_TRAIN, "--out", str(read_only_disk / "run"))
    assert_one_line_error(result, "Read-only file system")
    model = _model_file(tmp_path / "m.safetensors")
    assert_one_line_error(run_cli("evaluate", "--model", str(model), "--data", "digits", "--json", str(read_only_disk / "e.json")),
                          "Read-only file system")
    assert _listing(read_only_disk) == []


def test_an_out_name_longer_than_the_file_system_allows_is_refused_before_work(tmp_path):
    long = "n" * 300
    arch = tmp_path / "a.json"
    get_space("test").min_arch().save(arch)
    model = _model_file(tmp_path / "m.safetensors")
    for args in (["train-supernet", *TINY_TRAIN, "--out", str(tmp_path / long)],
                 ["retrain", "--arch", str(arch), "--data", "digits", "--out", str(tmp_path / long)],
                 ["import", "--from", "timm:vit_tiny_patch16_224", "--weights", str(tmp_path / "absent.pth"), "--out", str(tmp_path / long)],
                 ["evaluate", "--model", str(model), "--data", "digits", "--json", str(tmp_path / f"{long}.json")]):
        result = run_cli(*args)
        assert_one_line_error(result, "is 30", "this file system allows 255")
        assert result.out == ""
    with pytest.raises(DeployvitError, match="File name too long"):
        io.write_json(tmp_path / long, {})  # the library's own writer: one line with the system's reason
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "m.safetensors"]


_PROFILE = ["profile", "--device", "cpu", "--space", "test", "--runtime", "eager", "--precision", "fp32", "--batch-size", "1",
            "--calib-archs", "2", "--val-archs", "2", "--repeats", "1", "--warmup", "0"]
_ESTIMATE = ["profile", "--device", "h100", "--estimate", "--space", "test", "--runtime", "tensorrt", "--precision", "fp16",
             "--batch-size", "1"]
_SEARCH = ["search", "--space", "test", "--flops", "1G", "--population", "4", "--generations", "1", "--parents", "2",
           "--mutations", "2", "--crossovers", "2", "--no-progress"]


def test_an_empty_out_is_refused_by_every_command(tmp_path, monkeypatch):
    """`--out ''` is no folder: never "the current folder" nor "the default"."""
    monkeypatch.chdir(tmp_path)
    arch = _arch(tmp_path)
    for args in ([*_SEARCH, "--out", ""], [*_PROFILE, "--out", ""], [*_ESTIMATE, "--out", ""],
                 ["export", "--arch", str(arch), "--format", "onnx", "--out", ""], ["benchmark", "--arch", str(arch), "--out", ""],
                 ["train-supernet", *TINY_TRAIN, "--out", ""], ["retrain", "--arch", str(arch), "--data", "digits", "--out", ""],
                 ["import", "--from", "timm:vit_tiny_patch16_224", "--weights", "x.pth", "--out", ""]):
        assert_one_line_error(run_cli(*args), "--out", "expected a path, got ''")
        assert _listing(tmp_path) == ["a.json"], args


def test_profile_outputs_and_progress_files_of_the_wrong_kind_are_refused_before_timing(tmp_path):
    (tmp_path / "dir.json").mkdir()
    os.mkfifo(tmp_path / "fifo.json")
    table = tmp_path / "t.json"
    (tmp_path / "t.json.progress.json").mkdir()  # the progress path of t.json is a folder
    os.mkfifo(tmp_path / "p.json.progress.json")  # and that of p.json a FIFO
    long = tmp_path / ("n" * 235 + ".json")  # fits, but its progress file's name (and that one's temp) would not
    cases = [(tmp_path / "dir.json", "expected a file, got a directory"), (tmp_path / "fifo.json", "expected a file, got a FIFO"),
             (table, "profile progress file"), (tmp_path / "p.json", "profile progress file"), (long, "this file system allows 255")]
    before = _listing(tmp_path)
    for out, needle in cases:
        result = _within(60, lambda out=out: run_cli(*_PROFILE, "--out", str(out)), [tmp_path / "p.json.progress.json"])
        assert_one_line_error(result, needle)
        assert result.out == ""  # nothing was timed
        assert _listing(tmp_path) == before
    assert_one_line_error(run_cli(*_ESTIMATE, "--out", str(tmp_path / "fifo.json")), "expected a file, got a FIFO")


@pytest.mark.parametrize("extra, needle", [
    (["--baselines", "hf-hub:timm/deit_tiny_patch16_224"], "--baselines 'hf-hub:timm/deit_tiny_patch16_224': a model hub reference"),
    (["--baselines", "../x.pth"], "--baselines '../x.pth': looks like a path"),
    (["--baselines", "deit_tiny_patch16_224,deit_tiny_patch16_224"], "deit_tiny_patch16_224 given twice"),
    (["--formats", "onnx,onnx"], "onnx given twice"),
])
def test_benchmark_baselines_and_formats_refused_before_anything_is_made(tmp_path, extra, needle):
    arch = _arch(tmp_path)
    assert_one_line_error(run_cli("benchmark", "--arch", str(arch), *extra, "--out", str(tmp_path / "b")), needle)
    assert _listing(tmp_path) == ["a.json"]


def test_a_device_label_that_escapes_is_refused_before_the_table_folder_is_made(tmp_path):
    home = Path(os.environ["DEPLOYVIT_HOME"])
    for args in (_PROFILE, _ESTIMATE):
        args = [a if a not in ("cpu", "h100") else "../x" for a in args]
        assert_one_line_error(run_cli(*args), "device label '../x'")
    assert not (home / "latency_tables").exists() and not (home.parent / "x").exists()


def test_export_timing_cache_of_the_wrong_kind_or_without_tensorrt(tmp_path):
    arch = _arch(tmp_path)
    os.mkfifo(tmp_path / "cache")
    result = run_cli("export", "--arch", str(arch), "--format", "onnx", "--timing-cache", str(tmp_path / "c"), "--out", str(tmp_path / "e"))
    assert_one_line_error(result, "--timing-cache needs --format trt (this run: --format onnx)")
    result = _within(60, lambda: run_cli("export", "--arch", str(arch), "--format", "trt", "--device", "cuda", "--timing-cache",
                                         str(tmp_path / "cache"), "--out", str(tmp_path / "e")), [tmp_path / "cache"])
    assert result.code == 2 and "Traceback" not in result.err  # refused: the FIFO, or no GPU / TensorRT here (checked first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "cache"]


def test_search_profile_export_and_evaluate_on_a_full_disk_leave_nothing(full_disk, tmp_path):
    arch = _arch(tmp_path)
    model = _model_file(tmp_path / "m.safetensors")
    for args in ([*_SEARCH, "--out", str(full_disk / "run")], [*_ESTIMATE, "--out", str(full_disk / "t.json")],
                 [*_PROFILE, "--out", str(full_disk / "p.json")],
                 ["export", "--arch", str(arch), "--format", "onnx", "--out", str(full_disk / "e")],
                 ["benchmark", "--arch", str(arch), "--formats", "onnx", "--out", str(full_disk / "b")],
                 ["evaluate", "--model", str(model), "--data", "digits", "--json", str(full_disk / "e.json")]):
        result = run_cli(*args)
        assert_one_line_error(result, str(full_disk), "No space left on device")
        _only_filler(full_disk)
    home = full_disk / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEPLOYVIT_HOME", str(home))
        assert_one_line_error(run_cli(*_ESTIMATE), "No space left on device")  # the default table folder
    _only_filler(full_disk)


def test_outputs_where_the_wrong_kind_of_file_is(tmp_path):
    (tmp_path / "file").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    for out, needle in ((tmp_path / "fifo", "expected a folder, got a FIFO"), (tmp_path / "file" / "run", "is a file, not a folder"),
                        ("", "expected a path")):
        assert_one_line_error(run_cli("train-supernet", *TINY_TRAIN, "--out", str(out)), needle)
    with pytest.raises(DeployvitError, match="it is a folder"):
        io.write_json(tmp_path, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "file"]


def _no_dac(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run `cmd` where file permissions apply: as root, without the capabilities that bypass them."""
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("as root every folder is readable, and setpriv (to drop that capability) is missing")
        cmd = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.parametrize("args", [
    ["tables"],
    ["search", "--space", "test", "--latency", "5ms", "--device", "cpu", "--population", "4", "--generations", "1", "--out", "run"],
    ["profile", "--device", "h100", "--estimate", "--space", "test", "--runtime", "tensorrt", "--precision", "fp16", "--batch-size", "1"],
])
def test_an_unreadable_deployvit_home_is_one_line_in_every_command_that_looks_there(tmp_path, args):
    home = tmp_path / "home"
    (home / "latency_tables").mkdir(parents=True)
    home.chmod(0)
    try:
        env = dict(os.environ, DEPLOYVIT_HOME=str(home), PYTHONPATH=str(ROOT))
        done = _no_dac([sys.executable, "-m", "deployvit", *args], env=env, cwd=tmp_path)
    finally:
        home.chmod(0o755)
    assert done.returncode == 2, done
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert str(home / "latency_tables") in done.stderr and "Permission denied" in done.stderr
    assert _listing(tmp_path) == ["home", "home/latency_tables"]


@pytest.mark.parametrize("args", [["--help"], ["tables"], ["inspect", "--space", "test", "--sample", "50"]])
def test_standard_output_on_a_full_device_or_a_closed_pipe_is_one_line(args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if Path("/dev/full").exists():
        with open("/dev/full", "w") as full:
            done = subprocess.run([sys.executable, "-m", "deployvit", *args], stdout=full, stderr=subprocess.PIPE, text=True,
                                  env=env, timeout=300)
        assert done.returncode == 2, done.stderr
        assert done.stderr == "deployvit: cannot write standard output: No space left on device\n"
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte
    try:
        done = subprocess.run([sys.executable, "-m", "deployvit", *args], stdout=write, stderr=subprocess.PIPE, text=True,
                              env=env, timeout=300)
    finally:
        os.close(write)
    assert done.returncode == 2, done.stderr
    assert done.stderr == "deployvit: cannot write standard output: Broken pipe\n"


@pytest.mark.parametrize("args", [
    [*_SEARCH, "--out", "run"],
    ["evaluate", "--model", "m.safetensors", "--data", "digits", "--json", "e.json"],
    [*_ESTIMATE, "--out", "t.json"],
])
def test_standard_output_on_a_full_device_in_commands_that_write_files(tmp_path, args):
    """One line, exit 2; what the command wrote before its first line of output is complete (atomic)."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    _model_file(tmp_path / "m.safetensors")
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "deployvit", *args], stdout=full, stderr=subprocess.PIPE, text=True, env=env,
                              cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr == "deployvit: cannot write standard output: No space left on device\n"
    assert not [p for p in _listing(tmp_path) if p.endswith((".tmp", ".lock"))]
    if (tmp_path / "t.json").exists():
        from deployvit.latency.table import LatencyTable

        LatencyTable.load(tmp_path / "t.json", warn=False)  # whole


# --- tracebacks that were -----------------------------------------------------------------------------


def test_resume_with_a_checkpoint_of_other_shapes_names_the_key(tmp_path):
    out = tmp_path / "run"
    assert run_cli("train-supernet", *TINY_TRAIN, "--out", str(out)).code == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    key = next(k for k, v in state["model"].items() if v.dim() == 2)
    state["model"][key] = torch.zeros(3, 3)
    torch.save(state, out / "checkpoint.pt")
    before = (out / "checkpoint.pt").read_bytes()
    result = run_cli("train-supernet", *TINY_TRAIN, "--resume", "--out", str(out))
    assert_one_line_error(result, "does not match this run's model", key, "(3, 3)")
    assert (out / "checkpoint.pt").read_bytes() == before


# --- accepted when it should be refused ------------------------------------------------------------


@pytest.mark.parametrize("text, needle", [
    ("", "empty"), ("  ", "empty"), ("2ms,,5ms", "empty item"), ("5ms,", "empty item"), (",5ms", "empty item"),
    ("5ms,5ms", "given twice"), ("5ms,5000us", "'5ms' and '5000us' (the same amount)"), ("0.1ms,100us", "the same amount"),
])
def test_empty_and_duplicate_budgets_are_refused(text, needle):
    from deployvit.units import parse_amounts

    with pytest.raises(DeployvitError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse_amounts(text, "latency")


def test_an_empty_budget_option_is_refused_by_the_commands(tmp_path):
    assert_one_line_error(run_cli("search", "--space", "test", "--flops", "", "--out", str(tmp_path / "s")), "--flops ''", "empty")
    assert_one_line_error(run_cli("search", "--space", "test", "--flops", "1G", "--min-params", " ", "--out", str(tmp_path / "s")),
                          "--min-params", "empty")
    assert_one_line_error(run_cli("export", "--arch", str(_arch(tmp_path)), "--budget", "", "--format", "onnx", "--out", str(tmp_path / "e")),
                          "--budget ''", "empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


@pytest.mark.parametrize("option", ["--latency", "--min-latency", "--flops", "--params", "--min-flops"])
def test_search_empty_budgets_are_refused_naming_the_option(tmp_path, option):
    extra = [] if option in ("--latency", "--flops") else ["--flops", "1G"]
    result = run_cli("search", "--space", "test", *extra, option, "", "--out", str(tmp_path / "s"))
    assert_one_line_error(result, f"{option} ''", "empty")
    assert _listing(tmp_path) == []


def _arch(tmp_path: Path) -> Path:
    get_space("test").min_arch().save(tmp_path / "a.json")
    return tmp_path / "a.json"


def test_an_arch_without_its_format_field_is_refused_naming_it(tmp_path):
    data = get_space("test").min_arch().to_dict()
    del data["format"]
    (tmp_path / "a.json").write_text(json.dumps(data))
    assert_one_line_error(run_cli("inspect", str(tmp_path / "a.json")), "missing key 'format'")
    data["format"] = "deployvit.arch/2"
    (tmp_path / "a.json").write_text(json.dumps(data))
    assert_one_line_error(run_cli("inspect", str(tmp_path / "a.json")), "format", "newer deployvit")


def test_every_arch_deployvit_writes_has_its_format():
    from deployvit.latency.table import shipped_tables_dir

    for path in shipped_tables_dir().rglob("*.json"):
        data = json.loads(path.read_text())
        for section in ("calibration", "validation"):
            for row in data.get(section, {}).get("archs", []):
                assert row["arch"]["format"] == "deployvit.arch/1", path
    assert get_space("test").min_arch().to_dict()["format"] == "deployvit.arch/1"


def test_a_search_state_of_a_newer_format_is_refused(tmp_path):
    run = tmp_path / "run"
    args = ["search", "--space", "test", "--flops", "1G", "--population", "4", "--generations", "1", "--parents", "2",
            "--mutations", "2", "--crossovers", "2", "--out", str(run), "--no-progress"]
    assert run_cli(*args).code == 0
    state = run / "search_state.json"
    data = json.loads(state.read_text())
    for fmt, needle in (("deployvit.search_state/2", "made by a newer deployvit"), (None, "not a deployvit search state"),
                        ("other.tool/1", "not a deployvit search state")):
        state.write_text(json.dumps({**data, "format": fmt} if fmt else {k: v for k, v in data.items() if k != "format"}))
        before = _listing(run)
        assert_one_line_error(run_cli(*args, "--resume"), str(state), needle)
        assert _listing(run) == before


def _shipped_table() -> dict:
    return json.loads((ROOT / "latency_tables" / "cpu" / "test-eager-fp32-b1.json").read_text())


@pytest.mark.parametrize("change, needle", [
    (lambda t: t["metadata"].update(runtime="tensorrt8"), "unknown runtime 'tensorrt8'"),
    (lambda t: t["metadata"].update(precision="int4"), "unknown precision 'int4'"),
    (lambda t: t["entries"].update({"block:99:9:9:9": dict(next(iter(t["entries"].values())))}), "no arch of space 'test' has"),
])
def test_a_table_of_an_unknown_runtime_or_with_foreign_entries_is_refused(tmp_path, change, needle):
    from deployvit.latency.table import LatencyTable

    table = _shipped_table()
    change(table)
    (tmp_path / "t.json").write_text(json.dumps(table))
    with pytest.raises(DeployvitError, match=needle):
        LatencyTable.load(tmp_path / "t.json", warn=False)


# --- tables that are quietly wrong: every command that resolves one says which files it skipped -------


def _planted_tables(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A corrupt table in ./latency_tables and a negative-bias one in $DEPLOYVIT_HOME/latency_tables."""
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "latency_tables" / "bad.json"
    bad.parent.mkdir()
    bad.write_text('{"metadata": ')
    table = _shipped_table()
    table["calibration"]["bias"] = -5.0
    negative = Path(os.environ["DEPLOYVIT_HOME"]) / "latency_tables" / "neg.json"
    negative.parent.mkdir(parents=True, exist_ok=True)
    negative.write_text(json.dumps(table))
    return bad, negative


def _said_once(text: str, path: Path, reason: str) -> None:
    lines = [line for line in text.splitlines() if f"skipped {path}: " in line]
    assert len(lines) == 1 and text.count(str(path)) == 1, text
    assert reason in lines[0], lines[0]


def test_a_search_says_once_which_planted_tables_it_skipped(tmp_path, monkeypatch):
    bad, negative = _planted_tables(tmp_path, monkeypatch)
    result = run_cli("search", "--space", "test", "--latency", "5ms", "--device", "cpu", "--population", "4", "--generations", "1",
                     "--parents", "2", "--mutations", "2", "--crossovers", "2", "--out", str(tmp_path / "run"), "--no-progress")
    assert result.code == 0, result.err
    _said_once(result.out + result.err, bad, "malformed latency table")
    _said_once(result.out + result.err, negative, "calibration.bias")
    # a target nothing measured and the estimator does not cover (a100 itself is estimated on demand)
    result = run_cli("search", "--space", "test", "--latency", "5ms", "--device", "a100", "--runtime", "onnxruntime",
                     "--out", str(tmp_path / "none"))
    assert_one_line_error(result, "no latency table for space test on a100", f"skipped {bad}: ", f"skipped {negative}: ")
    assert not (tmp_path / "none").exists()


def test_latency_tables_and_the_export_contract_say_which_tables_they_skipped(tmp_path, monkeypatch):
    from deployvit.contract import plan_contract

    bad, negative = _planted_tables(tmp_path, monkeypatch)
    arch = get_space("test").min_arch()
    arch.save(tmp_path / "a.json")
    result = run_cli("latency", "--device", "cpu", str(tmp_path / "a.json"))
    assert result.code == 0, result.err
    _said_once(result.out + result.err, bad, "malformed latency table")
    _said_once(result.out + result.err, negative, "calibration.bias")
    result = run_cli("tables")
    assert result.code == 0, result.err
    _said_once(result.out + result.err, bad, "malformed latency table")
    timing = {"warmup_s": 0.0, "repeats": 1, "threads": 1, "clock": "cpu"}
    found = plan_contract("onnx", arch, precision="fp32", device="cpu", batch_size=None, table_path=None, budget_ms=None, timing=timing)
    said = [*found.notes, found.no_prediction or ""]  # a prediction's notes, or the reason there is none (the shipped CPU table is another machine's)
    assert sum(f"skipped {bad}: " in note for note in said) == 1, said
    missing = plan_contract("onnx", arch, precision="fp16", device="cpu", batch_size=64, table_path=None, budget_ms=None, timing=timing)
    assert f"skipped {negative}: " in missing.no_prediction, missing.no_prediction


def test_benchmark_says_once_which_tables_it_skipped_for_all_its_formats(tmp_path, monkeypatch):
    bad, negative = _planted_tables(tmp_path, monkeypatch)
    arch = _arch(tmp_path)
    result = run_cli("benchmark", "--arch", str(arch), "--formats", "torch,onnx", "--device", "cpu", "--samples", "32",
                     "--dynamic-batch", "1,1,1", "--repeats", "2", "--warmup", "0", "--out", str(tmp_path / "b"))
    assert result.code in (0, 1), result.err
    _said_once(result.err, bad, "malformed latency table")
    _said_once(result.err, negative, "calibration.bias")
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    text = json.dumps(report)
    assert text.count(f"skipped {bad}: ") == 1 and text.count(f"skipped {negative}: ") == 1, report.get("notes")


# --- options that contradict each other --------------------------------------------------------------


@pytest.mark.parametrize("extra, needle", [
    (["--sampler", "uniform", "--groups", "2"], "--groups needs --sampler multi-arch (this run: --sampler uniform)"),
    (["--sampler", "sandwich", "--unlock-epochs", "1"], "--unlock-epochs needs --sampler multi-arch"),
    (["--sampler", "multi-arch", "--sandwich-random", "1"], "--sandwich-random needs --sampler sandwich"),
    (["--sampler", "uniform", "--focus-epsilon", "0.2"], "--focus-epsilon needs --sampler focus"),
    (["--sampler", "auto", "--focus-budgets", "0.5"], "this run: --sampler sandwich"),  # auto resolves first
])
def test_sampler_options_with_a_sampler_that_ignores_them(tmp_path, extra, needle):
    args = [a for a in TINY_TRAIN if a not in ("--sampler", "uniform")]
    result = run_cli("train-supernet", *args, *extra, "--out", str(tmp_path / "run"))
    assert_one_line_error(result, needle)
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("extra, needle", [
    (["--distill"], "--distill needs --init SUPERNET"),
    (["--distill-alpha", "0.3"], "--distill-alpha needs --distill"),
    (["--init", "x.pt", "--distill", "hard", "--distill-tau", "2"], "--distill-tau needs --distill soft"),
])
def test_retrain_distillation_options_without_distillation(tmp_path, extra, needle):
    result = run_cli("retrain", "--arch", str(_arch(tmp_path)), "--data", "digits", *extra, "--out", str(tmp_path / "r"))
    assert_one_line_error(result, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


@pytest.mark.parametrize("args, needle", [
    (["--from", "timm:vit_tiny_patch16_224", "--held-out-per-class", "5"], "--held-out-per-class needs --data"),
    (["--from", "timm:vit_tiny_patch16_224", "--order", "activation"], "--order activation needs --data"),
    (["--from", "autoformer", "--weights", "x.pth", "--model-arg", "depth=2"], "--model-arg needs --from timm (this run: --from autoformer)"),
    (["--from", "autoformer"], "--from autoformer needs --weights"),
])
def test_import_options_that_do_not_go_together(tmp_path, args, needle):
    assert_one_line_error(run_cli("import", *args, "--out", str(tmp_path / "i")), needle)
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("extra, needle", [
    (["--data", "digits"], "--data needs --score supernet: only that score reads held-out images"),
    (["--supernet", "x.pt"], "--supernet needs --score supernet or --method focus"),
    (["--score", "dss", "--supernet", "x.pt", "--data", "digits"], "--supernet needs"),
])
def test_search_data_or_supernet_with_a_score_that_reads_neither(tmp_path, extra, needle):
    result = run_cli("search", "--space", "test", "--flops", "1G", *extra, "--out", str(tmp_path / "s"))
    assert_one_line_error(result, needle)
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("command", ["export", "benchmark"])
@pytest.mark.parametrize("extra, needle", [
    (["--arch", "a.json", "--timm-model", "deit_tiny_patch16_224"], "give either --arch or --timm-model, not both"),
    (["--arch", "a.json", "--img-size", "64"], "--img-size needs --timm-model"),
    (["--arch", "a.json", "--batch-size", "2", "--dynamic-batch", "1,2,4"], "give either --batch-size or --dynamic-batch"),
    (["--arch", "a.json", "--precision", "fp16", "--tf32"], "--tf32 needs --precision fp32 (this run: --precision fp16)"),
])
def test_export_and_benchmark_options_that_do_not_go_together(tmp_path, command, extra, needle, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _arch(tmp_path)
    fmt = ["--format", "onnx"] if command == "export" else []
    assert_one_line_error(run_cli(command, *extra, *fmt, "--out", str(tmp_path / "e")), needle)
    assert _listing(tmp_path) == ["a.json"]


def test_a_default_value_never_conflicts(tmp_path):
    """Only what the user typed is checked: the sampler options' defaults ride along with every sampler."""
    from deployvit.commands import conflicts

    assert set(conflicts.RULES) == {"train-supernet", "retrain", "import", "search", "export", "benchmark"}
    result = run_cli("train-supernet", *TINY_TRAIN, "--out", str(tmp_path / "run"))
    assert result.code == 0, result.err


# --- two processes, one output -------------------------------------------------------------------------


def test_a_second_writer_of_a_run_folder_is_refused_and_a_dead_ones_lock_does_not_block(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from deployvit import io\n"
                               f"with io.output_lock({str(out)!r}, '--out'):\n    print('held', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_cli("train-supernet", *TINY_TRAIN, "--out", str(out))
        assert_one_line_error(result, str(out), f"being written by another deployvit process (pid {holder.pid})")
        arch = _arch(tmp_path)
        assert_one_line_error(run_cli("retrain", "--arch", str(arch), "--data", "digits", "--out", str(out)), "another deployvit process")
        assert_one_line_error(run_cli("import", "--from", "timm:vit_tiny_patch16_224", "--weights", "x.pth", "--out", str(out)),
                              "another deployvit process")
        assert_one_line_error(run_cli(*_SEARCH, "--out", str(out)), "another deployvit process")
        assert_one_line_error(run_cli(*_PROFILE, "--out", str(out)), "another deployvit process")
    finally:
        holder.kill()  # SIGKILL: the kernel drops its flock
        holder.wait()
    assert not out.exists()
    with io.output_lock(out, "--out"):  # the dead holder's lock file is still there, and does not block
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # and nothing is left once released


def test_temp_clean_up_never_touches_another_live_writers_file(tmp_path):
    target = tmp_path / "state.json"
    with io.atomic_path(target) as first:  # writer A, mid-write
        first.write_text('{"a": 1}')
        io.write_json(target, {"b": 2})  # writer B finishes first, and cleans up leftovers
        assert first.exists()  # A's in-flight file survived B's clean-up
    assert json.loads(target.read_text()) == {"a": 1}
    (tmp_path / ".state.json.deadbeef.tmp").write_text("what a killed writer left")  # nobody holds its lock
    io.write_json(target, {"c": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


# --- kill -9 of an import: absent or complete ------------------------------------------------------------

_SMALL_ARGS = ["--model-arg", "embed_dim=32", "--model-arg", "depth=2", "--model-arg", "num_heads=2"]


def _parent_weights(folder: Path) -> Path:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=2,
                              num_heads=2, num_classes=10)
    torch.save(model.state_dict(), folder / "parent.pth")
    return folder / "parent.pth"


def _complete_import(out: Path) -> None:
    from deployvit.arch import load_arch
    from deployvit.spaces import load_space
    from deployvit.train.checkpoint import load_supernet

    assert {"supernet.pt", "space.yaml", "parent.arch.json", "import.json"} <= {p.name for p in out.iterdir()}
    supernet, _ = load_supernet(out / "supernet.pt")
    assert load_space(out / "space.yaml").hash() == supernet.space.hash()
    assert supernet.space.contains(load_arch(out / "parent.arch.json"))
    assert io.read_json(out / "import.json")["parent"]["arch"] == "parent.arch.json"


def test_import_killed_at_random_moments_leaves_its_folder_absent_or_complete(tmp_path):
    import random
    import time

    weights = _parent_weights(tmp_path)
    out = tmp_path / "imp"
    args = [sys.executable, "-m", "deployvit", "import", "--from", "timm:vit_tiny_patch16_224", "--weights", str(weights),
            *_SMALL_ARGS, "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    t0 = time.monotonic()
    assert subprocess.run(args, env=env, capture_output=True, timeout=600).returncode == 0
    whole = time.monotonic() - t0
    _complete_import(out)
    shutil.rmtree(out)
    rng = random.Random(25)
    for delay in sorted(rng.uniform(0.5 * whole, whole) for _ in range(3)):  # the writing happens at the end
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        if out.exists():
            _complete_import(out)
            shutil.rmtree(out)
    assert run_cli("import", "--from", "timm:vit_tiny_patch16_224", "--weights", str(weights), *_SMALL_ARGS, "--out", str(out)).code == 0
    _complete_import(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imp", "parent.pth"]  # a killed run's temp folder and lock are gone
