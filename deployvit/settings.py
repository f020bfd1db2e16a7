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
    """How every part and whole model of one table is timed (stored in the table's metadata), and so
    how anything compared with that table is timed (export's contract, `latency --measure`, `search
    --measure-top`). The timing model is `deployvit.timing.time_rounds`: `warmup_s` of calls first,
    then at least `rounds` interleaved rounds of at least `round_s` seconds and `repeats` samples per
    callable; the latency is the `quantile` of the per-round fastest calls (the lower quartile: on a
    shared machine the median of rounds measures how busy the neighbours were, see timing.py), and
    more rounds follow until its 95% interval is within `rel_ci` of it or `max_s` more seconds have
    passed. `rounds` None: a table made before rounds, timed as it was (`repeats` single calls, their
    median)."""

    runtime: str
    precision: str
    batch_size: int
    warmup_s: float = 0.5
    repeats: int = 10
    threads: int | None = None  # torch (and onnxruntime) CPU threads; None = library default
    clock: str = "wall"  # "cpu": process CPU time, for single-threaded CPU tables on a shared machine
    rounds: int | None = 13  # 13: the fewest for a 95% interval of the lower quartile
    round_s: float = 0.25
    quantile: float = 0.25
    rel_ci: float = 0.02
    max_s: float = 20.0

    @classmethod
    def from_metadata(cls, meta: dict) -> "MeasureSettings":
        """The settings a table was measured with, to time an arch the same way (`--measure`)."""
        s = meta.get("settings", {})
        known = {f.name: s[f.name] for f in fields(cls) if f.name in s and f.name not in ("runtime", "precision", "batch_size")}
        if "rounds" not in s:  # made before rounds: its `repeats` calls were single samples, their median the latency
            known["rounds"] = None
        return cls(meta["runtime"], meta["precision"], meta["batch_size"], **known)  # what it lacks: the defaults above


@dataclass(frozen=True)
class ProfileConfig:
    """Which whole archs a profile times: K for the calibration, N held out for the validation."""

    calib_archs: int = 10
    val_archs: int = 50
    seed: int = 0
    calibrate_val_archs: int = 20  # `profile --calibrate`: held-out archs measured to validate it
