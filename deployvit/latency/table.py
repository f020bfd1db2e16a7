"""`LatencyTable`: measured per-part latencies plus an affine calibration, as one JSON file.

Layout (docs/DESIGN.md section 3; `latency_tables/<device>/<space>-<runtime>-<precision>-b<batch>.json`):

    {"format": "deployvit.latency_table/1",
     "metadata":    {device label and detected name, software versions, runtime, precision, batch,
                     img size, space name and hash, date, measurement settings},
     "entries":     {part.key: {"latency_us", "median_us", "p90_us", "mean_us", "cv", "repeats", ...}},
     "calibration": {"scale", "bias", "archs": [{"arch", "sum_us", "measured_us", "cv"}]},
     "validation":  {"calibrated": ErrorStats, "uncalibrated": ErrorStats,
                     "archs": [{"arch", "sum_us", "predicted_us", "measured_us", "cv"}]}}

A prediction is `scale * sum(part latencies) + bias` microseconds: affine so that the search can
vectorise it over a population (`deployvit.search.predictor`). A part's latency is its `latency_us`
(`deployvit.timing.Timing`: the lower quartile of its per-round fastest calls), or `median_us` in
tables made before timing in rounds and in estimates. A table is only valid for what it
was measured on, so loading one elsewhere warns (`LatencyTableWarning`), and a malformed file is a
one-line DeployvitError, never a KeyError deep inside the search.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from deployvit import io
from deployvit.arch import LIMITS, Arch
from deployvit.errors import DeployvitError
from deployvit.parts import Part, arch_parts

TABLE_FORMAT = "deployvit.latency_table/1"
SOURCES = ("measured", "calibrated", "estimated")  # how a table's numbers were made (`LatencyTable.source`)
REQUIRED_METADATA = {
    "device_label": str,
    "device_type": str,
    "device_name": str,
    "runtime": str,
    "runtime_version": str,
    "precision": str,
    "batch_size": int,
    "img_size": int,
    "space": str,
    "space_hash": str,
    "torch": str,
}


class LatencyTableWarning(UserWarning):
    """A table used outside what it was measured for (another device, software or space)."""


def table_filename(space: str, runtime: str, precision: str, batch: int, estimated: bool = False, calibrated: bool = False) -> str:
    """The file name every table of a device folder follows; an estimate's ends in `-estimated`, a
    calibrated table's in `-calibrated`, so that a full profile of the same settings can sit beside it.
    Each value is checked as a name (`io.safe_component`): none may lead the file out of its device folder."""
    for value, what in ((space, "space name"), (runtime, "runtime"), (precision, "precision")):
        io.safe_component(value, what, 128)
    suffix = "-estimated" if estimated else ("-calibrated" if calibrated else "")
    return f"{space}-{runtime}-{precision}-b{batch}{suffix}.json"


@dataclass
class LatencyTable:
    """Per-part medians (microseconds), calibration and provenance; see the module docstring."""

    metadata: dict[str, Any]
    entries: dict[str, dict[str, float]]
    scale: float = 1.0
    bias: float = 0.0
    calibration: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    # --- prediction ------------------------------------------------------------------------------

    def part_us(self, part: Part) -> float:
        """The raw (uncalibrated) latency of one part (`latency_us`, or `median_us` in tables made before
    rounds and in estimates); DeployvitError when the table lacks it."""
        entry = self.entries.get(part.key)
        if entry is None:
            raise DeployvitError(f"latency table {self._name()} has no entry for {part.key} (profiled for space {self.metadata['space']!r})")
        return entry["latency_us"] if "latency_us" in entry else entry["median_us"]

    def sum_us(self, arch: Arch) -> float:
        """Plain sum of the arch's part entries (what calibration maps to a whole-model latency)."""
        return sum(self.part_us(p) for p in arch_parts(arch))

    def predict(self, arch: Arch) -> float:
        """Calibrated end-to-end latency of `arch` in microseconds; warns when the arch is not from
        the table's space, raises when it needs a part the table never measured."""
        for message in self.check_compatible(arch):
            warnings.warn(message, LatencyTableWarning, stacklevel=2)
        return self.scale * self.sum_us(arch) + self.bias

    def check_compatible(self, arch: Arch) -> list[str]:
        """Reasons to distrust a prediction for `arch` (empty when none); raises if a part is missing."""
        missing = [p.key for p in arch_parts(arch) if p.key not in self.entries]
        if missing:
            raise DeployvitError(
                f"latency table {self._name()} (space {self.metadata['space']}) lacks {len(set(missing))} part(s) "
                f"of this arch, e.g. {missing[0]}; profile its space"
            )
        notes = []
        if arch.space != self.metadata["space"]:
            notes.append(f"arch is from space {arch.space!r} but the table was profiled for {self.metadata['space']!r}")
        return notes

    @property
    def source(self) -> str:
        """"measured" (a full profile), "calibrated" (K whole models measured here fitted onto a base
        table made elsewhere, `latency.calibrate`) or "estimated" (a table without the field
        predates estimates: measured)."""
        return self.metadata.get("source", "measured")

    @property
    def is_estimate(self) -> bool:
        return self.source == "estimated"

    def machine_mismatches(self) -> list[str]:
        """How this machine differs from the one the table was measured on (empty when it matches).
        An estimate was measured on nothing: only whether this machine has its GPU model is said."""
        if self.is_estimate:
            return self._estimate_mismatches()
        import torch

        from deployvit.devices import device_name
        from deployvit.runtime_registry import RUNTIMES
        from deployvit.runtimes import runtime_version

        meta = self.metadata
        notes = []
        if meta["device_type"] == "cuda" and not torch.cuda.is_available():
            notes.append(f"table was measured on {meta['device_name']} (cuda) but this machine has no CUDA GPU")
        else:
            here = device_name(meta["device_type"])
            if here != meta["device_name"]:
                notes.append(f"table was measured on {meta['device_name']!r}, this machine has {here!r}")
        if torch.__version__ != meta["torch"]:
            notes.append(f"table was measured with torch {meta['torch']}, this is torch {torch.__version__}")
        record = RUNTIMES.get(meta["runtime"])
        if record is not None and record.package:  # torch's version is compared above
            try:
                version = runtime_version(meta["runtime"])
            except DeployvitError:
                version = "not installed"
            if version != meta["runtime_version"]:
                notes.append(f"table was measured with {meta['runtime']} {meta['runtime_version']}, here it is {version}")
        return notes

    def _estimate_mismatches(self) -> list[str]:
        import torch

        from deployvit.devices import device_name

        name = self.metadata["device_name"]
        here = device_name("cuda") if torch.cuda.is_available() else None
        if here is not None and here.lower() in (n.lower() for n in self.metadata.get("gpu", {}).get("device_names", [name])):
            return []
        found = f"this machine has {here!r}" if here else "this machine has no CUDA GPU"
        return [f"table is an ESTIMATE for {name} (a per-kernel model, not a measurement); {found}"]

    def describe(self) -> str:
        m = self.metadata
        if self.is_estimate:
            return (f"ESTIMATE for {m['device_name']} ({m['device_label']}, {m.get('estimator', {}).get('model_version', 'estimator')}) "
                    f"{m['runtime']} {m['precision']} batch {m['batch_size']}, space {m['space']}")
        clock = " (process CPU time)" if m.get("settings", {}).get("clock") == "cpu" else ""
        how = f", {m.get('calibrated_on', 'CALIBRATED')} (CALIBRATED)" if self.source == "calibrated" else ""
        return f"{m['device_label']} ({m['device_name']}) {m['runtime']} {m['precision']} batch {m['batch_size']}{clock}, space {m['space']}{how}"

    def _name(self) -> str:
        return str(self.path) if self.path else "(in memory)"

    # --- (de)serialisation -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TABLE_FORMAT,
            "metadata": self.metadata,
            "entries": self.entries,
            "calibration": {**self.calibration, "scale": self.scale, "bias": self.bias},
            "validation": self.validation,
        }

    def save(self, path: str | os.PathLike) -> None:
        io.write_json(path, self.to_dict())
        self.path = Path(path)

    @classmethod
    def from_dict(cls, data: Any, where: str = "latency table") -> "LatencyTable":
        """A table whose every number predictions use is checked: a finite, non-negative value of the
        right type within sane bounds (`_TABLE_BOUNDS`); a table of a preset space must also time
        every part of that space. Problems are one line: `<file>: malformed latency table: <field>: ...`."""
        try:
            meta, entries, calib, validation = _checked_table(data)
        except _TableProblem as exc:
            raise DeployvitError(f"{where}: malformed latency table: {exc}") from None
        rest = {k: v for k, v in calib.items() if k not in ("scale", "bias")}
        return cls(meta, entries, float(calib["scale"]), float(calib["bias"]), rest, validation)

    @classmethod
    def load(cls, path: str | os.PathLike, warn: bool = True) -> "LatencyTable":
        """Read and check a table; with `warn`, a LatencyTableWarning per machine mismatch."""
        # NaN/Infinity are parsed so that from_dict names the field holding them
        table = cls.from_dict(io.read_json(path, "latency table", allow_nonfinite=True), str(path))
        table.path = Path(path)
        if warn:
            for message in table.machine_mismatches():
                warnings.warn(f"{Path(path).name}: {message}", LatencyTableWarning, stacklevel=2)
        return table


