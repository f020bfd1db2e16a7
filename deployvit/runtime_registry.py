"""The one table of runtimes: every fact about a runtime that some caller needs, in one record per
runtime, and nothing that imports torch, onnx or the runtime's own package.

A runtime is where a latency is measured (a latency table's `runtime`) and what an export artifact
runs in (its export format). Everything else reads the record: the table resolver its preference,
the estimator its kernel flavour, `profile` / `search` / `export` their help texts and choices,
export's latency contract which runtime times which format, the report which packages to list.
The code that runs it is named by `impl` ("module:Class", as `deployvit.cli.COMMANDS` names
commands) and imported only when the runtime is used (`deployvit.runtimes.get_runtime`), so reading
the table is free: `deployvit --help` and loading a latency table import no runtime.

Adding a runtime is one line here and one module in `deployvit/runtimes/` (the class `impl` names,
a subclass of `deployvit.runtimes.base.Runtime`); the tests in `tests/test_runtimes.py` are
generated from this table, so the new runtime gets them all.
"""

from __future__ import annotations

from dataclasses import dataclass

from deployvit.errors import DeployvitError, MissingDependency
from deployvit.settings import FLOAT_PRECISIONS

DEVICE_WORDS = {"cpu": "the CPU", "cuda": "a CUDA GPU"}


@dataclass(frozen=True)
class Estimate:
    """How deployvit's per-kernel GPU estimate (`deployvit.latency.kernels`) models a runtime."""

    fusion: str  # which kernels are fused: "none", "inductor" or "tensorrt"
    host: str  # who launches each kernel: "python" (eager), "inductor" (compile's generated wrapper),
    #            "graph" (one CUDA-graph replay per call) or "native" (a C++ runtime's enqueue)
    fp32_attention: str = "fused"  # "explicit" where the runtime has no fused fp32 attention kernel


@dataclass(frozen=True)
class RuntimeRecord:
    """Everything known about one runtime without importing it.

    `preference` ranks tables that tie on everything else in the table resolver (lower first;
    deployment runtimes before `eager`, which is for contrast only). `artifact` is the file suffix
    of its export artifact, or None when the artifact is the PyTorch model itself (then it runs
    modules only). `precisions`: what it can run anywhere (a quantised one, int8 or fp8, only where the
    runtime takes the Q/DQ graph `exporters.quantize` writes); the machine may still lack one
    (`Runtime.check_precision`). `package` is the Python module it imports (None: torch alone), provided by one of
    `distributions`; `install` says what to install, `install_cuda` what to install for CUDA when
    that differs. `tf32`: fp32 matmuls may use TF32 on request. `estimate`: how the GPU estimate
    models it, or None with the reason in `not_estimated`. `profile_hint`: the device kinds whose
    "no table, make one with `deployvit profile ...`" hint names this runtime."""

    name: str
    format: str
    impl: str
    summary: str
    preference: int = 50
    devices: tuple[str, ...] = ("cpu", "cuda")
    artifact: str | None = None
    package: str | None = None
    distributions: tuple[str, ...] = ()
    extra: str | None = None
    install: str = ""
    install_cuda: str | None = None
    precisions: tuple[str, ...] = FLOAT_PRECISIONS
    tf32: bool = False
    estimate: Estimate | None = None
    not_estimated: str = ""
    profile_hint: tuple[str, ...] = ()

    @property
    def cuda_only(self) -> bool:
        return self.devices == ("cuda",)

    @property
    def file_based(self) -> bool:
        """Its export artifact is a file, which it runs (`file_runner`)."""
        return self.artifact is not None

    def install_line(self, device: str = "cpu") -> str:
        """What to install to run it on `device` ("cpu" or "cuda")."""
        return self.install_cuda if device == "cuda" and self.install_cuda else self.install


