"""Export, verify and time one model in one format: the row behind every line of `deployvit export`
and `deployvit benchmark`.

Timing goes through the codebase's one timing loop (`deployvit.latency.timing.time_callable`):
latency is the median at batch 1, throughput is images/s at the largest batch the artifact accepts.
The latency contract (measured like its table, beside the table's prediction and the budget) is
`deployvit.contract`'s, which sits above this package and the latency tables.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from deployvit.errors import CheckFailed, DeployvitError, MissingDependency
from deployvit.latency.settings import MeasureSettings
from exporters import onnx as onnx_export
from exporters import tensorrt as trt_export
from exporters.onnx import BatchSpec, CastModel, ExportFailed, OnnxRunner
from exporters.report import EXPORT_FAILED, REFERENCE, UNVERIFIED, VERIFIED, VERIFY_FAILED, Row
from exporters.verify import Runner, Samples, Thresholds, verify

#: every export format; each runs in one latency-table runtime (`deployvit.contract.FORMAT_RUNTIME`)
FORMATS = ("torch", "compile", "cudagraph", "onnx", "trt")


def parse_formats(text: str) -> list[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise DeployvitError(f"unknown format {unknown[0] if unknown else text!r} (choose from {', '.join(FORMATS)})")
    return formats


@dataclass(frozen=True)
class ExportSpec:
    """The knobs shared by every format of one run."""

    img_size: int
    in_chans: int
    precision: str
    batch: BatchSpec
    opset: int | None = None
    dynamo: bool = True
    device: str = "cpu"  # where torch and TensorRT run; onnxruntime uses CUDA only with onnxruntime-gpu
    workspace_gb: float = 4.0
    timing_cache: str | None = None
    thresholds: Thresholds | None = None
    warmup_s: float = MeasureSettings.warmup_s  # timed like a latency table by default
    repeats: int = MeasureSettings.repeats
    clock: str = "wall"  # "cpu": single-thread process CPU time, as CPU latency tables on shared machines
    tf32: bool = False  # fp32 matmuls of TensorRT / onnxruntime-gpu may use TF32 (recorded, its own gate)
    metadata: dict[str, Any] | None = None
    # the ONNX graph a TensorRT engine is built from: `model.onnx` for `export` (DESIGN.md section 3);
    # `benchmark` names it `<stem>.trt.onnx`, so it never replaces the verified graph of its onnx row
    trt_onnx_suffix: str = ".onnx"

    @property
    def threads(self) -> int | None:
        """Threads for CPU timing: one under the process-CPU-time clock (it only measures work then)."""
        return 1 if self.clock == "cpu" else None


@dataclass
class Timed:
    latency_ms: float | None
    latency_cv: float | None
    throughput: float | None
    throughput_batch: int
    notes: list[str]


def measure(runner: Runner, spec: ExportSpec, device: str) -> Timed:
    """Batch-1 latency (when the artifact accepts batch 1) and throughput at the largest batch.
    Timing-noise warnings become report notes instead of stderr chatter."""
    from deployvit.latency.timing import time_callable

    notes: list[str] = []
    clock = spec.clock if device == "cpu" else "wall"  # GPUs: CUDA events

    def timed(batch: int):
        x = torch.randn(batch, spec.in_chans, spec.img_size, spec.img_size, device=device)
        threads = torch.get_num_threads()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            try:
                torch.set_num_threads(spec.threads or threads)
                run = runner.bind(x) if hasattr(runner, "bind") else (lambda: runner(x))  # bound IO, like a table entry
                t = time_callable(run, device=device, warmup_s=spec.warmup_s, repeats=spec.repeats,
                                  clock=clock, label=f"batch {batch}")
            finally:
                torch.set_num_threads(threads)
        notes.extend(str(w.message) for w in caught if issubclass(w.category, RuntimeWarning))
        return t

    bs1 = timed(1) if spec.batch.min == 1 else None
    big = timed(spec.batch.max) if spec.batch.max > 1 or bs1 is None else bs1
    return Timed(
        latency_ms=None if bs1 is None else bs1.median_us / 1e3,
        latency_cv=None if bs1 is None else bs1.cv,
        throughput=spec.batch.max / (big.median_us / 1e6),
        throughput_batch=spec.batch.max,
        notes=notes,
    )


def reference_runner(model: nn.Module, device: str) -> Runner:
    """The fp32 PyTorch model: the ground truth every artifact is compared with (TF32 off on CUDA,
    so "fp32" means fp32)."""
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model = model.float().eval().to(device)
    return lambda x: model(x.to(device))


def torch_runner(model: nn.Module, precision: str, device: str, compiled: bool = False) -> Runner:
    """Eager (or torch.compile'd) PyTorch in `precision`, float32 in and out like the ONNX graph."""
    net = copy.deepcopy(model).float().eval()
    if precision != "fp32":
        net = CastModel(net, onnx_export.TORCH_DTYPES[precision]).eval()
    net = net.to(device)
    if compiled:
        net = torch.compile(net)
    return lambda x: net(x.to(device))


def cudagraph_runner(model: nn.Module, precision: str, device: str) -> Runner:
    """PyTorch replayed as a CUDA graph (one per input shape, captured on first use), float32 in and
    out: the artifact a `cudagraph` latency table describes. Each call copies the input into the
    graph's static buffer, replays, and returns a copy of the output, so a later call cannot
    overwrite what an earlier one returned."""
    if device != "cuda" or not torch.cuda.is_available():
        raise MissingDependency("the cudagraph format needs a CUDA GPU, and torch sees none on this machine")
    from deployvit.latency.timing import capture_cuda_graph

    net = copy.deepcopy(model).float().eval()
    if precision != "fp32":
        net = CastModel(net, onnx_export.TORCH_DTYPES[precision]).eval()
    net = net.to(device)
    graphs: dict[tuple[int, ...], tuple[torch.Tensor, Callable[[], torch.Tensor]]] = {}

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, torch.float32)
        if tuple(x.shape) not in graphs:
            static = x.clone()
            graphs[tuple(x.shape)] = (static, capture_cuda_graph(net, static))
        static, replay = graphs[tuple(x.shape)]
        static.copy_(x)
        return replay().clone()

    return run


