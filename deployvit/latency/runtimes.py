"""Runtimes a latency can be measured in, behind one interface: `build_runner(module, input_shape,
runtime=..., device=..., precision=...) -> run`, a zero-argument callable that `timing.time_callable`
times. Parts and whole models go through the same function, so a table's entries and its
end-to-end calibration measurements are produced the same way (DESIGN.md section 4). Every `run`
has `run.input`, the buffer it reads: refill it in place to run on other data.

- eager: the module as is. On a GPU at small batch this is launch bound and cannot rank archs.
- cudagraph: the module captured once as a CUDA graph and replayed (no per-kernel launch cost).
- compile: `torch.compile` (inductor, default mode, static shapes, one whole graph). torch.compile
  allows 8 recompilations per function and then silently runs eager code; a profile compiles every
  block shape and arch in one process (autoformer-tiny: 18 block shapes, 60 archs), so each runner
  starts from a reset compiler cache, its compile is counted by a recording backend, and every call
  of `run` is counted as it enters compiled code (`run.compiled`): a runner whose first call did not
  run compiled code is refused instead of timed.
- onnxruntime: exported by `exporters.onnx.export_onnx` (static shape, float32 in/out, the model in
  `precision` inside the graph) and run by `exporters.onnx.OnnxRunner.bind`, the same bound call
  export artifacts are timed with (explicit, checked providers; IO bound once).
- tensorrt: the same ONNX file built into an engine by `exporters.tensorrt` (TensorRT 10 or 11,
  strongly typed from the low-precision graph on both).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from deployvit.errors import DeployvitError
from deployvit.latency.timing import capture_cuda_graph
from exporters.onnx import PRECISIONS, TORCH_DTYPES, OnnxRunner, check_onnxruntime_device, export_onnx, import_onnxruntime

RUNTIMES = ("eager", "cudagraph", "compile", "onnxruntime", "tensorrt")
CUDA_ONLY = ("cudagraph", "tensorrt")

Run = Callable[[], object]


def _device_type(device: str | torch.device) -> str:
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        kind = None
    if kind not in ("cpu", "cuda"):
        raise DeployvitError(f"unknown device {device!r} (cpu or cuda)")
    return kind


def check_runtime(runtime: str, device: str | torch.device, precision: str) -> None:
    """Refuse an unknown name, or a runtime this machine cannot run, with one clear line. What to
    install is said first: it is true on any machine (onnxruntime on CUDA without onnxruntime-gpu is
    exit 2 with the install line, also on a machine without a GPU)."""
    if runtime not in RUNTIMES:
        raise DeployvitError(f"unknown runtime {runtime!r} (choose from {', '.join(RUNTIMES)})")
    if precision not in PRECISIONS:
        raise DeployvitError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    kind = _device_type(device)
    if runtime == "onnxruntime":
        check_onnxruntime_device(kind)
    if runtime == "tensorrt":
        from exporters.tensorrt import import_tensorrt

        import_tensorrt()
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeployvitError(f"runtime {runtime} on cuda needs a CUDA GPU and a CUDA build of torch; none found")
    if runtime in CUDA_ONLY and kind != "cuda":
        raise DeployvitError(f"runtime {runtime} needs a CUDA GPU (this run is on {kind}); use eager, compile or onnxruntime")


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
    device: str | torch.device,
    precision: str,
    threads: int | None = None,
    tf32: bool = False,
) -> Run:
    """A zero-argument callable running `module` on a fixed random input of `input_shape`.

    `threads` only matters for onnxruntime on the CPU (its intra-op pool); torch's CPU threads are
    the caller's (`torch.set_num_threads`), as they are process-wide. `tf32` lets fp32 matmuls of
    onnxruntime and TensorRT on CUDA use TF32 (off by default: fp32 means fp32)."""
    check_runtime(runtime, device, precision)
    if tf32 and (runtime not in ("onnxruntime", "tensorrt") or precision != "fp32"):
        raise DeployvitError("tf32 applies to fp32 on the onnxruntime and tensorrt runtimes only "
                             f"(got {runtime} {precision}; torch's TF32 is its process-wide allow_tf32 setting)")
    device = torch.device(device)
    module = module.eval()
    if runtime in ("onnxruntime", "tensorrt"):
        return _exported_runner(module, input_shape, runtime, device, precision, threads, tf32)
    dtype = TORCH_DTYPES[precision]
    module = module.to(device=device, dtype=dtype)
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    if runtime == "eager":
        return _with_input(lambda: module(x), x)
    if runtime == "compile":
        return compiled_runner(module, x)
    return _with_input(capture_cuda_graph(module, x), x)


def _with_input(run: Callable[[], object], x: torch.Tensor) -> Run:
    run.input = x
    return run


@dataclass
class CompileRecord:
    """What torch.compile did for one runner: graphs the inductor backend compiled, and calls that
    entered compiled code (the eager fallback never reaches the backend's callable)."""

    graphs: int = 0
    calls: int = 0


def compiled_runner(module: nn.Module, x: torch.Tensor) -> Run:
    """`torch.compile(module)` on `x`, compiled now, proven to run compiled code.

    The compiler's caches are reset first, so this module's compile is never the one past dynamo's
    recompile limit (which would run eager code without a word); `fullgraph=True` makes a graph break
    an error instead of a partly eager model. Resetting makes earlier compiled runners compile again
    on their next call: build a runner, time it, then build the next (as every caller does)."""
    import torch._dynamo

    torch._dynamo.reset()
    record = CompileRecord()
    inductor = torch._dynamo.lookup_backend("inductor")

    def backend(graph_module, example_inputs):
        compiled_fn = inductor(graph_module, example_inputs)
        record.graphs += 1

        def counted(*args):
            record.calls += 1
            return compiled_fn(*args)

        if getattr(compiled_fn, "_boxed_call", False):  # keep the calling convention dynamo expects
            counted._boxed_call = True
        return counted

    compiled = torch.compile(module, backend=backend, dynamic=False, fullgraph=True)
    try:
        with torch.inference_mode():  # the grad mode the timing loop runs in: no recompile there
            compiled(x)
    except Exception as exc:  # dynamo/inductor raise many types; the user needs the first line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DeployvitError(f"torch.compile failed on {type(module).__name__} with input {tuple(x.shape)}: {first}") from None
    if record.graphs < 1 or record.calls < 1:
        raise DeployvitError(f"torch.compile ran eager code for {type(module).__name__} with input {tuple(x.shape)}; refusing to time it")

    def run():
        return compiled(x)

    run.compiled = record
    return _with_input(run, x)


def _exported_runner(module: nn.Module, input_shape: tuple[int, ...], runtime: str, device: torch.device, precision: str,
                     threads: int | None, tf32: bool) -> Run:
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix="deployvit-timing-") as work:
        onnx_path = Path(work) / "part.onnx"
        if runtime == "onnxruntime":
            export_onnx(module, onnx_path, input_shape=input_shape, precision=precision)
            return OnnxRunner(onnx_path, device, threads, tf32=tf32).bind(x)  # the session holds the model
        from exporters.tensorrt import TrtRunner, build_engine, import_tensorrt, plan_build, trt_major

        plan = plan_build(trt_major(import_tensorrt().__version__), precision, tf32=tf32)
        export_onnx(module, onnx_path, input_shape=input_shape, precision=plan.onnx_precision)
        engine = Path(work) / "part.engine"
        batch = input_shape[0]
        build_engine(onnx_path, engine, precision=precision, batch_range=(batch, batch, batch),
                     graph_precision=plan.onnx_precision, tf32=tf32)
        runner = TrtRunner(engine)  # deserialised: the files can go
    return runner.bind(x)


def file_runner(path: Path, input_shape: tuple[int, ...], *, runtime: str, device: str, threads: int | None = None,
                tf32: bool = False) -> Run:
    """An exported artifact (an ONNX file or a TensorRT engine) timed exactly like a table entry of
    `runtime` (the same bound call on a fixed random input): export's latency contract and the
    table then measure the same thing."""
    check_runtime(runtime, device, "fp32")  # the precision is inside the file
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
    if runtime == "onnxruntime":
        return OnnxRunner(path, torch.device(device), threads, tf32=tf32).bind(x)
    if runtime == "tensorrt":
        from exporters.tensorrt import TrtRunner

        return TrtRunner(path).bind(x)
    raise DeployvitError(f"runtime {runtime} runs modules, not files")
