"""`deployvit profile`: build a calibrated, validated latency table for one space on this machine.

1. every distinct part of the space (`parts.space_parts`) is built alone (`models.build_part`);
2. K whole archs (`models.build_model`; the smallest, the largest and random ones) for an affine
   calibration of the part sums, and N other random archs to validate it (MAPE, p90/p95, within
   5/10%, Spearman, Kendall tau);
3. all of them are timed **together, in interleaved rounds** (`deployvit.timing.time_rounds`): in
   each round every part and whole model is called in a shuffled order, again and again, and keeps
   its fastest call of the round; its latency is the lower quartile of those over the rounds. A
   neighbour that slows the machine for a while slows every entry of the rounds it overlaps alike,
   so the part sums, the calibration archs and the validation archs stay comparable however the
   machine's load drifts (measured on a shared 2-core machine: 83 of 84 one-at-a-time timings had a
   coefficient of variation above 10% and the table's held-out MAPE was 24%).
Parts and whole models go through the same runners (same runtime, precision, batch, threads, clock).

What is timed together is held in memory together; a space too big for that (`GROUP_BYTES` of
weights) is timed in groups, each a shuffled mix of parts, calibration and validation archs.
After every round the round's samples are appended to `<out>.progress.json` (atomically), so a
killed profile resumes at the round it was in; the table is written (atomically) only at the end.
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
from deployvit.counting import count_params, part_counts
from deployvit.errors import DeployvitError
from deployvit.devices import check_label, machine_facts
from deployvit.runtimes import build_runner, check_runtime, get_runtime, runtime_version
from deployvit.settings import MeasureSettings, ProfileConfig
from deployvit.latency.stats import error_stats, fit_affine
from deployvit.latency.table import LatencyTable
from deployvit.timing import RoundPlan, Timing, time_rounds
from deployvit.models import build_model, build_part
from deployvit.parts import Part, space_parts
from deployvit.spaces import SearchSpace

PROGRESS_FORMAT = "deployvit.profile_progress/2"
GROUP_BYTES = 2e9  # fp32 weights timed together at most (every runner of a group is alive at once)


def validate_settings(settings: MeasureSettings, device: str) -> None:
    """Refuse settings this machine cannot time with (before any timing starts): one line each."""
    if settings.batch_size < 1:
        raise DeployvitError(f"batch size must be >= 1, got {settings.batch_size}")
    if settings.repeats < 1 or settings.warmup_s < 0:
        raise DeployvitError(f"repeats must be >= 1 and warm-up >= 0 s (got {settings.repeats}, {settings.warmup_s})")
    if settings.rounds is not None and settings.rounds < 1:
        raise DeployvitError(f"rounds must be >= 1, got {settings.rounds}")
    if not 0 < settings.quantile < 1 or settings.round_s < 0 or settings.max_s < 0 or settings.rel_ci <= 0:
        raise DeployvitError("timing settings out of range: quantile in (0, 1), round_s and max_s >= 0, rel_ci > 0")
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
    check_output(out, force)
    return device, name


def check_output(out: Path, force: bool) -> None:
    if out.is_dir():
        raise DeployvitError(f"output {out} is a directory; give a .json file path")
    if out.exists() and not force:
        raise DeployvitError(f"{out} exists; pass --force to overwrite it")
    io.check_out_path(progress_path(out), "profile progress file")  # a folder or FIFO in its place, a name too long


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


def round_plan(settings: MeasureSettings) -> RoundPlan:
    """The `time_rounds` plan of a table's settings (a table made before rounds: its classic loop)."""
    if settings.rounds is None:
        return RoundPlan(rounds=settings.repeats, round_s=0.0, repeats=1, quantile=0.5, rel_ci=None, max_s=0.0, warmup_s=settings.warmup_s)
    return RoundPlan(rounds=settings.rounds, round_s=settings.round_s, repeats=settings.repeats, quantile=settings.quantile,
                     rel_ci=settings.rel_ci, max_s=settings.max_s, warmup_s=settings.warmup_s)


def runner(module: torch.nn.Module, input_shape: tuple[int, ...], settings: MeasureSettings, device: str) -> Callable[[], object]:
    """A module (a part or a whole model) built for timing exactly as every table entry is."""
    return build_runner(module, input_shape, runtime=settings.runtime, device=device, precision=settings.precision, threads=settings.threads)


