"""Export, verify and time one model in one format: the row behind every line of `deployvit export`
and `deployvit benchmark`.

Timing goes through the codebase's one timing loop (`deployvit.latency.timing.time_callable`), so a
measured latency here and a latency-table entry were timed the same way: latency is the median at
batch 1, throughput is images/s at the largest batch the artifact accepts. The latency contract
compares the *measured* batch-1 latency with the budget; the LUT prediction is printed beside it.
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from deployvit.errors import CheckFailed, DeployvitError, MissingDependency
from exporters import onnx as onnx_export
from exporters import tensorrt as trt_export
from exporters.onnx import BatchSpec, CastModel, ExportFailed, OnnxRunner
from exporters.report import EXPORT_FAILED, REFERENCE, UNVERIFIED, VERIFIED, VERIFY_FAILED, Row
from exporters.verify import Runner, Samples, Thresholds, verify

FORMATS = ("torch", "compile", "onnx", "trt")
_UNITS_MS = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}


def parse_budget(text: str) -> float:
    """'5ms', '5', '500us', '0.005s' -> milliseconds (a bare number is milliseconds)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|us|µs|s)?\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise DeployvitError(f"cannot read budget {text!r}: expected a positive time such as 5ms or 500us")
    return float(match.group(1)) * _UNITS_MS[match.group(2) or "ms"]


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
    warmup_s: float = 0.5
    repeats: int = 100
    clock: str = "wall"  # "cpu": single-thread process CPU time, as CPU latency tables on shared machines
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
                t = time_callable(lambda: runner(x), device=device, warmup_s=spec.warmup_s, repeats=spec.repeats,
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


def _export_trt(model: nn.Module, spec: ExportSpec, out_dir: Path, stem: str) -> tuple[Runner, Path, list[str]]:
    trt = trt_export.import_tensorrt()
    trt_export.require_cuda()
    plan = trt_export.plan_build(trt_export.trt_major(trt.__version__), spec.precision)
    onnx_path = onnx_export.export_onnx(
        model, out_dir / f"{stem}{spec.trt_onnx_suffix}", img_size=spec.img_size, in_chans=spec.in_chans, precision=plan.onnx_precision,
        opset=spec.opset, dynamic_batch=(spec.batch.min, spec.batch.opt, spec.batch.max), dynamo=spec.dynamo,
        metadata=spec.metadata,
    )
    engine = out_dir / f"{stem}.engine"
    sidecar = trt_export.build_engine(
        onnx_path, engine, precision=spec.precision, batch_range=(spec.batch.min, spec.batch.opt, spec.batch.max),
        workspace_gb=spec.workspace_gb, timing_cache=spec.timing_cache, graph_precision=plan.onnx_precision,
    )
    how = "strongly typed" if plan.strongly_typed else f"builder flags {','.join(plan.flags) or 'none'}"
    notes = [f"TensorRT {sidecar['tensorrt']} ({how}) from {plan.onnx_precision} ONNX {onnx_path.name}"]
    return trt_export.TrtRunner(engine), engine, notes


def _onnx_device(device: str) -> str:
    """onnxruntime on CUDA only when onnxruntime-gpu provides the CUDA provider."""
    if device != "cuda":
        return "cpu"
    return "cuda" if "CUDAExecutionProvider" in onnx_export.import_onnxruntime().get_available_providers() else "cpu"


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
    predicted_ms: float | None = None,
    budget_ms: float | None = None,
) -> Row:
    """Export (when the format has an artifact), verify against the fp32 reference, time, and fill
    one report row. A missing package raises MissingDependency (the caller decides: exit 2 for
    `export`, a skipped row for `benchmark`); an exporter failure becomes an "export failed" row."""
    if fmt not in FORMATS:
        raise DeployvitError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    row = Row(model_name, fmt, spec.precision, status=VERIFIED, predicted_ms=predicted_ms, budget_ms=budget_ms)
    reference = reference or reference_runner(model, spec.device)
    runner: Callable | None = None
    device = spec.device
    try:
        if fmt == "torch":
            runner = torch_runner(model, spec.precision, device)
            row.runtime = f"PyTorch eager ({device})"
            if spec.precision == "fp32":
                row.status = REFERENCE
        elif fmt == "compile":
            runner = torch_runner(model, spec.precision, device, compiled=True)
            row.runtime = f"torch.compile default mode ({device})"
            runner(samples.images[:1])  # compile now, so a compiler failure is an export failure
        elif fmt == "onnx":
            path = onnx_export.export_onnx(
                model, out_dir / f"{stem}.onnx", img_size=spec.img_size, in_chans=spec.in_chans,
                precision=spec.precision, opset=spec.opset,
                dynamic_batch=(spec.batch.min, spec.batch.opt, spec.batch.max), dynamo=spec.dynamo,
                metadata=spec.metadata,
            )
            row.path, row.size_mb = str(path), onnx_export.file_size(path) / 2**20
            device = _onnx_device(spec.device)
            if device != spec.device:
                row.notes.append("onnxruntime has no CUDA provider here (needs onnxruntime-gpu): ran on CPU")
            runner = OnnxRunner(path, device, threads=spec.threads)
            row.runtime = f"onnxruntime {runner.session.get_providers()[0]}"
        else:
            runner, path, notes = _export_trt(model, spec, out_dir, stem)
            row.path, row.size_mb = str(path), path.stat().st_size / 2**20
            row.runtime, row.notes = "TensorRT", row.notes + notes
    except MissingDependency:
        raise
    except ExportFailed as exc:
        row.status, row.notes = EXPORT_FAILED, row.notes + [str(exc)]
        return row
    except CheckFailed as exc:  # exported, but nothing here can run it (e.g. bf16 on onnxruntime CPU)
        row.status, row.notes = UNVERIFIED, row.notes + [str(exc)]
        return row
    except DeployvitError:
        raise
    except Exception as exc:  # torch.compile / TensorRT failures come in many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        row.status, row.notes = EXPORT_FAILED, row.notes + [f"{fmt}: {first}"]
        return row

    if row.status != REFERENCE:
        thresholds = spec.thresholds or Thresholds.for_precision(spec.precision)
        sizes = (1 if spec.batch.min == 1 else spec.batch.min, spec.batch.max)
        row.verification = verify(reference, runner, samples, batch_sizes=sizes,
                                  precision=spec.precision, thresholds=thresholds)
        row.status = VERIFIED if row.verification.passed else VERIFY_FAILED
    timed = measure(runner, spec, device)
    row.latency_ms, row.latency_cv = timed.latency_ms, timed.latency_cv
    row.throughput, row.throughput_batch = timed.throughput, timed.throughput_batch
    row.notes.extend(timed.notes)
    return row


