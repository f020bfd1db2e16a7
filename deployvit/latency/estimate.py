"""A per-kernel latency model of ViTs on a named GPU: the ESTIMATE behind estimated tables.

Public API (stable; everything it returns is an estimate, in microseconds per batch):

    estimate_arch_us(arch, gpu, runtime, precision, batch)   # any Arch, any catalogue GPU
    estimate_table(space, gpu, runtime, precision, batch)    # a LatencyTable of every part of a space
    estimate_part_us(part, gpu, batch, precision, runtime)   # one part, inside a whole model

`gpu` is a `gpus.GPU` or any name the catalogue answers to (key, alias, the CUDA device name).

Each part (stem, transformer block, residual reduction, head) is the list of kernels its runtime
launches (`kernels.py`). Two timelines run side by side:

- the device: every kernel costs `max(compute, bytes / (bandwidth x mem_eff)) + kernel_cycles / clock`. Compute
  is FLOPs against the GPU's datasheet rate for the unit the kernel runs on (`gpus.py`): tensor cores
  at the FP16/BF16 rate with FP32 accumulation (what PyTorch's and TensorRT's kernels accumulate
  in), or, for fp32 without TF32 (deployvit's default everywhere), the CUDA cores' FP32 rate. A
  tensor GEMM takes `FLOPs / (rate x tile/wave utilisation) x (1 + gemm_overhead x rho) x (k +
  k_half) / k`: a GEMM of few output tiles leaves SMs idle; a short reduction cannot hide its
  prologue; and each main-loop step spends `gemm_overhead` cycles per math cycle of the full-rate
  tensor pipe on work that does not overlap the math (operand loads, address arithmetic,
  synchronisation). `rho` is the FP32-accumulate rate over the FP16-accumulate rate, both datasheet
  facts: 1 on datacenter parts, 1/2 on GeForce cards and the L40, whose tensor cores take twice the
  cycles per FP32-accumulate MMA, so the same overhead is half as large a share there (this is why
  GeForce cards reach a larger fraction of their rated FP32-accumulate peak). Fused attention is the
  same with `attn_overhead`; a CUDA-core GEMM runs at `simt_eff` of the FP32 rate (CUDA cores are fed
  by any 64x64 tile, so smaller tiles than on tensor cores fill the GPU). Every kernel also costs
  `kernel_cycles` GPU clock cycles at the boost clock (launch processing, CTA dispatch, ramp-up and
  drain, the serial path of a small kernel): the floor that makes a batch-1 model cost per kernel,
  lower on a faster-clocked GPU, the same in a CUDA graph and a stream.
- the host: each kernel costs what launching it costs (`kernels.HOST_PATHS`): `eager_launch_us`
  through eager PyTorch (Python module call, op binding, ATen dispatcher, cudaLaunchKernel);
  `INDUCTOR_LAUNCH_SHARE x eager_launch_us` through inductor's generated Python wrapper (default
  `torch.compile` mode launches every fused kernel from Python), plus `INDUCTOR_CALL_LAUNCHES` such
  launches per call (guards, the wrapper's entry); `native_launch_us` from a C++ runtime; nothing
  per kernel in a CUDA-graph replay. Host costs scale with the GPU's `host_launch_scale` (Jetson's
  Arm cores are slower than the x86 servers the published data comes from).

A part takes `max(host, device)`: the host runs ahead while the device is busy (large batch:
device bound), the device waits for launches when kernels are short (eager and compile at small
batch: host bound). A whole model is the sum of its parts plus the per-call host cost, and an
estimated table stores exactly that (entries + calibration bias), so `table.predict(arch)` equals
`estimate_arch_us(arch, ...)`.

The eight constants are fitted on published measurements only, by `benchmarks/estimate_accuracy.py`,
which writes them with their held-out errors (leave one GPU out, leave one batch regime out, leave a
GPU and a runtime out together) to `estimate_constants.json` (package data). Nothing here is a
measurement: tables built from it say `"source": "estimated"` everywhere, and each carries the
held-out error of its own regime, or says UNVALIDATED where no published data covers it.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from deployvit.errors import DeployvitError
from deployvit.latency.gpus import GPU, load_catalogue
from deployvit.latency.kernels import Flavour, Kernel, part_kernels
from deployvit.runtime_registry import estimated_runtimes, runtime_record
from deployvit.settings import PRECISIONS, QUANTIZED_PRECISIONS
from deployvit.parts import Part, arch_parts

if TYPE_CHECKING:
    from deployvit.arch import Arch
    from deployvit.latency.table import LatencyTable
    from deployvit.spaces import SearchSpace

MODEL_VERSION = "deployvit.gpu_estimate/2"
CONSTANTS_FORMAT = "deployvit.estimate_constants/2"
#: runtimes the model covers (their records' `estimate`; the others' records say why not)
ESTIMATED_RUNTIMES = estimated_runtimes()
#: GEMM output tiles cuBLAS/TensorRT choose among, with each tile's rate relative to the unit's peak:
#: on tensor cores a smaller tile reuses less data per load (`min(1, tm*tn / (tm+tn) / 64)`: 128x128
#: = 1, 128x64 = 2/3, 64x64 = 1/2); CUDA cores need 8-16x less operand traffic per FLOP, so their
#: tiles run at full rate down to 64x64 and 32x32 ones at 2/3 (`/ 24`)
TENSOR_TILES = ((256, 128), (128, 128), (128, 64), (64, 64))
SIMT_TILES = ((128, 128), (128, 64), (64, 64), (64, 32), (32, 32))
#: Structure of inductor's host path, not fitted (no published data times torch.compile at small
#: batch): launching one kernel from its generated wrapper (a Python line, CachingAutotuner.run or
#: an extern call, the Triton binder, cuLaunchKernel: 7-9 us on a GB200 host, tritonbench PR #1017)
#: costs about 0.6 of what eager PyTorch spends per kernel on the same host (an nn.Module call, the
#: op's Python binding and view ops around it, the ATen dispatcher, the same launch); once per call
#: the guards and the wrapper's entry and input checks cost about 4 such launches (33-44 us
#: end to end for one kernel in the same measurement).
INDUCTOR_LAUNCH_SHARE = 0.6
INDUCTOR_CALL_LAUNCHES = 4.0


def structure() -> dict[str, Any]:
    """The model's unfitted structural numbers, recorded beside the fitted constants: a change to
    any of them makes the constants file stale (refused until refitted)."""
    return {"inductor_launch_share": INDUCTOR_LAUNCH_SHARE, "inductor_call_launches": INDUCTOR_CALL_LAUNCHES,
            "tensor_tiles": [list(t) for t in TENSOR_TILES], "simt_tiles": [list(t) for t in SIMT_TILES]}


@dataclass(frozen=True)
class Constants:
    """The fitted constants (see the module docstring)."""

    gemm_overhead: float  # non-overlapped main-loop cycles per math cycle of the full-rate tensor pipe (GEMM)
    attn_overhead: float  # same for fused attention
    simt_eff: float  # share of the CUDA-core FP32 peak a large fp32 GEMM reaches (no TF32)
    mem_eff: float  # share of datasheet bandwidth a streaming kernel reaches
    k_half: float  # reduction length at which a GEMM runs at half its asymptotic rate
    kernel_cycles: float  # device-side cost of each kernel beyond its work, in GPU clock cycles
    eager_launch_us: float  # host time per kernel in eager PyTorch (x86 server host)
    native_launch_us: float  # host time per kernel enqueued by a C++ runtime

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def resolve_gpu(gpu: "GPU | str") -> GPU:
    """A catalogue entry from itself or any name the catalogue answers to."""
    return load_catalogue().get(gpu)


def check_request(runtime: str, precision: str, batch: int, gpu: GPU) -> None:
    """Refuse, in one line, what the model does not cover."""
    record = runtime_record(runtime)
    if record.estimate is None:
        raise DeployvitError(f"--estimate does not cover runtime {runtime}: {record.not_estimated}")
    if precision not in PRECISIONS:
        raise DeployvitError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if precision in QUANTIZED_PRECISIONS:
        raise DeployvitError(f"--estimate does not cover {precision}: the kernel model is fitted on published fp32/fp16 measurements "
                             f"only; measure an {precision} table with `deployvit profile` (without --estimate)")
    if precision == "bf16" and gpu.bf16_tensor_tflops is None:
        raise DeployvitError(f"{gpu.name} ({gpu.architecture}) has no bf16 support; use fp16 or fp32")
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1:
        raise DeployvitError(f"batch size must be an integer >= 1, got {batch!r}")


# --- costing ---------------------------------------------------------------------------------------


def tensor_cores(gpu: GPU, precision: str, flavour: Flavour) -> bool:
    """Whether GEMMs and attention run on tensor cores: always in fp16/bf16; in fp32 only with TF32."""
    return precision != "fp32" or (flavour.tf32 and gpu.tf32_tensor_tflops is not None)


def peak_tflops(gpu: GPU, precision: str, flavour: Flavour) -> float:
    """The throughput GEMMs and attention run against (see the module docstring)."""
    if precision == "fp16":
        return gpu.fp16_tensor_tflops
    if precision == "bf16":
        return gpu.bf16_tensor_tflops or gpu.fp16_tensor_tflops
    if tensor_cores(gpu, precision, flavour):
        return gpu.tf32_tensor_tflops
    return gpu.fp32_tflops


def gemm_utilisation(m: int, n: int, groups: int, sms: int, simt: bool = False) -> float:
    """Best tile choice's share of the GPU doing useful work: tile quantisation (padding m, n up to
    whole tiles), wave quantisation (the last wave of tiles leaves SMs idle) and the tile's own rate.
    Split-K is not modelled: the published batch-1 runs (AITemplate, FasterTransformer on an A100)
    are slower than a model that lets skinny GEMMs split their reduction."""
    best = 0.0
    for tm, tn in SIMT_TILES if simt else TENSOR_TILES:
        tiles = math.ceil(m / tm) * math.ceil(n / tn) * groups
        waves = math.ceil(tiles / sms)
        useful = (m * n * groups) / (waves * sms * tm * tn)
        best = max(best, useful * min(1.0, tm * tn / (tm + tn) / (24.0 if simt else 64.0)))
    return best


def attention_utilisation(heads: int, tokens: int, sms: int) -> float:
    """Fused attention runs one CTA per (sequence, head, 128 query rows) over 64-key blocks."""
    q_tiles = math.ceil(tokens / 128)
    tiles = heads * q_tiles
    waves = math.ceil(tiles / sms)
    quant = (tokens / (q_tiles * 128)) * (tokens / (math.ceil(tokens / 64) * 64))
    return quant * tiles / (waves * sms)


#: kernel kinds the costing distinguishes
KINDS = {"gemm": 0, "attention": 1, "memory": 2, "simt gemm": 3, "simt attention": 4}


@dataclass
class KernelTerms:
    """Per-kernel times at 100% efficiency (microseconds) and host-launch weights, for vectorised
    costing: what the fit evaluates millions of times and what a table entry sums."""

    compute_us: np.ndarray  # FLOPs / (peak * utilisation)
    memory_us: np.ndarray  # bytes / bandwidth
    kind: np.ndarray  # KINDS
    k: np.ndarray  # GEMM reduction length (1 for others)
    rho: np.ndarray  # the tensor mode's rate over the full-rate (FP16-accumulate) pipe's: 1, or 1/2 on GeForce
    cycle_us: np.ndarray  # one GPU clock cycle at the boost clock, in microseconds
    count: np.ndarray  # instances of the kernel
    host_eager: np.ndarray  # host time per instance, in units of eager_launch_us
    host_native: np.ndarray  # host time per instance, in units of native_launch_us


def host_weights(gpu: GPU, flavour: Flavour) -> tuple[float, float]:
    """(eager_launch_us units, native_launch_us units) one kernel launch costs on the host."""
    scale = gpu.host_launch_scale
    return {"python": (scale, 0.0), "inductor": (INDUCTOR_LAUNCH_SHARE * scale, 0.0), "graph": (0.0, 0.0),
            "native": (0.0, scale)}[flavour.host]


def call_host_weight(gpu: GPU, flavour: Flavour) -> float:
    """Host time once per call, in units of eager_launch_us (inductor's guards and wrapper entry)."""
    return INDUCTOR_CALL_LAUNCHES * INDUCTOR_LAUNCH_SHARE * gpu.host_launch_scale if flavour.host == "inductor" else 0.0


def pipe_ratio(gpu: GPU, precision: str, flavour: Flavour) -> float:
    """The rate GEMMs run at over the tensor pipe's full (FP16-accumulate) rate: 1/2 for FP16/BF16
    with FP32 accumulation on GeForce cards and the L40, 1 elsewhere (TF32 and CUDA cores: 1)."""
    if precision == "fp32":
        return 1.0
    return min(1.0, peak_tflops(gpu, precision, flavour) / gpu.fp16_acc16_tensor_tflops)


def kernel_terms(kernels: Sequence[Kernel], gpu: GPU, precision: str, flavour: Flavour) -> KernelTerms:
    peak = peak_tflops(gpu, precision, flavour) * 1e12
    bw = gpu.memory_bandwidth_gbs * 1e9
    simt = not tensor_cores(gpu, precision, flavour)
    compute, memory, kind, ks, count = [], [], [], [], []
    for kern in kernels:
        if kern.kind == "gemm":
            util = gemm_utilisation(kern.m, kern.n, kern.groups, gpu.sm_count, simt)
        elif kern.kind == "attention":
            util = attention_utilisation(kern.groups, kern.m, gpu.sm_count)
        else:
            util = 1.0
        compute.append(kern.flops / (peak * util) * 1e6 if kern.flops else 0.0)
        memory.append(kern.bytes / bw * 1e6)
        kind.append(KINDS[f"simt {kern.kind}" if simt and kern.kind != "memory" else kern.kind])
        ks.append(max(kern.k, 1))
        count.append(kern.count)
    he, hn = host_weights(gpu, flavour)
    n = len(kernels)
    return KernelTerms(np.array(compute, dtype=float), np.array(memory, dtype=float), np.array(kind, dtype=int), np.array(ks, dtype=float),
                       np.full(n, pipe_ratio(gpu, precision, flavour)), np.full(n, 1.0 / gpu.boost_clock_mhz), np.array(count, dtype=float),
                       np.full(n, he), np.full(n, hn))


def device_times_us(terms: KernelTerms, c: Constants) -> np.ndarray:
    """Each kernel's device time (one instance), vectorised."""
    kf = terms.k / (terms.k + c.k_half)
    slowdown = np.select([terms.kind == 0, terms.kind == 1, terms.kind == 3, terms.kind == 4],
                         [(1 + c.gemm_overhead * terms.rho) / kf, 1 + c.attn_overhead * terms.rho, 1 / (c.simt_eff * kf), 1 / c.simt_eff], 1.0)
    return np.maximum(terms.compute_us * slowdown, terms.memory_us / c.mem_eff) + c.kernel_cycles * terms.cycle_us


def host_times_us(terms: KernelTerms, c: Constants) -> np.ndarray:
    """Each kernel's host launch time (one instance), vectorised."""
    return terms.host_eager * c.eager_launch_us + terms.host_native * c.native_launch_us


def part_time_us(terms: KernelTerms, c: Constants) -> float:
    """One part inside a model: the slower of its host and device timelines."""
    device = float(np.sum(device_times_us(terms, c) * terms.count))
    host = float(np.sum(host_times_us(terms, c) * terms.count))
    return max(device, host)


def estimate_kernels_us(kernels: Sequence[Kernel], gpu: GPU, precision: str, flavour: Flavour, c: Constants) -> float:
    return part_time_us(kernel_terms(kernels, gpu, precision, flavour), c)


def estimate_part_us(part: Part, gpu: "GPU | str", batch: int, precision: str, runtime: str, c: Constants | None = None) -> float:
    """Modelled latency (microseconds) of one part at `batch` in `runtime` on `gpu`, as a part of a
    whole model (the per-call host cost is not in it: see `call_overhead_us`)."""
    gpu = resolve_gpu(gpu)
    check_request(runtime, precision, batch, gpu)
    flavour = Flavour.for_runtime(runtime, precision)
    return estimate_kernels_us(part_kernels(part, batch, precision, flavour), gpu, precision, flavour, c or fitted().constants)


def call_overhead_us(gpu: "GPU | str", runtime: str, precision: str = "fp16", c: Constants | None = None) -> float:
    """Host time paid once per model call (inductor's guards and wrapper entry; 0 elsewhere)."""
    gpu = resolve_gpu(gpu)
    return call_host_weight(gpu, Flavour.for_runtime(runtime, precision)) * (c or fitted().constants).eager_launch_us


def estimate_arch_us(arch: "Arch", gpu: "GPU | str", runtime: str, precision: str, batch: int, c: Constants | None = None) -> float:
    """ESTIMATED latency (microseconds per batch of `batch` images) of the whole model `arch` in
    `runtime` at `precision` on the catalogue GPU `gpu`: any Arch, not only a preset space's (e.g.
    DeiT-Tiny = one stage of 12 layers, embed 192, 3 heads of 64, MLP ratio 4, 224 px, patch 16)."""
    gpu = resolve_gpu(gpu)
    check_request(runtime, precision, batch, gpu)
    c = c or fitted().constants
    total = sum(estimate_part_us(p, gpu, batch, precision, runtime, c) for p in arch_parts(arch))
    return total + call_overhead_us(gpu, runtime, precision, c)


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
    if raw.get("structure") != structure():
        raise DeployvitError(f"{where} was fitted with another model structure than this code's; rerun benchmarks/estimate_accuracy.py")
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

UNVALIDATED = "UNVALIDATED: no published measurements of this runtime at this batch"
#: the held-out checks every table reports, per regime/runtime cell
HELD_OUT = ("leave_one_gpu_out", "leave_one_regime_out", "leave_gpu_and_runtime_out")


def regime(batch: int) -> str:
    """The batch regime the validation statistics are reported for."""
    return "b1" if batch == 1 else ("b64+" if batch >= 64 else "b2-32")


def gpu_notes(gpu: GPU, runtime: str, fit: Fitted) -> list[str]:
    """What makes this GPU's estimate less certain than its regime's held-out error says."""
    notes = []
    if gpu.key not in fit.data.get("gpus", []):
        notes.append(f"{gpu.key} appears in no published measurement: its estimate is a transfer from other GPUs "
                     "(the leave_gpu_and_runtime_out numbers are the closest check)")
    if gpu.power_limited:
        notes.append(f"power limited ({gpu.tdp_w:g} W): under dense work it sustains less than the boost clock its datasheet rates "
                     "assume, so large-batch estimates are optimistic")
    if gpu.host_launch_scale != 1.0 and runtime in ("eager", "compile"):
        notes.append(f"host launches on {gpu.host_cpu} are modelled as {gpu.host_launch_scale:g}x the x86 servers' cost "
                     "(an assumption): host-bound estimates here are UNVALIDATED")
    return notes


def table_validation(runtime: str, batch: int, fit: Fitted, gpu: GPU | None = None) -> dict[str, Any]:
    """An estimated table's `validation` block: the held-out errors of its own (regime, runtime)
    cell up front, marked UNVALIDATED where no published data covers it, then all cells."""
    cell = f"{regime(batch)}/{runtime}"
    v = fit.validation
    own = {"regime": regime(batch), "runtime": runtime, "status": v.get("coverage", {}).get(cell, UNVALIDATED)}
    own.update({name: v.get(name, {}).get(cell) for name in HELD_OUT})
    if gpu is not None:
        own["gpu_notes"] = gpu_notes(gpu, runtime, fit)
    keep = ("method", "goal", *HELD_OUT, "coverage", "sanity_checks")
    return {"source": "estimated", "this_table": own, **{k: v[k] for k in keep if k in v}}


def estimate_table(space: "SearchSpace", gpu: "GPU | str", runtime: str, precision: str, batch: int) -> "LatencyTable":
    """An estimated LatencyTable of every part of `space` (deterministic: no date, no machine facts,
    so the shipped tables can be checked to regenerate from the code). Its calibration is scale 1
    and, as bias, the per-call host cost, so that it predicts exactly `estimate_arch_us`."""
    from deployvit import __version__
    from deployvit.latency.table import LatencyTable
    from deployvit.parts import ReductionPart, space_parts

    gpu = resolve_gpu(gpu)
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
        "estimator": {"model_version": MODEL_VERSION, "constants": fit.constants.to_dict(), "fitted_by": fit.command, "fitted_on": fit.date,
                      "host_path": flavour.host, "tensor_cores": tensor_cores(gpu, precision, flavour)},
        "gpu": gpu.to_dict(),
        "num_entries": len(entries),
    }
    validation = table_validation(runtime, batch, fit, gpu)
    if any(isinstance(p, ReductionPart) for p in space_parts(space)):
        validation["this_table"]["note"] = ("residual spatial reductions (ViT-ResNAS) appear in no published measurement: "
                                            "their kernels are modelled like the others but never validated")
    bias = round(call_overhead_us(gpu, runtime, precision, fit.constants), 3)
    calibration = {"method": "none: an estimate models each part's kernels inside a whole model, so the parts sum to the whole "
                             "(scale 1); the bias is the host cost paid once per call", "archs": []}
    return LatencyTable(metadata, entries, 1.0, bias, calibration, validation)
