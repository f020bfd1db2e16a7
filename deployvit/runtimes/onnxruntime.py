"""onnxruntime: the ONNX graph the exporter writes (float32 in and out, the model in its precision
inside the graph; a table part or whole model at its static shape by `export_for_timing`, the cheap
exporter with the same outputs, an artifact by `export_onnx`), run by an `OnnxRunner` whose bound
call (`bind`) is what a table entry and an export artifact are both timed with.

Providers are explicit and checked after the session opens: onnxruntime silently falls back to the
CPU when the CUDA provider cannot load, which would verify and time the wrong thing. Asking for CUDA
without the CUDA package (onnxruntime-gpu) is exit 2 with the install line, never CPU numbers
compared with a GPU budget."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from deployvit.errors import CheckFailed, DeployvitError, MissingDependency
from deployvit.runtimes.base import FileRuntime
from deployvit.settings import QUANTIZED_PRECISIONS
from exporters.onnx import export_for_timing, export_onnx, file_size, read_metadata
from exporters.quantize import export_quantized, quantize_part


class OnnxRuntime(FileRuntime):
    def check_installed(self, kind: str) -> None:
        """The package, and on CUDA its CUDA provider: the CPU package (`[cpu]`, pulled in by `[dev]`)
        and the CUDA one (`[gpu]`) provide the same module and must not be installed together
        (whichever was installed last owns the files)."""
        ort = self.import_package(kind)
        if kind == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            both = all(_installed(d) for d in self.record.distributions)
            mix = f" ({' and '.join(self.record.distributions)} are both installed: the CPU package's files won)" if both else ""
            raise MissingDependency(f"{self.record.package} {ort.__version__} has no CUDA provider{mix}: {self.record.install_line('cuda')}")

    def facts(self) -> dict:
        out = super().facts()
        if out.get(self.record.package):
            out[f"{self.record.package}_providers"] = self.import_package().get_available_providers()
        return out

    def write_part(self, module, work, input_shape, precision, tf32):
        if precision in QUANTIZED_PRECISIONS:  # the placement of an exported model, ranges from real-image inputs
            return quantize_part(module, work, input_shape, precision)
        return export_for_timing(module, work / f"part{self.record.artifact}", input_shape, precision)

    def write_quantized(self, model, spec, out_dir, stem):
        q = spec.quant
        result = export_quantized(model, out_dir / f"{stem}{self.record.artifact}", q.calibration, img_size=spec.img_size,
                                  in_chans=spec.in_chans, qtype=spec.precision, keep_fp=q.keep_fp, method=q.method, opset=spec.opset,
                                  dynamic_batch=(spec.batch.min, spec.batch.opt, spec.batch.max), dynamo=spec.dynamo, metadata=spec.metadata)
        note = (f"{spec.precision.upper()} Q/DQ graph (onnxruntime {result.onnxruntime_version} quantize_static, {result.method}) "
                f"quantised from {result.fp32_path.name}, kept beside it")
        return result.path, [note], result

    def graph_runner(self, spec):
        return graph_runner(spec.device, spec.threads)

    def write_artifact(self, model, spec, out_dir, stem):
        path = export_onnx(model, out_dir / f"{stem}{self.record.artifact}", img_size=spec.img_size, in_chans=spec.in_chans,
                           precision=spec.precision, opset=spec.opset, dynamic_batch=(spec.batch.min, spec.batch.opt, spec.batch.max),
                           dynamo=spec.dynamo, metadata=spec.metadata)
        return path, []

    def open(self, path, device, threads, tf32):
        return OnnxRunner(path, device, threads, tf32=tf32)

    def describe(self, runner) -> str:
        return f"{self.record.summary} {runner.provider}" + (" (TF32)" if runner.tf32 else "")

    def size(self, path: Path) -> int:
        return file_size(path)  # the graph and its external weights, if any


def graph_runner(device: str, threads: int | None = None):
    """Opens an ONNX graph in onnxruntime on `device` when it runs there (the CUDA provider
    installed), else on the CPU: the accuracy gate's sensitivity trials, whatever format the
    artifact is (they rank what quantisation does to each layer, not the runtime's kernels)."""
    from deployvit.runtimes import runtime_of

    try:
        where = runtime_of(OnnxRuntime).check(device, "fp32")
    except DeployvitError:
        where = "cpu"
    return lambda path: OnnxRunner(path, where, threads)


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def _torch_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    return torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index) if dev.type == "cuda" else dev


