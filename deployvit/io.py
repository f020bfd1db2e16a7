"""Atomic file output and checked file input.

Output: every JSON, table, checkpoint and engine is written to a temp file and renamed.

A reader (or a resumed job after kill -9) therefore sees either the old file or the new one, never a
half-written one. The temp file lives in the destination folder so `os.replace` is a same-filesystem
rename.

Input: every JSON/YAML file is read through `read_json` / `read_data` (limits, duplicate keys,
finite numbers, text only; see "checked reading" below), and plain data from any source can be
checked against a declared format with `check_schema`.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from deployvit.errors import DeployvitError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, on error remove it.

    An error of the operating system while writing (a full disk, a read-only file system, a name
    too long, a folder where the file goes) is one DeployvitError naming `path` and the reason, with
    the temp file removed. The temp file is `flock`ed by its writer until the rename, so the
    clean-up of leftovers (a kill -9 mid-write leaves its temp file behind; the next successful
    write of the same path removes it) never deletes the in-flight file of another live writer:
    the kernel drops a dead writer's lock, and only unlocked leftovers are removed."""
    target = Path(path)
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]  # deepest first
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            raise IsADirectoryError(errno.EISDIR, "it is a folder, not a file", str(target))
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        _remove_empty(created)
        raise write_error(target, exc) from None
    tmp_path = Path(tmp)
    try:
        _lock(fd, blocking=True)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; published files get the usual mode
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        _remove_empty(created)  # a failed write leaves no folder it made either
        raise write_error(target, exc, tmp_path) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    _remove_leftovers(target)


def _remove_empty(folders: list[Path]) -> None:
    """rmdir each of `folders` (deepest first) that is still empty: a folder another writer filled meanwhile stays."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _remove_leftovers(target: Path) -> None:
    """Remove the temp files of `target` that no live writer holds (see `atomic_path`)."""
    leftover = re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.tmp")  # mkstemp's names for this path only
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        if not leftover.fullmatch(stale.name):
            continue
        try:
            fd = os.open(stale, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode) and _lock(fd, blocking=False):
                stale.unlink(missing_ok=True)  # unlocked: its writer is dead
        except OSError:
            pass
        finally:
            os.close(fd)


def _lock(fd: int, blocking: bool) -> bool:
    """An exclusive `flock` on `fd`; False when another open file holds it (non-blocking only).
    Where `fcntl` does not exist (Windows), always True: no lock, the pre-lock behaviour."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def write_error(target: Path, exc: OSError, tmp: Path | None = None) -> DeployvitError:
    """One line for an OSError met while writing `target`: the path and the system's reason.
    An error about another file (exc.filename, other than our temp file) names that file."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    other = exc.filename
    if other is not None and Path(os.fsdecode(other)) not in (target, tmp):
        return DeployvitError(f"cannot write {target}: {os.fsdecode(other)}: {reason}")
    return DeployvitError(f"cannot write {target}: {reason}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# --- checked reading -------------------------------------------------------------------------------
#
# Every JSON/YAML file deployvit reads (arch, space, latency table, run and sampler state) comes
# through `read_json` / `read_data`, so each one gets the same limits and one error style,
# "<file>: <field>: expected ...": a size cap (a table is ~100 kB; 64 MiB is a corrupt or hostile
# file), a nesting cap (the C JSON scanner recurses, and so does everything that walks the result),
# a value-count cap (YAML aliases can make a few bytes stand for billions of values), no duplicate
# keys (which one wins is a parser detail a hand-edited file should not depend on), no NaN/Infinity
# unless the caller's format uses them, and text only (a PNG given as a space is refused by name).

MAX_BYTES = 64 << 20
MAX_DEPTH = 64
MAX_VALUES = 2_000_000


def read_json(path: str | os.PathLike, what: str = "JSON file", *, allow_nonfinite: bool = False,
              max_bytes: int = MAX_BYTES, max_values: int = MAX_VALUES) -> Any:
    """Read one JSON file with the checks above; every problem is a one-line DeployvitError."""
    p = Path(path)
    return parse_json(read_text(p, what, max_bytes), f"{p}", what, allow_nonfinite=allow_nonfinite, max_values=max_values)


def read_data(path: str | os.PathLike, what: str = "file", *, max_bytes: int = MAX_BYTES) -> Any:
    """A `.json` file as JSON, anything else as YAML (user-written spaces), checked the same way."""
    p = Path(path)
    text = read_text(p, what, max_bytes)
    if p.suffix.lower() == ".json":
        return parse_json(text, str(p), what)
    return parse_yaml(text, str(p), what)


def read_text(p: Path, what: str, max_bytes: int = MAX_BYTES) -> str:
    """The file's UTF-8 text; missing, oversized, binary and undecodable files are one line each,
    and so is anything that is not a regular file (a FIFO would block forever: `open_regular`)."""
    try:
        with open_regular(p, what) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > max_bytes:
                raise DeployvitError(f"{p}: {what} is {size:,} bytes; expected at most {max_bytes:,}")
            data = fh.read(max_bytes + 1)  # a file that grows while read is still capped
    except OSError as exc:
        raise DeployvitError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise DeployvitError(f"{p}: {what} is over {max_bytes:,} bytes")
    if b"\x00" in data:
        raise DeployvitError(f"{p}: expected {_a(what)} (text), got a binary file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DeployvitError(f"{p}: expected {_a(what)} in UTF-8 text, got an undecodable byte at offset {exc.start}") from None


# --- special files ---------------------------------------------------------------------------------
#
# Opening a FIFO for reading blocks until a writer appears (forever, for a planted one); reading a
# character device such as /dev/zero never ends. So every file deployvit reads by a path the user
# gave (or a file gave) is first checked to be a regular file, and opened without blocking, its
# kind checked again on the open descriptor (the path may have been swapped in between).

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _not_regular(p: Path, what: str, mode: int) -> DeployvitError:
    if stat.S_ISDIR(mode):
        return DeployvitError(f"{p}: expected {_a(what)}, got a directory")
    return DeployvitError(f"{p}: {what} must be a regular file, got {_kind(mode)}")


def check_regular(path: str | os.PathLike, what: str = "file") -> Path:
    """`path` if it is a regular file (symlinks followed), else one line: not found, a directory,
    a FIFO, a device or a socket. Nothing is opened, so nothing can block."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise DeployvitError(f"{what} not found: {p}") from None
    except OSError as exc:
        raise DeployvitError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise _not_regular(p, what, mode)
    return p


