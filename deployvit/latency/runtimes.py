"""Runtimes a latency can be measured in, behind one interface: `build_runner(module, input_shape,
runtime=..., device=..., precision=...) -> run`, a zero-argument callable that `timing.time_callable`
times. Parts and whole models go through the same function, so a table's entries and its
end-to-end calibration measurements are produced the same way (DESIGN.md section 4).

- eager: the module as is. On a GPU at small batch this is launch bound and cannot rank archs.
- cudagraph: the module captured once as a CUDA graph and replayed (no per-kernel launch cost).
- compile: `torch.compile` (inductor, default mode, static shapes).
- onnxruntime: exported by `exporters.onnx.export_onnx` (static shape, float32 in/out, the model in
  `precision` inside the graph) and run in `exporters.onnx.OnnxRunner`'s session (explicit, checked
  providers), with inputs/outputs bound once (IO binding).
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
from deployvit.latency.timing import capture_cuda_graph
from exporters.onnx import PRECISIONS, TORCH_DTYPES, OnnxRunner, export_onnx, import_onnxruntime

RUNTIMES = ("eager", "cudagraph", "compile", "onnxruntime", "tensorrt")
CUDA_ONLY = ("cudagraph", "tensorrt")

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
        ort = import_onnxruntime()
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
        return import_onnxruntime().__version__
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
    dtype = TORCH_DTYPES[precision]
    module = module.to(device=device, dtype=dtype)
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    if runtime == "eager":
        return lambda: module(x)
    if runtime == "compile":
        compiled = torch.compile(module, dynamic=False)
        return lambda: compiled(x)
    return capture_cuda_graph(module, x)


def _exported_runner(module: nn.Module, input_shape: tuple[int, ...], runtime: str, device: str, precision: str, threads: int | None) -> Run:
    with tempfile.TemporaryDirectory(prefix="deployvit-timing-") as work:
        onnx_path = Path(work) / "part.onnx"
        if runtime == "onnxruntime":
            export_onnx(module, onnx_path, input_shape=input_shape, precision=precision)
            return _onnxruntime_runner(onnx_path, input_shape, device, threads)
        from exporters.tensorrt import TrtRunner, build_engine, import_tensorrt, plan_build, trt_major

        plan = plan_build(trt_major(import_tensorrt().__version__), precision)
        export_onnx(module, onnx_path, input_shape=input_shape, precision=plan.onnx_precision)
        engine = Path(work) / "part.engine"
        batch = input_shape[0]
        build_engine(onnx_path, engine, precision=precision, batch_range=(batch, batch, batch), graph_precision=plan.onnx_precision)
        runner = TrtRunner(engine)  # deserialised: the files can go
    x = torch.randn(input_shape, device="cuda")
    return lambda: runner(x)


def file_runner(path: Path, input_shape: tuple[int, ...], *, runtime: str, device: str, threads: int | None = None) -> Run:
    """An exported artifact (an ONNX file or a TensorRT engine) timed exactly like a table entry of
    `runtime`: the export's latency contract and the table then measure the same thing."""
    check_runtime(runtime, device, "fp32")  # the precision is inside the file
    if runtime == "onnxruntime":
        return _onnxruntime_runner(path, input_shape, device, threads)
    if runtime == "tensorrt":
        from exporters.tensorrt import TrtRunner

        runner = TrtRunner(path)
        x = torch.randn(input_shape, device="cuda")
        return lambda: runner(x)
    raise DeployvitError(f"runtime {runtime} runs modules, not files")


def _onnxruntime_runner(path: Path, input_shape: tuple[int, ...], device: str, threads: int | None) -> Run:
    """`exporters.onnx.OnnxRunner`'s checked session, with input and output bound once (IO binding)
    so a call times only the model."""
    session = OnnxRunner(path, device, threads).session
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    binding = session.io_binding()
    binding.bind_input(session.get_inputs()[0].name, device, 0, np.float32, tuple(x.shape), x.data_ptr())
    binding.bind_output(session.get_outputs()[0].name, device)
    keep = (session, x)  # x's memory is bound; keep it alive with the session

    def run() -> None:
        keep[0].run_with_iobinding(binding)

    return run