def _export_trt(model: nn.Module, spec: ExportSpec, out_dir: Path, stem: str) -> tuple[Runner, Path, list[str]]:
    trt = trt_export.import_tensorrt()
    trt_export.require_cuda()
    plan = trt_export.plan_build(trt_export.trt_major(trt.__version__), spec.precision, tf32=spec.tf32)
    onnx_path = onnx_export.export_onnx(
        model, out_dir / f"{stem}{spec.trt_onnx_suffix}", img_size=spec.img_size, in_chans=spec.in_chans, precision=plan.onnx_precision,
        opset=spec.opset, dynamic_batch=(spec.batch.min, spec.batch.opt, spec.batch.max), dynamo=spec.dynamo,
        metadata=spec.metadata,
    )
    engine = out_dir / f"{stem}.engine"
    sidecar = trt_export.build_engine(
        onnx_path, engine, precision=spec.precision, batch_range=(spec.batch.min, spec.batch.opt, spec.batch.max),
        workspace_gb=spec.workspace_gb, timing_cache=spec.timing_cache, graph_precision=plan.onnx_precision,
        tf32=spec.tf32,
    )
    notes = [f"TensorRT {sidecar['tensorrt']} ({plan.path}) from {plan.onnx_precision} ONNX {onnx_path.name}"]
    return trt_export.TrtRunner(engine), engine, notes


@dataclass
class Artifact:
    """What one format produced: a runner (float32 in, logits out), where it runs, and the file."""

    runner: Runner
    device: str
    runtime: str
    path: Path | None = None
    notes: list[str] = field(default_factory=list)
    reference: bool = False  # the fp32 PyTorch model itself: nothing to verify


def _torch_artifact(model, spec, samples, out_dir, stem) -> Artifact:
    runner = torch_runner(model, spec.precision, spec.device)
    return Artifact(runner, spec.device, f"PyTorch eager ({spec.device})", reference=spec.precision == "fp32")


def _compile_artifact(model, spec, samples, out_dir, stem) -> Artifact:
    runner = torch_runner(model, spec.precision, spec.device, compiled=True)
    runner(samples.images[:1])  # compile now, so a compiler failure is an export failure
    return Artifact(runner, spec.device, f"torch.compile default mode ({spec.device})")


