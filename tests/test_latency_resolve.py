"""The one table resolver (`deployvit.latency.resolve`): where it looks, what it prefers, and the
one-line refusals (issue: one journey on one table)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deployvit.errors import DeployvitError
from deployvit.devices import cpu_name
from deployvit.latency.resolve import Machine, TableQuery, choose, deployvit_home, resolve_table, scan_tables
from deployvit.latency.table import LatencyTable, table_filename
from deployvit.parts import space_parts
from deployvit.spaces import get_space
from tests.conftest import assert_one_line_error, run_cli

SPACE = get_space("test")
CPU = Machine("cpu", cpu_name())
A100 = Machine("cuda", "NVIDIA A100-SXM4-80GB")


def make_table(folder: Path, label: str, runtime: str, precision: str = "fp16", batch: int = 1, *, device_type="cuda",
               device_name="NVIDIA A100-SXM4-80GB", source="measured", part_us=10.0, space=SPACE, name=None) -> Path:
    """A complete, valid table of `space` with every part at `part_us` (no timing needed)."""
    meta = {"device_label": label, "device_type": device_type, "device_name": device_name, "runtime": runtime,
            "runtime_version": torch.__version__, "precision": precision, "batch_size": batch, "img_size": space.img_size,
            "space": space.name, "space_hash": space.hash(), "torch": torch.__version__, "source": source}
    entries = {p.key: {"median_us": part_us, "p90_us": part_us, "mean_us": part_us, "cv": 0.0, "repeats": 1}
               for p in space_parts(space)}
    suffix = "-estimated" if source == "estimated" else ""
    path = folder / label / (name or table_filename(space.name, runtime, precision, batch).replace(".json", f"{suffix}.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    LatencyTable(meta, entries).save(path)
    return path


def pick(folders, query: TableQuery, machine: Machine) -> Path:
    infos, skipped = scan_tables([(origin, Path(f)) for origin, f in folders])
    assert not skipped, skipped
    return choose(query, infos, machine).path


def q(**kw) -> TableQuery:
    return TableQuery(SPACE.name, SPACE.hash(), **kw)


def test_home_defaults_to_the_platform_data_folder(monkeypatch):
    monkeypatch.delenv("DEPLOYVIT_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", "/x/data")
    assert deployvit_home() == Path("/x/data/deployvit")


def test_measured_beats_estimated_and_user_beats_shipped(tmp_path):
    shipped, home = tmp_path / "shipped", tmp_path / "home"
    estimate = make_table(shipped, "a100", "cudagraph", source="estimated")
    assert pick([("shipped", shipped)], q(), A100) == estimate
    measured_shipped = make_table(shipped, "a100", "cudagraph")
    assert pick([("shipped", shipped)], q(), A100) == measured_shipped  # a measurement always beats an estimate
    mine = make_table(home, "a100", "cudagraph")
    assert pick([("home", home), ("shipped", shipped)], q(), A100) == mine
    # an estimate of the user's does not beat a shipped measurement
    assert pick([("home", home / "none"), ("shipped", shipped)], q(device="a100"), CPU) == measured_shipped


def test_defaults_prefer_fp16_batch_1_and_the_deployment_runtime(tmp_path):
    for runtime, precision, batch in [("eager", "fp16", 1), ("cudagraph", "fp32", 1), ("cudagraph", "fp16", 64)]:
        make_table(tmp_path, "a100", runtime, precision, batch)
    best = make_table(tmp_path, "a100", "cudagraph", "fp16", 1)
    assert pick([("shipped", tmp_path)], q(), A100) == best
    assert pick([("shipped", tmp_path)], q(batch_size=64), A100).name == "test-cudagraph-fp16-b64.json"
    assert pick([("shipped", tmp_path)], q(runtime="eager"), A100).name == "test-eager-fp16-b1.json"


def test_a_cuda_machine_never_gets_a_cpu_table_unless_asked(tmp_path):
    cpu_table = make_table(tmp_path, "cpu", "onnxruntime", "fp32", device_type="cpu", device_name=cpu_name())
    with pytest.raises(DeployvitError, match="no latency table for space test on NVIDIA A100"):
        pick([("home", tmp_path)], q(), A100)
    assert pick([("home", tmp_path)], q(device="cpu"), A100) == cpu_table


def test_cpu_machine_targets_the_reference_gpu_but_keeps_the_users_own_cpu_table(tmp_path):
    shipped, home = tmp_path / "shipped", tmp_path / "home"
    make_table(shipped, "cpu", "eager", "fp32", device_type="cpu", device_name=cpu_name())
    h100 = make_table(shipped, "h100", "cudagraph", device_name="NVIDIA H100 80GB HBM3", source="estimated")
    assert pick([("shipped", shipped)], q(), CPU) == h100  # the shipped CPU table describes the CI machine
    mine = make_table(home, "cpu", "onnxruntime", "fp32", device_type="cpu", device_name=cpu_name())
    assert pick([("home", home), ("shipped", shipped)], q(), CPU) == mine  # measured here by the user


def test_label_of_another_gpu_and_nothing_fits_says_what_and_where(tmp_path):
    make_table(tmp_path, "a100", "cudagraph")
    with pytest.raises(DeployvitError) as info:
        pick([("shipped", tmp_path)], q(device="l4", precision="fp16"), CPU)
    line = str(info.value)
    assert "\n" not in line and "on l4" in line and "deployvit profile --device l4 --space test" in line
    assert "a100 cudagraph fp16 b1" in line  # what this space does have


def test_two_tables_that_tie_are_refused(tmp_path):
    make_table(tmp_path, "a100", "cudagraph")
    make_table(tmp_path, "a100", "cudagraph", name="copy-of-it.json")
    with pytest.raises(DeployvitError, match="two latency tables tie"):
        pick([("home", tmp_path)], q(), A100)


def test_tables_of_another_space_version_are_not_candidates(tmp_path):
    other = get_space("test-resnas")
    make_table(tmp_path, "a100", "cudagraph", space=other)
    with pytest.raises(DeployvitError, match="no latency table for space test"):
        pick([("home", tmp_path)], q(), A100)


def test_explicit_table_of_another_space_is_exit_2(tmp_path):
    path = make_table(tmp_path, "cpu", "eager", "fp32", device_type="cpu", device_name=cpu_name())
    with pytest.raises(DeployvitError, match="profiled for space 'test', not 'autoformer-tiny'"):
        resolve_table(TableQuery("autoformer-tiny", get_space("autoformer-tiny").hash()), path, CPU)
    result = run_cli("search", "--space", "autoformer-tiny", "--latency", "5ms", "--table", str(path), "--out", str(tmp_path / "run"))
    assert_one_line_error(result, "profiled for space 'test'")
    assert not (tmp_path / "run").exists()


def test_tie_through_the_cli_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in (None, "copy.json"):
        make_table(tmp_path / "latency_tables", "cpu", "eager", "fp32", device_type="cpu", device_name=cpu_name(), name=name)
    result = run_cli("search", "--space", "test", "--latency", "5ms", "--out", str(tmp_path / "run"))
    assert_one_line_error(result, "two latency tables tie")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("problem", ["file", "under-a-file"])
def test_bad_deployvit_home_is_exit_2_and_writes_nothing(tmp_path, monkeypatch, problem):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DEPLOYVIT_HOME", str(blocker if problem == "file" else blocker / "home"))
    result = run_cli("profile", "--device", "cpu", "--space", "test", "--runtime", "eager", "--precision", "fp32",
                     "--batch-size", "1", "--calib-archs", "2", "--val-archs", "2", "--repeats", "1", "--warmup", "0")
    assert_one_line_error(result, "DEPLOYVIT_HOME" if problem == "file" else "cannot write latency tables")
    assert blocker.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]
    assert_one_line_error(run_cli("tables"), "DEPLOYVIT_HOME") if problem == "file" else None


def test_tables_lists_user_and_shipped_and_the_pick(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    home = Path(str(deployvit_home())) / "latency_tables"
    mine = make_table(home, "cpu", "onnxruntime", "fp32", device_type="cpu", device_name=cpu_name())
    result = run_cli("tables")
    assert result.code == 0, result.err
    assert str(mine) in result.out and "autoformer-tiny" in result.out and "shipped" in result.out
    assert f"search --space test would use: {mine}" in result.out

