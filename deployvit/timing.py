"""The one timing loop of the codebase: profile, validation, export and benchmarks all call it.

Every number that ends up in a latency table, an export report or a benchmark comes through
`time_rounds` (or `time_callable`, its one-callable form), so "timed the same way" (docs/DESIGN.md
section 4) is true by construction. On CUDA each sample is bracketed by two CUDA events recorded on
the current stream; a sample is the GPU-clock time between them. What that covers depends on the
runtime:
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
(trtexec's "GPU Compute Time" is kernels only). On the CPU a sample is bracketed by
`time.perf_counter`. Warm-up is by time rather than by count, because the first calls pay for
allocator growth, cuDNN/cuBLAS heuristics and clock ramp-up whose duration does not depend on how
fast one call is.

`clock="cpu"` (CPU device only) times with the process's CPU time instead of the wall clock. On a
machine shared with other jobs the wall-clock latency of a single-threaded run depends on how much of
the CPU the neighbours take (measured here: one block 3.5 ms alone, 17 ms wall under load, 4.6 ms of
CPU time); CPU time is what the run itself costs, and equals its wall latency on an idle machine. It
sums over threads, so it means latency only for single-threaded runs (`profile` enforces that).

**Rounds, and why a round's fastest call** (`time_rounds`). On the shared 2-vCPU machine this was
built on, even process CPU time is not one distribution: whenever a neighbour runs on the other vCPU,
every call is 1.5-2.5x slower in CPU time (measured: a `test`-space model at 127 us alone, 190 us
with one `while True: pass` on the other vCPU; the host shares the core or its caches), for as long
as the neighbour runs, and interruptions add time to single calls on top. Noise of both kinds only
ever adds time. So timing is organised in **rounds**: in each round every callable being timed is
called again and again, interleaved with the others in a shuffled order, for at least `round_s`;
each visit to a callable starts with one untimed call (the one after another callable ran pays to
refill the caches, which a model serving requests back to back does not), and the round's sample of
a callable is its **fastest timed call** in that round (a call that nothing
interrupted: the minimum is the robust statistic for deterministic work under additive noise, Chen
& Revels 2016, "Robust benchmarking in noisy environments"); the latency is the **median over
rounds** of those samples, with a **distribution-free 95% confidence interval of the median** from
the order statistics (`median_ci`). Interleaving makes a slow spell hit every callable of a round
alike, so the ratios a latency table lives on are not biased by when each part happened to run; the
median over rounds ignores rounds that were slow throughout. Measured on that machine (load 5-6): a
model's per-call median moved 1.6x between 2-s sessions, its fastest-call-per-round latency 1.05x.
Timing is sequential: after `rounds` rounds it goes on until every interval is within `rel_ci` of
its median or `max_s` more seconds have passed.

With one call per round and no time floor (`time_callable`'s defaults) a round's sample is simply
that call, and the statistics are the classic per-call median, p90, mean and coefficient of
variation.
"""

from __future__ import annotations

import math
import random
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Hashable, Mapping

import torch

from deployvit.errors import DeployvitError

#: above this coefficient of variation a warning is issued (trtexec warns at 2.5% on GPUs; CPUs
#: shared with other processes are noisier, so the CPU default is looser).
CV_WARN_CUDA = 0.025
CV_WARN_CPU = 0.10
CLOCKS = ("wall", "cpu")
CONFIDENCE = 0.95  # of every interval deployvit reports
# An untimed call before each timed one refills the caches another callable evicted; a call longer
# than this refills them itself in a negligible share of its time, so the extra call is skipped
# (it would double the cost of timing whole models, e.g. a calibration's).
WARM_CALL_MAX_S = 0.002


