"""Run folders wherever a command takes an arch or a checkpoint: the one rule.

Each command writes a run folder whose files the next command needs, so every option that takes
an arch or a checkpoint (`retrain --arch/--init`, `export`/`benchmark --arch/--checkpoint`,
`evaluate --model/--supernet/--arch`, `search --supernet`) also takes the folder:

| the folder is                       | holds                        | an arch is         | a checkpoint is           |
|-------------------------------------|------------------------------|--------------------|---------------------------|
| a search run                        | `best.arch.json`             | `best.arch.json`   | -                         |
| a retrain run                       | `checkpoint.safetensors`     | its `arch.json`    | `checkpoint.safetensors`  |
| a supernet run (train-supernet)     | `last.pt` (or `checkpoint.pt`) | -                | `last.pt`, else `checkpoint.pt` (still training) |

A file is used as given. A folder that holds none of what the option needs is one line naming what
was looked for. `newest_supernet_run` is what `search --score supernet` uses without `--supernet`:
the supernet run under `runs/` whose `last.pt` is newest.
"""

from __future__ import annotations

import os
from pathlib import Path

from deployvit.errors import DeployvitError

SEARCH_ARCH = "best.arch.json"
MODEL = "checkpoint.safetensors"
RETRAIN_ARCH = "arch.json"
SUPERNET = ("last.pt", "checkpoint.pt")  # finished first
RUNS = Path("runs")


def _pick(path: str | os.PathLike, names: tuple[str, ...], what: str, option: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        return p
    for name in names:
        if (p / name).is_file():
            return p / name
    raise DeployvitError(f"{option} {p}: a folder without {' or '.join(names)} (expected {what})")


def arch_file(path: str | os.PathLike, option: str = "--arch") -> Path:
    """An arch JSON, or the arch of a search run (best.arch.json) or a retrain run (arch.json)."""
    return _pick(path, (SEARCH_ARCH, RETRAIN_ARCH), "a search run or a retrain run", option)


def model_file(path: str | os.PathLike, option: str = "--checkpoint") -> Path:
    """A retrained model's weights, or those of a retrain run (checkpoint.safetensors)."""
    return _pick(path, (MODEL,), "a retrain run", option)


def supernet_file(path: str | os.PathLike, option: str = "--supernet") -> Path:
    """A supernet checkpoint, or that of a supernet run (last.pt, else checkpoint.pt)."""
    return _pick(path, SUPERNET, "a supernet run of train-supernet", option)


def is_retrain_run(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / MODEL).is_file()


def newest_supernet_run(root: str | os.PathLike = RUNS) -> Path | None:
    """The `last.pt` of the newest finished supernet run under `root` (any depth), or None."""
    found = [p for p in Path(root).rglob(SUPERNET[0]) if p.is_file()] if Path(root).is_dir() else []
    return max(found, key=lambda p: (p.stat().st_mtime, str(p)), default=None)


def new_run_dir(prefix: str, root: str | os.PathLike = RUNS) -> Path:
    """A default run folder `root/PREFIX-YYYYmmdd-HHMMSS`, with `-2`, `-3`, ... when that name is
    taken (two searches started within one second must not meet in one folder)."""
    import time

    stamp = Path(root) / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, n = stamp, 1
    while candidate.exists():
        n += 1
        candidate = stamp.with_name(f"{stamp.name}-{n}")
    return candidate
