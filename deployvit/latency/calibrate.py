"""`deployvit profile --calibrate K`: a latency table for this device from K whole-model measurements.

A full profile times every part of a space and dozens of whole archs; a calibration times only K
whole archs here (default 10) and fits them onto a **base table** made elsewhere for the same space,
runtime, precision and batch: on a GPU deployvit's estimate for it (`latency.estimate`), on a CPU a
table measured on another machine (the shipped `latency_tables/cpu/*`). What transfers from the base
is the *shape* of the latency landscape (which archs are slower, by how much relative to each
other); what the K measurements fix is how this device scales it. Few-shot predictor transfer
(HELP, 2021: Spearman 0.987 from 10 measurements; nn-Meter, LitePred) rests on the same split.

The correction (`MODELS`) is chosen to generalise from 10 points: `compute` (the default) fits
`measured = a * sum(base parts) + c * MACs + bias`, a speed factor on the base plus a cost per
multiply-accumulate, for a device whose arithmetic is faster or slower than the base's relative to
its per-layer overheads; `affine` refits the base table's
own affine calibration, `measured = scale * sum(base parts) + bias` (bias >= 0), two parameters, i.e.
an affine map of the base's prediction; `scale` is one factor on the base's prediction; `per-kind`
scales stem, blocks and head separately (four parameters). `benchmarks/calibration.py` measures all
all of them on held-out archs, and every table's validation reports each. A calibration keeps the base's
part entries (so a search still predicts `scale * sum + bias`, vectorised) and records the base's
provenance, the K archs (spread over the base's predicted latency range: its quantiles, the fastest
and slowest arch included, where an affine fit has the most leverage), and its validation on M more
archs measured here (uniformly drawn, as a search draws them).

All K + M archs are timed together in interleaved rounds (`latency.profile.time_items`), resumable
after a kill like a profile.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from deployvit.arch import Arch
from deployvit.devices import check_label
from deployvit.errors import DeployvitError
from deployvit.latency.profile import (
    apply_threads, arch_item, say_resume, check_output, distinct_archs, latency_of, load_progress, measured_row, noise_lines, progress_path,
    progress_saver, quality_line, table_metadata, time_items, validate_settings,
)
from deployvit.latency.stats import error_stats, fit_affine
from deployvit.latency.table import LatencyTable
from deployvit.counting import count_flops, part_counts
from deployvit.parts import arch_parts, space_parts
from deployvit.settings import MeasureSettings
from deployvit.spaces import SearchSpace

POOL = 4000  # random archs whose base predictions the K calibration archs are spread over
KINDS = ("stem", "block", "reduce", "head")  # a part key starts with its kind


@dataclass
class CalibrationPlan:
    """A checked `--calibrate` request: nothing has been timed or written yet."""

    space: SearchSpace
    label: str
    device: str  # cpu | cuda
    device_name: str
    settings: MeasureSettings
    out: Path
    k: int
    m: int
    base: LatencyTable
    base_where: str  # how the base was found
    seed: int = 0
    model: str = "compute"


def plan_calibration(space: SearchSpace, label: str, settings: MeasureSettings, out: Path, k: int, m: int, base_path: str | None,
                     seed: int = 0, force: bool = False, model: str = "compute") -> CalibrationPlan:
    """Every check of a calibration before anything is timed: one line each (exit 2)."""
    device, name = check_label(label, force)
    validate_settings(settings, device)
    size = space.size()
    if k < 2 or m < 2:
        raise DeployvitError(f"--calibrate needs K >= 2 measured archs and >= 2 held-out archs (got K={k}, --val-archs {m})")
    if k > size:
        raise DeployvitError(f"--calibrate {k}: space {space.name} has only {size} distinct archs")
    if k + m > size:
        raise DeployvitError(f"--calibrate {k} with --val-archs {m}: space {space.name} has only {size} distinct archs to measure")
    if model not in MODELS:
        raise DeployvitError(f"unknown calibration model {model!r} (choose from {', '.join(MODELS)})")
    check_output(out, force)
    base, where = find_base(space, settings, device, name, base_path, out)
    return CalibrationPlan(space, label, device, name, settings, out, k, m, base, where, seed, model)


def find_base(space: SearchSpace, settings: MeasureSettings, device: str, device_name: str, base_path: str | None,
              out: Path) -> tuple[LatencyTable, str]:
    """The base table: `--base` (checked), else the best table of this space, runtime, precision,
    batch and device class the resolver can see, else (on a GPU) the estimate for this GPU."""
    if base_path is not None:
        path = Path(base_path)
        if not path.is_file():
            raise DeployvitError(f"--base {base_path}: no such table")
        if out.exists() and path.resolve() == out.resolve():
            raise DeployvitError(f"--base {base_path} is the table --calibrate would write")
        base = LatencyTable.load(path, warn=False)
        check_base(base, space, settings, device, str(path))
        return base, f"--base {path}"
    found = _candidates(space, settings, device, out)
    if found:
        return found[0].table, f"{found[0].origin} table {found[0].path}"
    if device == "cuda":
        return _estimate_base(space, settings, device_name)
    want = f"{space.name} {settings.runtime} {settings.precision} b{settings.batch_size}"
    raise DeployvitError(f"no CPU table of {want} to calibrate: pass --base TABLE (one made on another CPU), or profile in full "
                         f"(deployvit profile --device cpu --space {space.name} --runtime {settings.runtime} "
                         f"--precision {settings.precision} --batch-size {settings.batch_size} --threads 1)")


def check_base(base: LatencyTable, space: SearchSpace, settings: MeasureSettings, device: str, where: str) -> None:
    """A base must predict this very question: same space (and version), runtime, precision and
    batch, and the same class of device (a GPU's table says nothing about a CPU's latency shape)."""
    m = base.metadata
    if m["space"] != space.name or m["space_hash"] != space.hash():
        raise DeployvitError(f"{where}: base table is of space {m['space']!r} (hash {m['space_hash']}), not {space.name!r} ({space.hash()})")
    got, want = (m["runtime"], m["precision"], m["batch_size"]), (settings.runtime, settings.precision, settings.batch_size)
    if got != want:
        raise DeployvitError(f"{where}: base table is {got[0]} {got[1]} batch {got[2]}; this calibration is {want[0]} {want[1]} batch {want[2]}")
    if m["device_type"] != device:
        kind = {"cuda": "a GPU", "cpu": "a CPU"}
        raise DeployvitError(f"{where}: base table was made for {kind.get(m['device_type'], m['device_type'])} ({m['device_name']}); "
                             f"this device is {kind.get(device, device)}: calibrate from a table of the same device class")


def _candidates(space: SearchSpace, settings: MeasureSettings, device: str, out: Path) -> list:
    """Tables that could be the base, best first: a full profile, then a calibration, then an
    estimate; the user's folders before the shipped one. Two equally good ones: refused (--base)."""
    from deployvit.latency.resolve import ORIGINS, scan_tables

    infos, _ = scan_tables()
    found = []
    for info in infos:
        try:
            check_base(info.table, space, settings, device, str(info.path))
        except DeployvitError:
            continue
        if not (out.exists() and info.path.resolve() == out.resolve()):
            found.append(info)
    rank = {"measured": 0, "calibrated": 1, "estimated": 2}
    found.sort(key=lambda i: (rank.get(i.source, 3), ORIGINS.index(i.origin)))
    if len(found) > 1 and (rank.get(found[0].source), found[0].origin) == (rank.get(found[1].source), found[1].origin):
        raise DeployvitError(f"two tables could be the base ({found[0].path} and {found[1].path}): choose one with --base")
    return found


