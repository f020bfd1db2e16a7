"""A per-kernel latency model of ViT parts on a named GPU: the ESTIMATE behind estimated tables.

Each part (stem, transformer block, residual reduction, head) is the list of kernels its runtime
launches (`kernels.py`: LayerNorm, qkv GEMM, attention, projection, residual adds, LayerNorm, fc1,
GELU, fc2, ...; TensorRT and inductor fuse some of them). Every kernel costs

    max(FLOPs / (peak * efficiency), bytes / (bandwidth * mem_eff)) + gap_us

where the peak and bandwidth are the GPU's datasheet figures (`gpus.py`), a GEMM's efficiency is
`gemm_eff * tile/wave utilisation * k / (k + k_half)` (a GEMM of few output tiles leaves SMs idle,
and a short reduction cannot hide its prologue), attention's is `attn_eff` times its own wave
utilisation, and `gap_us` is the device-side cost of one more kernel (launch latency, ramp-up and
tail). On GeForce cards compute runs `geforce_speedup` times faster than their datasheet
rates say (fitted, not explained: GPU Boost above the rated clock accounts for ~10%; the rest
suggests PyTorch's fp16 kernels there beat the datasheet's FP32-accumulate tensor rate). In eager
PyTorch the host launches every kernel, so a kernel never takes less than
`host_us`: that is why eager is launch bound at batch 1 (DESIGN.md section 4).

The seven constants are fitted on published measurements only, by `benchmarks/estimate_accuracy.py`,
which writes them with their held-out errors to `estimate_constants.json` (package data). Nothing
here is a measurement: tables built from it say `"source": "estimated"` everywhere.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from deployvit.errors import DeployvitError
from deployvit.runtime_registry import estimated_runtimes, runtime_record
from deployvit.settings import PRECISIONS
from deployvit.latency.gpus import GPU
from deployvit.latency.kernels import Flavour, Kernel, part_kernels
from deployvit.parts import Part

if TYPE_CHECKING:
    from deployvit.latency.table import LatencyTable
    from deployvit.spaces import SearchSpace

MODEL_VERSION = "deployvit.gpu_estimate/1"
CONSTANTS_FORMAT = "deployvit.estimate_constants/1"
#: runtimes the model covers (their records' `estimate`; the others' records say why not)
ESTIMATED_RUNTIMES = estimated_runtimes()
#: GEMM output tiles cuBLAS/TensorRT choose among; a smaller tile reuses less data per load, so it
#: runs below peak (relative rate `min(1, tm*tn / (tm+tn) / 64)`: 128x128 = 1, 128x64 = 2/3, 64x64 = 1/2)
TILES = ((256, 128), (128, 128), (128, 64), (64, 64))


@dataclass(frozen=True)
class Constants:
    """The fitted constants (see the module docstring)."""

    gemm_eff: float  # share of tensor peak a large, well-shaped GEMM reaches
    attn_eff: float  # same for fused attention
    mem_eff: float  # share of datasheet bandwidth a streaming kernel reaches
    k_half: float  # reduction length at which a GEMM runs at half its asymptotic rate
    gap_us: float  # device-side cost of each kernel
    host_us: float  # eager only: host time to launch one kernel through PyTorch
    geforce_speedup: float  # GeForce compute is this much faster than its datasheet rates say (see docstring)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def check_request(runtime: str, precision: str, batch: int, gpu: GPU) -> None:
    """Refuse, in one line, what the model does not cover."""
    record = runtime_record(runtime)
    if record.estimate is None:
        raise DeployvitError(f"--estimate does not cover runtime {runtime}: {record.not_estimated}")
    if precision not in PRECISIONS:
        raise DeployvitError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if precision == "bf16" and gpu.bf16_tensor_tflops is None:
        raise DeployvitError(f"{gpu.name} ({gpu.architecture}) has no bf16 support; use fp16 or fp32")
    if batch < 1:
        raise DeployvitError(f"batch size must be >= 1, got {batch}")


# --- costing ---------------------------------------------------------------------------------------


def peak_tflops(gpu: GPU, precision: str, flavour: Flavour) -> float:
    """The throughput GEMMs and attention run against: tensor cores, except fp32 without TF32."""
    if precision == "fp16":
        return gpu.fp16_tensor_tflops
    if precision == "bf16":
        return gpu.bf16_tensor_tflops or gpu.fp16_tensor_tflops
    if flavour.tf32 and gpu.tf32_tensor_tflops is not None:
        return gpu.tf32_tensor_tflops
    return gpu.fp32_tflops


def gemm_utilisation(m: int, n: int, groups: int, sms: int) -> float:
    """Best tile choice's share of the GPU doing useful work: tile quantisation (padding m, n up to
    whole tiles), wave quantisation (the last wave of tiles leaves SMs idle) and the tile's own rate."""
    best = 0.0
    for tm, tn in TILES:
        tiles = math.ceil(m / tm) * math.ceil(n / tn) * groups
        waves = math.ceil(tiles / sms)
        useful = (m * n * groups) / (waves * sms * tm * tn)
        best = max(best, useful * min(1.0, tm * tn / (tm + tn) / 64.0))
    return best


