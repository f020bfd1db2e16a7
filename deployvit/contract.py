"""The latency contract of an exported artifact: measured the way its latency table was measured,
next to that table's prediction and the user's budget (docs/DESIGN.md section 5).

Like is compared with like or not at all. Each export format runs in one table runtime (its record
in `deployvit.runtime_registry`); the contract row uses the table's runtime, precision and batch
size, times the artifact with the table's own settings (warm-up, repeats, threads, clock) through the
same runner that timed the table's whole models (`deployvit.runtimes`: the module itself for a
runtime that runs modules, the exported file for one that runs files), and when no table of that
runtime, precision and batch exists for this machine's device it says "no prediction for ..."
instead of printing a number from another runtime.

This module joins `latency` (tables) and `exporters` (artifacts), so it sits above both, beside
`search`: neither imports the other for it.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from typing import Any

from deployvit.errors import DeployvitError
from deployvit.runtime_registry import format_record
from exporters.report import Contract


def plan_contract(fmt: str, arch, *, precision: str, device: str, batch_size: int | None, table_path: str | None,
                  budget_ms: float | None, timing: dict[str, Any]) -> Contract:
    """Which table predicts this artifact and how to time it; nothing is timed yet.

    `timing` (warmup_s, repeats, threads, clock) is used only when no table fixes the settings."""
    from deployvit.settings import MeasureSettings

    runtime = format_record(fmt).name
    resolved, why = _table_for(runtime, arch, precision, device, batch_size, table_path)
    if resolved is None:
        settings = MeasureSettings(runtime, precision, batch_size or 1, timing["warmup_s"], timing["repeats"], timing["threads"], timing["clock"])
        return Contract(runtime, precision, settings.batch_size, device, asdict(settings), budget_ms, no_prediction=why)
    table = resolved.table
    settings = MeasureSettings.from_metadata(table.metadata)
    return Contract(runtime, precision, settings.batch_size, device, asdict(settings), budget_ms,
                    predicted_ms=table.predict(arch) / 1e3, table=f"{resolved.path} [{table.describe()}]",
                    source=table.metadata.get("source", "measured"), notes=list(resolved.warnings))


def _table_for(runtime: str, arch, precision: str, device: str, batch_size: int | None, table_path: str | None):
    """(resolved table, None) when a table predicts exactly this runtime/precision/batch on this
    device, else (None, the reason there is no prediction)."""
    from deployvit.latency.resolve import Machine, TableQuery, describes_here, resolve_table
    from deployvit.spaces import get_space

    wanted = f"no prediction for {runtime} {precision}" + (f" b{batch_size}" if batch_size else "") + f" on {device}"
    if arch is None:
        return None, f"{wanted}: latency tables predict deployvit archs, not timm models"
    try:
        space = get_space(arch.space)
    except DeployvitError:  # a user space (an import's, a --space file's): the arch names it but does not hold it
        return None, f"{wanted}: space {arch.space!r} is not a preset (its latency table is not looked up by name)"
    query = TableQuery(space.name, space.hash(), device, runtime, precision, batch_size)
    machine = Machine.detect(device)
    try:
        resolved = resolve_table(query, table_path, machine, space=space)
    except DeployvitError as exc:
        if table_path is not None:
            raise
        first, *rest = str(exc).split("; ")  # the resolver's finding, and the table files it skipped (not its hint)
        return None, "; ".join([f"{wanted}: {first}", *(part for part in rest if part.startswith("skipped "))])
    meta = resolved.table.metadata
    skipped = "".join(f"; {w}" for w in resolved.warnings if w.startswith("skipped "))  # said with the reason, as above
    if table_path is None and not describes_here(resolved.info, machine):  # the resolver's rule: not a CPU table made elsewhere
        return None, (f"{wanted}: the only table, {resolved.path}, was made on another machine ({meta['device_name']}, {meta['device_label']}), "
                      f"not this one; profile or calibrate here (deployvit profile ... --calibrate 10){skipped}")
    got = (meta["runtime"], meta["precision"], meta["device_type"]) + ((meta["batch_size"],) if batch_size else ())
    if got != (runtime, precision, device) + ((batch_size,) if batch_size else ()):
        return None, (f"{wanted}: {resolved.path} predicts {meta['runtime']} {meta['precision']} b{meta['batch_size']} "
                      f"on {meta['device_type']} ({meta['device_name']}){skipped}")
    return resolved, None


def contract_runner(contract: Contract, fmt: str, model, artifact: str | None, in_chans: int, img_size: int):
    """A zero-argument callable running the artifact at the contract's batch, built by the runner
    that times table entries: a format whose artifact is the PyTorch model through `build_runner`
    (as `measure_arch` does), an exported file through its runtime's `file_runner` (IO bound once)."""
    from deployvit.runtimes import build_runner, file_runner

    shape = (contract.batch_size, in_chans, img_size, img_size)
    threads = contract.settings.get("threads")
    if not format_record(fmt).file_based:
        return build_runner(copy.deepcopy(model).float(), shape, runtime=contract.runtime, device=contract.device,
                            precision=contract.precision, threads=threads)
    if artifact is None:
        raise DeployvitError(f"{fmt}: no artifact to time")
    return file_runner(Path(artifact), shape, runtime=contract.runtime, device=contract.device, threads=threads,
                       tf32=bool(contract.settings.get("tf32")))


CONTRACT_MAX_S = 30.0  # seconds of further rounds, at most, while the latency's interval is wider than the table's rel_ci


def measure_contract(contract: Contract, run) -> Contract:
    """Time `run` with the contract's settings (the table's), through the profile's timing path,
    until the 95% interval of its latency is within the table's `rel_ci` or `CONTRACT_MAX_S` more
    seconds have passed: the verdict (`Contract.status`) is then MET or NOT MET only when the whole
    interval is on one side of the budget, so two identical runs cannot flip it (WITHIN NOISE
    otherwise)."""
    import warnings
    from dataclasses import replace

    from deployvit.latency.profile import time_run
    from deployvit.settings import MeasureSettings

    settings = MeasureSettings(**contract.settings)
    if settings.rounds is not None:
        settings = replace(settings, max_s=max(settings.max_s, CONTRACT_MAX_S))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        timing = time_run(run, settings, contract.device, label=f"contract {contract.setting}")
    contract.measured_ms, contract.measured_cv = timing.latency_us / 1e3, timing.cv
    if timing.ci_low_us is not None:
        contract.measured_ci_ms = (timing.ci_low_us / 1e3, timing.ci_high_us / 1e3)
    contract.notes.extend(str(w.message) for w in caught if issubclass(w.category, RuntimeWarning))
    return contract