class _TableProblem(Exception):
    """One field of a table dict that is missing, mistyped or out of range (from_dict words it)."""


MAX_PART_US = 1e8  # 100 s for one part: anything larger is a unit mistake or a hostile file
_TABLE_BOUNDS = {  # field: (type, low, high); a range bounds a value so predictions can trust it
    "median_us": (float, 0.0, MAX_PART_US), "latency_us": (float, 0.0, MAX_PART_US), "p90_us": (float, 0.0, MAX_PART_US), "mean_us": (float, 0.0, MAX_PART_US),
    "sum_us": (float, 0.0, 1e4 * MAX_PART_US), "measured_us": (float, 0.0, 1e4 * MAX_PART_US),
    "predicted_us": (float, 0.0, 1e4 * MAX_PART_US), "cv": (float, 0.0, 100.0), "repeats": (int, 1,
                                                                                            100_000),  # as profile --repeats: latency --measure reruns it
    "scale": (float, 0.0, 100.0), "bias": (float, 0.0, MAX_PART_US),
    "n": (int, 0, 10**7), "mape": (float, 0.0, 1e6), "p95_abs_pct": (float, 0.0, 1e6), "max_abs_pct": (float, 0.0, 1e6),
    "within_5": (float, 0.0, 1.0), "within_10": (float, 0.0, 1.0), "kendall_tau": (float, -1.0, 1.0),
    "p90_abs_pct": (float, 0.0, 1e6), "spearman": (float, -1.0, 1.0),
    "batch_size": (int, 1, 65536), "img_size": (int, *LIMITS["img_size"]),
    "warmup_s": (float, 0.0, 600.0), "threads": (int, 1, 4096),
}
_POSITIVE = {"median_us", "latency_us", "scale", "measured_us"}  # zero is as impossible as negative for these


