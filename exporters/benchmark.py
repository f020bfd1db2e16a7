"""Export, verify and time one model in one format: the row behind every line of `deployvit export`
and `deployvit benchmark`.

Each format is a runtime's (`deployvit.runtime_registry`); `run_format` is handed the runtime object
(resolved from the format's name by the command layer) and asks it for the artifact, so nothing here
knows one format from another. Timing goes through the codebase's one timing loop
(`deployvit.timing.time_callable`): latency is the median at batch 1, throughput is images/s at the
largest batch the artifact accepts. The latency contract (measured like its table, beside the
table's prediction and the budget) is `deployvit.contract`'s, which sits above this package, the
runtimes and the latency tables.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from deployvit.errors import CheckFailed, DeployvitError
from deployvit.settings import MeasureSettings
from exporters.onnx import BatchSpec, ExportFailed
from exporters.report import EXPORT_FAILED, REFERENCE, UNVERIFIED, VERIFIED, VERIFY_FAILED, Row
from exporters.verify import Runner, Samples, Thresholds, verify


@dataclass(frozen=True)
class ExportSpec:
    """The knobs shared by every format of one run."""

    img_size: int
    in_chans: int
    precision: str
    batch: BatchSpec
    opset: int | None = None
    dynamo: bool = True
    device: str = "cpu"  # where every artifact runs and is timed: cpu or cuda
    workspace_gb: float = 4.0
    timing_cache: str | None = None
    thresholds: Thresholds | None = None
    warmup_s: float = MeasureSettings.warmup_s  # timed like a latency table by default
    repeats: int = MeasureSettings.repeats
    clock: str = "wall"  # "cpu": single-thread process CPU time, as CPU latency tables on shared machines
    tf32: bool = False  # fp32 matmuls may use TF32 where the runtime has it on CUDA (recorded, its own gate)
    metadata: dict[str, Any] | None = None
    # the ONNX graph an engine is built from: `model.onnx` for `export` (docs/DESIGN.md section 3);
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
    from deployvit.timing import time_callable

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


@dataclass
class Artifact:
    """What one format produced: a runner (float32 in, logits out), where it runs, what ran it, and
    the file with the bytes a user ships (the file and, e.g., its external weights)."""

    runner: Runner
    device: str
    runtime: str
    path: Path | None = None
    notes: list[str] = field(default_factory=list)
    reference: bool = False  # the fp32 PyTorch model itself: nothing to verify
    size_bytes: int | None = None


class MakesArtifacts(Protocol):
    """What `run_format` needs of a runtime (`deployvit.runtimes.base.Runtime`)."""

    record: Any

    def artifact(self, model: nn.Module, spec: ExportSpec, samples: Samples, out_dir: Path, stem: str) -> Artifact: ...


def _export(runtime: MakesArtifacts, model, spec: ExportSpec, samples: Samples, out_dir: Path, stem: str) -> Artifact | tuple[str, str]:
    """The artifact, or (status, note) when exporting failed or nothing here can run it."""
    try:
        return runtime.artifact(model, spec, samples, out_dir, stem)
    except ExportFailed as exc:
        return EXPORT_FAILED, str(exc)
    except CheckFailed as exc:  # exported, but nothing here can run it (e.g. bf16 on onnxruntime CPU)
        return UNVERIFIED, str(exc)
    except DeployvitError:  # MissingDependency included: the caller decides (exit 2 or a skipped row)
        raise
    except Exception as exc:  # torch.compile / TensorRT failures come in many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return EXPORT_FAILED, f"{runtime.record.format}: {first}"


def run_format(
    runtime: MakesArtifacts,
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
    """Export `runtime`'s format (when it has an artifact), verify against the fp32 reference, time,
    and fill one report row. A runtime unavailable here raises MissingDependency (the caller decides:
    exit 2 for `export`, a skipped row for `benchmark`); an exporter failure becomes an "export
    failed" row."""
    row = Row(model_name, runtime.record.format, spec.precision, status=VERIFIED, budget_ms=budget_ms)
    reference = reference or reference_runner(model, spec.device)
    artifact = _export(runtime, model, spec, samples, out_dir, stem)
    if isinstance(artifact, tuple):
        row.status, note = artifact
        row.notes.append(note)
        return row
    row.runtime, row.notes = artifact.runtime, row.notes + artifact.notes
    if artifact.path is not None:
        row.path = str(artifact.path)
        row.size_mb = None if artifact.size_bytes is None else artifact.size_bytes / 2**20
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
