"""TensorRT path. Everything decided without TensorRT (build plan per major version, graph-precision
check, optimisation profile, missing-package errors) is tested here on CPU. `build_engine`'s calls
into TensorRT are checked against a recording stand-in of the `tensorrt` module (handed to it, as
the runtime `deployvit.runtimes.tensorrt` hands it the checked real module), because TensorRT
cannot be installed on this CPU-only machine; building and running a real engine are GPU tests
that skip with the reason. NOTE: the real TensorRT path has not been run in this project's CI."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch

from deployvit import io
from deployvit.errors import CheckFailed, DeployvitError, MissingDependency
from deployvit.models import build_model
from deployvit.spaces import get_space
from exporters import tensorrt as trt_export
from exporters.onnx import export_onnx
from exporters.tensorrt import BuildPlan, check_graph_precision, plan_build, profile_shapes
from deployvit.runtimes.tensorrt import TrtRunner, import_tensorrt
from tests.conftest import assert_one_line_error, run_cli


@pytest.mark.parametrize("major", [10, 11])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_both_majors_build_strongly_typed_from_the_engine_precision_graph(major, precision):
    """TensorRT 10 gets the same safe fp16/bf16 graph as 11, never the fp32 graph plus the FP16 flag;
    TF32 is cleared unless asked for."""
    plan = plan_build(major, precision)
    assert plan == BuildPlan(major, precision, precision, True, (), ("TF32",), False)
    assert plan.path == f"TensorRT {major} strongly typed network from the {precision} ONNX graph, TF32 off"


def test_tf32_is_its_own_choice_for_fp32_only():
    plan = plan_build(10, "fp32", tf32=True)
    assert plan.flags == ("TF32",) and plan.cleared_flags == () and plan.tf32
    assert "TF32 on" in plan.path
    with pytest.raises(DeployvitError, match="fp32 engines only"):
        plan_build(11, "fp16", tf32=True)


def test_strongly_typed_build_refuses_a_graph_of_another_precision():
    """TensorRT would silently build an fp32 engine from an fp32 graph, on 10 as on 11 now."""
    for major in (10, 11):
        with pytest.raises(DeployvitError, match="needs a fp16 ONNX graph, got fp32"):
            check_graph_precision(plan_build(major, "fp16"), "fp32")
    check_graph_precision(plan_build(10, "fp16"), "fp16")


def test_unsupported_majors_are_missing_dependencies():
    for major in (8, 9, 12):
        with pytest.raises(MissingDependency, match="need 10.x or 11.x"):
            plan_build(major, "fp16")


def test_profile_shapes():
    assert profile_shapes((-1, 3, 224, 224), (1, 8, 32)) == ((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))
    with pytest.raises(DeployvitError, match="min <= opt <= max"):
        profile_shapes((-1, 3, 32, 32), (4, 2, 8))
    with pytest.raises(DeployvitError, match="static C, H, W"):
        profile_shapes((-1, 3, -1, 32), (1, 1, 1))


def test_missing_tensorrt_is_missing_dependency_with_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(MissingDependency, match="pip install tensorrt"):
        import_tensorrt()


def test_old_tensorrt_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(MissingDependency, match="8.6.1 is not supported .need 10.x or 11.x.: pip install tensorrt"):
        import_tensorrt()


def test_cli_export_trt_without_tensorrt_is_exit_2_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    arch_path = tmp_path / "a.arch.json"
    get_space("test").min_arch().save(arch_path)
    out = tmp_path / "out"
    result = run_cli("export", "--arch", str(arch_path), "--format", "trt", "--out", str(out))
    assert_one_line_error(result, "tensorrt is not installed", "pip install tensorrt")
    assert not out.exists()


# --- build_engine's calls, against a recording stand-in (no TensorRT on this machine) --------------


class _Recorder:
    """Stands in for the few TensorRT objects build_engine touches, recording every call."""

    def __init__(self, major: int, parse_ok: bool = True, build_ok: bool = True):
        self.calls: list[tuple] = []
        rec = self
        self.module = types.SimpleNamespace(
            __version__=f"{major}.4.0",
            Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda s, level=None: None}),
            NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=1),
            MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"),
            BuilderFlag=types.SimpleNamespace(FP16="FP16", BF16="BF16", TF32="TF32"),
        )

        class Input:
            name, shape = "input", (-1, 3, 32, 32)

        class Network:
            def get_input(self, i):
                return Input()

        class Parser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                rec.calls.append(("parse_from_file", path))
                return parse_ok

            def get_error(self, i):
                return "Unsupported ONNX op: Foo"

        class Cache:
            def serialize(self):
                return b"timing-cache"

        class Config:
            builder_optimization_level = None

            def set_memory_pool_limit(self, pool, size):
                rec.calls.append(("workspace", pool, size))

            def set_flag(self, flag):
                rec.calls.append(("flag", flag))

            def clear_flag(self, flag):
                rec.calls.append(("clear_flag", flag))

            def create_timing_cache(self, data):
                rec.calls.append(("cache_in", data))
                return Cache()

            def set_timing_cache(self, cache, ignore_mismatch):
                rec.calls.append(("set_cache", ignore_mismatch))

            def get_timing_cache(self):
                return Cache()

            def add_optimization_profile(self, profile):
                rec.calls.append(("profile", profile.shapes))

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                self.shapes = (name, lo, opt, hi)

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                rec.calls.append(("network_flags", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                rec.calls.append(("opt_level", config.builder_optimization_level))
                return b"engine-bytes" if build_ok else None

        self.module.Builder, self.module.OnnxParser = Builder, Parser


@pytest.fixture
def fake_trt(monkeypatch):
    def install(major: int, **kw) -> _Recorder:
        rec = _Recorder(major, **kw)
        monkeypatch.setitem(sys.modules, "tensorrt", rec.module)
        monkeypatch.setattr(trt_export, "require_cuda", lambda: None)
        monkeypatch.setattr(trt_export, "_cuda_facts", lambda: {"gpu": "none (stand-in)", "cuda": None})
        return rec

    return install


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    model = build_model(get_space("test").min_arch()).eval()
    return export_onnx(model, tmp_path_factory.mktemp("trt") / "m.onnx", img_size=32, dynamic_batch=(1, 4, 8))


@pytest.mark.parametrize("major", [10, 11])
def test_build_engine_calls(fake_trt, onnx_file, tmp_path, major):
    rec = fake_trt(major)
    cache = tmp_path / "timing.cache"
    sidecar = trt_export.build_engine(rec.module, onnx_file, tmp_path / "m.engine", precision="fp16", batch_range=(1, 4, 8),
                                      workspace_gb=2, timing_cache=cache, graph_precision="fp16")
    assert ("network_flags", 2) in rec.calls  # 1 << STRONGLY_TYPED on both majors
    assert [c for c in rec.calls if c[0] in ("flag", "clear_flag")] == [("clear_flag", "TF32")]
    assert ("workspace", "WORKSPACE", 2 * 2**30) in rec.calls
    assert ("profile", ("input", (1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))) in rec.calls
    assert ("opt_level", trt_export.OPTIMIZATION_LEVEL) in rec.calls
    assert (tmp_path / "m.engine").read_bytes() == b"engine-bytes"
    assert cache.read_bytes() == b"timing-cache"
    on_disk = json.loads((tmp_path / "m.engine.json").read_text())
    assert on_disk == sidecar
    assert sidecar["strongly_typed"] and sidecar["tensorrt"] == f"{major}.4.0" and sidecar["network_flags"] == 2
    assert sidecar["build_path"] == f"TensorRT {major} strongly typed network from the fp16 ONNX graph, TF32 off"
    assert sidecar["onnx_precision"] == "fp16" and sidecar["tf32"] is False
    assert sidecar["flags"] == [] and sidecar["cleared_flags"] == ["TF32"]
    assert sidecar["onnx_sha256"] == io.sha256(onnx_file)
    assert sidecar["engine_sha256"] == io.sha256(tmp_path / "m.engine")
    # a second build starts from the saved timing cache
    trt_export.build_engine(rec.module, onnx_file, tmp_path / "m.engine", precision="fp16", batch_range=(1, 4, 8),
                            timing_cache=cache, graph_precision="fp16")
    assert ("cache_in", b"timing-cache") in rec.calls


@pytest.mark.parametrize("tf32, expected", [(False, [("clear_flag", "TF32")]), (True, [("flag", "TF32")])])
def test_fp32_engine_clears_tf32_unless_asked(fake_trt, onnx_file, tmp_path, tf32, expected):
    """TensorRT enables TF32 by default: an fp32 engine that did not clear it would fail the fp32 gate."""
    rec = fake_trt(10)
    sidecar = trt_export.build_engine(rec.module, onnx_file, tmp_path / "m.engine", precision="fp32", batch_range=(1, 1, 8),
                                      graph_precision="fp32", tf32=tf32)
    assert [c for c in rec.calls if c[0] in ("flag", "clear_flag")] == expected
    assert sidecar["tf32"] is tf32 and ("TF32 on" if tf32 else "TF32 off") in sidecar["build_path"]


def test_tensorrt_without_the_tf32_flag_is_refused_before_building(fake_trt, onnx_file, tmp_path):
    rec = fake_trt(11)
    del rec.module.BuilderFlag.TF32
    with pytest.raises(MissingDependency, match="no TF32 builder flag"):
        trt_export.build_engine(rec.module, onnx_file, tmp_path / "m.engine", precision="fp32", batch_range=(1, 1, 1))
    assert not any(c[0] in ("parse_from_file", "opt_level") for c in rec.calls) and not (tmp_path / "m.engine").exists()


def test_tensorrt_10_without_strongly_typed_networks_is_refused(fake_trt, onnx_file, tmp_path):
    rec = fake_trt(10)
    del rec.module.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    with pytest.raises(MissingDependency, match="no strongly typed networks"):
        trt_export.build_engine(rec.module, onnx_file, tmp_path / "m.engine", precision="fp16", batch_range=(1, 1, 1))
    assert not (tmp_path / "m.engine").exists()


def test_build_engine_refuses_wrong_graph_precision_before_building(fake_trt, onnx_file, tmp_path):
    rec = fake_trt(11)
    with pytest.raises(DeployvitError, match="needs a fp16 ONNX graph"):
        trt_export.build_engine(rec.module, onnx_file, tmp_path / "m.engine", precision="fp16", batch_range=(1, 1, 1),
                                graph_precision="fp32")
    assert rec.calls == [] and not (tmp_path / "m.engine").exists()


@pytest.mark.parametrize("kw, message", [({"parse_ok": False}, "could not parse.*Unsupported ONNX op"),
                                         ({"build_ok": False}, "failed to build")])
def test_build_failures_are_check_failures_and_write_nothing(fake_trt, onnx_file, tmp_path, kw, message):
    rec = fake_trt(10, **kw)
    with pytest.raises(CheckFailed, match=message):
        trt_export.build_engine(rec.module, onnx_file, tmp_path / "m.engine", precision="fp32", batch_range=(1, 1, 1))
    assert not (tmp_path / "m.engine").exists() and not (tmp_path / "m.engine.json").exists()


@pytest.mark.parametrize("major", [10, 11])
def test_the_runtime_builds_a_part_engine_with_the_checked_module(fake_trt, tmp_path, major):
    """A latency-table part in the tensorrt runtime: the module `import_tensorrt` checked is the one
    handed to `build_engine`, from an fp16 graph of the part, with a static profile at the part's batch."""
    from deployvit.models import build_part
    from deployvit.parts import BlockPart
    from deployvit.runtimes import get_runtime
    from exporters.onnx import read_metadata

    rec = fake_trt(major)
    assert import_tensorrt() is rec.module
    part = BlockPart(tokens=17, embed_dim=32, num_heads=2, head_dim=16, mlp_hidden=64)
    engine = get_runtime("tensorrt").write_part(build_part(part).eval(), tmp_path, part.input_shape(2), "fp16", False)
    assert engine == tmp_path / "part.engine" and engine.read_bytes() == b"engine-bytes"
    assert ("parse_from_file", str(tmp_path / "part.onnx")) in rec.calls and read_metadata(tmp_path / "part.onnx")["precision"] == "fp16"
    assert ("network_flags", 2) in rec.calls and ("clear_flag", "TF32") in rec.calls
    assert ("profile", ("input", (2, 3, 32, 32), (2, 3, 32, 32), (2, 3, 32, 32))) in rec.calls  # the stand-in's input is an image


