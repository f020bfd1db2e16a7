"""Estimated latency tables: the GPU catalogue, the per-kernel model, `profile --estimate`, and the
shipped estimated tables (they must regenerate from the code and carry the fit's held-out errors)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from deployvit.errors import DeployvitError
from deployvit.latency import estimate
from deployvit.latency.estimate import Constants, estimate_part_us, estimate_table, fitted
from deployvit.latency.gpus import NUMBERS, catalogue_path, load_catalogue, parse_catalogue
from deployvit.latency.table import LatencyTable, shipped_tables_dir, table_filename
from deployvit.parts import BlockPart
from deployvit.spaces import get_space

from tests.conftest import assert_one_line_error, run_cli

REQUIRED_GPUS = ("a100", "a100-40gb", "h100", "h100-pcie", "h200", "l4", "l40s", "t4", "a10", "v100",
                 "rtx3090", "rtx4090", "rtx5090", "rtx-pro-6000")
SHIPPED = [(label, space, runtime, batch) for label in ("h100", "a100") for space in ("autoformer-tiny",)
           for runtime in ("cudagraph", "tensorrt") for batch in (1, 64)] + [("h100", "test", rt, b) for rt in ("cudagraph", "tensorrt") for b in (1, 64)]
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "estimate_accuracy.json"


def raw_catalogue() -> dict:
    return json.loads(catalogue_path().read_text())


# --- catalogue -------------------------------------------------------------------------------------


def test_catalogue_has_every_required_gpu_with_every_field_and_a_source():
    cat = load_catalogue()
    for key in REQUIRED_GPUS:
        gpu = cat.get(key)
        assert gpu.source.strip() and gpu.device_names
        assert gpu.sm_count > 0 and gpu.memory_bandwidth_gbs > 0 and gpu.fp16_tensor_tflops > gpu.fp32_tflops
    assert cat.get("NVIDIA H100 80GB HBM3").key == "h100"  # what torch.cuda.get_device_name reports
    assert cat.get("H100-SXM").key == "h100"  # aliases, case-insensitive
    assert cat.match_device("NVIDIA A100-SXM4-40GB").key == "a100-40gb"
    assert cat.match_device("NVIDIA A10").key == "a10" and cat.match_device("Some other GPU") is None


@pytest.mark.parametrize("field", [*NUMBERS, "name", "source", "device_names", "segment"])
def test_a_missing_catalogue_field_is_a_one_line_error_naming_it(field):
    data = raw_catalogue()
    del data["gpus"]["l4"][field]
    with pytest.raises(DeployvitError, match=f"'l4'.*{field}") as exc:
        parse_catalogue(data, "cat.json")
    assert "\n" not in str(exc.value)


def test_catalogue_rejects_bad_values_and_duplicate_names():
    data = raw_catalogue()
    data["gpus"]["t4"]["fp32_tflops"] = -1
    with pytest.raises(DeployvitError, match="fp32_tflops"):
        parse_catalogue(data, "x")
    data = raw_catalogue()
    data["gpus"]["t4"]["fp16_tensor_tflops"] = None  # only bf16/tf32 may be null (mode not supported)
    with pytest.raises(DeployvitError, match="fp16_tensor_tflops"):
        parse_catalogue(data, "x")
    data = raw_catalogue()
    data["gpus"]["t4"]["aliases"] = ["h100-sxm"]
    with pytest.raises(DeployvitError, match="both"):
        parse_catalogue(data, "x")


def test_cli_reports_a_broken_catalogue_in_one_line(tmp_path, monkeypatch):
    data = raw_catalogue()
    del data["gpus"]["h100"]["memory_bandwidth_gbs"]
    bad = tmp_path / "gpu_catalogue.json"
    bad.write_text(json.dumps(data))
    monkeypatch.setattr("deployvit.latency.gpus.catalogue_path", lambda: bad)
    estimate_cache = __import__("deployvit.latency.gpus", fromlist=["_shipped"])._shipped
    estimate_cache.cache_clear()
    try:
        result = run_cli("profile", "--device", "h100", "--estimate", "--space", "test", "--runtime", "cudagraph", "--batch-size", "1",
                         "--out", str(tmp_path / "t.json"))
    finally:
        estimate_cache.cache_clear()
    assert_one_line_error(result, "memory_bandwidth_gbs", "'h100'")
    assert not (tmp_path / "t.json").exists()


# --- the model -------------------------------------------------------------------------------------


def block(embed=192, heads=3, hidden=768, tokens=197):
    return BlockPart(tokens, embed, heads, 64, hidden)


@pytest.mark.parametrize("runtime", estimate.ESTIMATED_RUNTIMES)
@pytest.mark.parametrize("gpu", ["h100", "a100", "t4", "rtx4090"])
def test_estimates_grow_with_batch_and_width(runtime, gpu):
    g = load_catalogue().get(gpu)
    by_batch = [estimate_part_us(block(), g, b, "fp16", runtime) for b in (1, 2, 8, 32, 64, 256)]
    assert all(a <= b for a, b in zip(by_batch, by_batch[1:])) and by_batch[-1] > by_batch[0]
    by_width = [estimate_part_us(block(e, e // 64, 4 * e), g, 64, "fp16", runtime) for e in (192, 384, 768, 1024)]
    assert all(a < b for a, b in zip(by_width, by_width[1:]))
    assert estimate_part_us(block(tokens=577), g, 64, "fp16", runtime) > estimate_part_us(block(), g, 64, "fp16", runtime)


def test_eager_is_slower_than_cudagraph_at_batch_1_and_tensorrt_is_fastest():
    g = load_catalogue().get("h100")
    part = block()
    eager, graph, trt = (estimate_part_us(part, g, 1, "fp16", rt) for rt in ("eager", "cudagraph", "tensorrt"))
    assert eager > 2 * graph  # launch bound (DESIGN.md section 4: ~4 ms eager vs ~0.45 ms graph for DeiT-Tiny)
    assert trt < graph


def test_faster_gpus_and_lower_precision_are_faster_at_large_batch():
    cat = load_catalogue()
    part = block(384, 6, 1536)
    t = {k: estimate_part_us(part, cat.get(k), 64, "fp16", "tensorrt") for k in ("t4", "a100", "h100", "h200")}
    assert t["t4"] > t["a100"] > t["h100"] >= t["h200"]
    assert estimate_part_us(part, cat.get("a100"), 64, "fp32", "cudagraph") > estimate_part_us(part, cat.get("a100"), 64, "fp16", "cudagraph")


def test_gemm_wave_quantisation_makes_one_more_tile_row_cost_a_wave():
    from deployvit.latency.estimate import gemm_utilisation

    full = gemm_utilisation(128 * 132, 128, 1, 132)  # exactly one wave of 128x128 tiles on 132 SMs
    assert full == pytest.approx(1.0)
    assert gemm_utilisation(128 * 132 + 1, 128, 1, 132) < 0.8 * full


def test_runtimes_the_model_does_not_cover_are_refused():
    g = load_catalogue().get("h100")
    with pytest.raises(DeployvitError, match="onnxruntime"):
        estimate.check_request("onnxruntime", "fp16", 1, g)
    with pytest.raises(DeployvitError, match="bf16"):
        estimate.check_request("eager", "bf16", 1, load_catalogue().get("t4"))


# --- profile --estimate ----------------------------------------------------------------------------


def test_profile_estimate_writes_a_labelled_table_that_predicts_every_arch(tmp_path):
    out = tmp_path / "t-b{batch}.json"
    result = run_cli("profile", "--device", "h100-sxm", "--estimate", "--space", "test", "--runtime", "tensorrt",
                     "--batch-size", "1", "--batch-size", "64", "--out", str(out))
    assert result.code == 0, result.err
    assert "ESTIMATE" in result.out
    space = get_space("test")
    rng = np.random.default_rng(0)
    for b in (1, 64):
        table = LatencyTable.load(tmp_path / f"t-b{b}.json", warn=False)
        assert table.is_estimate and table.metadata["device_label"] == "h100" and table.metadata["device_type"] == "cuda"
        assert table.metadata["device_name"] == load_catalogue().get("h100").name
        assert table.metadata["estimator"]["model_version"] == estimate.MODEL_VERSION
        assert table.metadata["gpu"]["memory_bandwidth_gbs"] == 3350
        assert "ESTIMATE" in table.describe() and "H100" in table.describe()
        assert all("measured on" not in m for m in table.machine_mismatches())
        for _ in range(20):
            assert table.predict(space.sample(rng)) > 0


def test_multi_stage_spaces_are_estimated_with_their_reductions_marked_unvalidated():
    space = get_space("test-resnas")
    table = estimate_table(space, load_catalogue().get("l4"), "eager", "fp16", 8)
    assert any(k.startswith("reduce:") for k in table.entries)
    assert "never validated" in table.validation["this_table"]["note"]
    rng = np.random.default_rng(2)
    for _ in range(10):
        assert table.predict(space.sample(rng)) > 0


def test_a_table_without_source_is_measured():
    data = json.loads((shipped_tables_dir() / "cpu" / "test-eager-fp32-b1.json").read_text())
    assert "source" not in data["metadata"]
    assert not LatencyTable.from_dict(data).is_estimate
    data["metadata"]["source"] = "guessed"
    with pytest.raises(DeployvitError, match="source"):
        LatencyTable.from_dict(data)


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--device", "b200"], ["unknown GPU", "h100", "rtx4090", "t4"]),
        (["--device", "h100", "--runtime", "onnxruntime"], ["onnxruntime"]),
        (["--device", "h100", "--runtime", "tvm"], ["unknown runtime"]),
        (["--device", "t4", "--precision", "bf16"], ["bf16"]),
    ],
)
def test_profile_estimate_bad_input_is_one_line_exit_2(tmp_path, args, needles):
    base = {"--device": "h100", "--runtime": "cudagraph", "--precision": "fp16"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    flat = [x for kv in base.items() for x in kv]
    result = run_cli("profile", "--estimate", "--space", "test", "--batch-size", "1", "--out", str(tmp_path / "t.json"), *flat)
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "t.json").exists()


# --- shipped tables --------------------------------------------------------------------------------


@pytest.mark.parametrize("label, space, runtime, batch", SHIPPED)
def test_shipped_estimates_regenerate_identically_from_the_code(label, space, runtime, batch):
    path = shipped_tables_dir() / label / table_filename(space, runtime, "fp16", batch, estimated=True)
    shipped = json.loads(path.read_text())
    fresh = estimate_table(get_space(space), load_catalogue().get(label), runtime, "fp16", batch).to_dict()
    assert json.loads(json.dumps(fresh)) == shipped, f"{path} differs from the code: regenerate it (latency_tables/README.md)"
    table = LatencyTable.load(path, warn=False)
    rng = np.random.default_rng(1)
    for _ in range(30):
        assert table.predict(get_space(space).sample(rng)) > 0


def test_tables_carry_the_held_out_errors_the_fit_reported():
    results = json.loads(RESULTS.read_text())
    assert results["constants"] == pytest.approx(fitted().constants.to_dict(), rel=1e-5)
    for label, space, runtime, batch in SHIPPED:
        table = LatencyTable.load(shipped_tables_dir() / label / table_filename(space, runtime, "fp16", batch, estimated=True), warn=False)
        cell = f"{estimate.regime(batch)}/{runtime}"
        v = table.validation
        assert v["leave_one_gpu_out"] == results["validation"]["leave_one_gpu_out"]
        assert v["leave_one_regime_out"] == results["validation"]["leave_one_regime_out"]
        assert v["this_table"]["leave_one_gpu_out"] == results["validation"]["leave_one_gpu_out"].get(cell)
        if runtime == "cudagraph":  # no published CUDA-graph measurements exist
            assert v["this_table"]["leave_one_gpu_out"] is None and v["this_table"]["status"].startswith("UNVALIDATED")


def test_constants_file_is_checked():
    good = json.loads(estimate.constants_path().read_text())
    bad = copy.deepcopy(good)
    del bad["constants"]["gap_us"]
    with pytest.raises(DeployvitError, match="gap_us"):
        estimate.parse_fitted(bad, "c.json")
    assert set(good["constants"]) == set(Constants.names())
    assert "benchmarks/estimate_accuracy.py" in good["command"]