def _cudagraph_artifact(model, spec, samples, out_dir, stem) -> Artifact:
    runner = cudagraph_runner(model, spec.precision, spec.device)
    runner(samples.images[:1])  # capture now: a capture failure is an export failure
    return Artifact(runner, spec.device, "PyTorch replayed as CUDA graphs (cuda)")


def _onnx_artifact(model, spec, samples, out_dir, stem) -> Artifact:
    path = onnx_export.export_onnx(
        model, out_dir / f"{stem}.onnx", img_size=spec.img_size, in_chans=spec.in_chans,
        precision=spec.precision, opset=spec.opset,
        dynamic_batch=(spec.batch.min, spec.batch.opt, spec.batch.max), dynamo=spec.dynamo,
        metadata=spec.metadata,
    )
    runner = OnnxRunner(path, spec.device, threads=spec.threads, tf32=spec.tf32)  # CUDA without its provider: exit 2
    return Artifact(runner, spec.device, f"onnxruntime {runner.provider}" + (" (TF32)" if runner.tf32 else ""), path)


def _trt_artifact(model, spec, samples, out_dir, stem) -> Artifact:
    runner, path, notes = _export_trt(model, spec, out_dir, stem)
    return Artifact(runner, spec.device, "TensorRT", path, notes)


#: format -> the function that exports it (when it has a file) and returns how to run it
ARTIFACTS: dict[str, Callable[..., Artifact]] = {
    "torch": _torch_artifact, "compile": _compile_artifact, "cudagraph": _cudagraph_artifact,
    "onnx": _onnx_artifact, "trt": _trt_artifact,
}


def _export(fmt: str, model, spec: ExportSpec, samples: Samples, out_dir: Path, stem: str) -> Artifact | tuple[str, str]:
    """The artifact, or (status, note) when exporting failed or nothing here can run it."""
    try:
        return ARTIFACTS[fmt](model, spec, samples, out_dir, stem)
    except ExportFailed as exc:
        return EXPORT_FAILED, str(exc)
    except CheckFailed as exc:  # exported, but nothing here can run it (e.g. bf16 on onnxruntime CPU)
        return UNVERIFIED, str(exc)
    except DeployvitError:  # MissingDependency included: the caller decides (exit 2 or a skipped row)
        raise
    except Exception as exc:  # torch.compile / TensorRT failures come in many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return EXPORT_FAILED, f"{fmt}: {first}"


def run_format(
    fmt: str,
    model: nn.Module,
    model_name: str,
    spec: ExportSpec,
    samples: Samples,
    out_dir: Path,
    *,
    stem: str = "model",
    reference: Runner | None = None,
    budget_ms: float | None = None,
) -> Row:
    """Export (when the format has an artifact), verify against the fp32 reference, time, and fill
    one report row. A missing package raises MissingDependency (the caller decides: exit 2 for
    `export`, a skipped row for `benchmark`); an exporter failure becomes an "export failed" row."""
    if fmt not in FORMATS:
        raise DeployvitError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    row = Row(model_name, fmt, spec.precision, status=VERIFIED, budget_ms=budget_ms)
    reference = reference or reference_runner(model, spec.device)
    artifact = _export(fmt, model, spec, samples, out_dir, stem)
    if isinstance(artifact, tuple):
        row.status, note = artifact
        row.notes.append(note)
        return row
    row.runtime, row.notes = artifact.runtime, row.notes + artifact.notes
    if artifact.path is not None:
        size = onnx_export.file_size(artifact.path) if artifact.path.suffix == ".onnx" else artifact.path.stat().st_size
        row.path, row.size_mb = str(artifact.path), size / 2**20  # an ONNX file with its external weights
    if artifact.reference:
        row.status = REFERENCE
    else:
        thresholds = spec.thresholds or Thresholds.for_precision(spec.precision)
        sizes = (1 if spec.batch.min == 1 else spec.batch.min, spec.batch.max)
        row.verification = verify(reference, artifact.runner, samples, batch_sizes=sizes,
                                  precision=spec.precision, thresholds=thresholds)
        row.status = VERIFIED if row.verification.passed else VERIFY_FAILED
    timed = measure(artifact.runner, spec, artifact.device)
    row.latency_ms, row.latency_cv = timed.latency_ms, timed.latency_cv
    row.throughput, row.throughput_batch = timed.throughput, timed.throughput_batch
    row.notes.extend(timed.notes)
    return row
