"""How latency is timed, and how a profile samples its archs: the defaults of `deployvit profile`,
`deployvit export`'s timing and every table's recorded settings, written once (no torch import, so
`--help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass, fields

FLOAT_PRECISIONS = ("fp32", "fp16", "bf16")  # a model computed in one floating-point type (torch can run it as such)
#: post-training quantised: an ONNX graph with Q/DQ nodes in front of its linear layers and convolutions,
#: calibrated on real images (`exporters.quantize`); int8 on any runtime that lists it, fp8 (FLOAT8 E4M3)
#: on GPUs with FP8 tensor cores (compute capability 8.9 and later: Ada, Hopper, Blackwell)
QUANTIZED_PRECISIONS = ("int8", "fp8")
PRECISIONS = FLOAT_PRECISIONS + QUANTIZED_PRECISIONS  # every precision a table or an export can be in


@dataclass(frozen=True)
class MeasureSettings:
    """How every part and whole model of one table is timed (stored in the table's metadata)."""

    runtime: str
    precision: str
    batch_size: int
    warmup_s: float = 0.5
    repeats: int = 50
    threads: int | None = None  # torch (and onnxruntime) CPU threads; None = library default
    clock: str = "wall"  # "cpu": process CPU time, for single-threaded CPU tables on a shared machine

    @classmethod
    def from_metadata(cls, meta: dict) -> "MeasureSettings":
        """The settings a table was measured with, to time an arch the same way (`--measure`)."""
        s = meta.get("settings", {})
        known = {f.name: s[f.name] for f in fields(cls) if f.name in s and f.name not in ("runtime", "precision", "batch_size")}
        return cls(meta["runtime"], meta["precision"], meta["batch_size"], **known)  # what it lacks: the defaults above


@dataclass(frozen=True)
class ProfileConfig:
    """Which whole archs a profile times: K for the calibration, N held out for the validation."""

    calib_archs: int = 10
    val_archs: int = 50
    seed: int = 0
