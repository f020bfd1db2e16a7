"""Which latency table a search predicts with: `--table PATH`, a shipped table picked by
`--device/--runtime/--precision/--batch-size`, or the space's default shipped table."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from deployvit.errors import DeployvitError
from deployvit.spaces import SearchSpace

if TYPE_CHECKING:
    from deployvit.latency.table import LatencyTable
    from deployvit.search.run import SearchRequest


def _shipped(request: "SearchRequest", space: SearchSpace) -> Path:
    from deployvit.latency.table import shipped_tables_dir, table_filename

    device = request.device or "h100"
    gpu = device != "cpu"
    runtime = request.runtime or ("cudagraph" if gpu else "eager")
    precision = request.precision or ("fp16" if gpu else "fp32")
    path = shipped_tables_dir() / device / table_filename(space.name, runtime, precision, request.batch_size or 1)
    if not path.is_file():
        shipped = sorted(str(p.relative_to(shipped_tables_dir())) for p in shipped_tables_dir().glob(f"*/{space.name}-*.json"))
        raise DeployvitError(
            f"no shipped latency table {device}/{path.name} (shipped for {space.name}: {', '.join(shipped) or 'none'}); "
            "measure one with `deployvit profile` and pass --table"
        )
    return path


def table_chosen(request: "SearchRequest") -> bool:
    """Did the user pick the table (a path, or device/runtime/precision/batch), or is it the default?"""
    return request.table is not None or any(
        p is not None for p in (request.device, request.runtime, request.precision, request.batch_size)
    )


def resolve_table(request: "SearchRequest", space: SearchSpace) -> tuple["LatencyTable | None", str | None]:
    """(table, the line that names it and its device/runtime, plus any machine-mismatch warnings),
    or (None, None) when nothing needs latency."""
    from deployvit.latency.table import LatencyTable, check_covers, default_table

    if request.table is not None:
        path = Path(request.table)
    elif table_chosen(request):
        path = _shipped(request, space)
    elif request.constraints.uses_latency or request.measure_top:
        path = default_table(space.name)
    else:
        return None, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = LatencyTable.load(path)
    meta = table.metadata
    if meta["space"] != space.name:
        raise DeployvitError(f"latency table {path} was profiled for space {meta['space']!r}, not {space.name!r}")
    if meta["space_hash"] != space.hash():
        raise DeployvitError(
            f"latency table {path} was profiled for another version of space {space.name!r} "
            f"(image size {meta['img_size']} vs {space.img_size}, or other choices); profile this space"
        )
    check_covers(table, space)
    lines = [f"latency table: {path} [{table.describe()}]"]
    lines += [f"warning: {w.message}" for w in caught]
    return table, "\n".join(lines)