#: listing order (help texts, `benchmark --formats`); `preference` ranks tables
RECORDS = (
    RuntimeRecord(
        "eager", "torch", "deployvit.runtimes.eager:Eager", "PyTorch eager",
        preference=90, estimate=Estimate("none", "python"), profile_hint=("cpu",)),
    RuntimeRecord(
        "compile", "compile", "deployvit.runtimes.compile:Compile", "torch.compile default mode",
        preference=30, estimate=Estimate("inductor", "inductor")),
    RuntimeRecord(
        "cudagraph", "cudagraph", "deployvit.runtimes.cudagraph:CudaGraph", "PyTorch replayed as CUDA graphs",
        preference=10, devices=("cuda",), estimate=Estimate("none", "graph"), profile_hint=("cuda",)),
    RuntimeRecord(
        "onnxruntime", "onnx", "deployvit.runtimes.onnxruntime:OnnxRuntime", "onnxruntime",
        preference=40, artifact=".onnx", package="onnxruntime", distributions=("onnxruntime", "onnxruntime-gpu"), extra="cpu",
        install='pip install onnxruntime (or: pip install -e ".[cpu]")',
        install_cuda='pip uninstall -y onnxruntime && pip install onnxruntime-gpu (or: pip install -e ".[gpu]")', tf32=True,
        precisions=FLOAT_PRECISIONS + ("int8",),
        not_estimated="onnxruntime's CUDA provider has no published ViT measurements here and its kernel choice and fusion differ "
                      "by version and provider options; measure it with `deployvit profile`"),
    RuntimeRecord(
        "tensorrt", "trt", "deployvit.runtimes.tensorrt:TensorRT", "TensorRT",
        preference=20, devices=("cuda",), artifact=".engine", package="tensorrt", distributions=("tensorrt",), extra="trt",
        install="pip install tensorrt (TensorRT 10 or 11; needs an NVIDIA GPU and driver)", tf32=True,
        precisions=FLOAT_PRECISIONS + ("int8", "fp8"),
        estimate=Estimate("tensorrt", "native", fp32_attention="explicit")),
    RuntimeRecord(
        "openvino", "openvino", "deployvit.runtimes.openvino:OpenVino", "OpenVINO", preference=50, devices=("cpu",), artifact=".xml",
        package="openvino", distributions=("openvino",), extra="openvino", install='pip install openvino (or: pip install -e ".[openvino]")',
        precisions=FLOAT_PRECISIONS + ("int8",),
        not_estimated="OpenVINO runs on CPUs and Intel GPUs, not the NVIDIA GPUs the estimate models; measure it with `deployvit profile`"),
)

RUNTIMES: dict[str, RuntimeRecord] = {r.name: r for r in RECORDS}
FORMATS: dict[str, RuntimeRecord] = {r.format: r for r in RECORDS}


def runtime_names() -> tuple[str, ...]:
    return tuple(RUNTIMES)


def format_names(files_only: bool = False) -> tuple[str, ...]:
    """Every export format (`files_only`: those whose artifact is a file, what `export` writes)."""
    return tuple(r.format for r in RECORDS if r.file_based or not files_only)


def listing(names: tuple[str, ...] | list[str], last: str = "or") -> str:
    """"a, b or c": names for a help text or an error."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


def runtime_record(name: str) -> RuntimeRecord:
    """The record of runtime `name`; one line naming the choices when there is none."""
    rec = RUNTIMES.get(name)
    if rec is None:
        raise DeployvitError(f"unknown runtime {name!r} (choose from {', '.join(RUNTIMES)})")
    return rec


def format_record(fmt: str) -> RuntimeRecord:
    """The record of the runtime that runs export format `fmt`."""
    rec = FORMATS.get(fmt)
    if rec is None:
        raise DeployvitError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    return rec


def preference(name: str) -> int:
    """Rank of a table's runtime in the resolver (lower first); an unknown runtime ranks last."""
    rec = RUNTIMES.get(name)
    return rec.preference if rec is not None else max(r.preference for r in RECORDS) + 1


def estimated_runtimes() -> tuple[str, ...]:
    """The runtimes deployvit's GPU estimate models."""
    return tuple(r.name for r in RECORDS if r.estimate is not None)


def profile_hint(device_kind: str) -> str:
    """The runtime a "make a table with `deployvit profile ...`" hint names for a device kind."""
    return next(r.name for r in RECORDS if device_kind in r.profile_hint)


def runtimes_on(device_kind: str) -> tuple[str, ...]:
    return tuple(r.name for r in RECORDS if device_kind in r.devices)


def formats_for(precision: str, files_only: bool = True) -> tuple[str, ...]:
    """The export formats whose runtime runs `precision` (listing order)."""
    return tuple(r.format for r in RECORDS if precision in r.precisions and (r.file_based or not files_only))


def tf32_runtimes() -> tuple[str, ...]:
    return tuple(r.name for r in RECORDS if r.tf32)


def missing_package(rec: RuntimeRecord, device: str = "cpu") -> MissingDependency:
    """The one-line error for a runtime whose package is not installed."""
    other = f"; for CUDA: {rec.install_cuda}" if rec.install_cuda and device != "cuda" else ""
    return MissingDependency(f"{rec.package} is not installed: {rec.install_line(device)}{other}")


def help_text(prefix: str = "", names: tuple[str, ...] | None = None) -> str:
    """A click help text listing runtimes, built from the table (never restated by hand)."""
    return f"{prefix}{listing(names or runtime_names())}."
