"""Runtimes: each CPU runtime runs a real part; the ONNX graph timed computes what the module does;
GPU runtimes are real code paths tested only where CUDA exists."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deployvit.errors import DeployvitError
from deployvit.latency.runtimes import build_runner, check_runtime
from deployvit.latency.timing import time_callable
from deployvit.models import build_part
from deployvit.parts import BlockPart
from exporters.onnx import export_onnx

PART = BlockPart(tokens=17, embed_dim=32, num_heads=2, head_dim=16, mlp_hidden=64)


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


def test_onnxruntime_runner_is_timeable():
    run = build_runner(build_part(PART), PART.input_shape(1), runtime="onnxruntime", device="cpu", precision="fp32", threads=1)
    t = time_callable(run, device="cpu", warmup_s=0.0, repeats=5, cv_warn=float("inf"))
    assert t.repeats == 5 and t.median_us > 0


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
def test_gpu_runtimes_match_eager(runtime):
    torch.manual_seed(0)
    module = build_part(PART)
    x = torch.randn(PART.input_shape(4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = module(x).cuda().half()
    run = build_runner(module, PART.input_shape(4), runtime=runtime, device="cuda", precision="fp16")
    t = time_callable(run, device="cuda", warmup_s=0.05, repeats=10)
    assert t.median_us > 0
    torch.cuda.empty_cache()  # a graph whose input had been freed would now read reused memory
    torch.randn(1 << 20, device="cuda")
    with torch.no_grad():
        out = run()
    assert torch.allclose(out.float(), want.float(), atol=5e-2)


@pytest.mark.gpu
def test_onnxruntime_cuda_refuses_cpu_fallback_or_runs():
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(DeployvitError, match="onnxruntime-gpu"):
            check_runtime("onnxruntime", "cuda", "fp16")
        return
    run = build_runner(build_part(PART), PART.input_shape(1), runtime="onnxruntime", device="cuda", precision="fp16")
    assert time_callable(run, device="cuda", warmup_s=0.05, repeats=5).median_us > 0


@pytest.mark.gpu
def test_tensorrt_runner():
    pytest.importorskip("tensorrt")
    run = build_runner(build_part(PART), PART.input_shape(1), runtime="tensorrt", device="cuda", precision="fp16")
    assert time_callable(run, device="cuda", warmup_s=0.05, repeats=5).median_us > 0