def attention_utilisation(heads: int, tokens: int, sms: int) -> float:
    """Fused attention runs one CTA per (sequence, head, 128 query rows) over 64-key blocks."""
    q_tiles = math.ceil(tokens / 128)
    tiles = heads * q_tiles
    waves = math.ceil(tiles / sms)
    quant = (tokens / (q_tiles * 128)) * (tokens / (math.ceil(tokens / 64) * 64))
    return quant * tiles / (waves * sms)


@dataclass
class KernelTerms:
    """Per-kernel times at 100% efficiency (microseconds), for vectorised costing: what the fit
    evaluates millions of times and what a table entry sums."""

    compute_us: np.ndarray  # FLOPs / (peak * utilisation)
    memory_us: np.ndarray  # bytes / bandwidth
    kind: np.ndarray  # 0 gemm, 1 attention, 2 memory-only
    k: np.ndarray  # GEMM reduction length (1 for others)
    count: np.ndarray
    geforce: np.ndarray  # 1 where the kernel runs on a GeForce card


KINDS = {"gemm": 0, "attention": 1, "memory": 2}


def kernel_terms(kernels: Sequence[Kernel], gpu: GPU, precision: str, flavour: Flavour) -> KernelTerms:
    peak = peak_tflops(gpu, precision, flavour) * 1e12
    bw = gpu.memory_bandwidth_gbs * 1e9
    compute, memory, kind, ks, count = [], [], [], [], []
    for kern in kernels:
        if kern.kind == "gemm":
            util = gemm_utilisation(kern.m, kern.n, kern.groups, gpu.sm_count)
        elif kern.kind == "attention":
            util = attention_utilisation(kern.groups, kern.m, gpu.sm_count)
        else:
            util = 1.0
        compute.append(kern.flops / (peak * util) * 1e6 if kern.flops else 0.0)
        memory.append(kern.bytes / bw * 1e6)
        kind.append(KINDS[kern.kind])
        ks.append(max(kern.k, 1))
        count.append(kern.count)
    geforce = np.full(len(kernels), gpu.segment == "geforce")
    return KernelTerms(np.array(compute), np.array(memory), np.array(kind), np.array(ks, dtype=float), np.array(count, dtype=float), geforce)


def kernel_times_us(terms: KernelTerms, c: Constants, host_launch: np.ndarray | bool) -> np.ndarray:
    """Each kernel's modelled time (one instance), vectorised; `host_launch` marks eager kernels."""
    eff = np.where(terms.kind == 0, c.gemm_eff * terms.k / (terms.k + c.k_half), c.attn_eff)
    clock = np.where(terms.geforce, c.geforce_speedup, 1.0)
    device = np.maximum(terms.compute_us / (eff * clock), terms.memory_us / c.mem_eff) + c.gap_us
    return np.where(host_launch, np.maximum(device, c.host_us), device)


def estimate_kernels_us(kernels: Sequence[Kernel], gpu: GPU, precision: str, flavour: Flavour, c: Constants) -> float:
    terms = kernel_terms(kernels, gpu, precision, flavour)
    return float(np.sum(kernel_times_us(terms, c, flavour.host_launch) * terms.count))


def estimate_part_us(part: Part, gpu: GPU, batch: int, precision: str, runtime: str, c: Constants | None = None) -> float:
    """Modelled latency (microseconds) of one part at `batch` in `runtime` on `gpu`."""
    check_request(runtime, precision, batch, gpu)
    flavour = Flavour.for_runtime(runtime, precision)
    return estimate_kernels_us(part_kernels(part, batch, precision, flavour), gpu, precision, flavour, c or fitted().constants)


# --- fitted constants ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fitted:
    """`estimate_constants.json`: the constants, how they were made and their held-out errors."""

    constants: Constants
    command: str
    date: str
    validation: dict[str, Any]
    data: dict[str, Any]