def _estimate_base(space: SearchSpace, settings: MeasureSettings, device_name: str) -> tuple[LatencyTable, str]:
    from deployvit.latency.estimate import estimate_table
    from deployvit.latency.gpus import load_catalogue

    gpu = load_catalogue().match_device(device_name)
    if gpu is None:
        raise DeployvitError(f"no base table for {device_name}, and the estimator's catalogue does not know it: pass --base TABLE")
    return estimate_table(space, gpu, settings.runtime, settings.precision, settings.batch_size), f"deployvit's estimate for {gpu.name}"


# --- which archs ----------------------------------------------------------------------------------


def spread_archs(space: SearchSpace, base: LatencyTable, k: int, seed: int) -> list[Arch]:
    """K distinct archs at evenly spaced quantiles of the base's predicted latency (the pool's fastest
    and slowest included), from a seeded pool of random archs plus the space's smallest and largest."""
    rng = np.random.default_rng(seed)
    pool = {a.key: a for a in [space.min_arch(), space.max_arch()] + [space.sample(rng) for _ in range(POOL)]}
    archs = list(pool.values())
    pred = np.array([base.sum_us(a) for a in archs])
    order = np.argsort(pred)
    chosen: list[Arch] = []
    used: set[int] = set()
    for q in np.linspace(0.0, 1.0, k):
        target = np.quantile(pred, q)
        for i in sorted(order, key=lambda i: abs(pred[i] - target)):
            if i not in used:
                used.add(i)
                chosen.append(archs[i])
                break
    return chosen


