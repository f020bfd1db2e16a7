"""Estimated latency tables: the GPU catalogue, the per-kernel model (host and device timelines),
the public `estimate_arch_us` API, `profile --estimate`, and the shipped estimated tables (they must
regenerate from the code and carry the fit's held-out errors). Structure and invariants only: no
test here checks a latency against a wall-clock number."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from deployvit.arch import Arch, Layer, Stage
from deployvit.errors import DeployvitError
from deployvit.latency import estimate
from deployvit.latency.estimate import Constants, estimate_arch_us, estimate_part_us, estimate_table, fitted
from deployvit.latency.gpus import FLAGS, NUMBERS, catalogue_path, load_catalogue, parse_catalogue
from deployvit.latency.kernels import Flavour
from deployvit.latency.table import LatencyTable, shipped_tables_dir, table_filename
from deployvit.parts import BlockPart
from deployvit.spaces import get_space

from tests.conftest import assert_one_line_error, run_cli

REQUIRED_GPUS = ("a100", "a100-40gb", "h100", "h100-pcie", "h200", "l4", "l40s", "t4", "a10", "a10g", "v100",
                 "rtx3090", "rtx4090", "rtx5090", "rtx-pro-6000", "b200", "orin", "orin-nx")
SHIPPED = [(label, space, runtime, batch) for label in ("h100", "a100") for space in ("autoformer-tiny",)
           for runtime in ("cudagraph", "tensorrt") for batch in (1, 64)] + [("h100", "test", rt, b) for rt in ("cudagraph", "tensorrt") for b in (1, 64)]
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "estimate_accuracy.json"


def raw_catalogue() -> dict:
    return json.loads(catalogue_path().read_text())


def vit(embed: int, heads: int, depth: int = 12, img: int = 224, patch: int = 16) -> Arch:
    """A plain ViT/DeiT as an Arch of no preset space (head dim 64, MLP ratio 4, 1000 classes)."""
    return Arch("vit", img, patch, 3, 1000, (Stage(embed, 64, tuple(Layer(heads, 4.0) for _ in range(depth))),))


DEIT = {"DeiT-Ti": (192, 3), "DeiT-S": (384, 6), "DeiT-B": (768, 12)}


# --- catalogue -------------------------------------------------------------------------------------


def test_catalogue_has_every_required_gpu_with_every_field_and_a_source():
    cat = load_catalogue()
    for key in REQUIRED_GPUS:
        gpu = cat.get(key)
        assert gpu.source.strip() and (gpu.device_names or gpu.segment == "embedded")
        assert gpu.sm_count > 0 and gpu.memory_bandwidth_gbs > 0 and gpu.fp16_tensor_tflops > gpu.fp32_tflops
        assert gpu.fp16_acc16_tensor_tflops >= gpu.fp16_tensor_tflops and gpu.tdp_w > 0 and gpu.host_launch_scale > 0
    assert cat.get("NVIDIA H100 80GB HBM3").key == "h100"  # what torch.cuda.get_device_name reports
    assert cat.get("Tesla V100-SXM2-16GB").key == "v100"
    assert cat.get("H100-SXM").key == "h100"  # aliases, case-insensitive
    assert cat.get("NVIDIA GeForce RTX 4090").key == cat.get("RTX 4090").key == cat.get("rtx_4090").key == "rtx4090"
    assert cat.get(cat.get("l4")) is cat.get("l4")  # a GPU is its own lookup
    assert cat.match_device("NVIDIA A100-SXM4-40GB").key == "a100-40gb"
    assert cat.match_device("NVIDIA A10").key == "a10" and cat.match_device("Some other GPU") is None


def test_geforce_entries_record_both_accumulate_rates_and_datacenter_ones_run_them_equal():
    cat = load_catalogue()
    for key in ("rtx3090", "rtx4090", "rtx5090", "l40"):
        g = cat.get(key)
        assert g.fp16_acc16_tensor_tflops == pytest.approx(2 * g.fp16_tensor_tflops, rel=0.02), key
    for key in ("a100", "h100", "v100", "t4", "l4", "orin"):
        g = cat.get(key)
        assert g.fp16_acc16_tensor_tflops == g.fp16_tensor_tflops, key


def test_jetson_orin_entries_carry_their_datasheet_facts_and_the_orin_label():
    cat = load_catalogue()
    agx, nx = cat.get("orin"), cat.get("orin-nx")
    assert cat.get("Jetson AGX Orin") is agx and cat.get("jetson-orin-nx-16gb") is nx
    assert (agx.sm_count, agx.boost_clock_mhz, agx.memory_bandwidth_gbs) == (16, 1300, 204.8)
    assert (nx.sm_count, nx.boost_clock_mhz, nx.memory_bandwidth_gbs) == (8, 918, 102.4)
    for g in (agx, nx, cat.get("orin-32gb"), cat.get("orin-nano")):
        assert g.segment == "embedded" and g.device_names == () and "Jetson" in g.source
        assert g.host_launch_scale > 1 and "Cortex-A78AE" in g.host_cpu
        # dense FP16 = SMs x 2048 FLOP/clk x clock; GPU INT8 sparse TOPS = 4x that (170 on the AGX Orin 64GB)
        assert g.fp16_tensor_tflops == pytest.approx(g.sm_count * 2048 * g.boost_clock_mhz / 1e6, rel=0.01)
    assert 4 * agx.fp16_tensor_tflops == pytest.approx(170, rel=0.01)
    assert cat.match_device("Orin") is None  # every Orin module reports "Orin": chosen by --device, never guessed


@pytest.mark.parametrize("field", [*NUMBERS, *FLAGS, "name", "source", "device_names", "segment", "host_cpu"])
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
@pytest.mark.parametrize("gpu", ["h100", "a100", "t4", "rtx4090", "v100", "orin"])
def test_estimates_never_shrink_with_batch_or_width(runtime, gpu):
    g = load_catalogue().get(gpu)
    by_batch = [estimate_part_us(block(), g, b, "fp16", runtime) for b in (1, 2, 8, 32, 64, 256, 2048)]
    assert all(a <= b for a, b in zip(by_batch, by_batch[1:])) and by_batch[-1] > by_batch[0]
    by_width = [estimate_part_us(block(e, e // 64, 4 * e), g, 64, "fp16", runtime) for e in (192, 384, 768, 1024)]
    assert all(a <= b for a, b in zip(by_width, by_width[1:])) and by_width[-1] > by_width[0]
    big = [estimate_part_us(block(e, e // 64, 4 * e), g, 256, "fp16", runtime) for e in (384, 768, 1280)]
    assert all(a < b for a, b in zip(big, big[1:]))  # device bound: strictly
    assert estimate_part_us(block(tokens=577), g, 64, "fp16", runtime) >= estimate_part_us(block(), g, 64, "fp16", runtime)


@pytest.mark.parametrize("runtime", estimate.ESTIMATED_RUNTIMES)
def test_whole_models_up_to_vit_h_are_sane_at_every_batch(runtime):
    """DeiT-Ti .. ViT-H/14 (1280 wide, 32 deep, 16 heads, 257 tokens) at batch 1..256: finite,
    positive, never faster with more images or a bigger model, and per-image cost falling with batch."""
    models = [vit(192, 3), vit(768, 12), vit(1024, 16, depth=24), vit(1280, 16, depth=32, patch=14)]
    for gpu in ("h100", "v100", "orin"):
        grid = [[estimate_arch_us(m, gpu, runtime, "fp16", b) for b in (1, 4, 16, 64, 256)] for m in models]
        for row in grid:
            assert all(np.isfinite(row)) and row[0] > 0
            assert all(a <= b for a, b in zip(row, row[1:]))
            assert row[-1] / 256 < row[0]  # batching amortises per-call and per-kernel costs
        for col in zip(*grid):
            assert all(a <= b for a, b in zip(col, col[1:]))
        assert grid[-1][-1] > 10 * grid[0][-1]  # ViT-H is ~100x DeiT-Ti's FLOPs: it must show at batch 256


def test_host_bound_regimes_eager_and_compile_at_batch_1_cudagraph_is_not():
    h100 = load_catalogue().get("h100")
    t = {rt: {n: estimate_arch_us(vit(*d), h100, rt, "fp16", 1) for n, d in DEIT.items()} for rt in estimate.ESTIMATED_RUNTIMES}
    for name in DEIT:  # launch bound (docs/DESIGN.md section 4: ~4 ms eager vs ~0.45 ms graph for DeiT-Tiny)
        assert t["eager"][name] > 2 * t["cudagraph"][name]
        assert t["cudagraph"][name] < t["compile"][name] < t["eager"][name]  # compile still launches from Python, fewer, cheaper
    # host bound: the width hardly matters at batch 1 in eager, it does in a CUDA graph
    assert t["eager"]["DeiT-B"] / t["eager"]["DeiT-Ti"] < 1.2 and t["cudagraph"]["DeiT-B"] > t["cudagraph"]["DeiT-Ti"]
    c = fitted().constants
    n_eager = 12 * 10  # eager kernels per DeiT block (kernels.py) x blocks
    assert t["eager"]["DeiT-Ti"] >= n_eager * c.eager_launch_us
    assert estimate.call_overhead_us(h100, "compile") > 0 and estimate.call_overhead_us(h100, "cudagraph") == 0


def test_an_integrated_gpu_pays_its_slower_host_and_its_notes_say_so():
    cat = load_catalogue()
    orin, h100 = cat.get("orin"), cat.get("h100")
    assert estimate_arch_us(vit(192, 3), orin, "eager", "fp16", 1) > 1.5 * estimate_arch_us(vit(192, 3), h100, "eager", "fp16", 1)
    notes = estimate.gpu_notes(orin, "eager", fitted())
    assert any("UNVALIDATED" in n and "Cortex-A78AE" in n for n in notes)
    assert any("no published measurement" in n for n in notes)
    assert any("power limited" in n for n in estimate.gpu_notes(cat.get("t4"), "tensorrt", fitted()))


def test_fp32_runs_on_cuda_cores_without_tf32_and_tensorrt_fp32_has_no_fused_attention():
    cat = load_catalogue()
    v100, a100 = cat.get("v100"), cat.get("a100")
    for rt in estimate.ESTIMATED_RUNTIMES:
        fl = Flavour.for_runtime(rt, "fp32")
        assert not fl.tf32 and not estimate.tensor_cores(a100, "fp32", fl)
        assert estimate.peak_tflops(v100, "fp32", fl) == v100.fp32_tflops
    assert Flavour.for_runtime("tensorrt", "fp32").attention == "explicit"
    assert Flavour.for_runtime("tensorrt", "fp16").attention == "fused"
    deit_b = vit(768, 12)
    assert estimate_arch_us(deit_b, v100, "tensorrt", "fp32", 8) > 3 * estimate_arch_us(deit_b, v100, "tensorrt", "fp16", 8)


def test_faster_gpus_and_lower_precision_are_faster_at_large_batch():
    cat = load_catalogue()
    part = block(384, 6, 1536)
    t = {k: estimate_part_us(part, cat.get(k), 64, "fp16", "tensorrt") for k in ("orin-nx", "orin", "t4", "a100", "h100", "h200", "b200")}
    assert t["orin-nx"] > t["orin"] > t["t4"] > t["a100"] > t["h100"] >= t["h200"] > t["b200"]
    assert estimate_part_us(part, cat.get("a100"), 64, "fp32", "cudagraph") > estimate_part_us(part, cat.get("a100"), 64, "fp16", "cudagraph")


def test_gemm_wave_quantisation_makes_one_more_tile_row_cost_a_wave():
    from deployvit.latency.estimate import gemm_utilisation

    full = gemm_utilisation(128 * 132, 128, 1, 132)  # exactly one wave of 128x128 tiles on 132 SMs
    assert full == pytest.approx(1.0)
    assert gemm_utilisation(128 * 132 + 1, 128, 1, 132) < 0.8 * full
    assert gemm_utilisation(197, 576, 1, 80, simt=True) > gemm_utilisation(197, 576, 1, 80)  # CUDA cores fill with smaller tiles


def test_geforce_reaches_more_of_its_fp32_accumulate_peak_through_the_pipe_ratio_not_a_fudge_factor():
    cat = load_catalogue()
    fl = Flavour.for_runtime("eager", "fp16")
    assert estimate.pipe_ratio(cat.get("rtx4090"), "fp16", fl) == pytest.approx(0.5, rel=0.01)
    assert estimate.pipe_ratio(cat.get("h100"), "fp16", fl) == 1.0
    forbidden = ("speedup", "fudge", "factor", "correction", "geforce", "boost", "scale")
    assert not [n for n in Constants.names() if any(f in n for f in forbidden)]


def test_a_table_predicts_exactly_what_estimate_arch_us_says():
    space = get_space("test")
    rng = np.random.default_rng(3)
    for runtime in estimate.ESTIMATED_RUNTIMES:
        table = estimate_table(space, "h100", runtime, "fp16", 4)
        for _ in range(5):
            arch = space.sample(rng)
            assert table.predict(arch) == pytest.approx(estimate_arch_us(arch, "h100", runtime, "fp16", 4), rel=1e-4, abs=0.01)


def test_estimate_arch_us_takes_catalogue_and_device_names_and_refuses_bad_requests():
    deit = vit(192, 3)
    by_key = estimate_arch_us(deit, "h100", "cudagraph", "fp16", 1)
    assert estimate_arch_us(deit, "NVIDIA H100 80GB HBM3", "cudagraph", "fp16", 1) == by_key
    assert estimate_arch_us(deit, "Tesla V100-SXM2-16GB", "tensorrt", "fp32", 8) > 0
    with pytest.raises(DeployvitError, match="unknown GPU 'mi300x'.*h100.*orin"):
        estimate_arch_us(deit, "mi300x", "eager", "fp16", 1)
    with pytest.raises(DeployvitError, match="onnxruntime"):
        estimate_arch_us(deit, "h100", "onnxruntime", "fp16", 1)
    with pytest.raises(DeployvitError, match="batch"):
        estimate_arch_us(deit, "h100", "eager", "fp16", 0)


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
        (["--device", "mi300x"], ["unknown GPU", "h100", "rtx4090", "t4", "orin"]),
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
        for held_out in estimate.HELD_OUT:
            assert v[held_out] == results["validation"][held_out]
            assert v["this_table"][held_out] == results["validation"][held_out].get(cell)
        status = v["this_table"]["status"]
        assert status.startswith("validated on") or status.startswith("UNVALIDATED")
        if runtime == "cudagraph" or (runtime == "compile" and batch < 64):  # no published data times these
            assert v["this_table"]["leave_one_gpu_out"] is None and status.startswith("UNVALIDATED")
        assert v["sanity_checks"] == results["validation"]["sanity_checks"]


def test_every_regime_of_every_runtime_is_labelled_validated_or_unvalidated():
    coverage = fitted().validation["coverage"]
    for runtime in estimate.ESTIMATED_RUNTIMES:
        for batch in (1, 8, 64):
            status = coverage[f"{estimate.regime(batch)}/{runtime}"]
            assert status.startswith("validated on") or status.startswith("UNVALIDATED"), status
            table = estimate_table(get_space("test"), "l4", runtime, "fp16", batch)
            assert table.validation["this_table"]["status"] == status
    assert coverage["b1/cudagraph"].startswith("UNVALIDATED") and coverage["b64+/eager"].startswith("validated")
    for key in ("leave_one_gpu_out", "leave_one_regime_out", "leave_gpu_and_runtime_out"):
        assert fitted().validation[key], key


def test_constants_file_is_checked():
    good = json.loads(estimate.constants_path().read_text())
    bad = copy.deepcopy(good)
    del bad["constants"]["kernel_cycles"]
    with pytest.raises(DeployvitError, match="kernel_cycles"):
        estimate.parse_fitted(bad, "c.json")
    stale = copy.deepcopy(good)
    stale["structure"]["inductor_launch_share"] = 0.9
    with pytest.raises(DeployvitError, match="structure"):
        estimate.parse_fitted(stale, "c.json")
    assert set(good["constants"]) == set(Constants.names())
    assert "benchmarks/estimate_accuracy.py" in good["command"]
