"""How latency is timed, and how a profile samples its archs: the defaults of `deployvit profile`,
`deployvit export`'s timing and every table's recorded settings, written once (no torch import, so
`--help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from deployvit.errors import DeployvitError


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

    def validate(self, device: str) -> None:
        if self.batch_size < 1:
            raise DeployvitError(f"batch size must be >= 1, got {self.batch_size}")
        if self.repeats < 1 or self.warmup_s < 0:
            raise DeployvitError(f"repeats must be >= 1 and warm-up >= 0 s (got {self.repeats}, {self.warmup_s})")
        if self.threads is not None and self.threads < 1:
            raise DeployvitError(f"threads must be >= 1, got {self.threads}")
        if self.clock == "cpu" and (device != "cpu" or self.threads != 1):
            raise DeployvitError("--clock cpu measures one thread's CPU time: use it on the CPU with --threads 1")
        from deployvit.latency.runtimes import check_runtime  # torch: only when a run is checked

        check_runtime(self.runtime, device, self.precision)

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
