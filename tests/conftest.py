"""Shared test helpers: run the CLI in-process and see exactly what a user sees."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass

import pytest
import torch

from deployvit.cli import main


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*args: str) -> CliResult:
    """Run `deployvit ARGS` through `main()` (the console entry point) and capture its exit code."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: CliResult, *needles: str) -> None:
    """Exit 2, exactly one line on stderr, no traceback, mentioning every needle."""
    assert result.code == 2, (result.code, result.out, result.err)
    lines = [l for l in result.err.splitlines() if l.strip()]
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


#: torch threads per test: the CI machine has two cores, and under pytest-xdist (`-n auto`, the
#: default in pyproject.toml) each of its two workers gets one, so that they do not oversubscribe them
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2


@pytest.fixture(autouse=True)
def _two_threads():
    """Keep torch from oversubscribing the cores (`THREADS`)."""
    torch.set_num_threads(THREADS)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        for item in items:  # one worker runs every GPU test (pyproject: --dist loadgroup): timings must not share the GPU
            if "gpu" in item.keywords:
                item.add_marker(pytest.mark.xdist_group("gpu"))
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _own_deployvit_home(tmp_path_factory, monkeypatch):
    """Every test sees an empty user table folder: tables a developer profiled into their own
    ~/.local/share/deployvit must not change what a test's search picks."""
    monkeypatch.setenv("DEPLOYVIT_HOME", str(tmp_path_factory.mktemp("deployvit-home")))
    yield


def shallow(space, layers: int = 2):
    """`space` with every width, head and ratio choice but stacks of at most `layers` layers: the ViT
    families reach ViT-H/14 (up to 36 layers of 1344 channels, GBs of weights), and what a model
    or export test checks per preset (shapes, head dims, patch) repeats identically at every depth."""
    from dataclasses import replace

    stages = tuple(replace(s, depths=tuple(d for d in range(1, layers + 1))) for s in space.stages)
    return replace(space, stages=stages)


def interrupting_time_runs(seen: dict):
    """`timed(limit)`: a replacement for `deployvit.latency.profile.time_runs` that times as it does but
    raises KeyboardInterrupt (what Ctrl-C or a kill during a timing looks like) after `limit` rounds,
    recording in `seen` the rounds timed and, per call, the fewest rounds already done per run."""
    from deployvit.latency import profile as profile_mod

    real = profile_mod.time_runs

    def timed(limit):
        def wrapper(runs, s, device, seed=0, done=None, on_round=None):
            seen["done"].append(min(len(v) for v in done.values()))

            def hook(sample):
                on_round(sample)
                seen["rounds"] += 1
                if seen["rounds"] >= limit:
                    raise KeyboardInterrupt
            return real(runs, s, device, seed, done, hook)
        return wrapper

    return timed
