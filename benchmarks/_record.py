"""The one way a benchmark saves its result: the numbers plus what it takes to reproduce them (the
benchmark's name, the UTC date and the exact command), written atomically under benchmarks/results/."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deployvit import io

RESULTS = Path(__file__).resolve().parent / "results"


def save_result(path: Path, name: str, result: dict[str, Any], argv: list[str] | None = None) -> Path:
    """Write `result` to `path` headed by name, date and command (`argv`: the script's arguments,
    sys.argv's when None) and say where it went."""
    args = sys.argv[1:] if argv is None else argv
    record = {
        "benchmark": name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", f"benchmarks/{name}.py", *args]),
        **result,
    }
    io.write_json(path, record)
    print(f"wrote {path}")
    return path
