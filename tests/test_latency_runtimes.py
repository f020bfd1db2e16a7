"""Runtimes: each CPU runtime runs a real part; the ONNX graph timed computes what the module does;
GPU runtimes are real code paths tested only where CUDA exists."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deployvit.errors import DeployvitError
from deployvit.runtimes import build_runner, check_runtime
from deployvit.timing import time_callable
from deployvit.models import build_part
from deployvit.parts import BlockPart
from exporters.onnx import export_onnx

PART = BlockPart(tokens=17, embed_dim=32, num_heads=2, head_dim=16, mlp_hidden=64)


def _ort_has_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def test_eager_runner_runs_the_module():
    torch.manual_seed(0)
    module = build_part(PART)
    run = build_runner(module, PART.input_shape(2), runtime="eager", device="cpu", precision="fp32")
    assert run().shape == (2, 17, 32)


def test_a_part_exports_with_its_static_token_shape(tmp_path):
    """Table parts take tokens, not images: `export_onnx(input_shape=...)` exports them as they are."""
    import onnxruntime as ort

    torch.manual_seed(0)
    module = build_part(PART).eval()
    path = export_onnx(module, tmp_path / "part.onnx", input_shape=PART.input_shape(2))
    x = torch.randn(PART.input_shape(2))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert list(session.get_inputs()[0].shape) == list(PART.input_shape(2))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = module(x).numpy()
    assert np.abs(got - want).max() < 1e-4


def test_onnxruntime_runner_is_timeable_and_computes_the_module():
    torch.manual_seed(0)
    module = build_part(PART).eval()
    run = build_runner(module, PART.input_shape(2), runtime="onnxruntime", device="cpu", precision="fp32", threads=1)
    t = time_callable(run, device="cpu", warmup_s=0.0, repeats=5, cv_warn=float("inf"))
    assert t.repeats == 5
    x = torch.randn(PART.input_shape(2), generator=torch.Generator().manual_seed(3))
    run.input.copy_(x)  # the bound input buffer: the session reads it in place
    with torch.no_grad():
        want = module(x)
    assert (run() - want).abs().max() < 1e-4


def test_one_onnxruntime_runner_for_tables_and_artifacts(tmp_path):
    """An export artifact's `OnnxRunner(x)` and a table entry's zero-argument run are the same bound
    call: `runner(x)` refills the buffer `bind` bound for that shape and runs it."""
    from deployvit.runtimes.onnxruntime import BoundRun, OnnxRunner

    torch.manual_seed(0)
    module = build_part(PART).eval()
    path = export_onnx(module, tmp_path / "p.onnx", input_shape=PART.input_shape(2))
    runner = OnnxRunner(path, "cpu", threads=1)
    x = torch.randn(PART.input_shape(2))
    first = runner(x)
    bound = runner._bound[tuple(x.shape)]
    assert isinstance(bound, BoundRun) and torch.equal(bound.input, x)
    second = runner(2 * x)
    assert runner._bound[tuple(x.shape)] is bound  # bound once per shape
    with torch.no_grad():
        assert (first - module(x)).abs().max() < 1e-4 and (second - module(2 * x)).abs().max() < 1e-4
    assert not torch.equal(first, second)  # results are copies, not the reused output buffer


@pytest.mark.skipif(_ort_has_cuda(), reason="checks the CPU onnxruntime package's refusal")
def test_onnxruntime_on_cuda_without_onnxruntime_gpu_says_what_to_install(tmp_path):
    """Exit 2 with the install line, before the no-GPU error: true on any machine, this one too."""
    from deployvit.errors import MissingDependency
    from deployvit.runtimes.onnxruntime import OnnxRunner

    for device in ("cuda", torch.device("cuda", 0)):
        with pytest.raises(MissingDependency, match=r"no CUDA provider: pip uninstall -y onnxruntime && pip install onnxruntime-gpu"):
            check_runtime("onnxruntime", device, "fp32")
    path = export_onnx(build_part(PART).eval(), tmp_path / "p.onnx", input_shape=PART.input_shape(1))
    with pytest.raises(MissingDependency, match="pip install onnxruntime-gpu"):
        OnnxRunner(path, "cuda")
    assert MissingDependency.exit_code == 2


def test_missing_onnxruntime_says_what_to_install(monkeypatch):
    import sys

    from deployvit.errors import MissingDependency

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependency, match=r"onnxruntime is not installed: pip install onnxruntime"):
        check_runtime("onnxruntime", "cpu", "fp32")


def test_compile_runner_matches_eager():
    torch.manual_seed(0)
    module = build_part(PART)
    x = torch.randn(PART.input_shape(1), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = module(x)
    run = build_runner(module, PART.input_shape(1), runtime="compile", device="cpu", precision="fp32")
    with torch.no_grad():
        got = run()
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(
    "runtime,device,precision,match",
    [
        ("magic", "cpu", "fp32", "unknown runtime"),
        ("eager", "cpu", "int3", "unknown precision"),
        ("eager", "tpu", "fp32", "unknown device"),
    ],
)
def test_check_runtime_rejects(runtime, device, precision, match):
    with pytest.raises(DeployvitError, match=match):
        check_runtime(runtime, device, precision)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_cudagraph_needs_cuda():
    with pytest.raises(DeployvitError, match="CUDA"):
        check_runtime("cudagraph", "cpu", "fp16")
    with pytest.raises(DeployvitError, match="CUDA"):
        check_runtime("eager", "cuda", "fp16")


@pytest.mark.gpu
@pytest.mark.parametrize("runtime", ["eager", "cudagraph", "compile"])
def test_gpu_runtime_replays_new_input_like_eager(runtime):
    """After the bound input buffer is refilled (and the allocator churned), a run computes eager's
    output on the new data: a CUDA graph that read freed or stale memory would not."""
    torch.manual_seed(0)
    module = build_part(PART).eval()
    run = build_runner(module, PART.input_shape(4), runtime=runtime, device="cuda", precision="fp16")
    time_callable(run, device="cuda", warmup_s=0.05, repeats=10, cv_warn=float("inf"))
    torch.cuda.empty_cache()
    torch.randn(1 << 20, device="cuda")
    x = torch.randn(PART.input_shape(4), generator=torch.Generator().manual_seed(7)).cuda().half()
    run.input.copy_(x)
    torch.manual_seed(0)
    ref = build_part(PART).eval().cuda().half()  # same seed: the weights of `module`
    with torch.inference_mode():
        want = ref(x).float()
        got = run().float()
        stale = ref(torch.randn_like(x)).float()
    assert torch.allclose(got, want, atol=2e-2, rtol=2e-2), (got - want).abs().max()
    assert not torch.allclose(got, stale, atol=2e-2)
    if runtime == "compile":
        assert run.compiled.graphs == 1 and run.compiled.calls >= 12  # every timed call ran compiled code


@pytest.mark.gpu
def test_gpu_compile_over_more_than_8_shapes_stays_compiled():
    for i in range(10):
        part = BlockPart(tokens=17, embed_dim=32, num_heads=2, head_dim=16, mlp_hidden=32 + 16 * i)
        run = build_runner(build_part(part), part.input_shape(2), runtime="compile", device="cuda", precision="fp16")
        time_callable(run, device="cuda", warmup_s=0.0, repeats=3, cv_warn=float("inf"))
        assert run.compiled.graphs == 1 and run.compiled.calls == 1 + 1 + 3  # build, warm-up, repeats


@pytest.mark.gpu
def test_onnxruntime_cuda_refuses_without_provider_or_matches_the_module():
    from deployvit.errors import MissingDependency

    if not _ort_has_cuda():
        with pytest.raises(MissingDependency, match="onnxruntime-gpu"):
            check_runtime("onnxruntime", "cuda", "fp16")
        pytest.skip("onnxruntime-gpu is not installed: refusal checked, the CUDA run is not")
    torch.manual_seed(0)
    module = build_part(PART).eval()
    run = build_runner(module, PART.input_shape(2), runtime="onnxruntime", device="cuda", precision="fp32")
    events = time_callable(run, device="cuda", warmup_s=0.05, repeats=50, cv_warn=float("inf"))
    # run_with_iobinding is host-synchronous: the CUDA events bracket the whole call, so they read
    # what the host's clock reads for it (timing.py's docstring)
    host = time_callable(run, device="cpu", warmup_s=0.0, repeats=50, cv_warn=float("inf"))
    assert abs(events.median_us - host.median_us) / host.median_us < 0.25, (events.median_us, host.median_us)
    x = torch.randn(PART.input_shape(2), device="cuda")
    run.input.copy_(x)
    torch.cuda.synchronize()
    with torch.no_grad():
        want = module.cuda()(x)
    assert (run() - want).abs().max() < 1e-3  # TF32 off: fp32 means fp32


@pytest.mark.gpu
def test_tensorrt_runner_matches_the_module():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install tensorrt)")
    torch.manual_seed(0)
    module = build_part(PART).eval()
    run = build_runner(module, PART.input_shape(2), runtime="tensorrt", device="cuda", precision="fp16")
    assert time_callable(run, device="cuda", warmup_s=0.05, repeats=5, cv_warn=float("inf")).repeats == 5
    x = torch.randn(PART.input_shape(2), device="cuda")
    run.input.copy_(x)
    with torch.no_grad():
        want = module.cuda()(x)
    got = run().float()
    cos = torch.nn.functional.cosine_similarity(got.flatten(1), want.flatten(1), dim=1)
    assert cos.min() > 0.999


# --- compile: never the silent eager fallback past dynamo's recompile limit ----------------------

#: 9 block shapes of one module class (dynamo allows 8 recompilations per function), 1 stem, 1 head;
#: the `test` preset has 24 block shapes, which would cost this test 3x the compile time. Depth 1-4
#: (no new shapes) makes the largest arch several times the smallest, so the calibration this
#: profile fits on two archs cannot be inverted by timing noise on a shared machine.
COMPILE9 = """
name: compile9
img_size: 16
patch_size: 8
num_classes: 10
embed_dim: [16]
depth: [1, 4]
num_heads: [1, 2, 3]
mlp_ratio: [2.0, 3.0, 4.0]
head_dim: 8
"""


def test_profile_compile_over_more_than_8_shapes_times_compiled_code_for_every_entry(tmp_path, monkeypatch):
    """Every runner `profile --runtime compile` builds (11 parts, 9 of them the same Block class at
    distinct shapes, and 4 whole archs) ran compiled code on every call it was timed with: each call
    is counted where it enters the inductor-compiled graph, which the eager fallback never reaches."""
    import deployvit.latency.profile as profile_mod
    from deployvit.latency.table import LatencyTable
    from tests.conftest import run_cli

    built = []

    def observed(*args, **kwargs):
        run = build_runner(*args, **kwargs)
        calls = {"n": 0}

        def counted():
            calls["n"] += 1
            return run()

        built.append((run, calls))
        return counted

    monkeypatch.setattr(profile_mod, "build_runner", observed)
    space_file = tmp_path / "compile9.yaml"
    space_file.write_text(COMPILE9)
    out = tmp_path / "t.json"
    result = run_cli("profile", "--device", "cpu", "--space", str(space_file), "--runtime", "compile", "--precision", "fp32",
                     "--batch-size", "1", "--out", str(out), "--warmup", "0", "--repeats", "10",
                     "--calib-archs", "2", "--val-archs", "2", "--threads", "1", "--clock", "cpu")
    assert result.code == 0, result.err
    table = LatencyTable.load(out)
    blocks = [k for k in table.entries if k.startswith("block:")]
    assert len(blocks) == 9 and len(table.entries) == 11
    assert len(built) == 11 + 4
    for run, calls in built:
        assert calls["n"] >= 10  # warm-up calls and at least --repeats timed ones
        assert run.compiled.graphs == 1  # compiled once, never recompiled
        assert run.compiled.calls == calls["n"] + 1  # + the compiling call in build_runner: all compiled


def test_compile_runner_counts_compiled_calls_and_refills():
    torch.manual_seed(0)
    module = build_part(PART)
    run = build_runner(module, PART.input_shape(2), runtime="compile", device="cpu", precision="fp32")
    assert run.compiled.graphs == 1 and run.compiled.calls == 1
    x = torch.randn(PART.input_shape(2), generator=torch.Generator().manual_seed(5))
    run.input.copy_(x)
    with torch.inference_mode():
        got = run()
        want = module(x)
    assert torch.allclose(got, want, atol=1e-5)
    assert run.compiled.calls == 2 and run.compiled.graphs == 1


def test_compile_failure_is_one_clear_error():
    class Breaks(torch.nn.Module):
        def forward(self, x):
            print("a graph break")  # fullgraph=True: an error, not a partly eager model
            return x + 1

    with pytest.raises(DeployvitError, match="torch.compile failed on Breaks"):
        build_runner(Breaks(), (2, 3), runtime="compile", device="cpu", precision="fp32")


@pytest.mark.parametrize("runtime, precision", [("eager", "fp32"), ("compile", "fp32"), ("onnxruntime", "fp16")])
def test_tf32_is_refused_where_it_means_nothing(runtime, precision):
    with pytest.raises(DeployvitError, match="tf32 applies to fp32 on the onnxruntime and tensorrt runtimes only"):
        build_runner(build_part(PART), PART.input_shape(1), runtime=runtime, device="cpu", precision=precision, tf32=True)
