"""Runtimes a latency can be measured in, behind one interface: `build_runner(module, input_shape,
runtime=..., device=..., precision=...) -> run`, a zero-argument callable that `timing.time_callable`
times. Parts and whole models go through the same function, so a table's entries and its
end-to-end calibration measurements are produced the same way (DESIGN.md section 4).

- eager: the module as is. On a GPU at small batch this is launch bound and cannot rank archs.
- cudagraph: the module captured once as a CUDA graph and replayed (no per-kernel launch cost).
- compile: `torch.compile` (inductor, default mode, static shapes).
- onnxruntime: exported to ONNX (static shape, float32 in/out, the model in `precision` inside the
  graph), run with explicit providers; the active provider is checked because onnxruntime silently
  falls back to the CPU when its CUDA provider cannot load. Inputs/outputs are bound once (IO binding).
- tensorrt: the same ONNX file built into an engine by `exporters.tensorrt` (TensorRT 10 or 11).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from deployvit.errors import DeployvitError, MissingDependency

RUNTIMES = ("eager", "cudagraph", "compile", "onnxruntime", "tensorrt")
CUDA_ONLY = ("cudagraph", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

Run = Callable[[], object]


def check_runtime(runtime: str, device: str, precision: str) -> None:
    """Refuse an unknown name, or a runtime this machine cannot run, with one clear line."""
    if runtime not in RUNTIMES:
        raise DeployvitError(f"unknown runtime {runtime!r} (choose from {', '.join(RUNTIMES)})")
    if precision not in PRECISIONS:
        raise DeployvitError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if device not in ("cpu", "cuda"):
        raise DeployvitError(f"unknown device {device!r} (cpu or cuda)")
    if runtime == "onnxruntime":  # what to install comes first: it is true on any machine
        ort = _import_onnxruntime()
    if runtime == "tensorrt":
        from exporters.tensorrt import import_tensorrt

        import_tensorrt()
    if device == "cuda" and not torch.cuda.is_available():
        raise DeployvitError(f"runtime {runtime} on cuda needs a CUDA GPU and a CUDA build of torch; none found")
    if runtime in CUDA_ONLY and device != "cuda":
        raise DeployvitError(f"runtime {runtime} needs a CUDA GPU (this run is on {device}); use eager, compile or onnxruntime")
    if runtime == "onnxruntime" and device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise MissingDependency("onnxruntime has no CUDA provider: pip uninstall onnxruntime && pip install onnxruntime-gpu")


def runtime_version(runtime: str) -> str:
    """Version string of the software doing the work (recorded in table metadata)."""
    if runtime == "onnxruntime":
        return _import_onnxruntime().__version__
    if runtime == "tensorrt":
        from exporters.tensorrt import import_tensorrt

        return import_tensorrt().__version__
    return torch.__version__


def build_runner(
    module: nn.Module,
    input_shape: tuple[int, ...],
    *,
    runtime: str,
    device: str,
    precision: str,
    threads: int | None = None,
) -> Run:
    """A zero-argument callable running `module` on a fixed random input of `input_shape`.

    `threads` only matters for onnxruntime on the CPU (its intra-op pool); torch's CPU threads are
    the caller's (`torch.set_num_threads`), as they are process-wide."""
    check_runtime(runtime, device, precision)
    module = module.eval()
    if runtime in ("onnxruntime", "tensorrt"):
        return _exported_runner(module, input_shape, runtime, device, precision, threads)
    dtype = DTYPES[precision]
    module = module.to(device=device, dtype=dtype)
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    if runtime == "eager":
        return lambda: module(x)
    if runtime == "compile":
        compiled = torch.compile(module, dynamic=False)
        return lambda: compiled(x)
    return _cuda_graph(module, x)


def _cuda_graph(module: nn.Module, x: torch.Tensor) -> Run:
    """Capture one forward as a CUDA graph (after warm-up on a side stream, as torch requires)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(side):
        for _ in range(3):
            module(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        graph_out = module(x)  # noqa: F841  (kept alive by the graph's memory pool)
    return graph.replay


class _Float32IO(nn.Module):
    """Run `inner` in `dtype` behind float32 input and output, like a deployed artifact (and like
    `exporters.onnx.export_onnx`), so every exported graph takes and returns the same tensors."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner, self.dtype = inner.to(dtype), dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(self.dtype)).float()


def export_static(module: nn.Module, input_shape: tuple[int, ...], path: Path, precision: str) -> Path:
    """ONNX export with a static input shape (a table is per batch size) for any module, part or
    whole model; fp16/bf16 graphs get `exporters.onnx.make_low_precision_safe`.

    `exporters.onnx.export_onnx` is image-input only, so parts (token input) cannot go through it."""
    import onnx

    from exporters.onnx import ONNX_DTYPES, default_opset, make_low_precision_safe

    net = _Float32IO(module.float().cpu().eval(), DTYPES[precision]).eval() if precision != "fp32" else module.float().cpu().eval()
    example = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            program = torch.onnx.export(net, (example,), dynamo=True, verbose=False, opset_version=default_opset(precision))
    except Exception as exc:  # the exporter raises many types; one line is what the user needs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DeployvitError(f"ONNX export for timing failed: {first}") from None
    proto = program.model_proto
    if precision != "fp32":
        make_low_precision_safe(proto, ONNX_DTYPES[precision])
    onnx.save(proto, str(path))
    return path


def _exported_runner(module: nn.Module, input_shape: tuple[int, ...], runtime: str, device: str, precision: str, threads: int | None) -> Run:
    with tempfile.TemporaryDirectory(prefix="deployvit-timing-") as work:
        onnx_path = Path(work) / "part.onnx"
        if runtime == "onnxruntime":
            export_static(module, input_shape, onnx_path, precision)
            return _onnxruntime_runner(onnx_path, input_shape, device, threads)
        from exporters.tensorrt import TrtRunner, build_engine, import_tensorrt, plan_build, trt_major

        plan = plan_build(trt_major(import_tensorrt().__version__), precision)
        export_static(module, input_shape, onnx_path, plan.onnx_precision)
        engine = Path(work) / "part.engine"
        batch = input_shape[0]
        build_engine(onnx_path, engine, precision=precision, batch_range=(batch, batch, batch), graph_precision=plan.onnx_precision)
        runner = TrtRunner(engine)  # deserialised: the files can go
    x = torch.randn(input_shape, device="cuda")
    return lambda: runner(x)


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependency("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu for CUDA)") from None
    return onnxruntime


def _onnxruntime_runner(path: Path, input_shape: tuple[int, ...], device: str, threads: int | None) -> Run:
    """A session with explicit providers, checked, and IO bound once so a call times only the model."""
    ort = _import_onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    wanted = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    providers: list = [(wanted, {"use_tf32": 0}) if device == "cuda" else wanted]
    session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    if session.get_providers()[0] != wanted:
        raise DeployvitError(f"onnxruntime fell back to {session.get_providers()[0]} instead of {wanted}; refusing to time the wrong device")
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    binding = session.io_binding()
    binding.bind_input(session.get_inputs()[0].name, device, 0, np.float32, tuple(x.shape), x.data_ptr())
    binding.bind_output(session.get_outputs()[0].name, device)
    keep = (session, x)  # x's memory is bound; keep it alive with the session

    def run() -> None:
        keep[0].run_with_iobinding(binding)

    return run
