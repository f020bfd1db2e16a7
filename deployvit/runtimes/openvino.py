"""openvino: an OpenVINO IR (`model.xml` + `model.bin`) run by OpenVINO's CPU plugin, whose bound
call (`bind`) is what a table entry and an export artifact are both timed with.

The IR is converted from the ONNX graph deployvit's exporter writes (`ov.convert_model` on the
`.onnx` file), not from the PyTorch module: that graph is the one `export --format onnx` verifies
and ships (opset 20, one LayerNormalization node, dynamic batch), so both formats start from the
same traced model; OpenVINO's PyTorch frontend would trace the model a second way (TorchScript or
torch.export), and its ONNX frontend is its most used one. Measured here, converting a `test` block
costs about 0.7 s of CPU either way, and both give the module's outputs within 3e-7.

Precision is an execution choice in OpenVINO, not a property of the graph: the IR is always the fp32
graph (weights kept fp32), the precision is recorded in the IR (`rt_info` deployvit/precision) and
applied as `INFERENCE_PRECISION_HINT` when the file is compiled, and checked back on the compiled
model. fp32 is asked for explicitly, because OpenVINO's default on CPUs with bf16 units (AMX) is
bf16. fp16 and bf16 run only where the CPU plugin reports the capability (`OPTIMIZATION_CAPABILITIES`
FP16 / BF16); elsewhere they are refused in one line rather than silently run in fp32. int8 is the one
precision that is in the graph: the IR is converted from the Q/DQ ONNX graph `exporters.quantize`
writes (calibrated on real images), whose Q/DQ pairs become FakeQuantize nodes that the CPU plugin's
low-precision transformations fuse into int8 FullyConnected and MatMul kernels (capability INT8; no
NNCF needed), the float parts compiled in f32. OpenVINO
runs on Intel GPUs and NPUs too; deployvit times CPUs (and CUDA GPUs, which OpenVINO does not run).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from deployvit.errors import CheckFailed, DeployvitError, MissingDependency
from deployvit.runtimes.base import FileRuntime
from deployvit.settings import QUANTIZED_PRECISIONS
from exporters.onnx import export_for_timing, export_onnx
from exporters.quantize import export_quantized, quantize_part

PLUGIN = "CPU"
PRECISION_KEY = ["deployvit", "precision"]  # where the IR records the precision it is compiled in
#: OpenVINO's element types; int8's float parts run in f32 (its int8 comes from the graph's Q/DQ, below)
HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}
CAPABILITY = {"fp16": "FP16", "bf16": "BF16", "int8": "INT8"}


class OpenVino(FileRuntime):
    def check_precision(self, kind: str, precision: str) -> None:
        if precision not in CAPABILITY:
            return
        caps = self.import_package().Core().get_property(PLUGIN, "OPTIMIZATION_CAPABILITIES")
        if CAPABILITY[precision] not in caps:
            raise MissingDependency(f"runtime {self.name}: this CPU has no {precision} support in OpenVINO "
                                    f"(its capabilities: {', '.join(caps)}); use fp32")

    def write_part(self, module, work, input_shape, precision, tf32):
        if precision in QUANTIZED_PRECISIONS:
            graph = quantize_part(module, work, input_shape, precision)  # the Q/DQ graph an int8 export converts
        else:
            graph = export_for_timing(module, work / "part.onnx", input_shape)  # fp32: the precision is a compile hint
        return self._write_ir(graph, work / f"part{self.record.artifact}", precision)

    def write_quantized(self, model, spec, out_dir, stem):
        """int8: the Q/DQ graph `exporters.quantize` writes (kept as `<stem>.openvino.onnx`, beside its
        fp32 source, never in place of an onnx row's model.onnx), converted to an IR whose
        FakeQuantize nodes OpenVINO's CPU plugin runs as int8 kernels (its low-precision
        transformations; no NNCF needed), the float parts in f32."""
        q = spec.quant
        result = export_quantized(model, out_dir / f"{stem}.openvino.onnx", q.calibration, img_size=spec.img_size, in_chans=spec.in_chans,
                                  qtype=spec.precision, keep_fp=q.keep_fp, method=q.method, opset=spec.opset,
                                  dynamic_batch=(spec.batch.min, spec.batch.opt, spec.batch.max), dynamo=spec.dynamo, metadata=spec.metadata)
        path = self._write_ir(result.path, out_dir / f"{stem}{self.record.artifact}", spec.precision)
        ov = self.import_package()
        return path, [f"OpenVINO {ov.__version__} IR from the {spec.precision} Q/DQ ONNX graph {result.path.name} (FakeQuantize, "
                      f"float parts in f32)"], result

    def graph_runner(self, spec):
        from deployvit.runtimes.onnxruntime import graph_runner

        return graph_runner("cpu", spec.threads)

    def write_artifact(self, model, spec, out_dir, stem):
        with tempfile.TemporaryDirectory(prefix="deployvit-openvino-") as work:  # never beside an onnx row's model.onnx
            graph = export_onnx(model, Path(work) / f"{stem}.onnx", img_size=spec.img_size, in_chans=spec.in_chans, opset=spec.opset,
                                dynamic_batch=(spec.batch.min, spec.batch.opt, spec.batch.max), dynamo=spec.dynamo,
                                metadata=spec.metadata)
            path = self._write_ir(graph, out_dir / f"{stem}{self.record.artifact}", spec.precision)
        ov = self.import_package()
        return path, [f"OpenVINO {ov.__version__} IR from the fp32 ONNX graph, compiled with inference precision {HINTS[spec.precision]}"]

    def _write_ir(self, onnx_path: Path, path: Path, precision: str) -> Path:
        """Convert the ONNX graph and save the IR at `path` (weights in `<stem>.bin` beside it),
        written in a temporary folder and moved in, the `.xml` last."""
        ov = self.import_package()
        try:
            model = ov.convert_model(str(onnx_path))
        except Exception as exc:  # the frontends raise their own types; the user needs the first line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckFailed(f"OpenVINO could not convert {onnx_path.name}: {first}") from None
        model.set_rt_info(precision, PRECISION_KEY)
        path.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            ov.save_model(model, str(work / path.name), compress_to_fp16=False)
            os.replace(work / path.with_suffix(".bin").name, path.with_suffix(".bin"))
            os.replace(work / path.name, path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return path

    def open(self, path, device, threads, tf32):
        return OvRunner(path, device, threads)

    def describe(self, runner) -> str:
        return f"OpenVINO {PLUGIN} ({runner.precision})"

    def size(self, path: Path) -> int:
        return path.stat().st_size + path.with_suffix(".bin").stat().st_size


class OvRunner:
    """A compiled IR: `runner(images) -> logits` on torch tensors, and `runner.bind(x)`, the
    zero-argument call timing uses (input and output torch buffers shared with OpenVINO's tensors, so
    a timed call copies nothing)."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu", threads: int | None = None):
        from deployvit.runtimes import runtime_of

        runtime = runtime_of(OpenVino)
        ov = runtime.import_package()
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:  # a missing .bin, a file of another format
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DeployvitError(f"cannot read OpenVINO IR {path}: {first}") from None
        self.precision = model.get_rt_info(PRECISION_KEY).astype(str) if model.has_rt_info(PRECISION_KEY) else "fp32"
        runtime.check(device, self.precision)
        config = {"INFERENCE_PRECISION_HINT": HINTS[self.precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, PLUGIN, config)
        got = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if got != HINTS[self.precision]:
            raise DeployvitError(f"OpenVINO compiled {Path(path).name} with inference precision {got}, not {HINTS[self.precision]}")
        dims = self.compiled.output(0).get_partial_shape()
        if any(d.is_dynamic for d in list(dims)[1:]):
            raise DeployvitError(f"the OpenVINO output has no static shape after the batch dim: {dims}")
        self.out_dims = [d.get_length() for d in list(dims)[1:]]
        self._ov = ov
        self._bound: dict[tuple[int, ...], BoundInfer] = {}

    def bind(self, x: torch.Tensor) -> "BoundInfer":
        """A zero-argument call running the model on `x`'s memory (made float32 contiguous on the CPU
        once, here) into an output buffer allocated once."""
        return BoundInfer(self, x.detach().to(device="cpu", dtype=torch.float32).contiguous())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        bound = self._bound.get(shape)
        if bound is None:
            bound = self._bound[shape] = self.bind(torch.empty(shape, dtype=torch.float32))
        bound.input.copy_(x.detach())
        return bound().clone()


class BoundInfer:
    """`OvRunner.bind`'s result: `run()` -> the bound output tensor (overwritten by the next call).
    `input` is the bound input buffer: refill it in place to run on new data."""

    def __init__(self, runner: OvRunner, x: torch.Tensor):
        ov = runner._ov
        self.input = x
        self.output = torch.empty([x.shape[0], *runner.out_dims], dtype=torch.float32)
        self.request = runner.compiled.create_infer_request()
        self.request.set_input_tensor(ov.Tensor(self.input.numpy(), shared_memory=True))
        self.request.set_output_tensor(ov.Tensor(self.output.numpy(), shared_memory=True))

    def __call__(self) -> torch.Tensor:
        self.request.infer()  # synchronous, in the calling thread with one inference thread
        return self.output