def _number(container: dict, key: str, where: str, required: bool = False) -> None:
    """Check container[key] against _TABLE_BOUNDS (absent is fine unless `required`)."""
    if key not in container:
        if required:
            raise _TableProblem(f"{where}.{key}: missing")
        return
    value = container[key]
    typ, lo, hi = _TABLE_BOUNDS[key]
    kind = "an integer" if typ is int else "a number"
    if isinstance(value, bool) or not isinstance(value, (int,) if typ is int else (int, float)) or not math.isfinite(value):
        raise _TableProblem(f"{where}.{key}: expected {kind}, got {_shown(value)}")
    low_ok = value > lo if key in _POSITIVE else value >= lo
    if not (low_ok and value <= hi):
        raise _TableProblem(f"{where}.{key}: expected {kind} in {'(' if key in _POSITIVE else '['}{lo:g}, {hi:g}], got {value!r}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _object(value: Any, where: str) -> dict:
    if value is None:
        raise _TableProblem(f"{where}: missing")
    if not isinstance(value, dict):
        raise _TableProblem(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _checked_table(data: Any) -> tuple[dict, dict, dict, dict]:
    """(metadata, entries, calibration, validation) of a table dict, every field checked."""
    if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
        raise _TableProblem(f"format: expected {TABLE_FORMAT!r}")
    meta = _checked_metadata(_object(data.get("metadata"), "metadata"))
    entries = _object(data.get("entries"), "entries")
    if not entries:
        raise _TableProblem("entries: expected a non-empty object of part timings")
    for key, entry in entries.items():
        where = f"entries[{key!r}]"
        _object(entry, where)
        for name in ("median_us", "latency_us", "p90_us", "mean_us", "cv", "repeats"):
            _number(entry, name, where, required=name == "median_us")
    calib = _object(data.get("calibration"), "calibration")
    _number(calib, "scale", "calibration", required=True)
    _number(calib, "bias", "calibration", required=True)
    _checked_archs(calib.get("archs", []), "calibration.archs", ("sum_us", "measured_us"))
    validation = _object(data.get("validation", {}), "validation")
    for name in ("calibrated", "uncalibrated"):
        stats = _object(validation.get(name, {}), f"validation.{name}")
        for key_name in ("n", "mape", "p90_abs_pct", "p95_abs_pct", "max_abs_pct", "within_5", "within_10", "kendall_tau", "spearman"):
            _number(stats, key_name, f"validation.{name}")
    _checked_archs(validation.get("archs", []), "validation.archs", ("sum_us", "predicted_us", "measured_us"))
    _check_space_coverage(meta, entries)
    return meta, entries, calib, validation


def _checked_metadata(meta: dict) -> dict:
    for key, typ in REQUIRED_METADATA.items():
        value = meta.get(key)
        if key not in meta:
            raise _TableProblem(f"metadata.{key}: missing")
        if not isinstance(value, typ) or isinstance(value, bool):
            raise _TableProblem(f"metadata.{key}: expected {'an integer' if typ is int else 'a string'}, got {_shown(value)}")
    _number(meta, "batch_size", "metadata")
    _number(meta, "img_size", "metadata")
    _check_known(meta)
    if meta.get("source", "measured") not in SOURCES:
        raise _TableProblem(f"metadata.source: expected one of {', '.join(map(repr, SOURCES))}, got {_shown(meta.get('source'))}")
    settings = _object(meta.get("settings", {}), "metadata.settings")
    for key_name in ("warmup_s", "repeats", "threads"):
        if settings.get(key_name) is not None:  # threads: null means the library's default
            _number(settings, key_name, "metadata.settings")
    if settings.get("clock", "wall") not in ("wall", "cpu"):
        raise _TableProblem(f"metadata.settings.clock: expected 'wall' or 'cpu', got {_shown(settings.get('clock'))}")
    return meta


def _check_known(meta: dict) -> None:
    """The runtime and precision must be ones deployvit knows (`runtime_registry`, torch-free): a
    table of an unknown runtime could be picked by no query and compared with nothing, and a typo
    (`tensorrt8`) would otherwise be listed as if it were a table of some real runtime."""
    from deployvit.runtime_registry import RUNTIMES
    from deployvit.settings import PRECISIONS

    if meta["runtime"] not in RUNTIMES:
        raise _TableProblem(f"metadata.runtime: unknown runtime {_shown(meta['runtime'])} (known: {', '.join(RUNTIMES)})")
    if meta["precision"] not in PRECISIONS:
        raise _TableProblem(f"metadata.precision: unknown precision {_shown(meta['precision'])} (known: {', '.join(PRECISIONS)})")


def _checked_archs(rows: Any, where: str, fields: tuple[str, ...]) -> None:
    """The whole-model timings a calibration or validation recorded (report() and refits read them)."""
    if not isinstance(rows, list):
        raise _TableProblem(f"{where}: expected a list, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        _object(row, f"{where}[{i}]")
        _object(row.get("arch"), f"{where}[{i}].arch")
        for key_name in fields:
            _number(row, key_name, f"{where}[{i}]", required=True)
        _number(row, "cv", f"{where}[{i}]")


def _check_space_coverage(meta: dict, entries: dict) -> None:
    """A table of a preset space (its recorded hash is the preset's) must time every part of it and
    nothing else: an entry no arch of the space has is a hand edit or a table of another space under
    this one's name. A table of a user space is checked when it is used for that space
    (`check_covers`: every part present; extra entries are allowed there, the space may have been
    narrowed since it was profiled)."""
    from deployvit.parts import space_parts
    from deployvit.spaces import PRESETS

    preset = PRESETS.get(meta["space"])
    if preset is not None and preset.hash() == meta["space_hash"]:
        keys = {p.key for p in space_parts(preset)}
        missing = sorted(keys - set(entries))
        if missing:
            raise _TableProblem(f"entries: lacks {len(missing)} part(s) of space {preset.name!r}, e.g. {missing[0]}")
        extra = sorted(set(entries) - keys)
        if extra:
            raise _TableProblem(f"entries: {len(extra)} part(s) that no arch of space {preset.name!r} has, e.g. {extra[0]!r}")


def missing_parts(entries: dict, space: Any) -> list[str]:
    """Keys of the parts some arch of `space` needs that `entries` does not time."""
    from deployvit.parts import space_parts

    return [p.key for p in space_parts(space) if p.key not in entries]


def check_covers(table: "LatencyTable", space: Any) -> None:
    """Refuse a table that lacks a part some arch of `space` needs (before a search relies on it)."""
    missing = missing_parts(table.entries, space)
    if missing:
        raise DeployvitError(
            f"{table._name()}: latency table lacks {len(missing)} part(s) of space {space.name!r}, e.g. {missing[0]}; "
            f"profile the space (deployvit profile --space {space.name} ...)"
        )


def shipped_tables_dir() -> Path:
    """The `latency_tables` package folder (works from a source tree and from an installed wheel)."""
    return Path(str(files("latency_tables")))