def constants_path() -> Path:
    return Path(str(files("deployvit.latency").joinpath("estimate_constants.json")))


def parse_fitted(raw: Any, where: str) -> Fitted:
    if not isinstance(raw, dict) or raw.get("format") != CONSTANTS_FORMAT or raw.get("model_version") != MODEL_VERSION:
        raise DeployvitError(f"{where} is not {CONSTANTS_FORMAT} for model {MODEL_VERSION}; rerun benchmarks/estimate_accuracy.py")
    values = raw.get("constants", {})
    missing = [n for n in Constants.names() if not isinstance(values.get(n), (int, float)) or not values[n] > 0]
    if missing:
        raise DeployvitError(f"{where}: constant(s) {', '.join(missing)} missing or not positive; rerun benchmarks/estimate_accuracy.py")
    return Fitted(Constants(**{n: float(values[n]) for n in Constants.names()}), str(raw.get("command", "")), str(raw.get("date", "")),
                  raw.get("validation", {}), raw.get("data", {}))


@lru_cache(maxsize=1)
def fitted() -> Fitted:
    path = constants_path()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DeployvitError(f"cannot read the estimator's constants {path}: {exc}; rerun benchmarks/estimate_accuracy.py") from None
    return parse_fitted(raw, str(path))


# --- estimated tables ------------------------------------------------------------------------------


def regime(batch: int) -> str:
    """The batch regime the validation statistics are reported for."""
    return "b1" if batch == 1 else ("b64+" if batch >= 64 else "b2-32")


def table_validation(runtime: str, batch: int, fit: Fitted) -> dict[str, Any]:
    """An estimated table's `validation` block: the held-out errors of its own (regime, runtime)
    cell up front, marked UNVALIDATED where no published data covers it, then all cells."""
    cell = f"{regime(batch)}/{runtime}"
    v = fit.validation
    own = {
        "regime": regime(batch),
        "runtime": runtime,
        "status": v.get("coverage", {}).get(cell, "UNVALIDATED: no published measurements of this runtime at this batch"),
        "leave_one_gpu_out": v.get("leave_one_gpu_out", {}).get(cell),
        "leave_one_regime_out": v.get("leave_one_regime_out", {}).get(cell),
    }
    return {"source": "estimated", "this_table": own, **{k: v[k] for k in ("method", "goal", "leave_one_gpu_out", "leave_one_regime_out",
                                                                           "coverage") if k in v}}


def estimate_table(space: "SearchSpace", gpu: GPU, runtime: str, precision: str, batch: int) -> "LatencyTable":
    """An estimated LatencyTable of every part of `space` (deterministic: no date, no machine facts,
    so the shipped tables can be checked to regenerate from the code)."""
    from deployvit import __version__
    from deployvit.latency.table import LatencyTable
    from deployvit.parts import ReductionPart, space_parts

    check_request(runtime, precision, batch, gpu)
    fit = fitted()
    flavour = Flavour.for_runtime(runtime, precision)
    entries = {}
    for part in space_parts(space):
        kernels = part_kernels(part, batch, precision, flavour)
        entries[part.key] = {"median_us": round(estimate_kernels_us(kernels, gpu, precision, flavour, fit.constants), 3), "kernels": len(kernels)}
    not_measured = "none (estimate, not measured)"
    metadata = {
        "source": "estimated",
        "device_label": gpu.key,
        "device_type": "cuda",
        "device_name": gpu.name,
        "runtime": runtime,
        "runtime_version": not_measured,
        "precision": precision,
        "batch_size": batch,
        "img_size": space.img_size,
        "space": space.name,
        "space_hash": space.hash(),
        "torch": not_measured,
        "deployvit": __version__,
        "estimator": {"model_version": MODEL_VERSION, "constants": fit.constants.to_dict(), "fitted_by": fit.command, "fitted_on": fit.date},
        "gpu": gpu.to_dict(),
        "num_entries": len(entries),
    }
    validation = table_validation(runtime, batch, fit)
    if any(isinstance(p, ReductionPart) for p in space_parts(space)):
        validation["this_table"]["note"] = ("residual spatial reductions (ViT-ResNAS) appear in no published measurement: "
                                            "their kernels are modelled like the others but never validated")
    calibration = {"method": "none: an estimate models each part's kernels, so the parts sum to the whole model (scale 1, bias 0)", "archs": []}
    return LatencyTable(metadata, entries, 1.0, 0.0, calibration, validation)
