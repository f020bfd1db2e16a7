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


def make_estimate(folder: Path, gpu: str = "a100", runtime: str = "tensorrt", batch: int = 1, space=SPACE) -> Path:
    """The estimator's own table for the target, saved where a shipped or profiled estimate lies."""
    from deployvit.latency.estimate import estimate_table

    path = folder / gpu / table_filename(space.name, runtime, "fp16", batch, estimated=True)
    estimate_table(space, gpu, runtime, "fp16", batch).save(path)
    return path


def test_measured_beats_estimated_and_user_beats_shipped(tmp_path):
    shipped, home = tmp_path / "shipped", tmp_path / "home"
    estimate = make_estimate(shipped, "a100", batch=64)  # the target's estimate: this GPU, tensorrt fp16 b64 (DEFAULT_TARGET)
    assert pick([("shipped", shipped)], q(), A100) == estimate
    measured_shipped = make_table(shipped, "a100", "cudagraph")
    assert pick([("shipped", shipped)], q(), A100) == measured_shipped  # a measurement always beats an estimate
    mine = make_table(home, "a100", "cudagraph")
    assert pick([("home", home), ("shipped", shipped)], q(), A100) == mine
    # an estimate of the user's does not beat a shipped measurement
    assert pick([("home", home / "none"), ("shipped", shipped)], q(device="a100"), CPU) == measured_shipped


def test_defaults_prefer_fp16_the_targets_batch_and_the_deployment_runtime(tmp_path):
    """Without --device the target's batch is the default target's (64); with --device, batch 1."""
    for runtime, precision, batch in [("eager", "fp16", 1), ("cudagraph", "fp32", 1), ("cudagraph", "fp16", 1), ("eager", "fp16", 64)]:
        make_table(tmp_path, "a100", runtime, precision, batch)
    best = make_table(tmp_path, "a100", "cudagraph", "fp16", 64)
    assert pick([("shipped", tmp_path)], q(), A100) == best
    assert pick([("shipped", tmp_path)], q(device="a100"), A100).name == "test-cudagraph-fp16-b1.json"
    assert pick([("shipped", tmp_path)], q(batch_size=1), A100).name == "test-cudagraph-fp16-b1.json"
    assert pick([("shipped", tmp_path)], q(runtime="eager"), A100).name == "test-eager-fp16-b64.json"


def test_an_estimate_file_is_used_only_for_the_targets_own_estimate(tmp_path):
    """Another runtime's or batch's estimate answers another question, and one made by another
    estimator (an older model or other constants) is stale: neither stands in for the target's."""
    import json

    make_estimate(tmp_path, "a100", runtime="cudagraph", batch=1)
    make_estimate(tmp_path, "a100", runtime="tensorrt", batch=64)
    with pytest.raises(DeployvitError, match="no latency table for space test on a100"):
        pick([("shipped", tmp_path)], q(device="a100"), CPU)  # wants tensorrt b1
    stale = make_estimate(tmp_path, "a100", runtime="tensorrt", batch=1)
    data = json.loads(stale.read_text())
    data["metadata"]["estimator"]["model_version"] = "deployvit.gpu_estimate/1"
    stale.write_text(json.dumps(data))
    with pytest.raises(DeployvitError, match="no latency table"):
        pick([("shipped", tmp_path)], q(device="a100"), CPU)
    fresh = make_estimate(tmp_path, "a100", runtime="tensorrt", batch=1)
    assert pick([("shipped", tmp_path)], q(device="a100"), CPU) == fresh == stale


def test_cpu_machine_targets_the_default_target_but_keeps_the_users_own_cpu_table(tmp_path):
    shipped, home = tmp_path / "shipped", tmp_path / "home"
    make_table(shipped, "cpu", "eager", "fp32", device_type="cpu", device_name=cpu_name())
    l4 = make_estimate(shipped, "l4", batch=64)
    assert pick([("shipped", shipped)], q(), CPU) == l4  # the shipped CPU table describes the CI machine
    mine = make_table(home, "cpu", "onnxruntime", "fp32", device_type="cpu", device_name=cpu_name())
    assert pick([("home", home), ("shipped", shipped)], q(), CPU) == mine  # measured here by the user


