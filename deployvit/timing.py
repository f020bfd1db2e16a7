"""The one timing loop of the codebase: profile, validation, export and benchmarks all call it.

Every number that ends up in a latency table, an export report or a benchmark comes through
`time_callable`, so "timed the same way" (docs/DESIGN.md section 4) is true by construction. On CUDA each
repeat is bracketed by two CUDA events recorded on the current stream; a sample is the GPU-clock time
between them. What that covers depends on the runtime:
- asynchronous runtimes (torch eager and compiled, CUDA graph replay, TensorRT's execute_async_v3)
  queue work on that stream and return: the events bracket the queued kernels, so a sample is device
  time when the GPU is the bottleneck, and the host's launch time when launching is (eager at small
  batch: the end event is queued only after the last launch, and the GPU idles in between);
- host-synchronous calls (onnxruntime's `run_with_iobinding`, which runs on onnxruntime's own stream
  and returns only when that stream is done) are wholly inside the bracket: the end event is recorded
  after the call returned, so a sample is the call's full latency as its caller sees it (launches,
  kernels and the final synchronisation), measured on the GPU clock; repeats never overlap.
Either way a sample is the latency a caller of that runtime gets, and the numbers of one runtime are
comparable with each other; across runtimes they are comparable as latencies, not as kernel time
(trtexec's "GPU Compute Time" is kernels only). On the CPU a repeat is bracketed by
`time.perf_counter`. Warm-up is by time rather than by count, because the first calls pay for
allocator growth, cuDNN/cuBLAS heuristics and clock ramp-up whose duration does not depend on how
fast one call is. The median is reported because a single OS hiccup should not move the number; the
coefficient of variation says how much to trust it.

`clock="cpu"` (CPU device only) times with the process's CPU time instead of the wall clock. On a
machine shared with other jobs the wall-clock latency of a single-threaded run depends on how much of
the CPU the neighbours take (measured here: one block 3.5 ms alone, 17 ms wall under load, 4.6 ms of
CPU time); CPU time is what the run itself costs, and equals its wall latency on an idle machine
(shared caches and memory bandwidth still couple it to the neighbours, a few percent). It sums over
threads, so it means latency only for single-threaded runs (`profile` enforces that).
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from deployvit.errors import DeployvitError

#: above this coefficient of variation a warning is issued (trtexec warns at 2.5% on GPUs; CPUs
#: shared with other processes are noisier, so the CPU default is looser).
CV_WARN_CUDA = 0.025
CV_WARN_CPU = 0.10
CLOCKS = ("wall", "cpu")


@dataclass(frozen=True)
class Timing:
    """Summary of `repeats` timed calls, in microseconds per call."""

    median_us: float
    p90_us: float
    mean_us: float
    cv: float
    repeats: int

    def to_dict(self) -> dict:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty list, numpy's default method."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(samples_us: list[float]) -> Timing:
    """Median, p90, mean and coefficient of variation (stdev / mean) of per-call times."""
    if not samples_us:
        raise DeployvitError("no timing samples to summarize")
    mean = statistics.fmean(samples_us)
    stdev = statistics.pstdev(samples_us) if len(samples_us) > 1 else 0.0
    return Timing(
        median_us=statistics.median(samples_us),
        p90_us=percentile(samples_us, 90.0),
        mean_us=mean,
        cv=stdev / mean if mean > 0 else 0.0,
        repeats=len(samples_us),
    )


def _check_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeployvitError(f"unknown timing device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeployvitError("timing on CUDA needs a CUDA GPU and a CUDA build of torch; none found")
    if dev.type not in ("cpu", "cuda"):
        raise DeployvitError(f"timing supports cpu and cuda devices, not {dev.type!r}")
    return dev


def time_callable(
    fn: Callable[[], object],
    *,
    device: str | torch.device,
    warmup_s: float = 0.5,
    repeats: int = 100,
    inner: int = 1,
    min_repeat_s: float = 0.0,
    cv_warn: float | None = None,
    label: str = "",
    clock: str = "wall",
) -> Timing:
    """Time `fn()` (no arguments; inputs bound in a closure) and return per-call statistics.

    `warmup_s`: keep calling for at least this long before timing (and at least once).
    `repeats`: number of timed samples. `inner`: calls per sample, averaged, for functions so short
    that the timer's resolution or event overhead matters; with `min_repeat_s` > 0 `inner` is raised
    after warm-up until one sample lasts at least that long. `cv_warn`: warn (RuntimeWarning) when
    the coefficient of variation exceeds it (default 2.5% on CUDA, 10% on CPU). `label` names the
    thing timed in the warning. `clock`: "wall" (CUDA events / perf_counter) or "cpu" (process CPU
    time; CPU device only, see the module docstring).
    """
    dev = _check_arguments(device, clock, repeats, inner, warmup_s, min_repeat_s)
    cuda = dev.type == "cuda"
    with torch.inference_mode():
        per_call = _warm_up(fn, dev, warmup_s)
        if min_repeat_s > 0:
            inner = max(inner, int(min_repeat_s / max(per_call, 1e-9)) + 1)
        samples = _cuda_samples(fn, dev, repeats, inner) if cuda else _cpu_samples(fn, clock, repeats, inner)
    timing = summarize(samples)
    limit = cv_warn if cv_warn is not None else (CV_WARN_CUDA if cuda else CV_WARN_CPU)
    if timing.cv > limit:
        what = f" of {label}" if label else ""
        warnings.warn(
            f"timing{what} is noisy: coefficient of variation {timing.cv:.1%} > {limit:.1%} "
            f"over {timing.repeats} repeats (median {timing.median_us:.1f} us); close other work or raise repeats",
            RuntimeWarning,
            stacklevel=2,
        )
    return timing


def _check_arguments(device, clock: str, repeats: int, inner: int, warmup_s: float, min_repeat_s: float) -> torch.device:
    dev = _check_device(device)
    if clock not in CLOCKS:
        raise DeployvitError(f"unknown clock {clock!r} (choose from {', '.join(CLOCKS)})")
    if clock == "cpu" and dev.type != "cpu":
        raise DeployvitError("clock 'cpu' (process CPU time) only applies to CPU timing; GPUs are timed with CUDA events")
    if repeats < 1 or inner < 1:
        raise DeployvitError(f"repeats and inner must be >= 1 (got repeats={repeats}, inner={inner})")
    if warmup_s < 0 or min_repeat_s < 0:
        raise DeployvitError("warmup_s and min_repeat_s must be >= 0")
    return dev


def _warm_up(fn: Callable[[], object], dev: torch.device, warmup_s: float) -> float:
    """Call `fn` for at least `warmup_s` (and at least once); the seconds per call it took."""
    start = time.perf_counter()
    calls = 0
    while calls == 0 or time.perf_counter() - start < warmup_s:
        fn()
        calls += 1
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return (time.perf_counter() - start) / calls


def _cuda_samples(fn: Callable[[], object], dev: torch.device, repeats: int, inner: int) -> list[float]:
    """Microseconds per call between CUDA events recorded around `inner` calls, `repeats` times."""
    with torch.cuda.device(dev):
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for begin, end in events:
            begin.record()
            for _ in range(inner):
                fn()
            end.record()
        torch.cuda.synchronize(dev)
        return [begin.elapsed_time(end) * 1e3 / inner for begin, end in events]


def _cpu_samples(fn: Callable[[], object], clock: str, repeats: int, inner: int) -> list[float]:
    """Microseconds per call on the wall clock or the process's CPU time."""
    now = time.perf_counter if clock == "wall" else time.process_time
    samples = []
    for _ in range(repeats):
        t0 = now()
        for _ in range(inner):
            fn()
        samples.append((now() - t0) * 1e6 / inner)
    return samples
