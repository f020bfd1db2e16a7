"""Which latency table a command uses: the one resolver behind `search`, `latency`, `export`,
`benchmark` and `tables` (DESIGN.md section 3, "Where tables live, and which one is used").

Where it looks, in order: `--table PATH`; the user's tables (`./latency_tables/`, then
`$DEPLOYVIT_HOME/latency_tables/`, where `profile` writes by default); the tables shipped in the
package. Among the tables of the arch's space (name *and* hash: a table of another version of the
space predicts parts that no longer exist) it ranks:

1. a table **measured on this machine's device** (same GPU name; on a CPU-only machine only a CPU
   table the user profiled, since the shipped CPU tables describe the CI machine they were made on);
   then one **calibrated** on it (`profile --calibrate K`: K whole models measured here fitted onto a
   table made elsewhere);
2. a table **measured for the target device**: `--device LABEL`, else this machine's GPU, else the
   reference datacenter GPU (`reference_gpu()`), because deployvit's users deploy on GPUs and a CPU
   table is chosen only when asked (`--device cpu`) or measured here by the user;
3. an **estimate** for the target device (`source: estimated`, from the per-kernel GPU model).

Within a rank the user's folders come before the shipped one, then the preferred precision (fp16 on
a GPU, fp32 on the CPU), batch 1, an estimate validated on published measurements before an
unvalidated one, and the runtimes' `preference` (`deployvit.runtime_registry`). `--runtime`,
`--precision` and `--batch-size` filter. Two tables that are equal on all of that are a tie the
resolver refuses to break silently (exit 2): the user removes one or passes `--table`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from deployvit import io
from deployvit.errors import DeployvitError
from deployvit.latency.table import LatencyTable, shipped_tables_dir
from deployvit.runtime_registry import preference, profile_hint

ORIGINS = ("here", "home", "shipped")


def deployvit_home() -> Path:
    """`$DEPLOYVIT_HOME`, else the platform's per-user data folder (XDG on Linux)."""
    env = os.environ.get("DEPLOYVIT_HOME")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "deployvit"


def _checked_home() -> Path:
    home = deployvit_home()
    if home.exists() and not home.is_dir():
        raise DeployvitError(f"DEPLOYVIT_HOME {home} is not a folder (set DEPLOYVIT_HOME to a writable folder)")
    return home


def user_tables_dir() -> Path:
    """Where `profile` writes by default: `$DEPLOYVIT_HOME/latency_tables`, created and proven writable
    before any timing starts (a profile that fails at the end would waste hours)."""
    return io.check_writable(_checked_home() / "latency_tables", "latency tables folder ($DEPLOYVIT_HOME/latency_tables)")


def table_dirs() -> list[tuple[str, Path]]:
    """(origin, folder) in search order. `./latency_tables` of a source checkout *is* the shipped
    folder: it counts as shipped, not as the user's."""
    shipped = shipped_tables_dir().resolve()
    out: list[tuple[str, Path]] = []
    for origin, folder in (("here", Path.cwd() / "latency_tables"), ("home", _checked_home() / "latency_tables"), ("shipped", shipped)):
        if folder.is_dir() and (origin == "shipped" or folder.resolve() != shipped) and all(folder.resolve() != f.resolve() for _, f in out):
            out.append((origin, folder))
    return out


@dataclass(frozen=True)
class TableInfo:
    """One table file the resolver can see, with the facts it ranks by."""

    path: Path
    origin: str  # here | home | shipped
    table: LatencyTable

    @property
    def meta(self) -> dict:
        return self.table.metadata

    @property
    def source(self) -> str:
        return self.meta.get("source", "measured")

    @property
    def estimate_error(self) -> float | None:
        """An estimate's median error on held-out published measurements of its regime and runtime
        (leave one GPU out), or None when no published data covers it (unvalidated)."""
        held_out = (self.table.validation.get("this_table") or {}).get("leave_one_gpu_out") or {}
        value = held_out.get("median_abs_pct")
        return value if isinstance(value, (int, float)) else None


def scan_tables(dirs: Iterable[tuple[str, Path]] | None = None) -> tuple[list[TableInfo], list[str]]:
    """Every readable table under the folders (recursively), and one note per file skipped."""
    infos, skipped = [], []
    for origin, folder in table_dirs() if dirs is None else dirs:
        for path in sorted(folder.rglob("*.json")):
            if path.name.endswith(".progress.json"):
                continue
            try:
                infos.append(TableInfo(path, origin, LatencyTable.load(path, warn=False)))
            except DeployvitError as exc:
                skipped.append(f"skipped {path}: {exc}")
    return infos, skipped


