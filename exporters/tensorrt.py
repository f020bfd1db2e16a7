"""ONNX -> TensorRT engine. Small on purpose: everything that can be decided without TensorRT (which
graph precision to export, builder flags, the optimisation profile, the sidecar) is a plain function
tested on CPU; only `build_engine` touches TensorRT, through the `tensorrt` module it is handed (the
runtime, `deployvit.runtimes.tensorrt`, imports and checks it, and runs the engines).

Version rules (docs/REFERENCES.md section 6):
- TensorRT 11 builds strongly typed networks only; the FP16/BF16 builder flags are gone, so the ONNX
  graph itself must be fp16/bf16 (an fp32 graph silently gives an fp32 engine: refused here).
- TensorRT 10 (strongly typed networks exist since 9) is built the same way, from the same graph:
  the fp16/bf16 ONNX graph with LayerNorm statistics and Softmax in float32 (`exporters.onnx.
  make_low_precision_safe`). The weakly typed FP16 flag path would let TensorRT pick fp16 for
  LayerNorm and Softmax, the known ViT overflow and accuracy traps, so it is not used.
- TF32: TensorRT lets fp32 layers use TF32 unless the TF32 builder flag is cleared. An fp32 engine
  here is fp32 (flag cleared), verified against the TF32-off PyTorch model with the fp32 gate;
  `tf32=True` is its own recorded choice (flag set) with its own gate (`verify.Thresholds`).
- INT8 and FP8 (explicit quantisation): the engine is built from the Q/DQ graph `exporters.quantize`
  writes (calibrated on real images, the same placement as onnxruntime's graph), strongly typed on
  10 and 11 alike, no INT8/FP8 builder flag (a strongly typed network takes its types from the
  graph; the implicit-quantisation calibrator API is deprecated in 10 and gone in 11). The float
  parts of that graph are fp16 (`quantize.cast_float16`: Q/DQ scales in fp16, so each
  DequantizeLinear hands its layer fp16, LayerNorm statistics and Softmax in fp32 as the fp16
  export has them): the layers TensorRT cannot fuse with a Q/DQ pair run at fp16 speed, not fp32.
  Decided so rather than quantising an fp16 export: the ranges come from the fp32 model, as
  TensorRT's calibrators and ModelOpt calibrate, and the graph is the onnxruntime one cast, so the
  gate's sensitivity trials (onnxruntime, fp32 floats) rank the same quantisation. FP8 (E4M3) needs
  FP8 tensor cores: compute capability 8.9 or later (`deployvit.devices.fp8_refusal`).
Which path built the engine (strongly typed, network flags, builder flags set and cleared, TF32, the
graph's float precision and quantisation) and where (GPU, compute capability, TensorRT and CUDA
versions) is recorded in the engine's JSON sidecar; an engine whose sidecar names another compute
capability or TensorRT version is refused before TensorRT is asked to load it (`engine_mismatch`).

NOTE: written against the TensorRT 10/11 Python API; not run in the project's CI (no GPU, no TensorRT).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deployvit import __version__, io
from deployvit.errors import CheckFailed, DeployvitError, MissingDependency
from deployvit.settings import PRECISIONS, QUANTIZED_PRECISIONS

SUPPORTED_MAJORS = (10, 11)
QUANT_FLOAT_PRECISION = "fp16"  # the float parts of an int8/fp8 engine's graph (module docstring)
OPTIMIZATION_LEVEL = 3  # TensorRT's default; recorded so a rebuild can reproduce it


def trt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise DeployvitError(f"cannot read the TensorRT version {version!r}") from None


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise MissingDependency("TensorRT needs a CUDA GPU, and torch sees none on this machine")


@dataclass(frozen=True)
class BuildPlan:
    """How to get an engine of `precision` out of TensorRT `major`: the ONNX graph precision to
    export, whether the network is strongly typed, the builder flags to set and to clear, and
    whether fp32 layers may use TF32."""

    trt_major: int
    precision: str
    onnx_precision: str
    strongly_typed: bool
    flags: tuple[str, ...]
    cleared_flags: tuple[str, ...] = ()
    tf32: bool = False
    float_precision: str | None = None  # what the graph's float parts are in (None: the engine's precision)

    @property
    def path(self) -> str:
        """One line naming the build path (sidecar `build_path`, report notes)."""
        typed = "strongly typed" if self.strongly_typed else "weakly typed"
        tf32 = "TF32 on" if self.tf32 else "TF32 off"
        graph = (f"{self.onnx_precision} Q/DQ ONNX graph ({self.float_precision} elsewhere)" if self.onnx_precision in QUANTIZED_PRECISIONS
                 else f"{self.onnx_precision} ONNX graph")
        return f"TensorRT {self.trt_major} {typed} network from the {graph}, {tf32}"


def plan_build(major: int, precision: str, tf32: bool = False) -> BuildPlan:
    """The build recipe for TensorRT `major` (10 or 11), engine `precision` and the TF32 choice: the
    same strongly typed network from the same `precision` graph on both majors; TF32 set or cleared
    explicitly (TensorRT enables it by default), and only meaningful for an fp32 engine."""
    if major not in SUPPORTED_MAJORS:
        raise MissingDependency(f"TensorRT {major}.x is not supported (need 10.x or 11.x)")
    if precision not in PRECISIONS:
        raise DeployvitError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if tf32 and precision != "fp32":
        raise DeployvitError(f"TF32 is a choice for fp32 engines only (this engine is {precision})")
    flags, cleared = (("TF32",), ()) if tf32 else ((), ("TF32",))
    floats = QUANT_FLOAT_PRECISION if precision in QUANTIZED_PRECISIONS else None
    return BuildPlan(major, precision, precision, True, flags, cleared, tf32, floats)


def check_graph_precision(plan: BuildPlan, graph_precision: str, float_precision: str | None = None) -> None:
    """Refuse an ONNX file whose precision would not give the requested engine (TensorRT 11 would
    silently build an fp32 engine from an fp32 graph, and an int8 engine with fp32 float parts from
    onnxruntime's Q/DQ graph)."""
    if graph_precision != plan.onnx_precision:
        raise DeployvitError(
            f"TensorRT {plan.trt_major} {'strongly typed ' if plan.strongly_typed else ''}build of a "
            f"{plan.precision} engine needs a {plan.onnx_precision} ONNX graph, got {graph_precision}"
        )
    if float_precision is not None and plan.float_precision is not None and float_precision != plan.float_precision:
        raise DeployvitError(f"TensorRT {plan.trt_major} build of a {plan.precision} engine needs a Q/DQ graph whose float parts are "
                             f"{plan.float_precision}, got {float_precision}")


def profile_shapes(input_shape: tuple[int, ...], batch_range: tuple[int, int, int]) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) input shapes of the one optimisation profile: the batch dim varies, the
    image dims are the graph's (which must be static)."""
    lo, opt, hi = batch_range
    if not 1 <= lo <= opt <= hi:
        raise DeployvitError(f"batch range {lo},{opt},{hi}: need 1 <= min <= opt <= max")
    rest = tuple(input_shape[1:])
    if any(not isinstance(d, int) or d <= 0 for d in rest):
        raise DeployvitError(f"the ONNX input must have static C, H, W; got {tuple(input_shape)}")
    return tuple((b, *rest) for b in (lo, opt, hi))


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    return Path(f"{engine_path}.json")