@dataclass(frozen=True)
class Timing:
    """One timed callable, in microseconds per call. `latency_us` is THE number: the `quantile` of
    its round samples (each a round's fastest call; with one call per round, the calls themselves),
    with the distribution-free 95% interval of that quantile (`quantile_ci`; `ci_level` is its exact
    coverage, lower when there are too few rounds for 95%). Median, p90, mean and coefficient of
    variation describe the round samples."""

    median_us: float
    p90_us: float
    mean_us: float
    cv: float
    repeats: int  # timed samples in all (each `inner` calls)
    rounds: int = 0
    latency_us: float | None = None
    quantile: float = 0.5
    ci_low_us: float | None = None
    ci_high_us: float | None = None
    ci_level: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def value_us(self) -> float:
        """The latency (`latency_us`; the median for a Timing made without one)."""
        return self.median_us if self.latency_us is None else self.latency_us

    @property
    def ci_half_width(self) -> float:
        """Half the interval's width relative to the latency (inf without an interval)."""
        if self.ci_low_us is None or self.ci_high_us is None or self.value_us <= 0:
            return math.inf
        return (self.ci_high_us - self.ci_low_us) / 2 / self.value_us


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty list, numpy's default method."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(B <= k) for B ~ Binomial(n, p)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(0, min(k, n) + 1)) if k >= 0 else 0.0


