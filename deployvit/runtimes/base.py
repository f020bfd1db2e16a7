"""The interface every runtime implements, and the two shapes runtimes come in.

A runtime (`Runtime`) answers five questions, whatever it is:
- `check(device, precision)`: can it run here? Refusals are one line (`DeployvitError`, exit 2), and
  what to install is said first, because that is true on any machine;
- `version()`: the version of the software doing the work (recorded in every table it times);
- `module_runner(module, input_shape, ...)`: a zero-argument call running a module on a fixed input,
  what the timing loop times (table entries and whole models alike, docs/DESIGN.md section 4);
- `file_runner(path, input_shape, ...)`: the same for an exported artifact, so export's latency
  contract times the artifact exactly like the table timed its parts;
- `artifact(model, spec, samples, out_dir, stem)`: export the model into its format (or take the
  PyTorch model as it is) and return how to run it, for `export` / `benchmark` to verify and time.
Every run has `run.input`, the buffer it reads: refill it in place to run on other data.

`TorchRuntime` runs the PyTorch module (eager, compile, cudagraph); `FileRuntime` runs a file that an
exporter wrote (onnxruntime, tensorrt, openvino), a part's file made in a temporary folder.
The facts about a runtime (name, format, devices, package, install line, ...) are its record
(`deployvit.runtime_registry`), handed to the class when the registry loads it.
"""

from __future__ import annotations

import copy
import importlib
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from deployvit.compute import TORCH_DTYPES, CastModel
from deployvit.errors import DeployvitError, MissingDependency
from deployvit.runtime_registry import DEVICE_WORDS, RuntimeRecord, listing, missing_package, runtimes_on, tf32_runtimes
from deployvit.settings import PRECISIONS
from exporters.benchmark import Artifact, ExportSpec

Run = Callable[[], object]
INPUT_SEED = 0  # every runner's fixed input: the same tensor for a table entry and its contract


def device_type(device: str | torch.device) -> str:
    """'cpu' or 'cuda'; one line for anything else."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        kind = None
    if kind not in DEVICE_WORDS:
        raise DeployvitError(f"unknown device {device!r} (cpu or cuda)")
    return kind


def seeded_input(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(INPUT_SEED))


def with_input(run: Callable[[], object], x: torch.Tensor) -> Run:
    run.input = x
    return run


class Runtime:
    """One runtime; subclasses implement the running, the record holds the facts."""

    def __init__(self, record: RuntimeRecord):
        self.record = record

    @property
    def name(self) -> str:
        return self.record.name

    # --- can it run here -------------------------------------------------------------------------

    def check(self, device: str | torch.device, precision: str = "fp32", tf32: bool = False) -> str:
        """The device kind ('cpu' or 'cuda') when this runtime can run `precision` there, else one
        clear line (exit 2): an unknown precision or device, TF32 where it means nothing
        (DeployvitError), or what makes it unavailable here (MissingDependency, which `benchmark`
        turns into a skipped row): what to install, no GPU, a device or precision it does not run."""
        rec = self.record
        if precision not in PRECISIONS:
            raise DeployvitError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
        kind = device_type(device)
        self.check_installed(kind)
        if kind not in rec.devices:  # before "no GPU here": a CPU-only runtime asked for CUDA is refused as such
            others = listing([n for n in runtimes_on(kind) if n != rec.name])
            raise MissingDependency(f"runtime {rec.name} needs {listing([DEVICE_WORDS[d] for d in rec.devices])} "
                                    f"(this run is on {kind}); use {others}")
        if kind == "cuda" and not torch.cuda.is_available():
            raise MissingDependency(f"runtime {rec.name} on cuda needs a CUDA GPU and a CUDA build of torch; none found")
        if precision not in rec.precisions:
            raise MissingDependency(f"runtime {rec.name} does not run {precision} (it runs {listing(rec.precisions)})")
        self.check_precision(kind, precision)
        if tf32 and (not rec.tf32 or precision != "fp32"):
            raise DeployvitError(f"tf32 applies to fp32 on the {listing(tf32_runtimes(), 'and')} runtimes only "
                                 f"(got {rec.name} {precision}; torch's TF32 is its process-wide allow_tf32 setting)")
        return kind

    def check_installed(self, kind: str) -> None:
        """MissingDependency (exit 2) with the install line when the runtime's package is missing."""
        if self.record.package:
            self.import_package(kind)

    def check_precision(self, kind: str, precision: str) -> None:
        """Refuse a precision this device cannot run in this runtime (the record lists what it can
        run anywhere); nothing to refuse by default."""

    def import_package(self, kind: str = "cpu"):
        """The runtime's Python package, or MissingDependency saying what to install."""
        try:
            return importlib.import_module(self.record.package)
        except ImportError:
            raise missing_package(self.record, kind) from None

    def version(self) -> str:
        """Version of the software doing the work (recorded in table metadata)."""
        if not self.record.package:
            return torch.__version__
        return self.import_package().__version__

    def facts(self) -> dict[str, Any]:
        """What an export report lists about this runtime here (its package's version, or None)."""
        if not self.record.package:
            return {}
        try:
            return {self.record.package: self.version()}
        except DeployvitError:
            return {self.record.package: None}

    # --- run -------------------------------------------------------------------------------------

    def module_runner(self, module: nn.Module, input_shape: tuple[int, ...], *, device: str | torch.device, precision: str,
                      threads: int | None = None, tf32: bool = False) -> Run:
        """A zero-argument callable running `module` on a fixed random input of `input_shape`.

        `threads` only matters for runtimes with their own CPU thread pool; torch's CPU threads are
        the caller's (`torch.set_num_threads`), as they are process-wide. `tf32` lets fp32 matmuls
        use TF32 where the record allows it (off by default: fp32 means fp32)."""
        raise NotImplementedError

    def file_runner(self, path: Path, input_shape: tuple[int, ...], *, device: str, threads: int | None = None,
                    tf32: bool = False) -> Run:
        """An exported artifact timed exactly like a table entry of this runtime."""
        raise DeployvitError(f"runtime {self.name} runs modules, not files")

    def artifact(self, model: nn.Module, spec: ExportSpec, samples, out_dir: Path, stem: str) -> Artifact:
        """Export `model` into this runtime's format (when it has a file) and say how to run it."""
        raise NotImplementedError