# --- corrections ----------------------------------------------------------------------------------


def kind_sums(base: LatencyTable, arch: Arch) -> np.ndarray:
    """The base's part sum of `arch` split by part kind (stem, block, reduction, head)."""
    out = np.zeros(len(KINDS))
    for part in arch_parts(arch):
        out[KINDS.index(part.key.split(":")[0])] += base.part_us(part)
    return out


@dataclass(frozen=True)
class Correction:
    """new entry = factors[kind] * base entry + per_mac * the part's MACs; prediction = scale * sum + bias."""

    scale: float
    bias: float
    factors: tuple[float, ...] = (1.0,) * len(KINDS)
    per_mac: float = 0.0


def fit_scale(base: LatencyTable, archs: list[Arch], measured: list[float]) -> Correction:
    """One factor on the base's prediction."""
    pred = np.array([_predict(base, a) for a in archs])
    factor = float(pred @ np.asarray(measured) / (pred @ pred))
    return Correction(factor * base.scale, factor * base.bias)


def fit_affine_model(base: LatencyTable, archs: list[Arch], measured: list[float]) -> Correction:
    """`measured = scale * sum + bias` on the base's part sums (bias >= 0): an affine map of its prediction."""
    return Correction(*fit_affine([base.sum_us(a) for a in archs], measured))


def fit_compute(base: LatencyTable, archs: list[Arch], measured: list[float]) -> Correction:
    """`measured = a * sum + c * MACs + bias` (a, c, bias >= 0): a speed factor on the base's parts plus
    a cost per multiply-accumulate, for a device whose compute is faster or slower than the base's
    relative to everything else (per-call and per-layer overheads, memory)."""
    from scipy.optimize import nnls

    design = np.array([[base.sum_us(a), count_flops(a) / 1e6, 1.0] for a in archs])
    (a, c, bias), _ = nnls(design, np.asarray(measured, dtype=np.float64))
    if not a > 0:
        raise DeployvitError("compute: the measurements leave the base table's parts no time (its shape does not fit this device)")
    return Correction(1.0, float(bias), (float(a),) * len(KINDS), float(c) / 1e6)


def fit_per_kind(base: LatencyTable, archs: list[Arch], measured: list[float]) -> Correction:
    """A scale per part kind present in the space and a bias >= 0 (non-negative least squares)."""
    from scipy.optimize import nnls

    x = np.array([kind_sums(base, a) for a in archs])
    present = x.any(axis=0)
    design = np.column_stack([x[:, present], np.ones(len(archs))])
    coef, _ = nnls(design, np.asarray(measured, dtype=np.float64))
    factors = np.ones(len(KINDS))
    factors[present] = coef[:-1]
    if not np.all(factors[present] > 0):
        zero = [k for k, f, p in zip(KINDS, factors, present) if p and f <= 0]
        raise DeployvitError(f"per-kind: the measurements cannot separate {', '.join(zero)} from the rest (fitted to no time)")
    return Correction(1.0, float(coef[-1]), tuple(float(f) for f in factors))