def open_regular(path: str | os.PathLike, what: str = "file") -> BinaryIO:
    """`path` opened for binary reading if it is a regular file (`check_regular`), opened without
    blocking and checked again on the descriptor; the caller closes it (a `with` block)."""
    p = check_regular(path, what)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise DeployvitError(f"{what} not found: {p}") from None
    except OSError as exc:
        raise DeployvitError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(p, what, mode)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _a(what: str) -> str:
    return f"{'an' if what[:1].lower() in 'aeiou' else 'a'} {what}"


def parse_json(text: str, where: str, what: str = "JSON", *, allow_nonfinite: bool = False, max_values: int = MAX_VALUES) -> Any:
    """`json.loads` with duplicate keys refused and the tree checked (`check_tree`)."""
    try:
        data = json.loads(text, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as exc:
        raise DeployvitError(f"{where}: malformed {what}: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except _DuplicateKey as exc:
        raise DeployvitError(f"{where}: duplicate key {exc.args[0]!r} (each key may appear once)") from None
    except RecursionError:
        raise DeployvitError(f"{where}: {what} is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except ValueError as exc:  # an integer literal over Python's digit limit
        raise DeployvitError(f"{where}: malformed {what}: {_short(exc)}") from None
    check_tree(data, where, what, allow_nonfinite=allow_nonfinite, max_values=max_values)
    return data


def parse_yaml(text: str, where: str, what: str = "YAML") -> Any:
    """`yaml.load` with the safe loader (no tags that build objects), duplicate keys refused."""
    import yaml

    try:
        data = yaml.load(text, Loader=_strict_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise DeployvitError(f"{where}: {what} is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise DeployvitError(f"{where}: malformed {what}: {exc.problem or exc.context}{at}") from None
    except (yaml.YAMLError, ValueError) as exc:
        raise DeployvitError(f"{where}: malformed {what}: {_short(exc)}") from None
    check_tree(data, where, what)
    return data


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split(";")[0]


class _DuplicateKey(Exception):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


_YAML_LOADER = None


def _strict_yaml_loader():
    """A `yaml.SafeLoader` whose mappings refuse a repeated key (PyYAML keeps the last silently)."""
    global _YAML_LOADER
    if _YAML_LOADER is None:
        import yaml

        class StrictLoader(yaml.SafeLoader):
            pass

        def mapping(loader, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = loader.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: construct_mapping reports it
                    break
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (each key may appear once)", key_node.start_mark)
            return loader.construct_mapping(node, deep)

        StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
        _YAML_LOADER = StrictLoader
    return _YAML_LOADER


def check_tree(data: Any, where: str, what: str = "file", *, allow_nonfinite: bool = False,
               max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES) -> None:
    """Walk parsed data without recursion: nesting <= max_depth, <= max_values values in all (YAML
    aliases revisit shared nodes, so a billion-laughs file stops here), finite floats only unless
    `allow_nonfinite`, and only JSON-like types (YAML's safe loader also makes dates and bytes)."""
    stack: list[tuple[Any, int, tuple | None]] = [(data, 1, None)]
    count = 0
    while stack:
        value, depth, trail = stack.pop()
        count += 1
        if count > max_values:
            raise DeployvitError(f"{where}: {what} holds more than {max_values:,} values")
        if isinstance(value, (dict, list)):
            if depth > max_depth:
                raise DeployvitError(f"{where}: {what} is nested too deeply (at most {max_depth} levels)")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, child in items:
                if isinstance(value, dict) and not isinstance(key, str):
                    raise DeployvitError(f"{where}: {_trail((trail, key)) }: expected a string key, got {type(key).__name__}")
                stack.append((child, depth + 1, (trail, key)))
        elif isinstance(value, float):
            if not allow_nonfinite and not math.isfinite(value):
                raise DeployvitError(f"{where}: {_trail(trail) or what}: expected a finite number, got {value}")
        elif value is not None and not isinstance(value, (str, int)):
            raise DeployvitError(f"{where}: {_trail(trail) or what}: expected a string, number, list or mapping, got {type(value).__name__}")


def _trail(trail: tuple | None) -> str:
    """`a.b[2].c` from the walk's linked (parent, key) pairs; built only for an error message."""
    keys = []
    while trail is not None:
        trail, key = trail
        keys.append(key)
    out = ""
    for key in reversed(keys):
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


class nullable:
    """Schema marker: `spec` or null (`check_schema`)."""

    def __init__(self, spec: Any):
        self.spec = spec


def check_schema(data: Any, spec: Any, where: str, field: str = "") -> None:
    """Check `data` against a small declarative schema; one DeployvitError `<where>: <field>: expected ...`.

    spec forms: `int` (an integer, not a bool), `float` (a finite int or float), `str`, `bool`,
    `dict` / `list` (any mapping / list), a class (isinstance, e.g. torch.Tensor), `(int|float, lo, hi)`
    (a bounded number), `[spec]` (a list of spec), `{str: spec}` (a mapping of any string keys to spec),
    `{"key": spec, "opt?": spec}` (a mapping with those keys, `?` marking an optional one; other keys
    allowed), `nullable(spec)`. The readers of run, sampler and checkpoint state declare their
    formats this way, so a hand-edited or hostile file fails here, not as a KeyError deep inside."""
    name = field or "(top level)"
    if isinstance(spec, nullable):
        if data is not None:
            check_schema(data, spec.spec, where, field)
        return
    if isinstance(spec, tuple):
        typ, lo, hi = spec
        check_schema(data, typ, where, field)
        if not lo <= data <= hi:
            raise DeployvitError(f"{where}: {name}: expected {'an integer' if typ is int else 'a number'} in [{lo:g}, {hi:g}], got {data!r}")
        return
    if isinstance(spec, list):
        if not isinstance(data, list):
            raise DeployvitError(f"{where}: {name}: expected a list, got {type(data).__name__}")
        for i, item in enumerate(data):
            check_schema(item, spec[0], where, f"{field}[{i}]")
        return
    if isinstance(spec, dict):
        if not isinstance(data, dict):
            raise DeployvitError(f"{where}: {name}: expected a mapping, got {type(data).__name__}")
        if set(spec) == {str}:
            for key, item in data.items():
                if not isinstance(key, str):
                    raise DeployvitError(f"{where}: {name}: expected string keys, got {type(key).__name__}")
                check_schema(item, spec[str], where, f"{field}[{key!r}]")
            return
        for key, sub in spec.items():
            optional = key.endswith("?")
            key = key.rstrip("?")
            if key not in data:
                if optional:
                    continue
                raise DeployvitError(f"{where}: {field + '.' if field else ''}{key}: missing")
            check_schema(data[key], sub, where, f"{field}.{key}" if field else key)
        return
    if spec is float:
        ok = isinstance(data, (int, float)) and not isinstance(data, bool) and math.isfinite(data)
        kind = "a finite number"
    elif spec is int:
        ok, kind = isinstance(data, int) and not isinstance(data, bool), "an integer"
    else:
        ok, kind = isinstance(data, spec), {str: "a string", bool: "true or false", dict: "a mapping", list: "a list"}.get(spec, spec.__name__)
    if not ok:
        shown = repr(data) if isinstance(data, (int, float, str, bool, type(None))) and len(repr(data)) <= 40 else type(data).__name__
        raise DeployvitError(f"{where}: {name}: expected {kind}, got {shown}")


def in_file(path: str | os.PathLike, exc: DeployvitError) -> DeployvitError:
    """`exc` with the file named first (the one error style), unless it already names it."""
    name = str(path)
    message = str(exc)
    if message.startswith(name) or name in message.split(":")[0]:
        return exc
    return type(exc)(f"{name}: {message}")


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """torch.save through a temp file, so a killed job never leaves a truncated checkpoint. torch
    writes through a Python file object here, so an OSError (a full disk) reaches `atomic_path` as
    itself instead of torch's `enforce fail ... unexpected pos` RuntimeError."""
    import torch

    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as fh:
                torch.save(obj, fh)
        except RuntimeError as exc:
            cause = exc.__context__ if isinstance(exc.__context__, OSError) else os_error_in(exc, tmp)
            if cause is None:
                raise
            raise cause from None


def os_error_in(exc: BaseException, path: str | os.PathLike) -> OSError | None:
    """The OSError a library wrapped into its own exception, when its message names one
    (`... (os error 28)` from Rust's safetensors, `errno 28` and the like): None otherwise."""
    found = re.search(r"(?:os error|errno)\s*(\d+)", str(exc), re.IGNORECASE)
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code), os.fspath(path))


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (engines and checkpoints can be large);
    only a regular file is read (`open_regular`)."""
    digest = hashlib.sha256()
    with open_regular(path) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_writable(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create `folder` and prove a file can be written there, before any real work starts (a run
    that fails to write at its end would waste the work): one line naming `what` otherwise. The
    probe writes one block, so a full disk is found too (an empty file needs no free block)."""
    folder = check_out_path(folder, what, folder=True)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]  # what mkdir creates, deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".deployvit-probe-")
        try:  # unbuffered, and removed whatever the write says (a buffered file's close may skip that)
            os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        _remove_empty(missing)  # a refused run leaves no empty folders behind either
        raise DeployvitError(f"cannot write {what} {folder}: {exc.strerror or exc}") from None
    return folder


@contextlib.contextmanager
def output_dir(folder: str | os.PathLike, keep: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Create `folder` (and missing parents) for a command's outputs; if the command then fails,
    remove every folder this call created, so a failed command leaves no empty or partial output
    folder behind, unless `keep(folder)` says what is there is worth keeping (a resumable state: a
    search's search_state.json, a training run's checkpoint.pt, a profile's progress file).

    A folder that existed before is left alone (the user made it, or it holds an earlier run)."""
    import shutil

    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeployvitError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None
    try:
        yield folder
    except BaseException:
        if created and not (keep is not None and keep(folder)):
            shutil.rmtree(created[-1], ignore_errors=True)
        raise


# --- names and output paths ------------------------------------------------------------------------
#
# A value that becomes part of a file name (a space name, a device label, a model or run name)
# goes through `safe_component`, so no name can lead a path out of its folder; an output path a
# user gives goes through `check_out_path` before any work starts, so a name the file system will
# refuse, or a folder where a file goes, is found before hours of work rather than after.

NAME_MAX = 255  # bytes per path component on Linux/macOS file systems (ext4, xfs, tmpfs, APFS)
#: room an output name leaves for the temp and lock names made from it (`.NAME.xxxxxxxx.tmp`)
NAME_SPARE = 16


def safe_component(value: Any, what: str, max_bytes: int = NAME_MAX - NAME_SPARE) -> str:
    """`value` if it can be one path component as it is: a non-empty string without '/', '\\',
    NUL or other control characters, not '.' or '..', not starting with '.' (hidden, or a way up)
    or '-' (read as an option by other tools), no leading or trailing space, at most `max_bytes`
    bytes of UTF-8. Anything else is one line naming `what`; nothing is ever rewritten, so a name
    means the same file everywhere."""
    if not isinstance(value, str) or not value:
        raise DeployvitError(f"{what}: expected a non-empty name, got {_shown(value)}")
    shown = _shown(value)
    if any(c in value for c in "/\\") or value in (".", ".."):
        reason = "must not contain '/' or '\\' or be '.' or '..' (it becomes a file name)"
    elif any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        reason = "must not contain control characters"
    elif value[0] in ".-":
        reason = f"must not start with {value[0]!r} (it becomes a file name)"
    elif value != value.strip():
        reason = "must not start or end with a space"
    elif len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        reason = f"is {len(value.encode('utf-8', 'surrogatepass'))} bytes long; expected at most {max_bytes}"
    else:
        return value
    raise DeployvitError(f"{what} {shown}: {reason}")


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def check_out_path(path: str | os.PathLike, what: str = "output", *, folder: bool = False) -> Path:
    """`path` as an output (a file, or a folder with `folder`), checked before work starts: not
    empty; each name within the file system's limit (the last one leaving `NAME_SPARE` bytes for
    its temp and lock files); the nearest existing ancestor a folder; an existing target of the
    right kind (a folder for a folder; for a file a regular file, not a folder, FIFO or device).
    One line naming `what`, the path and the reason otherwise. Nothing is created."""
    text = os.fspath(path)
    if not text or not str(text).strip():
        raise DeployvitError(f"{what}: expected a path, got {text!r}")
    p = Path(text)
    limit = _name_max(p)
    names = [part for part in p.parts if part not in (p.anchor, "", ".", "..")]
    for i, name in enumerate(names):
        room = limit - (NAME_SPARE if i == len(names) - 1 else 0)
        if len(os.fsencode(name)) > room:
            raise DeployvitError(f"{what} {p}: the name {_shown(name)} is {len(os.fsencode(name))} bytes; this file system "
                                 f"allows {limit}" + (f", and deployvit needs {NAME_SPARE} for its temp files: at most {room}"
                                                      if room != limit else ""))
    if len(os.fsencode(os.path.abspath(p))) >= 4096:
        raise DeployvitError(f"{what} {_shown(str(p))}: the path is over 4095 bytes (the system's limit)")
    try:
        mode = os.stat(p).st_mode
    except (FileNotFoundError, NotADirectoryError):
        _check_ancestor(p, what)
        return p
    except OSError as exc:
        raise DeployvitError(f"cannot write {what} {p}: {exc.strerror or exc}") from None
    if folder and not stat.S_ISDIR(mode):
        raise DeployvitError(f"{what} {p}: expected a folder, got {'a file' if stat.S_ISREG(mode) else _kind(mode)}")
    if not folder and not stat.S_ISREG(mode):
        raise DeployvitError(f"{what} {p}: expected a file, got {_kind(mode)}")
    return p


def _check_ancestor(p: Path, what: str) -> None:
    """The nearest existing ancestor of a missing `p` must be a folder (mkdir would fail later)."""
    for parent in p.absolute().parents:
        try:
            mode = os.stat(parent).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise DeployvitError(f"cannot write {what} {p}: {parent}: {exc.strerror or exc}") from None
        if not stat.S_ISDIR(mode):
            raise DeployvitError(f"cannot write {what} {p}: {parent} is {'a file' if stat.S_ISREG(mode) else _kind(mode)}, not a folder")
        return


def _name_max(p: Path) -> int:
    """NAME_MAX of the file system `p` is (or would be) on: of its nearest existing ancestor."""
    for candidate in (p, *p.absolute().parents):
        try:
            return int(os.pathconf(candidate, "PC_NAME_MAX"))
        except (OSError, ValueError, AttributeError):
            continue
    return NAME_MAX


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, what: str = "output") -> Iterator[None]:
    """Hold an exclusive lock on the output `path` (a folder or a file) for a writer's whole run:
    a second deployvit process writing the same output gets one line (exit 2) before it starts.

    The lock is an `flock` on `.NAME.lock` beside `path` (the output itself may not exist yet, as
    for an import, which renames a finished folder into place). The kernel releases it when its
    process dies, so a kill -9 never leaves a stale lock that blocks; the file is removed at the
    end, and a waiter that locked a file removed meanwhile retries on the new one."""
    target = Path(os.path.abspath(path))  # normalised: '..' and '.' resolved
    lock_path = target.parent / f".{target.name}.lock"
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeployvitError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    fd = _acquire(lock_path, Path(path), what)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()  # while still holding the lock: see _acquire's retry
        os.close(fd)


def _acquire(lock_path: Path, shown: Path, what: str) -> int:
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            raise DeployvitError(f"cannot write {what} {shown}: {exc.strerror or exc}") from None
        if not _lock(fd, blocking=False):
            holder = os.read(fd, 64).decode("ascii", "replace").strip()
            os.close(fd)
            by = f" (pid {holder})" if holder.isdigit() else ""
            raise DeployvitError(f"{what} {shown} is being written by another deployvit process{by}; "
                                 "wait for it to finish or choose another output")
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            with contextlib.suppress(OSError):  # the pid is for the message only (a full disk may refuse it)
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)  # its holder removed it as we locked it: lock the new one