@dataclass(frozen=True)
class TableQuery:
    """What a command needs a table for. `device`: a label (a100, h100, cpu, ...), `cuda`/`cuda:N`
    (this machine's GPU) or None (this machine's GPU, else `reference_gpu()`)."""

    space: str
    space_hash: str
    device: str | None = None
    runtime: str | None = None
    precision: str | None = None
    batch_size: int | None = None

    def wanted(self) -> str:
        parts = [self.runtime or "any runtime", self.precision or "any precision",
                 f"batch {self.batch_size}" if self.batch_size else "any batch"]
        return ", ".join(parts)


@dataclass(frozen=True)
class Machine:
    """This machine's compute device as the resolver sees it."""

    device_type: str  # cuda | cpu
    name: str

    @classmethod
    def detect(cls, device: str | None = None) -> "Machine":
        import torch

        from deployvit.compute import compute_device
        from deployvit.devices import cpu_name

        if device is not None and (device == "cuda" or device.startswith("cuda:")):
            compute_device(device)  # CUDA asked for on a machine without it: exit 2
        if torch.cuda.is_available() and device != "cpu":
            return cls("cuda", torch.cuda.get_device_name(torch.cuda.current_device()))
        return cls("cpu", cpu_name())


@dataclass
class Resolved:
    """The chosen table, why it was chosen, and what to warn about."""

    info: TableInfo
    reason: str
    warnings: list[str] = field(default_factory=list)

    @property
    def table(self) -> LatencyTable:
        return self.info.table

    @property
    def path(self) -> Path:
        return self.info.path

    def line(self) -> str:
        """The line every command prints first: which table, what it is, and why this one."""
        kind = "ESTIMATED latency table" if self.info.source == "estimated" else "latency table"
        return f"{kind}: {self.path} [{self.table.describe()}] ({self.reason})"


def _target(query: TableQuery, machine: Machine) -> tuple[str, str | None]:
    """(kind, label): kind `cpu`, `here-gpu` (this machine's GPU) or `label`."""
    device = query.device
    if device == "cpu":
        return "cpu", "cpu"
    if device is None or device == "cuda" or device.startswith("cuda:"):
        return ("here-gpu", None) if machine.device_type == "cuda" else ("label", reference_gpu())
    return "label", device


def reference_gpu() -> str:
    """The GPU a search targets when nothing says otherwise (no --device, no GPU here): the GPU
    catalogue's reference datacenter GPU, the one the shipped estimates describe first."""
    from deployvit.latency.gpus import load_catalogue

    return load_catalogue().reference


def _device_fits(info: TableInfo, kind: str, label: str | None, machine: Machine) -> bool:
    from deployvit.devices import KNOWN_LABELS, label_matches

    meta = info.meta
    if kind == "cpu":
        return meta["device_type"] == "cpu"
    if meta["device_type"] != "cuda":
        return False
    if kind == "here-gpu":
        if meta["device_name"] == machine.name:
            return True
        here = [lab for lab in KNOWN_LABELS if lab != "cpu" and label_matches(lab, machine.name)]
        return meta["device_label"] in here
    return meta["device_label"] == label or (label in KNOWN_LABELS and label != "cpu" and label_matches(label, meta["device_name"]))


def _tier(info: TableInfo, machine: Machine) -> int:
    """0 a full profile measured on this machine's device, 1 a calibration made on it (K whole models
    measured here on a base table made elsewhere, `latency.calibrate`), 2 measured (or calibrated)
    for the target elsewhere, 3 an estimate."""
    if info.source == "estimated":
        return 3
    same = info.meta["device_type"] == machine.device_type and info.meta["device_name"] == machine.name
    if same and (machine.device_type == "cuda" or info.origin != "shipped"):
        return 1 if info.source == "calibrated" else 0
    return 2


def describes_here(info: TableInfo, machine: Machine) -> bool:
    """Whether a table predicts this machine (profiled or calibrated here, or an estimate of this
    very GPU model): what a measurement here may be compared with (export's contract, `benchmark`,
    `latency --measure`, `search --measure-top`). A CPU table made elsewhere is not, except as the
    base of a calibration."""
    if info.source == "estimated":
        return not info.table.machine_mismatches()
    return _tier(info, machine) <= 1


def _rank(info: TableInfo, machine: Machine, kind: str) -> tuple:
    meta = info.meta
    preferred_precision = "fp32" if kind == "cpu" else "fp16"
    return (
        _tier(info, machine),
        ORIGINS.index(info.origin),
        meta["precision"] != preferred_precision,
        meta["batch_size"],  # batch 1 first
        info.source == "estimated" and info.estimate_error is None,  # a validated estimate first
        preference(meta["runtime"]),
    )


_REASONS = {0: "measured on this machine's {dev}", 1: "calibrated on this machine's {dev}", 2: "measured for {dev}",
            3: "no measured table for {dev}: an estimate"}