MODELS: dict[str, Callable] = {"compute": fit_compute, "affine": fit_affine_model, "scale": fit_scale, "per-kind": fit_per_kind}


def corrected_table(base: LatencyTable, space: SearchSpace, fix: Correction) -> LatencyTable:
    """The base's entries, corrected per part (`Correction`), with the correction's scale and bias;
    each entry keeps the base's value (`base_us`)."""
    macs = {p.key: part_counts(p)[1] for p in space_parts(space)}
    entries = {}
    for key, entry in base.entries.items():
        value = entry["latency_us"] if "latency_us" in entry else entry["median_us"]
        new = fix.factors[KINDS.index(key.split(":")[0])] * value + fix.per_mac * macs.get(key, 0)
        entries[key] = {"latency_us": new, "median_us": new, "base_us": value}
    return LatencyTable(metadata={}, entries=entries, scale=fix.scale, bias=fix.bias)


# --- the run --------------------------------------------------------------------------------------


def calibrate(plan: CalibrationPlan, echo: Callable[[str], None] = print) -> LatencyTable:
    """Measure the plan's K + M archs here, fit, validate and write the calibrated table."""
    started = time.process_time()
    space, settings = plan.space, plan.settings
    apply_threads(settings, plan.device)
    calib = spread_archs(space, plan.base, plan.k, plan.seed)
    val = distinct_archs(space, plan.m, np.random.default_rng(plan.seed + 1), {a.key for a in calib})
    key = {"calibrate": plan.k, "val_archs": plan.m, "space": space.name, "space_hash": space.hash(), "device_label": plan.label,
           "device_name": plan.device_name, "settings": asdict(settings), "seed": plan.seed, "base": _fingerprint(plan.base)}
    ppath = progress_path(plan.out)
    state = load_progress(ppath, key, echo)
    save = progress_saver(ppath, state, plan.out)
    items = [arch_item(group, a, settings, plan.device) for group, archs in (("calib", calib), ("val", val)) for a in archs]
    say_resume(state, items, ppath, echo)
    timings = time_items(items, settings, plan.device, state, save, plan.seed + 2,
                         f"calibrate {space.name} {settings.runtime} b{settings.batch_size} ({plan.k} + {plan.m} archs)")
    table = _fit_and_validate(plan, calib, val, timings)
    table.metadata["calibration_cpu_s"] = round(time.process_time() - started, 1)
    table.save(plan.out)
    ppath.unlink(missing_ok=True)
    echo(report(table))
    return table


def _fingerprint(base: LatencyTable) -> dict:
    m = base.metadata
    return {"space_hash": m["space_hash"], "device_name": m["device_name"], "source": base.source, "date": m.get("date"),
            "scale": base.scale, "bias": base.bias, "entries": len(base.entries)}


def _fit_and_validate(plan: CalibrationPlan, calib: list[Arch], val: list[Arch], timings: dict) -> LatencyTable:
    base = plan.base
    measured = [latency_of(timings[f"calib:{a.key}"]) for a in calib]
    val_meas = [latency_of(timings[f"val:{a.key}"]) for a in val]
    fitted, fixes, unfit = {}, {}, {}
    for name, fit in MODELS.items():
        try:
            fixes[name] = fit(base, calib, measured)
            fitted[name] = corrected_table(base, plan.space, fixes[name])
        except DeployvitError as exc:
            unfit[name] = str(exc).removeprefix(f"{name}: ")  # a model this data cannot fit: said, not fatal
    model = chosen_model(plan.model, plan.k, fitted)
    table = fitted[model]
    val_pred = [_predict(table, a) for a in val]
    base_pred = [_predict(base, a) for a in val]
    table.calibration = {
        "method": f"{model}: {MODELS[model].__doc__.splitlines()[0]}",
        "model": model,
        "correction": asdict(fixes[model]),
        "base": provenance(base, plan.base_where),
        "archs": [{**measured_row(a, table.sum_us(a), None, timings[f"calib:{a.key}"]), "base_predicted_us": _predict(base, a)}
                  for a in calib],
    }
    table.validation = {
        "calibrated": error_stats(val_pred, val_meas).to_dict(),
        "uncalibrated": error_stats(base_pred, val_meas).to_dict(),  # the base table as it was
        "models": {name: error_stats([_predict(t, a) for a in val], val_meas).to_dict() for name, t in fitted.items()},
        "models_not_fitted": unfit,
        "archs": [{**measured_row(a, table.sum_us(a), p, timings[f"val:{a.key}"]), "base_predicted_us": b}
                  for a, p, b in zip(val, val_pred, base_pred)],
    }
    meta = table_metadata(plan.space, plan.label, plan.device, plan.settings)
    meta["settings"].update(calibrate=plan.k, val_archs=plan.m, seed=plan.seed)
    table.metadata = {"source": "calibrated", **meta, "num_entries": len(table.entries),
                      "calibrated_on": f"calibrated on {plan.k} measurements of {plan.device_name}"}
    return table