def quantile_ci(values: list[float], q: float = 0.5, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(low, high, coverage): the distribution-free interval of the q-quantile from order statistics.

    For n independent samples the number below the true q-quantile is B ~ Binomial(n, q), so
    [x_(j), x_(k)] covers it with probability P(j <= B <= k - 1). j is the largest rank with
    P(B <= j - 1) <= (1 - confidence) / 2 and k the smallest with P(B >= k) <= (1 - confidence) / 2;
    with too few samples for that (fewer than 6 for the median, 13 for the lower quartile) the
    interval runs to the extreme sample on that side, and `coverage` says how much less it covers."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise DeployvitError("no samples for a confidence interval")
    tail = (1.0 - confidence) / 2
    j = 1
    while j < n and _binom_cdf(j, n, q) <= tail:  # rank j + 1 still leaves <= tail below
        j += 1
    k = n
    while k > j and 1.0 - _binom_cdf(k - 2, n, q) <= tail:  # rank k - 1 still leaves <= tail above
        k -= 1
    coverage = _binom_cdf(k - 1, n, q) - _binom_cdf(j - 1, n, q)
    return xs[j - 1], xs[k - 1], coverage


def median_ci(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """The interval of the median (`quantile_ci` at 1/2): [x_(j), x_(n-j+1)], e.g. [x_(2), x_(8)] of 9."""
    return quantile_ci(values, 0.5, confidence)


def summarize(samples_us: list[float], calls: int | None = None, quantile: float = 0.5) -> Timing:
    """Median, p90, mean, coefficient of variation (stdev / mean), and the `quantile` with its
    interval, of per-round samples (`calls`: timed samples behind them, default one per round)."""
    if not samples_us:
        raise DeployvitError("no timing samples to summarize")
    mean = statistics.fmean(samples_us)
    stdev = statistics.pstdev(samples_us) if len(samples_us) > 1 else 0.0
    low, high, level = quantile_ci(samples_us, quantile)
    median = statistics.median(samples_us)
    return Timing(
        median_us=median,
        p90_us=percentile(samples_us, 90.0),
        mean_us=mean,
        cv=stdev / mean if mean > 0 else 0.0,
        repeats=len(samples_us) if calls is None else calls,
        rounds=len(samples_us),
        latency_us=median if quantile == 0.5 else percentile(samples_us, 100.0 * quantile),
        quantile=quantile,
        ci_low_us=low,
        ci_high_us=high,
        ci_level=level,
    )


@dataclass(frozen=True)
class RoundPlan:
    """How `time_rounds` samples: at least `rounds` rounds of at least `round_s` each (every callable
    at least once per round) and `repeats` timed samples per callable; then more rounds until the
    interval of every callable's `quantile` (the latency) is within `rel_ci` of it (None: no more
    rounds) or `max_s` more seconds have passed. `warmup_s`: the callables are called in turn for this long first (each at least
    twice). `inner`: calls per sample (averaged), raised after warm-up until a sample lasts
    `min_repeat_s`, for calls too short for the timer."""

    rounds: int = 13
    round_s: float = 0.25
    repeats: int = 1
    quantile: float = 0.5
    rel_ci: float | None = 0.02
    max_s: float = 20.0
    warmup_s: float = 0.5
    inner: int = 1
    min_repeat_s: float = 0.0


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
    """Time `fn()` (no arguments; inputs bound in a closure) `repeats` times and return per-call
    statistics: `time_rounds` with one sample per round and no time floor, i.e. the classic loop.

    `warmup_s`: keep calling for at least this long before timing (and at least once).
    `inner`: calls per sample, averaged, for functions so short that the timer's resolution or event
    overhead matters; with `min_repeat_s` > 0 `inner` is raised after warm-up until one sample lasts
    at least that long. `cv_warn`: warn (RuntimeWarning) when the coefficient of variation exceeds it
    (default 2.5% on CUDA, 10% on CPU). `label` names the thing timed in the warning. `clock`:
    "wall" (CUDA events / perf_counter) or "cpu" (process CPU time; CPU device only)."""
    if repeats < 1:
        raise DeployvitError(f"repeats must be >= 1 (got {repeats})")
    plan = RoundPlan(rounds=repeats, round_s=0.0, repeats=1, rel_ci=None, max_s=0.0, warmup_s=warmup_s, inner=inner,
                     min_repeat_s=min_repeat_s)
    timing = time_rounds({label: fn}, plan=plan, device=device, clock=clock, min_warmup_calls=1)[label]
    _warn_cv(timing, cv_warn, torch.device(device).type == "cuda", label)
    return timing


def _warn_cv(timing: Timing, cv_warn: float | None, cuda: bool, label: str) -> None:
    limit = cv_warn if cv_warn is not None else (CV_WARN_CUDA if cuda else CV_WARN_CPU)
    if timing.cv > limit:
        what = f" of {label}" if label else ""
        warnings.warn(
            f"timing{what} is noisy: coefficient of variation {timing.cv:.1%} > {limit:.1%} "
            f"over {timing.repeats} repeats (median {timing.median_us:.1f} us); close other work or raise repeats",
            RuntimeWarning,
            stacklevel=3,
        )


def time_rounds(
    fns: Mapping[Hashable, Callable[[], object]],
    *,
    plan: RoundPlan,
    device: str | torch.device,
    clock: str = "wall",
    seed: int = 0,
    done: Mapping[Hashable, list[float]] | None = None,
    on_round: Callable[[dict[Hashable, float]], None] | None = None,
    min_warmup_calls: int = 2,
) -> dict[Hashable, Timing]:
    """Time every callable of `fns` in interleaved rounds (module docstring) and return a Timing each.

    `done`: round samples recorded earlier (a resumed profile): counted as rounds already made.
    `on_round(samples)`: called after each round with that round's sample per key (to checkpoint).
    A callable's interval not within `plan.rel_ci` when `max_s` ran out is a RuntimeWarning."""
    dev = _check_arguments(device, clock, plan)
    keys = list(fns)
    if not keys:
        return {}
    rounds = {k: list((done or {}).get(k, [])) for k in keys}
    calls = {k: 0 for k in keys}
    order = random.Random(seed)
    now = time.perf_counter
    with torch.inference_mode():
        per_call = _warm_up(fns, dev, plan.warmup_s, min_warmup_calls)
        slowest = max(per_call.values())
        inner = max(plan.inner, int(plan.min_repeat_s / max(slowest, 1e-9)) + 1) if plan.min_repeat_s > 0 else plan.inner
        warm = {k for k in keys if per_call[k] < WARM_CALL_MAX_S} if len(keys) > 1 else set()
        start = None  # when the minimum was reached: `max_s` counts from there
        while True:
            if min(len(r) for r in rounds.values()) >= plan.rounds and min(calls.values()) >= plan.repeats:
                start = now() if start is None else start
                if _converged(rounds, plan.rel_ci, plan.quantile) or now() - start >= plan.max_s:
                    break
            sample = _one_round(fns, keys, order, dev, clock, plan, (inner, warm), calls)
            for k in keys:
                rounds[k].append(sample[k])
            if on_round is not None:
                on_round(sample)
    timings = {k: summarize(rounds[k], calls[k], plan.quantile) for k in keys}
    if plan.rel_ci is not None:
        for k, t in timings.items():
            if t.ci_half_width > plan.rel_ci:
                what = f" of {k}" if isinstance(k, str) and k else ""
                warnings.warn(f"timing{what} is noisy: the 95% interval of its latency is +-{t.ci_half_width:.1%} "
                              f"(wanted {plan.rel_ci:.0%}) after {t.rounds} rounds", RuntimeWarning, stacklevel=2)
    return timings


def _converged(rounds: dict, rel_ci: float | None, quantile: float) -> bool:
    if rel_ci is None:
        return True
    for samples in rounds.values():
        low, high, level = quantile_ci(samples, quantile)
        if level < CONFIDENCE or (high - low) / 2 > rel_ci * percentile(samples, 100.0 * quantile):
            return False
    return True


def _one_round(fns, keys: list, order: random.Random, dev: torch.device, clock: str, plan: RoundPlan, how: tuple[int, set],
               calls: dict) -> dict:
    """One round: shuffled sweeps over every callable until the round has lasted `round_s`; each
    callable's sample is its fastest in the round. `how`: calls per sample, and the callables whose
    timed call follows an untimed one (after another callable ran, a short call's first pays to
    refill the caches; `WARM_CALL_MAX_S`)."""
    inner, warm = how
    best = {k: math.inf for k in keys}
    start = time.perf_counter()
    while True:
        sweep = keys[:]
        order.shuffle(sweep)
        times = _cuda_sweep(fns, sweep, dev, inner, warm) if dev.type == "cuda" else _cpu_sweep(fns, sweep, clock, inner, warm)
        for k, t in zip(sweep, times):
            calls[k] += 1
            best[k] = min(best[k], t)
        if time.perf_counter() - start >= plan.round_s:
            return best


def _check_arguments(device, clock: str, plan: RoundPlan) -> torch.device:
    dev = _check_device(device)
    if clock not in CLOCKS:
        raise DeployvitError(f"unknown clock {clock!r} (choose from {', '.join(CLOCKS)})")
    if clock == "cpu" and dev.type != "cpu":
        raise DeployvitError("clock 'cpu' (process CPU time) only applies to CPU timing; GPUs are timed with CUDA events")
    if plan.rounds < 1 or plan.inner < 1 or plan.repeats < 1:
        raise DeployvitError(f"rounds, repeats and inner must be >= 1 (got rounds={plan.rounds}, repeats={plan.repeats}, "
                             f"inner={plan.inner})")
    if plan.warmup_s < 0 or plan.min_repeat_s < 0 or plan.round_s < 0 or plan.max_s < 0:
        raise DeployvitError("warmup_s, round_s, max_s and min_repeat_s must be >= 0")
    return dev


def _warm_up(fns: Mapping, dev: torch.device, warmup_s: float, min_calls: int) -> dict:
    """Call the callables in turn for at least `warmup_s` (each at least `min_calls` times); the
    seconds one call of each took on average."""
    start = time.perf_counter()
    spent = {k: 0.0 for k in fns}
    calls = 0
    while calls < min_calls or time.perf_counter() - start < warmup_s:
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            spent[k] += time.perf_counter() - t0
        calls += 1
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return {k: v / calls for k, v in spent.items()}


def _cuda_sweep(fns: Mapping, sweep: list, dev: torch.device, inner: int, warm: set) -> list[float]:
    """Microseconds per call between CUDA events recorded around `inner` calls of each callable."""
    with torch.cuda.device(dev):
        events = []
        for k in sweep:
            if k in warm:
                fns[k]()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(inner):
                fns[k]()
            end.record()
            events.append((begin, end))
        torch.cuda.synchronize(dev)
        return [begin.elapsed_time(end) * 1e3 / inner for begin, end in events]


def _cpu_sweep(fns: Mapping, sweep: list, clock: str, inner: int, warm: set) -> list[float]:
    """Microseconds per call on the wall clock or the process's CPU time."""
    clk = time.perf_counter if clock == "wall" else time.process_time
    out = []
    for k in sweep:
        fn = fns[k]
        if k in warm:
            fn()
        t0 = clk()
        for _ in range(inner):
            fn()
        out.append((clk() - t0) * 1e6 / inner)
    return out
