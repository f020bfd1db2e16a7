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
Which path built the engine (strongly typed, network flags, builder flags set and cleared, TF32) is
recorded in the engine's JSON sidecar.

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

SUPPORTED_MAJORS = (10, 11)
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

    @property
    def path(self) -> str:
        """One line naming the build path (sidecar `build_path`, report notes)."""
        typed = "strongly typed" if self.strongly_typed else "weakly typed"
        tf32 = "TF32 on" if self.tf32 else "TF32 off"
        return f"TensorRT {self.trt_major} {typed} network from the {self.onnx_precision} ONNX graph, {tf32}"


def plan_build(major: int, precision: str, tf32: bool = False) -> BuildPlan:
    """The build recipe for TensorRT `major` (10 or 11), engine `precision` and the TF32 choice: the
    same strongly typed network from the same `precision` graph on both majors; TF32 set or cleared
    explicitly (TensorRT enables it by default), and only meaningful for an fp32 engine."""
    if major not in SUPPORTED_MAJORS:
        raise MissingDependency(f"TensorRT {major}.x is not supported (need 10.x or 11.x)")
    if precision not in ("fp32", "fp16", "bf16"):
        raise DeployvitError(f"unknown precision {precision!r} (choose from fp32, fp16, bf16)")
    if tf32 and precision != "fp32":
        raise DeployvitError(f"TF32 is a choice for fp32 engines only (this engine is {precision})")
    flags, cleared = (("TF32",), ()) if tf32 else ((), ("TF32",))
    return BuildPlan(major, precision, precision, True, flags, cleared, tf32)


def check_graph_precision(plan: BuildPlan, graph_precision: str) -> None:
    """Refuse an ONNX file whose precision would not give the requested engine (TensorRT 11 would
    silently build an fp32 engine from an fp32 graph)."""
    if graph_precision != plan.onnx_precision:
        raise DeployvitError(
            f"TensorRT {plan.trt_major} {'strongly typed ' if plan.strongly_typed else ''}build of a "
            f"{plan.precision} engine needs a {plan.onnx_precision} ONNX graph, got {graph_precision}"
        )


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
) -> dict[str, Any]:
    """Build a serialized engine from `onnx_path` with `trt` (the imported `tensorrt` module), write it
    and then its JSON sidecar atomically, update `timing_cache` (reused across builds: a rebuild then
    skips kernel timing), return the sidecar. `tf32`: let fp32 layers use TF32 (fp32 engines only;
    off by default, so fp32 means fp32)."""
    require_cuda()
    plan = plan_build(trt_major(trt.__version__), precision, tf32=tf32)
    if graph_precision is not None:
        check_graph_precision(plan, graph_precision)
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

    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).exists() else b""
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
        "engine_sha256": io.sha256(engine_path),
        "build_seconds": round(seconds, 2),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


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