FALLBACK = "affine"  # two parameters: fits any K >= 2 measurements with a positive slope
MIN_POINTS = {"compute": 6, "per-kind": 8}  # fewer measurements than this: the model is not used (it would interpolate noise)


def chosen_model(wanted: str, k: int, fitted: dict) -> str:
    """`wanted` when it fitted and K is enough for its parameters, else the two-parameter affine map."""
    if wanted in fitted and k >= MIN_POINTS.get(wanted, 2):
        return wanted
    if FALLBACK not in fitted:
        raise DeployvitError("the calibration measurements fit no correction of the base table (its shape does not fit this device)")
    return FALLBACK


def _predict(table: LatencyTable, arch: Arch) -> float:
    """`table.predict` without its compatibility checks (these tables are of the arch's space by construction)."""
    return table.scale * table.sum_us(arch) + table.bias


def provenance(base: LatencyTable, where: str) -> dict:
    """What a calibrated table was made from: the base table's file, kind, device, date and quality."""
    m = base.metadata
    quality = base.validation.get("calibrated") or (base.validation.get("this_table") or {}).get("leave_one_gpu_out")
    return {"where": where, "path": str(base.path) if base.path else None, "describe": base.describe(), "source": base.source,
            "device_label": m["device_label"], "device_name": m["device_name"], "date": m.get("date"),
            "runtime_version": m["runtime_version"], "torch": m["torch"], "validation": quality}


def _correction_text(c: dict) -> str:
    factors = sorted(set(c["factors"]))
    parts = f"{factors[0]:.3f} x" if len(factors) == 1 else "(" + ", ".join(f"{k} {f:.3f}" for k, f in zip(KINDS, c["factors"])) + ") x"
    mac = f" + {c['per_mac'] * 1e9:.1f} us per GMAC" if c["per_mac"] else ""
    return f"entries = {parts} the base's{mac}; predict = {c['scale']:.4f} x sum + {c['bias']:.1f} us"


def report(table: LatencyTable) -> str:
    cal, raw = table.validation["calibrated"], table.validation["uncalibrated"]
    base = table.calibration["base"]
    lines = [
        f"wrote {table.path}: {table.describe()}",
        f"  base: {base['describe']} ({base['where']})",
        f"  {table.calibration['model']} fit on {len(table.calibration['archs'])} whole archs: {_correction_text(table.calibration['correction'])}",
        f"  validation on {cal['n']} held-out archs measured here: {quality_line(cal)}",
        f"  the base table as it was: {quality_line(raw)}",
        "  other corrections on the same archs: " + "; ".join(
            [f"{name} MAPE {s['mape']:.2f}%, within 10% {s['within_10']:.0%}" for name, s in table.validation["models"].items()
             if name != table.calibration["model"]] + [f"{name}: {why}" for name, why in table.validation["models_not_fitted"].items()]),
    ]
    lines += noise_lines(table.calibration["archs"] + table.validation["archs"], table.metadata["settings"])
    lines.append(f"  {table.metadata.get('calibration_cpu_s', 0):.0f} s of CPU")
    return "\n".join(lines)
