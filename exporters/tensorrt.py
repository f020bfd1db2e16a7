"""ONNX -> TensorRT engine, and a runner for it. Small on purpose: everything that can be decided
without TensorRT (which graph precision to export, builder flags, the optimisation profile, the
sidecar) is a plain function tested on CPU; only `build_engine` and `TrtRunner` touch TensorRT.

Version rules (REFERENCES.md section 6):
- TensorRT 11 builds strongly typed networks only; the FP16/BF16 builder flags are gone, so the ONNX
  graph itself must be fp16/bf16 (an fp32 graph silently gives an fp32 engine: refused here).
- TensorRT 10 keeps the weakly typed path: an fp32 graph plus the FP16/BF16 builder flag.
Which path was used is recorded in the engine's JSON sidecar.

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

INSTALL_HINT = "pip install tensorrt (TensorRT 10 or 11; needs an NVIDIA GPU and driver)"
SUPPORTED_MAJORS = (10, 11)
OPTIMIZATION_LEVEL = 3  # TensorRT's default; recorded so a rebuild can reproduce it


def import_tensorrt():
    """The `tensorrt` module, or MissingDependency (exit 2) with the install hint."""
    try:
        import tensorrt
    except ImportError:
        raise MissingDependency(f"tensorrt is not installed: {INSTALL_HINT}") from None
    major = trt_major(tensorrt.__version__)
    if major not in SUPPORTED_MAJORS:
        raise MissingDependency(f"tensorrt {tensorrt.__version__} is not supported (need 10.x or 11.x): {INSTALL_HINT}")
    return tensorrt


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
    export, whether the network is strongly typed, and which builder flags to set."""

    trt_major: int
    precision: str
    onnx_precision: str
    strongly_typed: bool
    flags: tuple[str, ...]


def plan_build(major: int, precision: str) -> BuildPlan:
    """The build recipe for TensorRT `major` (10 or 11) and engine `precision`."""
    if major not in SUPPORTED_MAJORS:
        raise MissingDependency(f"TensorRT {major}.x is not supported (need 10.x or 11.x)")
    if major >= 11:  # strongly typed only: precision lives in the graph
        return BuildPlan(major, precision, precision, True, ())
    flags = {"fp32": (), "fp16": ("FP16",), "bf16": ("BF16",)}[precision]
    return BuildPlan(major, precision, "fp32", False, flags)


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
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    precision: str,
    batch_range: tuple[int, int, int],
    workspace_gb: float = 4.0,
    timing_cache: str | os.PathLike | None = None,
    graph_precision: str | None = None,
) -> dict[str, Any]:
    """Build a serialized engine from `onnx_path`, write it and then its JSON sidecar atomically, update
    `timing_cache` (reused across builds: a rebuild then skips kernel timing), return the sidecar."""
    trt = import_tensorrt()
    require_cuda()
    plan = plan_build(trt_major(trt.__version__), precision)
    if graph_precision is not None:
        check_graph_precision(plan, graph_precision)
    if workspace_gb <= 0:
        raise DeployvitError(f"workspace must be > 0 GB, got {workspace_gb}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckFailed(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.builder_optimization_level = OPTIMIZATION_LEVEL
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
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
    sidecar = {
        "format": "deployvit.engine/1",
        "deployvit": __version__,
        "tensorrt": trt.__version__,
        **_cuda_facts(),
        **asdict(plan),
        "flags": list(plan.flags),
        "input": inp.name,
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
    io.write_json(sidecar_path(engine_path), sidecar)
    return sidecar


def _network_flags(trt, plan: BuildPlan) -> int:
    """STRONGLY_TYPED on request (TensorRT 11 keeps the flag but ignores it: always strongly typed)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 1 << int(flag) if plan.strongly_typed and flag is not None else 0


def _cuda_facts() -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}


class TrtRunner:
    """Runs a serialized engine on torch CUDA tensors: `runner(x) -> logits` on the current stream.

    Buffers are torch tensors, so no pycuda / cuda-python is needed, and the timing loop can time a
    call exactly like a PyTorch module's."""

    def __init__(self, engine_path: str | os.PathLike):
        import torch

        trt = import_tensorrt()
        require_cuda()
        self._torch = torch
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

    def __call__(self, x):
        torch = self._torch
        x = x.to(device="cuda", dtype=self.input_dtype).contiguous()
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise DeployvitError(f"input shape {tuple(x.shape)} is outside the engine's optimisation profile")
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=self.output_dtype, device="cuda")
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise CheckFailed("TensorRT execution failed")
        return out.float()