class TorchRuntime(Runtime):
    """A runtime that runs the PyTorch module itself; subclasses say how (`wrap`)."""

    def wrap(self, module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
        """A zero-argument call running `module` (on its device, in its dtype) on `x`."""
        raise NotImplementedError

    def module_runner(self, module, input_shape, *, device, precision, threads=None, tf32=False) -> Run:
        self.check(device, precision, tf32)
        dtype = TORCH_DTYPES[precision]
        module = module.eval().to(device=torch.device(device), dtype=dtype)
        x = seeded_input(input_shape).to(device=torch.device(device), dtype=dtype)
        return with_input(self.wrap(module, x), x)

    @staticmethod
    def export_module(model: nn.Module, precision: str, device: str) -> nn.Module:
        """A copy of `model` in `precision` on `device`, float32 images in, float32 logits out."""
        net = copy.deepcopy(model).float().eval()
        if precision != "fp32":
            net = CastModel(net, TORCH_DTYPES[precision]).eval()
        return net.to(device)

    def runner(self, model: nn.Module, precision: str, device: str):
        """The export artifact: `runner(images) -> logits`."""
        net = self.export_module(model, precision, device)
        return lambda x: net(x.to(device))

    def artifact(self, model, spec, samples, out_dir, stem) -> Artifact:
        self.check(spec.device, spec.precision)
        runner = self.runner(model, spec.precision, spec.device)
        runner(samples.images[:1])  # run it now: a compile or capture failure is an export failure
        return Artifact(runner, spec.device, f"{self.record.summary} ({spec.device})", reference=self.is_reference(spec))

    def is_reference(self, spec: ExportSpec) -> bool:
        """The artifact is the fp32 PyTorch model itself: nothing to verify (eager fp32)."""
        return False


class FileRuntime(Runtime):
    """A runtime that runs a file an exporter wrote. Subclasses say how to write a part's file and
    an artifact (`write_part`, `write_artifact`) and how to open one (`open`: a runner with
    `runner(images) -> logits` and `runner.bind(x)`, the zero-argument call timing uses)."""

    def write_part(self, module: nn.Module, work: Path, input_shape: tuple[int, ...], precision: str, tf32: bool) -> Path:
        raise NotImplementedError

    def write_artifact(self, model: nn.Module, spec: ExportSpec, out_dir: Path, stem: str) -> tuple[Path, list[str]]:
        """Write the model's artifact into `out_dir` (its path and report notes)."""
        raise NotImplementedError

    def open(self, path: Path, device: str | torch.device, threads: int | None, tf32: bool):
        raise NotImplementedError

    def describe(self, runner) -> str:
        """What ran the artifact, for the report row."""
        return self.record.summary

    def size(self, path: Path) -> int:
        """Bytes a user has to ship for the artifact at `path`."""
        return path.stat().st_size

    def module_runner(self, module, input_shape, *, device, precision, threads=None, tf32=False) -> Run:
        self.check(device, precision, tf32)
        with tempfile.TemporaryDirectory(prefix="deployvit-timing-") as work:
            path = self.write_part(module.eval(), Path(work), tuple(input_shape), precision, tf32)
            runner = self.open(path, torch.device(device), threads, tf32)  # holds the model: the files can go
        return runner.bind(seeded_input(input_shape))

    def file_runner(self, path, input_shape, *, device, threads=None, tf32=False) -> Run:
        self.check(device, "fp32", tf32)  # the precision is inside the file
        return self.open(Path(path), torch.device(device), threads, tf32).bind(seeded_input(input_shape))

    def artifact(self, model, spec, samples, out_dir, stem) -> Artifact:
        tf32 = spec.tf32 and self.record.tf32  # a request: honoured where the runtime has TF32
        self.check(spec.device, spec.precision, tf32)
        path, notes = self.write_artifact(model, spec, out_dir, stem)
        runner = self.open(path, spec.device, spec.threads, tf32)
        return Artifact(runner, spec.device, self.describe(runner), path, notes, size_bytes=self.size(path))
