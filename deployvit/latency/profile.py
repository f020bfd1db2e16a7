"""`deployvit profile`: build a calibrated, validated latency table for one space on this machine.

1. every distinct part of the space (`parts.space_parts`) is built alone (`models.build_part`) and
   timed; 2. K whole archs (`models.build_model`; the smallest, the largest and random ones) are
   timed end to end and an affine calibration is fitted to their part sums; 3. N other random archs
   are timed to validate the calibrated prediction (MAPE, p95, within 5/10%, Kendall tau).
Parts and whole models go through the same `measure` (same runtime, precision, batch, warm-up and
repeats), which is what makes a sum of parts comparable with a whole model, and all measurements are
made in one shuffled order, so a drift of the machine during the profile cannot bias the calibration
against the validation (seen on a shared CPU: calibration archs timed under load, validation archs
after it, and a calibration that made predictions worse).

Each measurement is appended to `<out>.progress.json` (atomically), so a killed profile resumes
where it stopped; the table is written (atomically) only when everything is measured.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from deployvit import __version__, io
from deployvit.arch import Arch
from deployvit.errors import DeployvitError
from deployvit.devices import check_label, machine_facts
from deployvit.runtimes import build_runner, check_runtime, get_runtime, runtime_version
from deployvit.settings import MeasureSettings, ProfileConfig
from deployvit.latency.stats import error_stats, fit_affine
from deployvit.latency.table import LatencyTable
from deployvit.timing import CV_WARN_CPU, CV_WARN_CUDA, Timing, time_callable
from deployvit.models import build_model, build_part
from deployvit.parts import Part, space_parts
from deployvit.spaces import SearchSpace

PROGRESS_FORMAT = "deployvit.profile_progress/1"


def validate_settings(settings: MeasureSettings, device: str) -> None:
    """Refuse settings this machine cannot time with (before any timing starts): one line each."""
    if settings.batch_size < 1:
        raise DeployvitError(f"batch size must be >= 1, got {settings.batch_size}")
    if settings.repeats < 1 or settings.warmup_s < 0:
        raise DeployvitError(f"repeats must be >= 1 and warm-up >= 0 s (got {settings.repeats}, {settings.warmup_s})")
    if settings.threads is not None and settings.threads < 1:
        raise DeployvitError(f"threads must be >= 1, got {settings.threads}")
    if settings.clock == "cpu" and (device != "cpu" or settings.threads != 1):
        raise DeployvitError("--clock cpu measures one thread's CPU time: use it on the CPU with --threads 1")
    check_runtime(settings.runtime, device, settings.precision)


def check_request(label: str, settings: MeasureSettings, out: Path, calib_archs: int, val_archs: int, force: bool) -> tuple[str, str]:
    """Every check of a profile request that needs no timing; returns (device type, device name).
    The CLI runs it for all batch sizes first: a bad later table must not fail after hours of timing."""
    device, name = check_label(label, force)
    validate_settings(settings, device)
    if calib_archs < 2 or val_archs < 2:
        raise DeployvitError(f"need at least 2 calibration and 2 validation archs (got {calib_archs}, {val_archs})")
    if out.is_dir():
        raise DeployvitError(f"output {out} is a directory; give a .json file path")
    if out.exists() and not force:
        raise DeployvitError(f"{out} exists; pass --force to overwrite it")
    io.check_out_path(progress_path(out), "profile progress file")  # a folder or FIFO in its place, a name too long
    return device, name


def table_settings(meta: dict) -> tuple[MeasureSettings, str]:
    """The settings and device a table was measured with, checked against this machine, so that an
    arch can be timed the same way (`deployvit latency --measure`, `search --measure-top`)."""
    settings = MeasureSettings.from_metadata(meta)
    device = meta["device_type"]
    try:
        validate_settings(settings, device)
    except DeployvitError as exc:
        raise DeployvitError(f"cannot time archs like the table ({meta['device_name']}, {meta['runtime']}) here: {exc}") from None
    return settings, device


def apply_threads(settings: MeasureSettings, device: str) -> None:
    """torch's CPU thread count is process-wide: set it once before timing on the CPU."""
    if device == "cpu" and settings.threads:
        torch.set_num_threads(settings.threads)


def measure(module: torch.nn.Module, input_shape: tuple[int, ...], settings: MeasureSettings, device: str, label: str = "") -> Timing:
    """Time one module (a part or a whole model) exactly as every table entry is timed."""
    run = build_runner(module, input_shape, runtime=settings.runtime, device=device, precision=settings.precision, threads=settings.threads)
    return time_run(run, settings, device, label)