def build_engine(
    trt,
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    precision: str,
    batch_range: tuple[int, int, int],
    workspace_gb: float = 4.0,
    timing_cache: str | os.PathLike | None = None,
    graph_precision: str | None = None,
    tf32: bool = False,
    graph_float_precision: str | None = None,
) -> dict[str, Any]:
    """Build a serialized engine from `onnx_path` with `trt` (the imported `tensorrt` module), write it
    and then its JSON sidecar atomically, update `timing_cache` (reused across builds: a rebuild then
    skips kernel timing), return the sidecar. `tf32`: let fp32 layers use TF32 (fp32 engines only;
    off by default, so fp32 means fp32)."""
    require_cuda()
    plan = plan_build(trt_major(trt.__version__), precision, tf32=tf32)
    if graph_precision is not None:
        check_graph_precision(plan, graph_precision, graph_float_precision)
    if workspace_gb <= 0:
        raise DeployvitError(f"workspace must be > 0 GB, got {workspace_gb}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()  # flags first: a TensorRT without them fails before the parse
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.builder_optimization_level = OPTIMIZATION_LEVEL
    _apply_flags(trt, config, plan)
    network_flags = _network_flags(trt, plan)
    network = builder.create_network(network_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckFailed(f"TensorRT could not parse {onnx_path}: {errors}")

    cache_bytes = _read_cache(timing_cache)
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)

    inp = network.get_input(0)
    shapes = profile_shapes(tuple(inp.shape), batch_range)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, *shapes)
    config.add_optimization_profile(profile)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise CheckFailed(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    # the sidecar describes one engine: drop the old one first, so a kill between the two writes leaves
    # an engine without a sidecar, never a new engine beside the old engine's sidecar
    sidecar_path(engine_path).unlink(missing_ok=True)
    io.write_bytes(engine_path, bytes(serialized))
    if timing_cache:
        io.write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    sidecar = _sidecar(trt, plan, network_flags, inp.name, shapes, onnx_path, engine_path, workspace_gb, timing_cache, seconds)
    io.write_json(sidecar_path(engine_path), sidecar)
    return sidecar


def _read_cache(timing_cache: str | os.PathLike | None) -> bytes:
    """The saved timing cache, read only from a regular file (a FIFO would block the build); none yet: empty."""
    if not timing_cache or not Path(timing_cache).exists():
        return b""
    with io.open_regular(timing_cache, "TensorRT timing cache") as f:
        return f.read()


def _sidecar(trt, plan: BuildPlan, network_flags: int, input_name: str, shapes, onnx_path, engine_path, workspace_gb: float,
             timing_cache, seconds: float) -> dict[str, Any]:
    """What built the engine, and from what: the JSON written beside it (and its sha256)."""
    return {
        "format": "deployvit.engine/1",
        "deployvit": __version__,
        "tensorrt": trt.__version__,
        **_cuda_facts(),
        **asdict(plan),
        "build_path": plan.path,
        "network_flags": network_flags,
        "flags": list(plan.flags),
        "cleared_flags": list(plan.cleared_flags),
        "input": input_name,
        "profile": {"min": list(shapes[0]), "opt": list(shapes[1]), "max": list(shapes[2])},
        "workspace_gb": workspace_gb,
        "optimization_level": OPTIMIZATION_LEVEL,
        "timing_cache": str(timing_cache) if timing_cache else None,
        "onnx": str(onnx_path),
        "onnx_sha256": io.sha256(onnx_path),
        "quantization": _graph_quantization(onnx_path),
        "engine_sha256": io.sha256(engine_path),
        "build_seconds": round(seconds, 2),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _graph_quantization(onnx_path) -> dict[str, Any] | None:
    """The quantisation a Q/DQ graph records (`exporters.quantize`: method, calibration, layers kept), or None."""
    from exporters.onnx import read_metadata

    return read_metadata(onnx_path).get("quantization")


def engine_mismatch(sidecar: dict[str, Any], here: dict[str, Any]) -> str | None:
    """Why an engine whose sidecar says `sidecar` cannot run `here` (the facts `_cuda_facts` and the
    TensorRT version give: "gpu", "compute_capability", "tensorrt"), or None. TensorRT engines are
    specific to the compute capability and the TensorRT version that built them (a mismatch found
    only when deserialising gives no reason); another GPU of the same compute capability loads, and
    its tactics were tuned elsewhere (not refused: the contract times it here)."""
    built = f"{sidecar.get('gpu', 'an unrecorded GPU')} (compute capability {sidecar.get('compute_capability', '?')}) " \
            f"with TensorRT {sidecar.get('tensorrt', '?')}"
    now = f"{here.get('gpu')} (compute capability {here.get('compute_capability')}) with TensorRT {here.get('tensorrt')}"
    for key, what in (("compute_capability", "compute capability"), ("tensorrt", "TensorRT version")):
        if sidecar.get(key) is not None and str(sidecar[key]) != str(here.get(key)):
            return f"the engine was built for {built}; this machine has {now}: another {what}, rebuild it here (deployvit export --format trt)"
    return None


def check_engine(engine_path: str | os.PathLike, trt_version: str) -> dict[str, Any] | None:
    """Refuse (one line, exit 2) an engine whose sidecar names another compute capability or TensorRT
    version than this machine's; the sidecar, or None when the engine has none."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        return None
    sidecar = io.read_json(path, "engine sidecar")
    if not isinstance(sidecar, dict):
        raise DeployvitError(f"{path}: an engine sidecar is a JSON object")
    reason = engine_mismatch(sidecar, {**_cuda_facts(), "tensorrt": trt_version})
    if reason:
        raise DeployvitError(f"{Path(engine_path).name}: {reason}")
    return sidecar


def _network_flags(trt, plan: BuildPlan) -> int:
    """STRONGLY_TYPED on request, on both majors (TensorRT 11 is strongly typed anyway and may keep
    the flag as a no-op; TensorRT 10 needs it)."""
    if not plan.strongly_typed:
        return 0
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None:
        if plan.trt_major >= 11:
            return 0  # strongly typed is the only kind of network there
        raise MissingDependency(f"TensorRT {trt.__version__} has no strongly typed networks (need TensorRT 10 or 11)")
    return 1 << int(flag)


def _apply_flags(trt, config, plan: BuildPlan) -> None:
    """Set the plan's builder flags and clear the ones it clears (TF32 is on by default in TensorRT:
    an fp32 engine that leaves it alone computes its matmuls in TF32)."""
    for flag in plan.flags:
        config.set_flag(_builder_flag(trt, flag))
    for flag in plan.cleared_flags:
        config.clear_flag(_builder_flag(trt, flag))


def _builder_flag(trt, name: str):
    flag = getattr(trt.BuilderFlag, name, None)
    if flag is None:
        raise MissingDependency(f"TensorRT {trt.__version__} has no {name} builder flag, which this build needs to "
                                "set or clear (need TensorRT 10 or 11)")
    return flag


def _cuda_facts() -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}
