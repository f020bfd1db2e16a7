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
import glob
import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from deployvit.errors import DeployvitError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, on error remove it.

    A kill -9 mid-write leaves its temp file behind (a checkpoint's worth of bytes); the next
    successful write of the same path removes such leftovers (one writer per path is assumed)."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise DeployvitError(f"cannot write {target}: {exc.strerror or exc}") from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; published files get the usual mode
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    leftover = re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.tmp")  # mkstemp's names for this path only
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        if leftover.fullmatch(stale.name):
            stale.unlink(missing_ok=True)


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
    """The file's UTF-8 text; missing, oversized, binary and undecodable files are one line each."""
    try:
        if p.is_dir():
            raise DeployvitError(f"{p}: expected {_a(what)}, got a directory")
        size = p.stat().st_size
        if size > max_bytes:
            raise DeployvitError(f"{p}: {what} is {size:,} bytes; expected at most {max_bytes:,}")
        with open(p, "rb") as fh:
            data = fh.read(max_bytes + 1)  # a file that grows while read is still capped
    except FileNotFoundError:
        raise DeployvitError(f"{what} not found: {p}") from None
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
    """torch.save through a temp file, so a killed job never leaves a truncated checkpoint."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (engines and checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_writable(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create `folder` and prove a file can be written there, before any real work starts (a run
    that fails to write at its end would waste the work): one line naming `what` otherwise."""
    import tempfile

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".deployvit-probe-"):
            pass
    except OSError as exc:
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