def time_run(run: Callable[[], object], settings: MeasureSettings, device: str, label: str = "") -> Timing:
    """Time a built runner with a table's settings: the one timing path of table entries, whole
    models (`latency --measure`, `search --measure-top`) and export's latency contract."""
    before = torch.get_num_threads()
    apply_threads(settings, device)
    try:
        return time_callable(run, device=device, warmup_s=settings.warmup_s, repeats=settings.repeats, label=label, clock=settings.clock)
    finally:
        torch.set_num_threads(before)


def measure_part(part: Part, settings: MeasureSettings, device: str) -> Timing:
    """One table entry: the part's own module (the class the whole model uses), timed alone."""
    torch.manual_seed(0)  # weights do not change the latency, but a fixed seed makes runs repeatable
    return measure(build_part(part), part.input_shape(settings.batch_size), settings, device, label=part.key)


def measure_arch(arch: Arch, settings: MeasureSettings, device: str) -> Timing:
    """One whole model, end to end, timed exactly like the parts."""
    torch.manual_seed(0)
    shape = (settings.batch_size, arch.in_chans, arch.img_size, arch.img_size)
    return measure(build_model(arch), shape, settings, device, label="whole model")


def distinct_archs(space: SearchSpace, n: int, rng: np.random.Generator, exclude: set[str], first: list[Arch] = ()) -> list[Arch]:
    """`n` distinct archs (starting with `first`) whose keys are not in `exclude`."""
    out: list[Arch] = []
    seen = set(exclude)
    candidates = list(first)
    tries = 0
    while len(out) < n:
        if candidates:
            arch = candidates.pop(0)
        else:
            tries += 1
            if tries > 100 * n + 100:
                raise DeployvitError(f"space {space.name} has too few distinct archs for {n} more")
            arch = space.sample(rng)
        if arch.key not in seen:
            seen.add(arch.key)
            out.append(arch)
    return out


def progress_path(out: Path) -> Path:
    return out.with_name(out.name + ".progress.json")


def profile(
    space: SearchSpace,
    *,
    label: str,
    settings: MeasureSettings,
    out: str | Path,
    calib_archs: int = ProfileConfig.calib_archs,
    val_archs: int = ProfileConfig.val_archs,
    seed: int = ProfileConfig.seed,
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> LatencyTable:
    """Profile `space` into the table at `out` (see the module docstring); returns the table."""
    out = Path(out)
    device, name = check_request(label, settings, out, calib_archs, val_archs, force)
    apply_threads(settings, device)

    key = {
        "space": space.name,
        "space_hash": space.hash(),
        "device_label": label,
        "device_name": name,
        "settings": asdict(settings),
        "software": {"torch": torch.__version__, settings.runtime: runtime_version(settings.runtime)},  # no mixed versions
        "calib_archs": calib_archs,
        "val_archs": val_archs,
        "seed": seed,
    }
    ppath = progress_path(out)
    state = _load_progress(ppath, key, echo)
    try:  # an unwritable output fails here (exit 2), before any timing
        io.write_json(ppath, state)
    except DeployvitError as exc:
        raise DeployvitError(f"cannot write the table {out}: {str(exc).split(': ', 1)[-1]}") from None

    rng = np.random.default_rng(seed)
    calib = distinct_archs(space, calib_archs, rng, set(), [space.min_arch(), space.max_arch()])
    val = distinct_archs(space, val_archs, np.random.default_rng(seed + 1), {a.key for a in calib})
    jobs = _jobs(space, calib, val, settings, device, seed)
    todo = [j for j in jobs if j[1] not in state[j[0]]]
    if len(todo) < len(jobs):
        echo(f"resuming {ppath.name}: {len(jobs) - len(todo)} of {len(jobs)} measurements already done")
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"profile {space.name} {settings.runtime} b{settings.batch_size}", unit="timing",
              dynamic_ncols=True) as bar:
        for group, k, job in todo:
            with warnings.catch_warnings():  # noise is summarised in the report, not printed per timing
                warnings.simplefilter("ignore", RuntimeWarning)
                timing = job()
            state[group][k] = timing.to_dict()
            io.write_json(ppath, state)
            bar.update(1)

    table = _build_table(space, label, device, settings, state, calib, val, calib_archs, val_archs, seed)
    table.save(out)
    ppath.unlink(missing_ok=True)
    echo(report(table))
    return table


def _jobs(space: SearchSpace, calib: list[Arch], val: list[Arch], settings: MeasureSettings, device: str, seed: int) -> list:
    """(group, key, timing job) for every part, calibration arch and validation arch, in a seeded
    random order: a slow drift of the machine (clocks, thermals, neighbours' load) then affects
    parts, calibration and validation archs alike instead of biasing the fit."""
    jobs = [("entries", p.key, lambda p=p: measure_part(p, settings, device)) for p in space_parts(space)]
    jobs += [(group, a.key, lambda a=a: measure_arch(a, settings, device)) for group, archs in (("calib", calib), ("val", val)) for a in archs]
    return [jobs[i] for i in np.random.default_rng(seed + 2).permutation(len(jobs))]


