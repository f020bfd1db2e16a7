"""Estimated tables on demand: what the resolver uses when no measured table fits a target GPU.

`estimate_on_demand(space, gpu, runtime, precision, batch, cache_dir)` returns the ESTIMATE
`estimate.estimate_table` builds for that target, reading it from a cache file when one exists for
exactly these inputs and writing one (temp file + rename) when not. No `deployvit profile
--estimate` step is needed before a search on any catalogue GPU, space, runtime, precision and batch.

**The cache is never stale.** A file is found by a key over everything the table is computed from:
the estimator's model version, its fitted constants file (constants, structure, validation, date:
all of it lands in the table), the source of the modules that compute it (`estimate.py`,
`kernels.py`, `gpus.py`, `parts.py`: a changed kernel list changes the key without a version bump),
the GPU's catalogue entry, the space (its definition's hash and name), runtime, precision, batch and
deployvit's version. Change any of them and the key, hence the file name, changes: the old file is
simply never looked up again. A cache file that cannot be read is rebuilt; a cache folder that
cannot be written leaves the table in memory (its `path` is None) and says so.

Building costs 10-50 ms per table (the 5 ViT families on one target take about 0.2 s), so the cache
saves little time; it gives the estimate a file the run's outputs can name, like any other table.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from deployvit.errors import DeployvitError
from deployvit.latency.table import LatencyTable

if TYPE_CHECKING:
    from deployvit.latency.gpus import GPU
    from deployvit.spaces import SearchSpace

CACHE_FORMAT = "deployvit.estimate_cache/1"
#: the modules whose code computes an estimated table: part of every cache key
_ESTIMATOR_SOURCES = ("latency/estimate.py", "latency/kernels.py", "latency/gpus.py", "parts.py")


@lru_cache(maxsize=1)
def _estimator_fingerprint() -> str:
    """SHA-256 over the estimator's code and its fitted constants file (one read per process)."""
    from deployvit.latency.estimate import MODEL_VERSION, constants_path

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(f"{CACHE_FORMAT}\n{MODEL_VERSION}\n".encode())
    for path in [root / rel for rel in _ESTIMATOR_SOURCES] + [constants_path()]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_key(space: "SearchSpace", gpu: "GPU", runtime: str, precision: str, batch: int) -> str:
    """The key of one estimated table (module docstring): hex SHA-256."""
    from deployvit import __version__

    inputs = {"estimator": _estimator_fingerprint(), "gpu": gpu.to_dict(), "space": space.name, "space_hash": space.hash(),
              "space_def": space.to_dict(), "runtime": runtime, "precision": precision, "batch": int(batch), "deployvit": __version__}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def cache_path(cache_dir: Path, space: "SearchSpace", gpu: "GPU", runtime: str, precision: str, batch: int) -> Path:
    """Where the estimate for these inputs is cached: `<cache_dir>/<gpu>/<space>-<runtime>-<precision>-b<batch>-<key>.json`."""
    key = cache_key(space, gpu, runtime, precision, batch)[:16]
    return cache_dir / gpu.key / f"{space.name}-{runtime}-{precision}-b{batch}-{key}.json"


def estimate_on_demand(space: "SearchSpace", gpu: "GPU | str", runtime: str, precision: str, batch: int,
                       cache_dir: Path | None) -> tuple[LatencyTable, str | None]:
    """(the estimated table, a note when it could not be cached). The table's `path` is its cache
    file, or None when `cache_dir` is None or cannot be written."""
    from deployvit.latency.estimate import check_request, estimate_table, resolve_gpu

    gpu = resolve_gpu(gpu)
    check_request(runtime, precision, batch, gpu)
    if cache_dir is None:
        return estimate_table(space, gpu, runtime, precision, batch), None
    path = cache_path(cache_dir, space, gpu, runtime, precision, batch)
    if path.is_file():
        try:
            return LatencyTable.load(path, warn=False), None
        except DeployvitError:
            pass  # a damaged cache file: rebuilt below, written over it
    table = estimate_table(space, gpu, runtime, precision, batch)
    try:
        table.save(path)
    except (DeployvitError, OSError) as exc:
        table.path = None
        return table, f"estimate kept in memory, not cached: {exc}"
    return table, None
