"""Atomic file output: every JSON, table, checkpoint and engine is written to a temp file and renamed.

A reader (or a resumed job after kill -9) therefore sees either the old file or the new one, never a
half-written one. The temp file lives in the destination folder so `os.replace` is a same-filesystem
rename.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

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


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON with one-line errors naming the file (missing, unreadable, malformed)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DeployvitError(f"{what} not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DeployvitError(f"cannot read {what} {p}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DeployvitError(f"malformed {what} {p}: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


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
