"""Runtimes a latency is measured in and an export artifact runs in, one module each, behind one
interface (`deployvit.runtimes.base.Runtime`). Which runtimes exist, and every fact about them, is
the table in `deployvit.runtime_registry`; this package loads a runtime's code when it is used.

The functions below are the interface as the rest of deployvit calls it, by name:
`build_runner(module, input_shape, runtime=..., device=..., precision=...) -> run`, a zero-argument
callable that `deployvit.timing.time_callable` times (parts and whole models go through it, so a
table's entries and its calibration are produced the same way), `file_runner(path, ...)` for an
exported artifact, timed exactly like a table entry, `check_runtime` and `runtime_version`.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from deployvit.runtime_registry import RECORDS, format_record, runtime_record

if TYPE_CHECKING:
    from deployvit.runtimes.base import Run, Runtime


@lru_cache(maxsize=None)
def get_runtime(name: str) -> "Runtime":
    """The runtime `name`, its module imported now (one line naming the choices for an unknown name)."""
    rec = runtime_record(name)
    module_name, attribute = rec.impl.split(":")
    return getattr(importlib.import_module(module_name), attribute)(rec)


def for_format(fmt: str) -> "Runtime":
    """The runtime that runs export format `fmt`."""
    return get_runtime(format_record(fmt).name)


def runtime_of(cls: type) -> "Runtime":
    """The registered runtime implemented by `cls` (how a runtime module finds its own record)."""
    impl = f"{cls.__module__}:{cls.__qualname__}"
    return get_runtime(next(r.name for r in RECORDS if r.impl == impl))


def check_runtime(runtime: str, device, precision: str, tf32: bool = False) -> str:
    """Refuse an unknown name, or a runtime this machine cannot run, with one clear line; the device
    kind otherwise. What to install is said first: it is true on any machine."""
    return get_runtime(runtime).check(device, precision, tf32)


def runtime_version(runtime: str) -> str:
    """Version string of the software doing the work (recorded in table metadata)."""
    return get_runtime(runtime).version()


def build_runner(module, input_shape: tuple[int, ...], *, runtime: str, device, precision: str, threads: int | None = None,
                 tf32: bool = False) -> "Run":
    """A zero-argument callable running `module` on a fixed random input of `input_shape` in `runtime`
    (see `Runtime.module_runner`)."""
    return get_runtime(runtime).module_runner(module, input_shape, device=device, precision=precision, threads=threads, tf32=tf32)


def file_runner(path: Path, input_shape: tuple[int, ...], *, runtime: str, device: str, threads: int | None = None,
                tf32: bool = False) -> "Run":
    """An exported artifact timed exactly like a table entry of `runtime` (the same bound call on a
    fixed random input): export's latency contract and the table then measure the same thing."""
    return get_runtime(runtime).file_runner(Path(path), input_shape, device=device, threads=threads, tf32=tf32)


def software() -> dict:
    """Every runtime's package and version here (None when not installed), for reports."""
    out: dict = {}
    for rec in RECORDS:
        out.update(get_runtime(rec.name).facts())
    return out
