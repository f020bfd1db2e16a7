"""Which latency table a command uses: the one resolver behind `search`, `latency`, `export`,
`benchmark` and `tables` (docs/DESIGN.md section 3, "Where tables live, and which one is used").

Where it looks, in order: `--table PATH`; the user's tables (`./latency_tables/`, then
`$DEPLOYVIT_HOME/latency_tables/`, where `profile` writes by default); the tables shipped in the
package. Among the tables of the arch's space (name *and* hash: a table of another version of the
space predicts parts that no longer exist) it ranks:

1. a table **measured on this machine's device** (same GPU name; on a CPU-only machine only a CPU
   table the user profiled, since the shipped CPU tables describe the CI machine they were made on);
   then one **calibrated** on it (`profile --calibrate K`: K whole models measured here fitted onto a
   table made elsewhere);
2. a table **measured for the target device**: `--device LABEL`, else this machine's GPU, else the
   default target (`deployvit.latency.target.DEFAULT_TARGET`: an L4), because deployvit's users
   deploy on GPUs and a CPU table is chosen only when asked (`--device cpu`) or measured here by the
   user;
3. an **estimate** for the target: the target device at the runtime, precision and batch asked for,
   each defaulting to the default target's (batch 1 when `--device` names the device). A table file
   holding exactly that estimate (and made by this estimator, `is_current_estimate`) is used as it
   is; otherwise, for a catalogue GPU, the estimate is **built on demand** and cached under
   `$DEPLOYVIT_HOME/cache/estimates` (`deployvit.latency.ondemand`), labelled ESTIMATE like any other.

Within a rank the user's folders come before the shipped one, then the preferred precision (fp16 on
a GPU, fp32 on the CPU), the target's batch, the smaller batch, an estimate validated on published
measurements before an unvalidated one, and the runtimes' `preference` (`deployvit.runtime_registry`). `--runtime`,
`--precision` and `--batch-size` filter. Two tables that are equal on all of that are a tie the
resolver refuses to break silently (exit 2): the user removes one or passes `--table`. Only when no
table fits and the target is no catalogue GPU (a CPU, your own label, a runtime the estimator does
not cover) is there nothing to use: one line with the `profile` command that would make one.
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
from deployvit.latency.target import CHANGE_TARGET, DEFAULT_TARGET
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
                skipped.append(f"skipped {path}: {str(exc).removeprefix(f'{path}: ')}")  # the path once
    return infos, skipped


@dataclass(frozen=True)
class TableQuery:
    """What a command needs a table for. `device`: a label (a100, h100, cpu, ...), `cuda`/`cuda:N`
    (this machine's GPU) or None (this machine's GPU, else the default target's device, `DEFAULT_TARGET`)."""

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

    def estimate_settings(self) -> tuple[str, str, int]:
        """(runtime, precision, batch) of the target's estimate: each as asked, else the default
        target's (`DEFAULT_TARGET`; batch 1 when --device names the device)."""
        return (self.runtime or DEFAULT_TARGET.runtime, self.precision or DEFAULT_TARGET.precision,
                self.batch_size or DEFAULT_TARGET.batch_for(self.device))


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
    default_target: str | None = None  # the line naming the default target, when it decided the table

    @property
    def table(self) -> LatencyTable:
        return self.info.table

    @property
    def path(self) -> Path:
        return self.info.path

    def line(self) -> str:
        """The line every command prints first: which table, what it is, and why this one."""
        kind = "ESTIMATED latency table" if self.info.source == "estimated" else "latency table"
        where = self.path if self.path is not None else "(in memory)"
        return f"{kind}: {where} [{self.table.describe()}] ({self.reason})"

    def header(self) -> list[str]:
        """The lines a command prints first: the default target (when it decided) and `line()`."""
        return [self.default_target, self.line()] if self.default_target else [self.line()]


def _target(query: TableQuery, machine: Machine) -> tuple[str, str | None]:
    """(kind, label): kind `cpu`, `here-gpu` (this machine's GPU) or `label`."""
    device = query.device
    if device == "cpu":
        return "cpu", "cpu"
    if device is None or device == "cuda" or device.startswith("cuda:"):
        return ("here-gpu", None) if machine.device_type == "cuda" else ("label", DEFAULT_TARGET.device)
    return "label", device


def is_current_estimate(info: TableInfo) -> bool:
    """Whether an estimated table was made by this estimator (model version and fitted constants):
    an older one is never used in place of the estimate the code would build now."""
    from deployvit.latency.estimate import MODEL_VERSION, fitted

    made_by = info.meta.get("estimator") or {}
    return made_by.get("model_version") == MODEL_VERSION and made_by.get("constants") == fitted().constants.to_dict()


def _estimate_fits(info: TableInfo, query: TableQuery) -> bool:
    """An estimate file is a candidate only when it is the target's estimate (`estimate_settings`)
    and current: any other is a different question, or an older answer to this one."""
    m = info.meta
    return (m["runtime"], m["precision"], m["batch_size"]) == query.estimate_settings() and is_current_estimate(info)


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


def machine_for(device_type: str) -> Machine:
    """This machine as seen by a table of `device_type`: its CPU for a CPU table, else its GPU (or,
    without one, its CPU: then no GPU table describes it). Never an error, unlike `Machine.detect("cuda")`."""
    return Machine.detect("cpu" if device_type == "cpu" else None)


def describes_here(info: TableInfo, machine: Machine) -> bool:
    """Whether a table predicts this machine (profiled or calibrated here, or an estimate of this
    very GPU model): what a measurement here may be compared with (export's contract, `benchmark`,
    `latency --measure`, `search --measure-top`). A CPU table made elsewhere is not, except as the
    base of a calibration."""
    if info.source == "estimated":
        return not info.table.machine_mismatches()
    return _tier(info, machine) <= 1


def _rank(info: TableInfo, machine: Machine, kind: str, batch: int = 1) -> tuple:
    meta = info.meta
    preferred_precision = "fp32" if kind == "cpu" else "fp16"
    return (
        _tier(info, machine),
        ORIGINS.index(info.origin),
        meta["precision"] != preferred_precision,
        meta["batch_size"] != batch,  # the target's batch first (`TableQuery.estimate_settings`)
        meta["batch_size"],  # then the smaller
        info.source == "estimated" and info.estimate_error is None,  # a validated estimate first
        preference(meta["runtime"]),
    )


_REASONS = {0: "measured on this machine's {dev}", 1: "calibrated on this machine's {dev}", 2: "measured for {dev}",
            3: "no measured table for {dev}: an estimate"}


class NothingFits(DeployvitError):
    """No table file fits the query (the message names what was looked for and how to make one)."""


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
        if info.source == "estimated" and not _estimate_fits(info, query):
            continue
        if _device_fits(info, kind, label, machine) or (_tier(info, machine) <= 1 and query.device is None):
            out.append(info)
    return out


def choose(query: TableQuery, infos: list[TableInfo], machine: Machine) -> Resolved:
    """The best candidate, or one line that says what was looked for, where, and how to make it."""
    kind, label = _target(query, machine)
    found = candidates(query, infos, machine)
    if not found:
        raise NothingFits(_nothing_fits(query, infos, kind, label, machine))
    batch = query.estimate_settings()[2]
    found.sort(key=lambda i: _rank(i, machine, kind, batch))
    best = found[0]
    ties = [i for i in found[1:] if _rank(i, machine, kind, batch) == _rank(best, machine, kind, batch)]
    if ties:
        raise DeployvitError(
            f"two latency tables tie for space {query.space} ({best.meta['device_label']} {best.meta['runtime']} "
            f"{best.meta['precision']} batch {best.meta['batch_size']}): {best.path} and {ties[0].path}; remove one or pass --table"
        )
    dev = machine.name if _tier(best, machine) <= 1 else (label or machine.name)
    reason = _REASONS[_tier(best, machine)].format(dev=dev)
    if best.origin != "shipped":
        reason += f", from {'./latency_tables' if best.origin == 'here' else '$DEPLOYVIT_HOME/latency_tables'}"
    return Resolved(best, reason, _mismatch_warnings(best, machine), default_target_line(query, machine, best))


def default_target_line(query: TableQuery, machine: Machine, info: TableInfo | None) -> str | None:
    """The line saying the default target decided the table (no --device, and no table measured
    on this machine chosen), and how to change it; None otherwise."""
    if query.device is not None or (info is not None and _tier(info, machine) <= 1):
        return None
    runtime, precision, batch = query.estimate_settings()
    if machine.device_type == "cuda":
        where = f"this machine's GPU ({machine.name})"
    else:
        where = f"{DEFAULT_TARGET.device}, the default target on a machine without a GPU"
    return f"target: {where}, {runtime} {precision} batch {batch} (change it with {CHANGE_TARGET})"


def on_demand_target(query: TableQuery, machine: Machine) -> tuple[str, str, str, int] | None:
    """(catalogue GPU key, runtime, precision, batch) of the estimate `resolve_table` would build
    for the query, or None when the estimator cannot (a CPU target, a label or GPU the catalogue
    lacks, a runtime it does not cover)."""
    from deployvit.latency.estimate import ESTIMATED_RUNTIMES
    from deployvit.latency.gpus import load_catalogue

    kind, label = _target(query, machine)
    runtime, precision, batch = query.estimate_settings()
    if kind == "cpu" or runtime not in ESTIMATED_RUNTIMES:
        return None
    try:
        gpu = load_catalogue().get(machine.name if kind == "here-gpu" else label)
    except DeployvitError:
        return None
    return gpu.key, runtime, precision, batch


def _why_no_estimate(query: TableQuery, machine: Machine, nothing: NothingFits) -> NothingFits:
    """`nothing`, with why no estimate can stand in when the target is a GPU the catalogue lacks."""
    from deployvit.latency.gpus import load_catalogue

    kind, label = _target(query, machine)
    if kind == "cpu":
        return nothing
    name = machine.name if kind == "here-gpu" else label
    try:
        load_catalogue().get(name)
    except DeployvitError:
        return NothingFits(f"{nothing}; {name!r} is no GPU of the estimator's catalogue ({', '.join(load_catalogue().gpus)}), "
                           "so no estimate can stand in")
    return NothingFits(f"{nothing}; the estimator does not cover runtime {query.estimate_settings()[0]}")


def estimate_cache_dir() -> Path:
    """Where estimates built on demand are cached: `$DEPLOYVIT_HOME/cache/estimates`."""
    return _checked_home() / "cache" / "estimates"


def build_estimate(query: TableQuery, machine: Machine, space, nothing: NothingFits) -> Resolved:
    """The target's estimate, built on demand (cached), or `nothing` raised when it cannot be."""
    from deployvit.latency.ondemand import estimate_on_demand
    from deployvit.spaces import get_space

    target = on_demand_target(query, machine)
    if target is None:
        raise _why_no_estimate(query, machine, nothing)
    if space is None:
        try:
            space = get_space(query.space)
        except DeployvitError:
            raise nothing from None
    gpu, runtime, precision, batch = target
    table, note = estimate_on_demand(space, gpu, runtime, precision, batch, estimate_cache_dir())
    info = TableInfo(table.path, "built", table)
    dev = machine.name if machine.device_type == "cuda" and query.device is None else gpu
    reason = f"no measured table for {dev}: an estimate, built on demand" + (", cached" if table.path else "")
    return Resolved(info, reason, [note] if note else [], default_target_line(query, machine, None))


def _mismatch_warnings(info: TableInfo, machine: Machine) -> list[str]:
    """Software/hardware differences worth a warning: only when the table describes this kind of
    device (predicting an H100 from a laptop is the point of a GPU table, not a mismatch)."""
    if info.source == "estimated" or info.meta["device_type"] != machine.device_type:
        return []
    return [f"{info.path.name}: {m}" for m in info.table.machine_mismatches()]


def _nothing_fits(query: TableQuery, infos: list[TableInfo], kind: str, label: str | None, machine: Machine) -> str:
    """What was looked for, where, and the `profile` command that makes such a table: runnable as
    printed here for this machine's CPU or GPU, on that device for another."""
    target = machine.name if kind == "here-gpu" else label
    same_space = sorted({f"{i.meta['device_label']} {i.meta['runtime']} {i.meta['precision']} b{i.meta['batch_size']}"
                         for i in infos if i.meta["space"] == query.space and i.meta["space_hash"] == query.space_hash})
    where = ", ".join(["./latency_tables", f"{deployvit_home() / 'latency_tables'}", "the shipped tables"])
    have = f" (tables of this space: {'; '.join(same_space)})" if same_space else ""
    lab = machine_label(machine.name) if kind == "here-gpu" else label
    runtime = query.runtime or profile_hint("cpu" if kind == "cpu" else "cuda")
    precision = query.precision or ("fp32" if kind == "cpu" else "fp16")
    batch = query.batch_size or (1 if kind == "cpu" else query.estimate_settings()[2])
    cmd = f"deployvit profile --device {lab} --space {query.space} --runtime {runtime} --precision {precision} --batch-size {batch}"
    hint = f"`{cmd}`" + (" (on that GPU)" if kind == "label" else "")
    return f"no latency table for space {query.space} on {target} ({query.wanted()}) in {where}{have}; make one with {hint}"


def machine_label(device_name: str) -> str:
    """The device label a table of this machine's GPU gets: a known label it matches (`a100`),
    else the name made into one (`NVIDIA RTX A2000` -> `rtx-a2000`)."""
    from deployvit.devices import KNOWN_LABELS, label_matches

    known = [lab for lab in KNOWN_LABELS if lab != "cpu" and label_matches(lab, device_name)]
    if known:
        return known[0]
    slug = "-".join("".join(c if c.isalnum() else " " for c in device_name.lower()).split())
    return slug.removeprefix("nvidia-")[:64] or "gpu"


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
        infos, skipped = scan_tables()  # a corrupt or refused file is said, once, by every command that resolves
        try:
            try:
                resolved = choose(query, infos, machine)
            except NothingFits as nothing:
                resolved = build_estimate(query, machine, space, nothing)
        except DeployvitError as exc:
            raise DeployvitError(f"{exc}" + "".join(f"; {s}" for s in skipped)) from None
        resolved.warnings[:0] = skipped
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