# --- int8 / fp8: explicit quantisation; engines that know their GPU ---------------------------------


@pytest.mark.parametrize("major", [10, 11])
@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_quantised_engines_are_strongly_typed_from_the_qdq_graph_with_fp16_float_parts(major, precision):
    """No INT8/FP8 builder flag and no calibrator (deprecated in 10, gone in 11): the types come from
    the Q/DQ graph, whose float parts must be fp16 (an fp32-float graph would build fp32 layers)."""
    plan = plan_build(major, precision)
    assert plan.strongly_typed and plan.onnx_precision == precision and plan.float_precision == "fp16" and plan.flags == ()
    assert plan.path == f"TensorRT {major} strongly typed network from the {precision} Q/DQ ONNX graph (fp16 elsewhere), TF32 off"
    check_graph_precision(plan, precision, "fp16")
    with pytest.raises(DeployvitError, match=f"{precision} engine needs a Q/DQ graph whose float parts are fp16, got fp32"):
        check_graph_precision(plan, precision, "fp32")
    with pytest.raises(DeployvitError, match=f"needs a {precision} ONNX graph, got fp16"):
        check_graph_precision(plan, "fp16")


@pytest.mark.parametrize("major", [10, 11])
def test_the_runtime_builds_an_int8_part_engine_from_its_qdq_graph(fake_trt, tmp_path, major):
    """A latency-table part in int8: the Q/DQ graph export writes (fp16 float parts), handed to the
    builder with no INT8 flag; the sidecar records the graph's quantisation."""
    import onnx

    from deployvit.models import build_part
    from deployvit.parts import BlockPart
    from deployvit.runtimes import get_runtime
    from exporters.onnx import read_metadata

    rec = fake_trt(major)
    part = BlockPart(tokens=17, embed_dim=32, num_heads=2, head_dim=16, mlp_hidden=64)
    torch.manual_seed(0)
    engine = get_runtime("tensorrt").write_part(build_part(part).eval(), tmp_path, part.input_shape(2), "int8", False)
    graph = tmp_path / "part.onnx"
    meta = read_metadata(graph)
    assert meta["precision"] == "int8" and meta["float_precision"] == "fp16"
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(graph)).graph.node}
    assert ("parse_from_file", str(graph)) in rec.calls and ("network_flags", 2) in rec.calls
    assert [c for c in rec.calls if c[0] in ("flag", "clear_flag")] == [("clear_flag", "TF32")]  # no INT8 flag: typed by the graph
    sidecar = json.loads(trt_export.sidecar_path(engine).read_text())
    assert sidecar["quantization"]["qtype"] == "int8" and sidecar["float_precision"] == "fp16" and "Q/DQ" in sidecar["build_path"]


