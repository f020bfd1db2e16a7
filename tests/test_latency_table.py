"""LatencyTable: prediction arithmetic, round trip, compatibility warnings, corrupt files, devices."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from deployvit.errors import DeployvitError
from deployvit import devices
from deployvit.latency.table import LatencyTable, LatencyTableWarning, shipped_tables_dir, table_filename
from deployvit.devices import cpu_name
from deployvit.parts import arch_parts, space_parts
from deployvit.spaces import get_space

from tests.conftest import assert_one_line_error, run_cli


def make_table(space_name: str = "test", scale: float = 0.5, bias: float = 3.0, **meta) -> LatencyTable:
    """A table whose entries are hand-set numbers (10 us per block, 1 us stem/head), for arithmetic tests."""
    import torch

    space = get_space(space_name)
    entries = {p.key: {"median_us": 10.0 if p.key.startswith("block") else 1.0, "cv": 0.0} for p in space_parts(space)}
    metadata = {
        "device_label": "cpu", "device_type": "cpu", "device_name": cpu_name(), "runtime": "eager",
        "runtime_version": torch.__version__, "precision": "fp32", "batch_size": 1, "img_size": space.img_size,
        "space": space.name, "space_hash": space.hash(), "torch": torch.__version__,
    }
    metadata.update(meta)
    return LatencyTable(metadata, entries, scale, bias)


def test_predict_is_affine_in_the_part_sum():
    table = make_table()
    arch = get_space("test").sample(np.random.default_rng(0))
    expected_sum = 10.0 * arch.depth + 1.0 + 1.0
    assert table.sum_us(arch) == pytest.approx(expected_sum)
    assert table.predict(arch) == pytest.approx(0.5 * expected_sum + 3.0)
    assert table.part_us(arch_parts(arch)[1]) == 10.0


def test_round_trip(tmp_path):
    table = make_table()
    table.validation = {"calibrated": {"mape": 1.0}}
    path = tmp_path / "t.json"
    table.save(path)
    loaded = LatencyTable.load(path)
    assert (loaded.scale, loaded.bias, loaded.entries, loaded.metadata) == (0.5, 3.0, table.entries, table.metadata)
    assert loaded.validation == table.validation
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


def test_missing_part_is_a_clear_error():
    table = make_table("test")
    arch = get_space("test-resnas").sample(np.random.default_rng(0))
    with pytest.raises(DeployvitError, match="lacks"):
        table.predict(arch)


def test_space_mismatch_warns():
    table = make_table("test", space="other-space")
    arch = get_space("test").sample(np.random.default_rng(1))
    with pytest.warns(LatencyTableWarning, match="profiled for 'other-space'"):
        table.predict(arch)


def test_machine_mismatch_warns_on_load(tmp_path):
    path = tmp_path / "gpu.json"
    make_table(device_type="cuda", device_name="NVIDIA H100 80GB HBM3", device_label="h100", torch="1.0").save(path)
    with pytest.warns(LatencyTableWarning) as record:
        LatencyTable.load(path)
    text = " ".join(str(w.message) for w in record)
    assert "H100" in text and "torch 1.0" in text


def test_matching_machine_loads_silently(tmp_path):
    path = tmp_path / "cpu.json"
    make_table().save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LatencyTableWarning)
        LatencyTable.load(path)


def _corrupt(data: dict, how: str):
    if how == "no-format":
        data.pop("format")
    elif how == "no-metadata-key":
        data["metadata"].pop("batch_size")
    elif how == "batch-not-int":
        data["metadata"]["batch_size"] = "1"
    elif how == "negative-entry":
        next(iter(data["entries"].values()))["median_us"] = -4.0
    elif how == "empty-entries":
        data["entries"] = {}
    elif how == "nan-scale":
        data["calibration"]["scale"] = float("nan")
    elif how == "no-calibration":
        data.pop("calibration")
    elif how == "zero-batch":
        data["metadata"]["batch_size"] = 0
    elif how == "negative-scale":
        data["calibration"]["scale"] = -1.0
    elif how == "settings-not-object":
        data["metadata"]["settings"] = "x"
    elif how == "validation-stats-not-object":
        data["validation"] = {"calibrated": [1]}
    return data


@pytest.mark.parametrize(
    "how",
    ["no-format", "no-metadata-key", "batch-not-int", "negative-entry", "empty-entries", "nan-scale", "no-calibration",
     "zero-batch", "negative-scale", "settings-not-object", "validation-stats-not-object"],
)
def test_malformed_table_is_rejected(tmp_path, how):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_corrupt(make_table().to_dict(), how)))
    with pytest.raises(DeployvitError, match="malformed latency table"):
        LatencyTable.load(path, warn=False)


@pytest.mark.parametrize("text", ["", "{not json", '{"format": "deployvit.latency_table/1", "metadata": {'])
def test_corrupt_file_cli_exit_2(tmp_path, text):
    arch_path = tmp_path / "a.json"
    get_space("test").sample(np.random.default_rng(0)).save(arch_path)
    table = tmp_path / "t.json"
    table.write_text(text)
    assert_one_line_error(run_cli("latency", str(arch_path), "--table", str(table)), "latency table")


def test_latency_cli_predicts_and_warns(tmp_path):
    arch = get_space("test").sample(np.random.default_rng(0))
    arch.save(tmp_path / "a.json")
    table = make_table(device_type="cuda", device_name="NVIDIA H100", device_label="h100")
    table.save(tmp_path / "t.json")
    result = run_cli("latency", str(tmp_path / "a.json"), "--table", str(tmp_path / "t.json"))
    assert result.code == 0, result.err
    assert f"{table.predict(arch) / 1e3:.3f} ms" in result.out
    assert "warning" in result.err and "H100" in result.err


def test_table_filename():
    assert table_filename("autoformer-tiny", "cudagraph", "fp16", 64) == "autoformer-tiny-cudagraph-fp16-b64.json"


@pytest.mark.parametrize("path", sorted(shipped_tables_dir().rglob("*.json")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_tables_load_and_predict(path):
    """Every shipped table is of its preset space as it is today, predicts its archs, and carries its
    validation: on held-out archs for a measurement, on held-out published data for an estimate."""
    table = LatencyTable.load(path, warn=False)
    space = get_space(table.metadata["space"])
    assert table.metadata["space_hash"] == space.hash()
    rng = np.random.default_rng(123)
    for _ in range(5):
        assert table.predict(space.sample(rng)) > 0
    if table.is_estimate:
        assert path.name.endswith("-estimated.json") and "status" in table.validation["this_table"]
    else:
        stats = table.validation["calibrated"]
        assert stats["n"] >= 2 and 0 <= stats["within_10"] <= 1


# --- device labels ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "label,name,ok",
    [
        ("a100", "NVIDIA A100-SXM4-80GB", True),
        ("a10", "NVIDIA A100-SXM4-80GB", False),
        ("a10", "NVIDIA A10G", True),
        ("h100", "NVIDIA H100 80GB HBM3", True),
        ("h100", "NVIDIA H200", False),
        ("l4", "NVIDIA L40S", False),
        ("rtx4090", "NVIDIA GeForce RTX 4090", True),
        ("orin", "Orin", True),
    ],
)
def test_label_matches(label, name, ok):
    assert devices.label_matches(label, name) is ok


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU-only behaviour")
def test_check_label_on_cpu():
    assert devices.check_label("cpu") == ("cpu", cpu_name())
    assert devices.check_label("my-box")[0] == "cpu"  # free-form labels are names, not checked
    with pytest.raises(DeployvitError, match="does not match"):
        devices.check_label("h100")
    assert devices.check_label("h100", force=True)[0] == "cpu"
    with pytest.raises(DeployvitError, match="lower-case"):
        devices.check_label("H100 SXM!")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU-only refusal")
def test_measure_gpu_table_without_gpu(tmp_path):
    get_space("test").sample(np.random.default_rng(0)).save(tmp_path / "a.json")
    make_table(device_type="cuda", device_name="NVIDIA H100", device_label="h100").save(tmp_path / "t.json")
    result = run_cli("latency", str(tmp_path / "a.json"), "--table", str(tmp_path / "t.json"), "--measure")
    assert result.code == 2 and "needs a CUDA GPU" in result.err and "Traceback" not in result.err