def candidates(query: TableQuery, infos: list[TableInfo], machine: Machine) -> list[TableInfo]:
    """The tables of the query's space (and hash) that fit its device, runtime, precision and batch."""
    kind, label = _target(query, machine)
    out = []
    for info in infos:
        m = info.meta
        if m["space"] != query.space or m["space_hash"] != query.space_hash:
            continue
        if query.runtime and m["runtime"] != query.runtime or query.precision and m["precision"] != query.precision:
            continue
        if query.batch_size and m["batch_size"] != query.batch_size:
            continue
        if _device_fits(info, kind, label, machine) or (_tier(info, machine) <= 1 and query.device is None):
            out.append(info)
    return out


def choose(query: TableQuery, infos: list[TableInfo], machine: Machine) -> Resolved:
    """The best candidate, or one line that says what was looked for, where, and how to make it."""
    kind, label = _target(query, machine)
    found = candidates(query, infos, machine)
    if not found:
        raise DeployvitError(_nothing_fits(query, infos, kind, label, machine))
    found.sort(key=lambda i: _rank(i, machine, kind))
    best = found[0]
    ties = [i for i in found[1:] if _rank(i, machine, kind) == _rank(best, machine, kind)]
    if ties:
        raise DeployvitError(
            f"two latency tables tie for space {query.space} ({best.meta['device_label']} {best.meta['runtime']} "
            f"{best.meta['precision']} batch {best.meta['batch_size']}): {best.path} and {ties[0].path}; remove one or pass --table"
        )
    dev = machine.name if _tier(best, machine) <= 1 else (label or machine.name)
    reason = _REASONS[_tier(best, machine)].format(dev=dev)
    if best.origin != "shipped":
        reason += f", from {'./latency_tables' if best.origin == 'here' else '$DEPLOYVIT_HOME/latency_tables'}"
    return Resolved(best, reason, _mismatch_warnings(best, machine))


def _mismatch_warnings(info: TableInfo, machine: Machine) -> list[str]:
    """Software/hardware differences worth a warning: only when the table describes this kind of
    device (predicting an H100 from a laptop is the point of a GPU table, not a mismatch)."""
    if info.source == "estimated" or info.meta["device_type"] != machine.device_type:
        return []
    return [f"{info.path.name}: {m}" for m in info.table.machine_mismatches()]


def _nothing_fits(query: TableQuery, infos: list[TableInfo], kind: str, label: str | None, machine: Machine) -> str:
    target = machine.name if kind == "here-gpu" else label
    same_space = sorted({f"{i.meta['device_label']} {i.meta['runtime']} {i.meta['precision']} b{i.meta['batch_size']}"
                         for i in infos if i.meta["space"] == query.space and i.meta["space_hash"] == query.space_hash})
    where = ", ".join(["./latency_tables", f"{deployvit_home() / 'latency_tables'}", "the shipped tables"])
    have = f" (tables of this space: {'; '.join(same_space)})" if same_space else ""
    lab = label or "<label>"
    runtime = query.runtime or profile_hint("cpu" if kind == "cpu" else "cuda")
    precision = query.precision or ("fp32" if kind == "cpu" else "fp16")
    cmd = (f"deployvit profile --device {lab} --space {query.space} --runtime {runtime} --precision {precision} "
           f"--batch-size {query.batch_size or 1}")
    hint = f"`{cmd}`" + ("" if kind == "cpu" else f" (on that GPU), or `{cmd} --estimate` for an estimate")
    return f"no latency table for space {query.space} on {target} ({query.wanted()}) in {where}{have}; make one with {hint}"


def resolve_table(query: TableQuery, path: str | os.PathLike | None = None, machine: Machine | None = None,
                  space=None) -> Resolved:
    """`--table PATH` (checked against the space) or the best table the folders hold. With the
    `space` object, the chosen table must also time every part of it (a user space's table is
    checked only here: its hash alone does not say the file is complete)."""
    from deployvit.latency.table import check_covers

    machine = machine or Machine.detect(query.device)
    if path is not None:
        resolved = _explicit(query, Path(path), machine)
    else:
        infos, _ = scan_tables()
        resolved = choose(query, infos, machine)
    if space is not None:
        check_covers(resolved.table, space)
    return resolved


def _explicit(query: TableQuery, path: Path, machine: Machine) -> Resolved:
    if not path.is_file():
        raise DeployvitError(f"latency table not found: {path}")
    table = LatencyTable.load(path, warn=False)
    meta = table.metadata
    if meta["space"] != query.space:
        raise DeployvitError(f"latency table {path} was profiled for space {meta['space']!r}, not {query.space!r}")
    if meta["space_hash"] != query.space_hash:
        raise DeployvitError(
            f"latency table {path} was profiled for another version of space {query.space!r} "
            f"(image size {meta['img_size']} or other choices differ); profile this space"
        )
    info = TableInfo(path, "given", table)
    notes = [] if info.source == "estimated" else [f"{path.name}: {m}" for m in table.machine_mismatches()]
    return Resolved(info, "given with --table", notes)  # the user chose it: say every way it differs from here