def time_runs(runs: dict, settings: MeasureSettings, device: str, seed: int = 0, done: dict | None = None,
              on_round: Callable[[dict], None] | None = None) -> dict:
    """Time built runners together with a table's settings: the one timing path of table entries,
    whole models (`latency --measure`, `search --measure-top`, calibration) and export's contract."""
    before = torch.get_num_threads()
    apply_threads(settings, device)
    try:
        return time_rounds(runs, plan=round_plan(settings), device=device, clock=settings.clock, seed=seed, done=done, on_round=on_round)
    finally:
        torch.set_num_threads(before)


def time_run(run: Callable[[], object], settings: MeasureSettings, device: str, label: str = "") -> Timing:
    """One built runner, timed like a table entry."""
    return time_runs({label: run}, settings, device)[label]


def part_runner(part: Part, settings: MeasureSettings, device: str) -> Callable[[], object]:
    """One table entry: the part's own module (the class the whole model uses)."""
    torch.manual_seed(0)  # weights do not change the latency, but a fixed seed makes runs repeatable
    return runner(build_part(part), part.input_shape(settings.batch_size), settings, device)


def arch_runner(arch: Arch, settings: MeasureSettings, device: str) -> Callable[[], object]:
    """One whole model, end to end, built like the parts."""
    torch.manual_seed(0)
    return runner(build_model(arch), (settings.batch_size, arch.in_chans, arch.img_size, arch.img_size), settings, device)