class OnnxRunner:
    """An onnxruntime session: `runner(images) -> logits` on torch tensors, and `runner.bind(x)`, the
    zero-argument call that timing uses. Latency-table entries and export artifacts both time
    `bind(x)`, so they are timed the same way.

    On CUDA TF32 is off (onnxruntime enables it by default) unless `tf32` is asked for, so fp32 means
    fp32. Inputs and outputs are torch buffers bound once per input shape (IO binding) on the
    session's device: a timed call runs the model and no host copies; `runner(x)` copies `x` into the
    bound input buffer first."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu", threads: int | None = None, tf32: bool = False):
        from deployvit.runtimes import runtime_of

        runtime = runtime_of(OnnxRuntime)
        kind = runtime.check(device, "fp32")  # the graph's precision is inside the file
        ort = runtime.import_package(kind)
        self.device = _torch_device(device)
        if kind == "cuda":
            providers: list = [("CUDAExecutionProvider", {"device_id": self.device.index, "use_tf32": int(tf32)}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.tf32 = bool(tf32) and kind == "cuda"
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only; failures surface as exceptions
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types (NOT_IMPLEMENTED, ...)
            precision = read_metadata(path).get("precision", "this")
            first = str(exc).strip().splitlines()[0]
            raise CheckFailed(f"onnxruntime ({kind}) cannot run the {precision} graph {Path(path).name}: {first}") from None
        wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        if self.session.get_providers()[0] != wanted:
            raise DeployvitError(f"onnxruntime fell back to {self.session.get_providers()[0]} instead of {wanted}")
        self.provider = wanted
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self._bound: dict[tuple[int, ...], BoundRun] = {}

    def bind(self, x: torch.Tensor) -> "BoundRun":
        """A zero-argument call running the model on `x`'s memory (moved to the session's device and
        made float32 contiguous once, here), its output in a torch buffer allocated once."""
        x = x.detach().to(device=self.device, dtype=torch.float32).contiguous()
        return BoundRun(self, x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        bound = self._bound.get(shape)
        if bound is None:
            bound = self._bound[shape] = self.bind(torch.empty(shape, dtype=torch.float32, device=self.device))
        bound.input.copy_(x.detach())
        if self.device.type == "cuda":  # the copy is queued on torch's stream; onnxruntime runs on its own
            torch.cuda.current_stream(self.device).synchronize()
        return bound().clone()


class BoundRun:
    """`OnnxRunner.bind`'s result: `run()` -> the bound output tensor (overwritten by the next call).

    `input` is the bound input buffer: refill it in place (`run.input.copy_(...)`) to run on new data."""

    def __init__(self, runner: OnnxRunner, x: torch.Tensor):
        session, dev = runner.session, runner.device
        where, index = dev.type, dev.index or 0
        out_shape = [d if isinstance(d, int) and d > 0 else None for d in session.get_outputs()[0].shape]
        if any(d is None for d in out_shape[1:]):
            raise DeployvitError(f"the ONNX output {runner.output_name} has no static shape after the batch dim: {out_shape}")
        out_shape[0] = x.shape[0]
        self.input = x
        self.output = torch.empty(out_shape, dtype=torch.float32, device=dev)
        self.binding = session.io_binding()
        self.binding.bind_input(runner.input_name, where, index, np.float32, tuple(x.shape), x.data_ptr())
        self.binding.bind_output(runner.output_name, where, index, np.float32, tuple(self.output.shape), self.output.data_ptr())
        self.session = session

    def __call__(self) -> torch.Tensor:
        # host-synchronous: run_with_iobinding returns when onnxruntime's own stream has finished
        self.session.run_with_iobinding(self.binding)
        return self.output