#: the latency-table runtime that times each export format the same way
TABLE_RUNTIME = {"torch": "eager", "compile": "compile", "onnx": "onnxruntime", "trt": "tensorrt"}


def shipped_table_for(arch, fmt: str, precision: str, device: str) -> tuple[str | None, list[str]]:
    """The shipped table measured like `fmt` runs here (this device, its runtime, `precision`,
    batch 1), else the space's default table with a note saying what differs."""
    from deployvit.latency.devices import KNOWN_LABELS, device_name, label_matches
    from deployvit.latency.table import default_table, shipped_tables_dir, table_filename

    here = device_name(device)
    labels = ["cpu"] if device == "cpu" else [l for l in KNOWN_LABELS if l != "cpu" and label_matches(l, here)]
    runtime = TABLE_RUNTIME[fmt]
    for label in labels:
        path = shipped_tables_dir() / label / table_filename(arch.space, runtime, precision, 1)
        if path.is_file():
            return str(path), []
    try:
        fallback = default_table(arch.space)
    except DeployvitError:
        return None, [f"no latency table for space {arch.space!r}: no predicted latency (pass --table)"]
    return str(fallback), [f"no shipped {runtime} {precision} batch-1 table for {here}: prediction from another setting"]


def predicted_latency_ms(table_path: str | None, arch, fmt: str, precision: str, device: str,
                         clock: str = "wall") -> tuple[float | None, list[str]]:
    """The LUT prediction for `arch` exported as `fmt`, in ms, and notes on what it is (and why to
    distrust it). Without `table_path`, a shipped table is chosen by `shipped_table_for`. A table only
    predicts what it measured (device, runtime, precision, batch): mismatches become notes."""
    if arch is None:
        return None, []
    from deployvit.latency.table import LatencyTable

    chosen, notes = (table_path, []) if table_path else shipped_table_for(arch, fmt, precision, device)
    if chosen is None:
        return None, notes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            table = LatencyTable.load(chosen)
            us = table.predict(arch)
        except DeployvitError as exc:
            if table_path is not None:  # the user's table must fit; a shipped default may not
                raise
            return None, notes + [f"shipped table {chosen} cannot predict this arch: {exc}"]
    notes.append(f"predicted latency from {chosen}: {table.describe()}")
    meta = table.metadata
    if meta["runtime"] != TABLE_RUNTIME[fmt]:
        notes.append(f"the table was measured with {meta['runtime']}, this artifact runs in {TABLE_RUNTIME[fmt]}")
    if meta["batch_size"] != 1:
        notes.append(f"the table predicts batch {meta['batch_size']}, the measured latency is batch 1")
    if meta["precision"] != precision:
        notes.append(f"the table was measured at {meta['precision']}, this artifact is {precision}")
    table_clock = (meta.get("settings") or {}).get("clock", "wall")
    if device == "cpu" and table_clock != clock:
        notes.append(f"the table was timed with the {table_clock} clock, this artifact with the {clock} clock"
                     + (" (pass --clock cpu to time it the same way)" if table_clock == "cpu" else ""))
    return us / 1e3, notes + [str(w.message) for w in caught]