def measure_archs(archs: list[Arch], settings: MeasureSettings, device: str, seed: int = 0) -> dict[str, Timing]:
    """Whole models timed together in interleaved rounds, by arch key (what `--measure-top` compares)."""
    unique = list({a.key: a for a in archs}.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the interval is reported with the number
        if not interleaves(settings):
            return {a.key: time_runs({a.key: arch_runner(a, settings, device)}, settings, device, seed)[a.key] for a in unique}
        return time_runs({a.key: arch_runner(a, settings, device) for a in unique}, settings, device, seed)


def interleaves(settings: MeasureSettings) -> bool:
    """Whether runners of this runtime can be alive and timed together: not `compile`, whose every
    runner resets the compiler's caches (`runtimes.compile`), so each is built and timed alone."""
    return settings.runtime != "compile"


def measure_arch(arch: Arch, settings: MeasureSettings, device: str) -> Timing:
    """One whole model, timed exactly like the parts."""
    return time_run(arch_runner(arch, settings, device), settings, device, label="whole model")


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


# --- timing many items together, resumably ---------------------------------------------------------


class Item:
    """Something a profile times: its key in the progress file, its weight bytes, how to build it."""

    def __init__(self, key: str, nbytes: int, build: Callable[[], Callable[[], object]]):
        self.key, self.nbytes, self.build = key, nbytes, build


def part_item(part: Part, settings: MeasureSettings, device: str) -> Item:
    return Item(f"part:{part.key}", 4 * part_counts(part)[0], lambda: part_runner(part, settings, device))


def arch_item(group: str, arch: Arch, settings: MeasureSettings, device: str) -> Item:
    return Item(f"{group}:{arch.key}", 4 * count_params(arch), lambda: arch_runner(arch, settings, device))


def groups_of(items: list[Item], seed: int, limit: float = GROUP_BYTES) -> list[list[Item]]:
    """The items in a seeded shuffled order, cut into consecutive groups of at most `limit` weight
    bytes (one item may exceed it alone): each group is timed together."""
    order = [items[i] for i in np.random.default_rng(seed).permutation(len(items))]
    groups: list[list[Item]] = [[]]
    size = 0.0
    for item in order:
        if groups[-1] and size + item.nbytes > limit:
            groups.append([])
            size = 0.0
        groups[-1].append(item)
        size += item.nbytes
    return groups


def time_items(items: list[Item], settings: MeasureSettings, device: str, state: dict, save: Callable[[], None], seed: int,
               desc: str) -> dict[str, dict]:
    """Time every item (group by group, each group in interleaved rounds), resuming from `state`
    (`{"rounds": {key: [samples]}, "timings": {key: Timing dict}}`, saved after every round);
    returns the Timing dicts by key."""
    groups = groups_of(items, seed, GROUP_BYTES if interleaves(settings) else 0)
    todo = [g for g in groups if not all(i.key in state["timings"] for i in g)]
    with tqdm(total=sum(len(g) for g in todo), desc=desc, unit="item", dynamic_ncols=True) as bar:
        for gi, group in enumerate(todo):
            bar.set_postfix_str(f"building group {gi + 1}/{len(todo)}")
            runs = {}
            for item in group:
                runs[item.key] = item.build()
                bar.update(1)
            bar.set_postfix_str(f"timing group {gi + 1}/{len(todo)}")

            def on_round(sample: dict) -> None:
                for key, value in sample.items():
                    state["rounds"].setdefault(key, []).append(value)
                save()

            done = {k: state["rounds"].get(k, []) for k in runs}
            with warnings.catch_warnings():  # noise is summarised in the report, not printed per timing
                warnings.simplefilter("ignore", RuntimeWarning)
                timings = time_runs(runs, settings, device, seed + gi, done=done, on_round=on_round)
            for key, timing in timings.items():
                state["timings"][key] = timing.to_dict()
            save()
            del runs
    return state["timings"]


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
    state = load_progress(ppath, key, echo)
    save = progress_saver(ppath, state, out)

    rng = np.random.default_rng(seed)
    calib = distinct_archs(space, calib_archs, rng, set(), [space.min_arch(), space.max_arch()])
    val = distinct_archs(space, val_archs, np.random.default_rng(seed + 1), {a.key for a in calib})
    items = [part_item(p, settings, device) for p in space_parts(space)]
    items += [arch_item(group, a, settings, device) for group, archs in (("calib", calib), ("val", val)) for a in archs]
    say_resume(state, items, ppath, echo)
    timings = time_items(items, settings, device, state, save, seed + 2, f"profile {space.name} {settings.runtime} b{settings.batch_size}")

    table = _build_table(space, label, device, settings, timings, calib, val, calib_archs, val_archs, seed)
    table.save(out)
    ppath.unlink(missing_ok=True)
    echo(report(table))
    return table


def progress_saver(ppath: Path, state: dict, out: Path) -> Callable[[], None]:
    """Writes the progress file; called once now, so an unwritable output fails (exit 2) before any timing."""

    def save() -> None:
        io.write_json(ppath, state)

    try:
        save()
    except DeployvitError as exc:
        raise DeployvitError(f"cannot write the table {out}: {str(exc).split(': ', 1)[-1]}") from None
    return save


def say_resume(state: dict, items: list[Item], ppath: Path, echo: Callable[[str], None]) -> None:
    finished = sum(i.key in state["timings"] for i in items)
    started = max((len(state["rounds"].get(i.key, [])) for i in items if i.key not in state["timings"]), default=0)
    if finished or started:
        echo(f"resuming {ppath.name}: {finished} of {len(items)} timings finished"
             + (f", {started} rounds of the next group kept" if started else ""))


def fresh_progress(key: dict) -> dict:
    return {"format": PROGRESS_FORMAT, "key": key, "rounds": {}, "timings": {}}


def load_progress(path: Path, key: dict, echo: Callable[[str], None]) -> dict:
    """The progress of an interrupted run with the same `key`, else a fresh one (and why)."""
    fresh = fresh_progress(key)
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


_US = (float, 1e-9, 1e12)
_TIMING = {"median_us": _US, "latency_us": _US, "cv": (float, 0, 1e6), "rounds": (int, 1, 10**9)}
_PROGRESS_SCHEMA = {"rounds": {str: [_US]}, "timings": {str: _TIMING}}


def latency_of(timing: dict) -> float:
    """A recorded timing's latency (`Timing.latency_us`)."""
    return timing.get("latency_us") or timing["median_us"]


def _build_table(space, label, device, settings, timings, calib, val, calib_archs, val_archs, seed) -> LatencyTable:
    entries = {k.split(":", 1)[1]: t for k, t in timings.items() if k.startswith("part:")}
    table = LatencyTable(metadata={}, entries=entries)
    calib_sums = [table.sum_us(a) for a in calib]
    calib_meas = [latency_of(timings[f"calib:{a.key}"]) for a in calib]
    table.scale, table.bias = fit_affine(calib_sums, calib_meas)
    val_sums = [table.sum_us(a) for a in val]
    val_meas = [latency_of(timings[f"val:{a.key}"]) for a in val]
    val_pred = [table.scale * s + table.bias for s in val_sums]
    table.calibration = {
        "method": "least squares measured_us = scale * sum(part latency_us) + bias, bias >= 0",
        "archs": [measured_row(a, s, None, timings[f"calib:{a.key}"]) for a, s in zip(calib, calib_sums)],
    }
    table.validation = {
        "calibrated": error_stats(val_pred, val_meas).to_dict(),
        "uncalibrated": error_stats(val_sums, val_meas).to_dict(),
        "archs": [measured_row(a, s, p, timings[f"val:{a.key}"]) for a, s, p in zip(val, val_sums, val_pred)],
    }
    table.metadata = table_metadata(space, label, device, settings)
    table.metadata["settings"].update(calib_archs=calib_archs, val_archs=val_archs, seed=seed)
    table.metadata["num_entries"] = len(entries)
    return table


def measured_row(arch: Arch, sum_us: float, predicted_us: float | None, timing: dict) -> dict:
    """One whole model of a calibration or validation: its part sum, prediction and measurement."""
    row = {"arch": arch.to_dict(), "sum_us": sum_us, "measured_us": latency_of(timing), "cv": timing["cv"]}
    if predicted_us is not None:
        row["predicted_us"] = predicted_us
    if timing.get("ci_low_us") is not None:
        row["ci_us"] = [timing["ci_low_us"], timing["ci_high_us"]]
    return row


def table_metadata(space: SearchSpace, label: str, device: str, settings: MeasureSettings) -> dict:
    """What a table made on this machine records: device facts, software, settings, space."""
    facts = machine_facts(device)
    timer = "cuda events" if device == "cuda" else ("perf_counter" if settings.clock == "wall" else "process_time")
    return {
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
        "settings": {**asdict(settings), "timer": timer, "timing": "time_rounds: lower quartile of per-round fastest calls"},
        **get_runtime(settings.runtime).table_facts(settings.precision),  # an int8 table: how its entries were quantised
    }


def report(table: LatencyTable) -> str:
    """A few lines: what was measured, the calibration, validation quality and timing noise."""
    cal, raw = table.validation["calibrated"], table.validation["uncalibrated"]
    lines = [
        f"wrote {table.path}: {table.describe()}",
        f"  {len(table.entries)} part entries; calibration: predict = {table.scale:.4f} x sum + {table.bias:.1f} us "
        f"(fitted on {len(table.calibration['archs'])} whole archs)",
        f"  validation on {cal['n']} held-out archs: {quality_line(cal)}",
        f"  uncalibrated block sums: MAPE {raw['mape']:.2f}%, within 5% {raw['within_5']:.0%}, within 10% {raw['within_10']:.0%}",
    ]
    lines += noise_lines(list(table.entries.values()) + table.calibration["archs"] + table.validation["archs"], table.metadata["settings"])
    return "\n".join(lines)


def quality_line(s: dict) -> str:
    p90 = f", p90 {s['p90_abs_pct']:.2f}%" if "p90_abs_pct" in s else ""
    rho = f", Spearman {s['spearman']:.3f}" if "spearman" in s else ""
    return (f"MAPE {s['mape']:.2f}%{p90}, p95 {s['p95_abs_pct']:.2f}%, within 5% {s['within_5']:.0%}, "
            f"within 10% {s['within_10']:.0%}{rho}, Kendall tau {s['kendall_tau']:.3f}")


def _rel_width(t: dict) -> float | None:
    """A timing's 95% interval, half its width relative to its latency (a table entry or an arch row)."""
    low, high = t["ci_us"] if "ci_us" in t else (t.get("ci_low_us"), t.get("ci_high_us"))
    value = t["measured_us"] if "measured_us" in t else latency_of(t)
    return None if low is None or high is None else (high - low) / 2 / value


def noise_lines(timings: list[dict], settings: dict) -> list[str]:
    """How precise the timings were: the 95% intervals of the latencies, relative to them."""
    widths = [w for w in map(_rel_width, timings) if w is not None]
    if not widths:
        return []
    rel = settings.get("rel_ci", 0.02)
    wide = sum(w > rel for w in widths)
    line = (f"  timing: 95% intervals of the latencies +-{float(np.median(widths)):.1%} (median), +-{max(widths):.1%} (widest) "
            f"over {len(widths)} timings")
    return [line + (f"; {wide} wider than the wanted +-{rel:.0%}" if wide else "")]