def test_no_table_on_a_catalogue_gpu_builds_its_estimate_on_demand_and_caches_it(tmp_path):
    """Any catalogue GPU x space x runtime x precision x batch: built in memory, cached under
    $DEPLOYVIT_HOME, and a cache hit is exactly the table the estimator builds."""
    from deployvit.latency.estimate import estimate_table

    space = get_space("vit-small")
    query = TableQuery(space.name, space.hash(), device="orin-nx", precision="bf16", batch_size=8)
    resolved = resolve_table(query, machine=CPU, space=space)
    built = estimate_table(space, "orin-nx", "tensorrt", "bf16", 8)
    assert resolved.path.is_relative_to(deployvit_home() / "cache" / "estimates")
    assert resolved.table.to_dict() == built.to_dict() and resolved.table.is_estimate
    assert resolved.line().startswith(f"ESTIMATED latency table: {resolved.path} [ESTIMATE for")
    assert "built on demand" in resolved.line() and resolved.default_target is None  # --device was given
    again = resolve_table(query, machine=CPU, space=space)  # from the cache file
    assert again.path == resolved.path and again.table.to_dict() == built.to_dict()
    default = resolve_table(TableQuery(space.name, space.hash()), machine=CPU, space=space)
    meta = default.table.metadata
    assert (meta["device_label"], meta["runtime"], meta["precision"], meta["batch_size"]) == ("l4", "tensorrt", "fp16", 64)
    assert default.default_target.startswith("target: l4, the default target on a machine without a GPU, tensorrt fp16 batch 64")
    assert default.header() == [default.default_target, default.line()]


def test_the_cache_key_changes_with_every_input_so_a_stale_cache_is_never_read(tmp_path, monkeypatch):
    from dataclasses import replace

    from deployvit.latency import ondemand
    from deployvit.latency.gpus import load_catalogue

    gpu, space = load_catalogue().get("l4"), get_space("test")
    base = ondemand.cache_key(space, gpu, "tensorrt", "fp16", 64)
    assert base == ondemand.cache_key(space, gpu, "tensorrt", "fp16", 64)
    others = [ondemand.cache_key(space, gpu, "cudagraph", "fp16", 64), ondemand.cache_key(space, gpu, "tensorrt", "fp16", 1),
              ondemand.cache_key(space.with_overrides(img_size=48), gpu, "tensorrt", "fp16", 64),
              ondemand.cache_key(space, replace(gpu, memory_bandwidth_gbs=gpu.memory_bandwidth_gbs * 2), "tensorrt", "fp16", 64)]
    monkeypatch.setattr(ondemand, "_estimator_fingerprint", lambda: "another estimator")
    others.append(ondemand.cache_key(space, gpu, "tensorrt", "fp16", 64))
    assert base not in others and len(set(others)) == len(others)


def test_a_damaged_cache_file_is_rebuilt_and_an_unwritable_cache_stays_in_memory(tmp_path, monkeypatch):
    from deployvit.latency.estimate import estimate_table
    from deployvit.latency.ondemand import estimate_on_demand

    space = get_space("test")
    table, note = estimate_on_demand(space, "t4", "tensorrt", "fp16", 1, tmp_path / "cache")
    table.path.write_text("{ not json")
    again, note = estimate_on_demand(space, "t4", "tensorrt", "fp16", 1, tmp_path / "cache")
    assert note is None and again.to_dict() == estimate_table(space, "t4", "tensorrt", "fp16", 1).to_dict()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    table, note = estimate_on_demand(space, "t4", "tensorrt", "fp16", 1, blocker / "cache")
    assert table.path is None and "not cached" in note and table.is_estimate


def test_an_unknown_gpu_label_lists_the_catalogue(tmp_path):
    with pytest.raises(DeployvitError) as info:
        resolve_table(q(device="mygpu"), machine=CPU, space=SPACE)
    line = str(info.value)
    assert "\n" not in line and "mygpu" in line and "l4" in line and "orin" in line and "deployvit profile --device mygpu" in line


def test_label_of_another_gpu_and_nothing_fits_says_what_and_where(tmp_path):
    make_table(tmp_path, "a100", "cudagraph")
    with pytest.raises(DeployvitError) as info:  # no file fits (resolve_table would build the estimate)
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



def test_on_a_gpu_machine_the_default_target_is_that_gpu(tmp_path):
    """No --device on a GPU machine: its measured tables, else its estimate at the default target's
    runtime, precision and batch; a GPU the catalogue lacks gets the profile command for it."""
    resolved = resolve_table(q(), machine=A100, space=SPACE)
    meta = resolved.table.metadata
    assert (meta["device_label"], meta["runtime"], meta["precision"], meta["batch_size"]) == ("a100", "tensorrt", "fp16", 64)
    assert resolved.default_target == ("target: this machine's GPU (NVIDIA A100-SXM4-80GB), tensorrt fp16 batch 64 "
                                       "(change it with --device, --runtime, --precision, --batch-size)")
    mine = make_table(tmp_path, "a100", "cudagraph", batch=1)
    picked = choose(q(), scan_tables([("home", tmp_path)])[0], A100)
    assert picked.path == mine and picked.default_target is None  # measured here: the table decides, not the default
    with pytest.raises(DeployvitError) as info:
        resolve_table(q(), machine=Machine("cuda", "NVIDIA RTX A2000 12GB"), space=SPACE)
    line = str(info.value)
    assert "`deployvit profile --device rtx-a2000-12gb --space test --runtime cudagraph --precision fp16 --batch-size 64`" in line
    assert "is no GPU of the estimator's catalogue" in line