@pytest.mark.parametrize("major", [10, 11])
@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_the_trt_artifact_is_built_from_the_calibrated_qdq_graph(fake_trt, tmp_path, major, precision):
    """`export --format trt --precision int8|fp8`'s artifact: the fp32 graph, its Q/DQ graph calibrated on
    --data's train images with fp16 float parts, the engine built from that with the export's
    batch range and no quantisation flag; the sidecar carries the calibration."""
    import onnx

    from deployvit.runtimes import get_runtime
    from deployvit.train.calibration import calibration_samples
    from exporters.benchmark import ExportSpec
    from exporters.onnx import BatchSpec, read_metadata
    from exporters.quant_gate import QuantSpec

    rec = fake_trt(major)
    torch.manual_seed(0)
    model = build_model(get_space("test").min_arch()).eval()
    spec = ExportSpec(img_size=32, in_chans=3, precision=precision, batch=BatchSpec(1, 4, 8), device="cuda",
                      quant=QuantSpec(calibration_samples("digits", 32, 3, n=64)), trt_onnx_suffix=".trt.onnx")
    engine, notes, result = get_runtime("tensorrt").write_quantized(model, spec, tmp_path, "model")
    graph = tmp_path / "model.trt.onnx"
    assert engine == tmp_path / "model.engine" and result.path == graph and result.fp32_path == tmp_path / "model.trt.fp32.onnx"
    meta = read_metadata(graph)
    assert meta["precision"] == precision and meta["float_precision"] == "fp16" and result.kept == ["head.fc"]
    scales = {n.input[2] for n in onnx.load(str(graph)).graph.node if n.op_type == "QuantizeLinear"}
    zero_type = onnx.TensorProto.FLOAT8E4M3FN if precision == "fp8" else onnx.TensorProto.INT8
    assert scales and all(t.data_type == zero_type for t in onnx.load(str(graph)).graph.initializer if t.name in scales)
    assert ("parse_from_file", str(graph)) in rec.calls and ("network_flags", 2) in rec.calls
    assert ("profile", ("input", (1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))) in rec.calls
    assert [c for c in rec.calls if c[0] in ("flag", "clear_flag")] == [("clear_flag", "TF32")]
    sidecar = json.loads(trt_export.sidecar_path(engine).read_text())
    assert sidecar["onnx_precision"] == precision and sidecar["quantization"]["calibration"].startswith("digits: 64 of 1438 train images")
    assert f"quantised from {result.fp32_path.name}" in notes[0] and "Q/DQ" in notes[0]


