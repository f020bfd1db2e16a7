"""tensorrt: an engine built by `exporters.tensorrt.build_engine` (TensorRT 10 or 11, strongly typed
from the low-precision ONNX graph on both) and run by a `TrtRunner` on torch CUDA tensors, whose
bound call (`bind`) is what a table entry and an export artifact are both timed with.

NOTE: written against the TensorRT 10/11 Python API; not run in the project's CI (no GPU, no TensorRT).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from deployvit.errors import CheckFailed, DeployvitError, MissingDependency
from deployvit.runtimes.base import FileRuntime
from exporters.onnx import export_onnx
from exporters.tensorrt import SUPPORTED_MAJORS, build_engine, plan_build, trt_major


class TensorRT(FileRuntime):
    def import_package(self, kind: str = "cpu"):
        """The `tensorrt` module, or MissingDependency (exit 2) with the install line when it is
        missing or of a major version whose API this code does not use."""
        trt = super().import_package(kind)
        if trt_major(trt.__version__) not in SUPPORTED_MAJORS:
            need = " or ".join(f"{m}.x" for m in SUPPORTED_MAJORS)
            raise MissingDependency(f"{self.record.package} {trt.__version__} is not supported (need {need}): {self.record.install}")
        return trt

    def plan(self, precision: str, tf32: bool):
        return plan_build(trt_major(self.import_package().__version__), precision, tf32=tf32)

    def write_part(self, module, work, input_shape, precision, tf32):
        plan = self.plan(precision, tf32)
        onnx_path = export_onnx(module, work / "part.onnx", input_shape=input_shape, precision=plan.onnx_precision)
        engine = work / f"part{self.record.artifact}"
        batch = input_shape[0]
        build_engine(self.import_package(), onnx_path, engine, precision=precision, batch_range=(batch, batch, batch),
                     graph_precision=plan.onnx_precision, tf32=tf32)
        return engine

    def write_artifact(self, model, spec, out_dir, stem):
        plan = self.plan(spec.precision, spec.tf32)
        batch = (spec.batch.min, spec.batch.opt, spec.batch.max)
        # `export` builds from model.onnx (docs/DESIGN.md section 3); `benchmark` from <stem>.trt.onnx, so it
        # never replaces the verified graph of its onnx row
        onnx_path = export_onnx(model, out_dir / f"{stem}{spec.trt_onnx_suffix}", img_size=spec.img_size, in_chans=spec.in_chans,
                                precision=plan.onnx_precision, opset=spec.opset, dynamic_batch=batch, dynamo=spec.dynamo,
                                metadata=spec.metadata)
        engine = out_dir / f"{stem}{self.record.artifact}"
        sidecar = build_engine(self.import_package(), onnx_path, engine, precision=spec.precision, batch_range=batch,
                               workspace_gb=spec.workspace_gb, timing_cache=spec.timing_cache, graph_precision=plan.onnx_precision,
                               tf32=spec.tf32)
        return engine, [f"TensorRT {sidecar['tensorrt']} ({plan.path}) from {plan.onnx_precision} ONNX {onnx_path.name}"]

    def open(self, path, device, threads, tf32):
        return TrtRunner(path)


def import_tensorrt():
    """The checked `tensorrt` module (see `TensorRT.import_package`)."""
    from deployvit.runtimes import runtime_of

    return runtime_of(TensorRT).import_package()


class TrtRunner:
    """Runs a serialized engine on torch CUDA tensors: `runner(x) -> logits` on the current stream.

    Buffers are torch tensors, so no pycuda / cuda-python is needed, and the timing loop can time a
    call exactly like a PyTorch module's."""

    def __init__(self, engine_path: str | os.PathLike):
        from deployvit.runtimes import runtime_of

        runtime = runtime_of(TensorRT)
        runtime.check("cuda")  # installed and supported, and a CUDA GPU here
        trt = runtime.import_package()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise DeployvitError(f"cannot load TensorRT engine {engine_path} (built with another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise DeployvitError(f"{engine_path}: expected one input and one output, got {inputs} -> {outputs}")
        (self.input_name,), (self.output_name,) = inputs, outputs
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16}
        self.input_dtype = dtypes[self.engine.get_tensor_dtype(self.input_name)]
        self.output_dtype = dtypes[self.engine.get_tensor_dtype(self.output_name)]
        self._bound: dict[tuple[int, ...], BoundEngine] = {}

    def bind(self, x) -> "BoundEngine":
        """A zero-argument call running the engine on `x`'s memory (moved to CUDA in the engine's
        input dtype once, here) into an output buffer allocated once: what timing calls."""
        x = x.detach().to(device="cuda", dtype=self.input_dtype).contiguous()
        return BoundEngine(self, x)

    def __call__(self, x):
        """logits (float32) of `x`; copies `x` into the bound input buffer of its shape."""
        shape = tuple(x.shape)
        bound = self._bound.get(shape)
        if bound is None:
            bound = self._bound[shape] = self.bind(torch.empty(shape, dtype=self.input_dtype, device="cuda"))
        bound.input.copy_(x.detach())
        return bound().float().clone()


class BoundEngine:
    """`TrtRunner.bind`'s result: `run()` queues the engine on torch's current stream and returns
    the bound output (overwritten by the next call). `input` is the bound input buffer."""

    def __init__(self, runner: TrtRunner, x):
        context = runner.context
        if not context.set_input_shape(runner.input_name, tuple(x.shape)):
            raise DeployvitError(f"input shape {tuple(x.shape)} is outside the engine's optimisation profile")
        self.input, self.context = x, context
        self.output = torch.empty(tuple(context.get_tensor_shape(runner.output_name)), dtype=runner.output_dtype, device="cuda")
        self._names = (runner.input_name, runner.output_name)

    def __call__(self):
        # one execution context serves every bound shape of a runner: set shape and addresses per call
        # (host-side bookkeeping, microseconds), then queue the engine on torch's stream
        inp, out = self._names
        self.context.set_input_shape(inp, tuple(self.input.shape))
        self.context.set_tensor_address(inp, self.input.data_ptr())
        self.context.set_tensor_address(out, self.output.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise CheckFailed("TensorRT execution failed")
        return self.output
