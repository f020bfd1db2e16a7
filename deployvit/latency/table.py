"""`LatencyTable`: measured per-part latencies plus an affine calibration, as one JSON file.

Layout (DESIGN.md section 3; `latency_tables/<device>/<space>-<runtime>-<precision>-b<batch>.json`):

    {"format": "deployvit.latency_table/1",
     "metadata":    {device label and detected name, software versions, runtime, precision, batch,
                     img size, space name and hash, date, measurement settings},
     "entries":     {part.key: {"median_us", "p90_us", "mean_us", "cv", "repeats"}},
     "calibration": {"scale", "bias", "archs": [{"arch", "sum_us", "measured_us", "cv"}]},
     "validation":  {"calibrated": ErrorStats, "uncalibrated": ErrorStats,
                     "archs": [{"arch", "sum_us", "predicted_us", "measured_us", "cv"}]}}

A prediction is `scale * sum(part medians) + bias` microseconds: affine so that the search can
vectorise it over a population (`deployvit.search.predictor`). A table is only valid for what it
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
from deployvit.arch import Arch
from deployvit.errors import DeployvitError
from deployvit.parts import Part, arch_parts

TABLE_FORMAT = "deployvit.latency_table/1"
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


def table_filename(space: str, runtime: str, precision: str, batch: int, estimated: bool = False) -> str:
    """The file name every table of a device folder follows; an estimate's ends in `-estimated` so
    that a measured table of the same settings can sit beside it."""
    return f"{space}-{runtime}-{precision}-b{batch}{'-estimated' if estimated else ''}.json"


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
        """The raw (uncalibrated) median of one part; DeployvitError when the table lacks it."""
        entry = self.entries.get(part.key)
        if entry is None:
            raise DeployvitError(f"latency table {self._name()} has no entry for {part.key} (profiled for space {self.metadata['space']!r})")
        return entry["median_us"]

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
        """"measured" or "estimated" (a table without the field predates estimates: measured)."""
        return self.metadata.get("source", "measured")

    @property
    def is_estimate(self) -> bool:
        return self.source == "estimated"

    def machine_mismatches(self) -> list[str]:
        """How this machine differs from the one the table was measured on (empty when it matches).
        An estimate was measured on nothing: only whether this machine has its GPU model is said."""
        if self.is_estimate:
            return self._estimate_mismatches()
        from deployvit.latency.devices import device_name
        from deployvit.latency.runtimes import runtime_version

        import torch

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
        if meta["runtime"] in ("onnxruntime", "tensorrt"):
            try:
                version = runtime_version(meta["runtime"])
            except DeployvitError:
                version = "not installed"
            if version != meta["runtime_version"]:
                notes.append(f"table was measured with {meta['runtime']} {meta['runtime_version']}, here it is {version}")
        return notes

    def _estimate_mismatches(self) -> list[str]:
        import torch

        from deployvit.latency.devices import device_name

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
        return f"{m['device_label']} ({m['device_name']}) {m['runtime']} {m['precision']} batch {m['batch_size']}{clock}, space {m['space']}"

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
        def bad(problem: str) -> DeployvitError:
            return DeployvitError(f"malformed latency table {where}: {problem}")

        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            raise bad(f"format is not {TABLE_FORMAT!r}")
        meta, entries, calib = data.get("metadata"), data.get("entries"), data.get("calibration")
        if not isinstance(meta, dict):
            raise bad("'metadata' must be an object")
        for key, typ in REQUIRED_METADATA.items():
            if not isinstance(meta.get(key), typ) or isinstance(meta.get(key), bool):
                raise bad(f"metadata.{key} missing or not a {typ.__name__}")
        if meta["batch_size"] < 1 or meta["img_size"] < 1:
            raise bad("metadata.batch_size and metadata.img_size must be at least 1")
        if meta.get("source", "measured") not in ("measured", "estimated"):
            raise bad("metadata.source must be 'measured' or 'estimated'")
        if not isinstance(meta.get("settings", {}), dict):
            raise bad("metadata.settings must be an object")
        if not isinstance(entries, dict) or not entries:
            raise bad("'entries' must be a non-empty object")
        for key, entry in entries.items():
            if not isinstance(entry, dict) or not _positive(entry.get("median_us")):
                raise bad(f"entry {key!r} needs a positive finite median_us")
        if not isinstance(calib, dict) or not _positive(calib.get("scale")) or not _finite(calib.get("bias")):
            raise bad("calibration needs a positive finite 'scale' and a finite 'bias'")
        validation = data.get("validation", {})
        if not isinstance(validation, dict) or not all(isinstance(validation.get(k, {}), dict) for k in ("calibrated", "uncalibrated")):
            raise bad("'validation' and its 'calibrated' / 'uncalibrated' statistics must be objects")
        rest = {k: v for k, v in calib.items() if k not in ("scale", "bias")}
        return cls(meta, entries, float(calib["scale"]), float(calib["bias"]), rest, validation)

    @classmethod
    def load(cls, path: str | os.PathLike, warn: bool = True) -> "LatencyTable":
        """Read and check a table; with `warn`, a LatencyTableWarning per machine mismatch."""
        table = cls.from_dict(io.read_json(path, "latency table"), str(path))
        table.path = Path(path)
        if warn:
            for message in table.machine_mismatches():
                warnings.warn(f"{Path(path).name}: {message}", LatencyTableWarning, stacklevel=2)
        return table


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _finite(value) and value > 0


def shipped_tables_dir() -> Path:
    """The `latency_tables` package folder (works from a source tree and from an installed wheel)."""
    return Path(str(files("latency_tables")))