H200 = {"gpu": "NVIDIA H200", "compute_capability": "9.0", "cuda": "12.8"}


@pytest.fixture
def h200_engine(fake_trt, onnx_file, tmp_path, monkeypatch):
    """An engine (stand-in bytes) with the sidecar a build on an H200 with TensorRT 10.4 writes."""
    rec = fake_trt(10)
    monkeypatch.setattr(trt_export, "_cuda_facts", lambda: dict(H200))
    sidecar = trt_export.build_engine(rec.module, onnx_file, tmp_path / "m.engine", precision="fp16", batch_range=(1, 4, 8),
                                      graph_precision="fp16")
    return tmp_path / "m.engine", sidecar


def test_the_engine_sidecar_records_the_gpu_compute_capability_tensorrt_and_build_flags(h200_engine):
    engine, sidecar = h200_engine
    assert json.loads(trt_export.sidecar_path(engine).read_text()) == sidecar
    assert sidecar["gpu"] == "NVIDIA H200" and sidecar["compute_capability"] == "9.0" and sidecar["cuda"] == "12.8"
    assert sidecar["tensorrt"] == "10.4.0" and sidecar["network_flags"] == 2 and sidecar["strongly_typed"]
    assert sidecar["flags"] == [] and sidecar["cleared_flags"] == ["TF32"] and sidecar["optimization_level"] == trt_export.OPTIMIZATION_LEVEL
    assert sidecar["profile"] == {"min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [8, 3, 32, 32]}


@pytest.mark.parametrize("here, trt_version, what, now", [
    ({"gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}, "10.4.0", "another compute capability",
     "NVIDIA A100-SXM4-80GB (compute capability 8.0) with TensorRT 10.4.0"),
    ({"gpu": "NVIDIA L4", "compute_capability": "8.9"}, "11.0.0", "another compute capability",
     "NVIDIA L4 (compute capability 8.9) with TensorRT 11.0.0"),
    (H200, "11.0.0", "another TensorRT version", "NVIDIA H200 (compute capability 9.0) with TensorRT 11.0.0"),
])
def test_an_engine_built_for_another_gpu_or_tensorrt_is_one_line_exit_2_naming_both(h200_engine, monkeypatch, here, trt_version, what, now):
    engine, _ = h200_engine
    monkeypatch.setattr(trt_export, "_cuda_facts", lambda: dict(here))
    with pytest.raises(DeployvitError) as info:
        trt_export.check_engine(engine, trt_version)
    message = str(info.value)
    assert info.value.exit_code == 2 and "\n" not in message and message.startswith("m.engine: ")
    assert "built for NVIDIA H200 (compute capability 9.0) with TensorRT 10.4.0" in message
    assert f"this machine has {now}: {what}" in message and "rebuild it here" in message


def test_an_engine_loads_on_another_gpu_of_its_compute_capability_and_without_a_sidecar(h200_engine, monkeypatch, tmp_path):
    """TensorRT engines are tied to the compute capability and TensorRT version, not the board: an
    H100 (9.0) loads an H200 engine; an engine without a sidecar is not refused (nothing to check)."""
    engine, sidecar = h200_engine
    monkeypatch.setattr(trt_export, "_cuda_facts", lambda: {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"})
    assert trt_export.check_engine(engine, "10.4.0") == sidecar
    bare = tmp_path / "bare.engine"
    bare.write_bytes(b"engine-bytes")
    assert trt_export.check_engine(bare, "10.4.0") is None
    trt_export.sidecar_path(bare).write_text("[1, 2]")
    with pytest.raises(DeployvitError, match="an engine sidecar is a JSON object"):
        trt_export.check_engine(bare, "10.4.0")


def test_the_runner_refuses_a_mismatched_engine_before_tensorrt_deserialises_it(h200_engine, monkeypatch):
    """TrtRunner checks the sidecar first: TensorRT itself fails such an engine with no reason (the
    stand-in module has no Runtime, so reaching deserialisation would be an AttributeError)."""
    from deployvit.runtimes.tensorrt import TensorRT

    engine, _ = h200_engine
    monkeypatch.setattr(TensorRT, "check", lambda self, *a, **k: None)  # no CUDA GPU here
    monkeypatch.setattr(trt_export, "_cuda_facts", lambda: {"gpu": "NVIDIA A10", "compute_capability": "8.6"})
    with pytest.raises(DeployvitError, match=r"built for NVIDIA H200 \(compute capability 9.0\).*NVIDIA A10 \(compute capability 8.6\)"):
        TrtRunner(engine)


@pytest.mark.parametrize("capability, name, refused", [((8, 0), "NVIDIA A100-SXM4-80GB", True), ((8, 6), "NVIDIA A10", True),
                                                       ((8, 9), "NVIDIA L4", False), ((9, 0), "NVIDIA H200", False)])
def test_fp8_runs_only_where_there_are_fp8_tensor_cores(monkeypatch, capability, name, refused):
    """Compute capability 8.9 (Ada) and 9.x (Hopper) have FP8 tensor cores; Ampere does not. The
    CUDA queries are answered for a GPU this machine does not have."""
    from deployvit.devices import fp8_refusal
    from deployvit.runtimes import get_runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
    reason = fp8_refusal("cuda")
    if not refused:
        assert reason is None
        get_runtime("tensorrt").check_precision("cuda", "fp8")
        return
    assert f"{name} is compute capability {capability[0]}.{capability[1]}" in reason and "compute capability 8.9" in reason
    with pytest.raises(MissingDependency, match=f"runtime tensorrt: fp8 needs an NVIDIA GPU with FP8 tensor cores.*{name}"):
        get_runtime("tensorrt").check_precision("cuda", "fp8")


def test_fp8_is_refused_on_the_cpu():
    from deployvit.devices import fp8_refusal

    assert fp8_refusal("cpu").endswith("this run is on the CPU")


# --- the real thing: needs TensorRT and a CUDA GPU ---------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("precision, tf32", [("fp32", False), ("fp32", True), ("fp16", False)])
def test_real_engine_builds_runs_and_passes_the_gate(precision, tf32, tmp_path):
    """A real engine's logits pass verification's default gate for its precision (fp32: TF32 off,
    max |diff| < 1e-3 against the TF32-off PyTorch model; TF32 and fp16: their own gates)."""
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install tensorrt)")
    from exporters.verify import Thresholds, synthetic_samples, verify

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    plan = plan_build(trt_export.trt_major(trt.__version__), precision, tf32=tf32)
    torch.manual_seed(0)
    model = build_model(get_space("test").sample(np.random.default_rng(0))).eval()
    onnx_path = export_onnx(model, tmp_path / "m.onnx", img_size=32, precision=plan.onnx_precision,
                            dynamic_batch=(1, 4, 8))
    sidecar = trt_export.build_engine(trt, onnx_path, tmp_path / "m.engine", precision=precision, batch_range=(1, 4, 8),
                                      timing_cache=tmp_path / "cache", graph_precision=plan.onnx_precision, tf32=tf32)
    assert sidecar["build_path"] == plan.path and sidecar["strongly_typed"]
    runner = TrtRunner(tmp_path / "m.engine")
    ref = model.cuda()
    result = verify(lambda x: ref(x.cuda()), runner, synthetic_samples(32, 32), batch_sizes=(1, 8),
                    precision=precision, thresholds=Thresholds.for_precision(precision, tf32=tf32))
    assert result.passed, result.failed
    # the bound call timing uses runs on whatever its input buffer holds now
    x = torch.randn(4, 3, 32, 32, device="cuda")
    run = runner.bind(torch.zeros(4, 3, 32, 32, device="cuda"))
    run.input.copy_(x)
    with torch.no_grad():
        want = ref(x)
    got = run().float()
    assert torch.nn.functional.cosine_similarity(got, want, dim=1).min() > 0.999
    out = runner(torch.randn(3, 3, 32, 32, device="cuda"))
    assert out.shape == (3, 10) and out.dtype == torch.float32


def test_tf32_has_its_own_gate():
    from exporters.verify import Thresholds

    tf32 = Thresholds.for_precision("fp32", tf32=True)
    assert tf32 != Thresholds.for_precision("fp32") and tf32 != Thresholds.for_precision("fp16")
    assert tf32.max_abs_diff is None and tf32.min_cosine == 0.9995 and tf32.min_agreement == 0.995
    assert Thresholds.for_precision("fp32", tf32=True, min_cosine=0.99).min_cosine == 0.99
    with pytest.raises(DeployvitError, match="fp32 only"):
        Thresholds.for_precision("fp16", tf32=True)


def test_cli_tf32_needs_fp32(tmp_path):
    arch_path = tmp_path / "a.arch.json"
    get_space("test").min_arch().save(arch_path)
    out = tmp_path / "out"
    result = run_cli("export", "--arch", str(arch_path), "--precision", "fp16", "--tf32", "--out", str(out))
    assert_one_line_error(result, "--tf32 needs --precision fp32")  # commands.conflicts, before the library's own check
    assert not out.exists()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_real_quantised_engine_is_built_from_the_qdq_graph_and_passes_the_gate(precision, tmp_path):
    """`export --format trt --precision int8|fp8` on a model trained on digits: the engine is built
    strongly typed from the calibrated Q/DQ graph, passes the default accuracy gate, and its sidecar
    names this GPU. fp8 needs compute capability 8.9 or later (skipped elsewhere, with the reason)."""
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install tensorrt)")
    from deployvit.devices import fp8_refusal
    from deployvit.weights import save_model
    from tests.test_export_verify import train_briefly

    if precision == "fp8" and fp8_refusal("cuda"):
        pytest.skip(fp8_refusal("cuda"))
    arch, model = train_briefly()
    checkpoint = tmp_path / "run" / "checkpoint.safetensors"
    save_model(checkpoint, model, arch)
    out = tmp_path / "out"
    result = run_cli("export", "--checkpoint", str(checkpoint), "--format", "trt", "--precision", precision, "--data", "digits",
                     "--out", str(out), "--calibration", "128", "--repeats", "5", "--dynamic-batch", "1,8,32")
    assert result.code == 0, result.err
    row = json.loads((out / "report.json").read_text())["rows"][0]
    assert row["quantization"]["gate"]["passed"] and row["precision"] == precision
    sidecar = json.loads(trt_export.sidecar_path(out / "model.engine").read_text())
    major, minor = torch.cuda.get_device_capability()
    assert sidecar["compute_capability"] == f"{major}.{minor}" and sidecar["gpu"] == torch.cuda.get_device_name()
    assert sidecar["onnx_precision"] == precision and sidecar["float_precision"] == "fp16" and sidecar["quantization"]["qtype"] == precision