def _load_progress(path: Path, key: dict, echo: Callable[[str], None]) -> dict:
    fresh = {"format": PROGRESS_FORMAT, "key": key, "entries": {}, "calib": {}, "val": {}}
    if not path.exists():
        return fresh
    try:
        state = io.read_json(path, "profile progress file")
    except DeployvitError as exc:
        echo(f"ignoring unreadable progress file ({exc}); starting over")
        return fresh
    if not isinstance(state, dict) or state.get("format") != PROGRESS_FORMAT or state.get("key") != key:
        echo(f"{path.name} is from a profile with other settings; starting over")
        return fresh
    try:  # a hand-edited or damaged progress file must not put nonsense into the table it resumes
        io.check_schema(state, _PROGRESS_SCHEMA, path.name)
    except DeployvitError as exc:
        echo(f"ignoring damaged progress file ({exc}); starting over")
        return fresh
    return state


_TIMING = {"median_us": (float, 1e-9, 1e12), "cv": (float, 0, 1e6)}
_PROGRESS_SCHEMA = {group: {str: _TIMING} for group in ("entries", "calib", "val")}


def _build_table(space, label, device, settings, state, calib, val, calib_archs, val_archs, seed) -> LatencyTable:
    entries = state["entries"]
    table = LatencyTable(metadata={}, entries=entries)
    calib_sums = [table.sum_us(a) for a in calib]
    calib_meas = [state["calib"][a.key]["median_us"] for a in calib]
    table.scale, table.bias = fit_affine(calib_sums, calib_meas)
    val_sums = [table.sum_us(a) for a in val]
    val_meas = [state["val"][a.key]["median_us"] for a in val]
    val_pred = [table.scale * s + table.bias for s in val_sums]
    table.calibration = {
        "method": "least squares measured_us = scale * sum(part median_us) + bias, bias >= 0",
        "archs": [
            {"arch": a.to_dict(), "sum_us": s, "measured_us": m, "cv": state["calib"][a.key]["cv"]}
            for a, s, m in zip(calib, calib_sums, calib_meas)
        ],
    }
    table.validation = {
        "calibrated": error_stats(val_pred, val_meas).to_dict(),
        "uncalibrated": error_stats(val_sums, val_meas).to_dict(),
        "archs": [
            {"arch": a.to_dict(), "sum_us": s, "predicted_us": p, "measured_us": m, "cv": state["val"][a.key]["cv"]}
            for a, s, p, m in zip(val, val_sums, val_pred, val_meas)
        ],
    }
    facts = machine_facts(device)
    table.metadata = {
        "device_label": label,
        **facts,
        "runtime": settings.runtime,
        "runtime_version": runtime_version(settings.runtime),
        "precision": settings.precision,
        "batch_size": settings.batch_size,
        "img_size": space.img_size,
        "space": space.name,
        "space_hash": space.hash(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "deployvit": __version__,
        "torch_threads": torch.get_num_threads() if device == "cpu" else None,
        "settings": {**asdict(settings), "calib_archs": calib_archs, "val_archs": val_archs, "seed": seed,
                     "timer": "cuda events" if device == "cuda" else ("perf_counter" if settings.clock == "wall" else "process_time")},
        "num_entries": len(entries),
        **get_runtime(settings.runtime).table_facts(settings.precision),  # an int8 table: how its entries were quantised
    }
    return table


def report(table: LatencyTable) -> str:
    """A few lines: what was measured, the calibration, validation quality and timing noise."""
    cal, raw = table.validation["calibrated"], table.validation["uncalibrated"]
    lines = [
        f"wrote {table.path}: {table.describe()}",
        f"  {len(table.entries)} part entries; calibration: predict = {table.scale:.4f} x sum + {table.bias:.1f} us "
        f"(fitted on {len(table.calibration['archs'])} whole archs)",
        f"  validation on {cal['n']} held-out archs: MAPE {cal['mape']:.2f}%, p95 {cal['p95_abs_pct']:.2f}%, "
        f"within 5% {cal['within_5']:.0%}, within 10% {cal['within_10']:.0%}, Kendall tau {cal['kendall_tau']:.3f}",
        f"  uncalibrated block sums: MAPE {raw['mape']:.2f}%, within 5% {raw['within_5']:.0%}, within 10% {raw['within_10']:.0%}",
    ]
    limit = CV_WARN_CUDA if table.metadata["device_type"] == "cuda" else CV_WARN_CPU
    timings = list(table.entries.values()) + table.calibration["archs"] + table.validation["archs"]
    noisy = sum(t["cv"] > limit for t in timings)
    if noisy:
        lines.append(f"  note: {noisy} of {len(timings)} timings had a coefficient of variation above {limit:.1%}")
    return "\n".join(lines)
