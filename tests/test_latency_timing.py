"""The timing loop: statistics on known samples, warm-up/repeat bookkeeping, noise warning, bad input."""

from __future__ import annotations


import pytest
import torch

from deployvit.errors import DeployvitError
from deployvit.timing import percentile, summarize, time_callable


def test_summarize_known_samples():
    t = summarize([1.0, 2.0, 3.0, 4.0, 10.0])
    assert t.median_us == 3.0
    assert t.mean_us == 4.0
    assert t.p90_us == pytest.approx(7.6)  # numpy's linear method: 4 + 0.6 * (10 - 4)
    assert t.cv == pytest.approx((((9 + 4 + 1 + 0 + 36) / 5) ** 0.5) / 4.0)
    assert t.repeats == 5


def test_percentile_matches_numpy():
    import numpy as np

    xs = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    for q in (0, 10, 50, 90, 100):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_time_callable_counts_calls_and_repeats():
    calls = []
    t = time_callable(lambda: calls.append(1), device="cpu", warmup_s=0.0, repeats=7, inner=3, cv_warn=float("inf"))
    assert t.repeats == 7
    assert len(calls) == 1 + 7 * 3  # one warm-up call, then repeats x inner
    assert 0 < t.median_us <= t.p90_us


def test_time_callable_measures_sleep():
    import time

    t = time_callable(lambda: time.sleep(0.002), device="cpu", warmup_s=0.0, repeats=5, cv_warn=float("inf"))
    assert t.median_us >= 2000.0


def test_noise_warning():
    import time

    state = {"n": 0}

    def jittery():
        state["n"] += 1
        time.sleep(0.004 if state["n"] % 2 else 0.0)

    with pytest.warns(RuntimeWarning, match="coefficient of variation"):
        time_callable(jittery, device="cpu", warmup_s=0.0, repeats=6, cv_warn=0.05, label="jittery")


def test_runs_under_inference_mode():
    seen = []
    time_callable(lambda: seen.append(torch.is_inference_mode_enabled()), device="cpu", warmup_s=0.0, repeats=2, cv_warn=float("inf"))
    assert all(seen)


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"inner": 0}, {"warmup_s": -1.0}, {"device": "tpu"}, {"device": "nonsense"}])
def test_bad_arguments(kwargs):
    args = {"device": "cpu", "warmup_s": 0.0, "repeats": 3}
    args.update(kwargs)
    with pytest.raises(DeployvitError):
        time_callable(lambda: None, **args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_gpu_is_clear():
    with pytest.raises(DeployvitError, match="CUDA"):
        time_callable(lambda: None, device="cuda", warmup_s=0.0, repeats=2)


def _wall_ms(fn) -> float:
    import time

    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


@pytest.mark.gpu
def test_cuda_events_time_a_known_sleep_kernel_within_10_percent():
    """torch.cuda._sleep spins a kernel for a number of GPU cycles: its length is known from the host
    clock (launch + synchronise, ~20 ms, so the host's overhead is far below 1%), and the CUDA-event
    median must agree within 10%. Its launch returns at once, so the events measure device time."""
    import statistics
    import time

    torch.cuda._sleep(1000)
    probe = 10_000_000
    per_cycle_ms = statistics.median(_wall_ms(lambda: torch.cuda._sleep(probe)) for _ in range(3)) / probe
    cycles = int(20.0 / per_cycle_ms)
    wall = statistics.median(_wall_ms(lambda: torch.cuda._sleep(cycles)) for _ in range(5))
    t = time_callable(lambda: torch.cuda._sleep(cycles), device="cuda", warmup_s=0.05, repeats=10)
    assert abs(t.median_us / 1e3 - wall) / wall < 0.10, (t.median_us / 1e3, wall)
    start = time.perf_counter()
    torch.cuda._sleep(cycles)
    launch_ms = (time.perf_counter() - start) * 1e3
    torch.cuda.synchronize()
    assert launch_ms < 0.1 * wall  # the host did not wait: the events timed the GPU, not the launch
    inner = time_callable(lambda: torch.cuda._sleep(cycles), device="cuda", warmup_s=0.0, repeats=3, inner=3,
                          cv_warn=float("inf"))
    assert abs(inner.median_us / 1e3 - wall) / wall < 0.10  # per call, averaged over back-to-back calls


def test_cpu_clock_counts_work_not_waiting():
    import time

    wall = time_callable(lambda: time.sleep(0.003), device="cpu", warmup_s=0.0, repeats=3, cv_warn=float("inf"))
    cpu = time_callable(lambda: time.sleep(0.003), device="cpu", warmup_s=0.0, repeats=3, cv_warn=float("inf"), clock="cpu")
    assert wall.median_us >= 3000.0
    assert cpu.median_us < 1000.0  # a sleeping process uses (almost) no CPU time


def test_clock_arguments():
    with pytest.raises(DeployvitError, match="unknown clock"):
        time_callable(lambda: None, device="cpu", warmup_s=0.0, repeats=2, clock="sundial")
    if not torch.cuda.is_available():
        return
    with pytest.raises(DeployvitError, match="CUDA events"):
        time_callable(lambda: None, device="cuda", warmup_s=0.0, repeats=2, clock="cpu")
