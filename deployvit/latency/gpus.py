"""The GPU catalogue: vendor datasheet facts of common inference GPUs, for latency *estimates*.

The facts live in `gpu_catalogue.json` (package data, one entry per GPU, every value with its source
named) so that adding a GPU is a data change. Loading checks every entry completely: an estimate
silently built on a missing bandwidth would be a wrong number under a trusted name, so a missing or
malformed field is a one-line DeployvitError naming the entry and the field.

A GPU is found by its catalogue key, an alias or the name `torch.cuda.get_device_name` reports
(case-insensitive; a leading "NVIDIA", "GeForce" or "Tesla" and spaces versus dashes do not matter),
so `"h100"`, `"H100-SXM"` and `"NVIDIA H100 80GB HBM3"` are the same entry. Jetson modules all report
"Orin", so their entries carry no device name and are chosen by key or alias (`orin` is the AGX Orin
64GB, `orin-nx` the Orin NX 16GB).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from deployvit.errors import DeployvitError

CATALOGUE_FORMAT = "deployvit.gpu_catalogue/2"
#: numeric fields every entry needs (> 0); the tensor modes in OPTIONAL_MODES may be null (not supported).
NUMBERS = ("sm_count", "boost_clock_mhz", "fp16_tensor_tflops", "fp16_acc16_tensor_tflops", "bf16_tensor_tflops", "tf32_tensor_tflops",
           "fp32_tflops", "memory_bandwidth_gbs", "l2_mb", "memory_gb", "tdp_w", "host_launch_scale")
OPTIONAL_MODES = ("bf16_tensor_tflops", "tf32_tensor_tflops")
TEXTS = ("name", "architecture", "compute_capability", "segment", "host_cpu", "source")
FLAGS = ("power_limited",)
#: embedded = Jetson-class modules: integrated GPU, Arm host, shared LPDDR memory
SEGMENTS = ("datacenter", "workstation", "geforce", "embedded")
LISTS = ("device_names", "aliases")
#: prefixes torch and users put before a GPU's model name
_VENDOR_PREFIXES = ("nvidia-", "geforce-", "tesla-")


@dataclass(frozen=True)
class GPU:
    """One catalogue entry (throughputs in TFLOP/s, dense; bandwidth GB/s; L2 and memory MB / GB)."""

    key: str
    name: str
    device_names: tuple[str, ...]
    aliases: tuple[str, ...]
    architecture: str
    compute_capability: str
    segment: str  # datacenter, workstation, geforce or embedded
    sm_count: int
    boost_clock_mhz: float
    fp16_tensor_tflops: float  # FP16 inputs, FP32 accumulation (what PyTorch's kernels use)
    fp16_acc16_tensor_tflops: float  # FP16 accumulation (2x the above on GeForce and the L40)
    bf16_tensor_tflops: float | None
    tf32_tensor_tflops: float | None
    fp32_tflops: float  # CUDA cores: fp32 without TF32
    memory_bandwidth_gbs: float
    l2_mb: float
    memory_gb: float
    tdp_w: float
    power_limited: bool  # the TDP does not sustain the boost clock under dense tensor work
    host_cpu: str
    host_launch_scale: float  # host time per launch relative to the published data's x86 servers
    source: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["device_names"], d["aliases"] = list(self.device_names), list(self.aliases)
        return d

    def names(self) -> set[str]:
        """Every normalised name this entry answers to."""
        return {normalise_name(n) for n in (self.key, *self.aliases, *self.device_names)}


def normalise_name(name: str) -> str:
    """Lower case, spaces and underscores as dashes, without a vendor prefix: "NVIDIA GeForce RTX
    4090" -> "rtx-4090", "Tesla V100-SXM2-16GB" -> "v100-sxm2-16gb"."""
    out = "-".join(name.strip().lower().replace("_", " ").split())
    changed = True
    while changed:
        changed = False
        for prefix in _VENDOR_PREFIXES:
            if out.startswith(prefix):
                out, changed = out[len(prefix):], True
    return out


@dataclass(frozen=True)
class Catalogue:
    gpus: dict[str, GPU]
    reference: str
    path: str

    def get(self, name: "str | GPU") -> GPU:
        """The entry for a catalogue key, an alias or a name torch reports (see the module docstring);
        a GPU is returned as is. DeployvitError listing the catalogue otherwise."""
        if isinstance(name, GPU):
            return name
        wanted = normalise_name(str(name))
        for gpu in self.gpus.values():
            if wanted in gpu.names():
                return gpu
        raise DeployvitError(f"unknown GPU {name!r} for an estimate; the catalogue has: {', '.join(self.gpus)} "
                             "(a key, an alias or the name torch reports)")

    def match_device(self, device_name: str) -> GPU | None:
        """The entry a detected GPU name (torch.cuda.get_device_name) belongs to, if any."""
        wanted = normalise_name(device_name)
        for gpu in self.gpus.values():
            if any(wanted == normalise_name(d) for d in gpu.device_names):
                return gpu
        return None


def catalogue_path() -> Path:
    return Path(str(files("deployvit.latency").joinpath("gpu_catalogue.json")))


def _check_entry(key: str, raw: Any, where: str) -> GPU:
    def bad(problem: str) -> DeployvitError:
        return DeployvitError(f"GPU catalogue {where}: entry {key!r} {problem}")

    if not re.match(r"^[a-z0-9][a-z0-9._-]*$", key):
        raise bad("has a key that is not a lower-case label (letters, digits, '.', '_', '-')")
    if not isinstance(raw, dict):
        raise bad("is not an object")
    unknown = set(raw) - set(NUMBERS) - set(TEXTS) - set(LISTS) - set(FLAGS)
    if unknown:
        raise bad(f"has unknown field(s) {', '.join(sorted(unknown))}")
    for f in TEXTS:
        if not isinstance(raw.get(f), str) or not raw[f].strip():
            raise bad(f"is missing {f!r} (a non-empty string)")
    for f in LISTS:
        if not isinstance(raw.get(f), list) or not all(isinstance(x, str) and x for x in raw[f]):
            raise bad(f"is missing {f!r} (a list of names)")
    for f in FLAGS:
        if not isinstance(raw.get(f), bool):
            raise bad(f"is missing {f!r} (true or false)")
    if raw.get("segment") in SEGMENTS and raw["segment"] != "embedded" and not raw["device_names"]:
        raise bad("needs at least one entry in 'device_names' (the name torch.cuda.get_device_name reports)")
    for f in NUMBERS:
        if f not in raw:
            raise bad(f"is missing {f!r}")
        v = raw[f]
        if v is None and f in OPTIONAL_MODES:
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise bad(f"has {f!r} = {v!r}; it must be a positive number" + (" (or null: mode not supported)" if f in OPTIONAL_MODES else ""))
    if raw["segment"] not in SEGMENTS:
        raise bad(f"has segment {raw['segment']!r}; choose from {', '.join(SEGMENTS)}")
    if raw["tf32_tensor_tflops"] is not None and raw["tf32_tensor_tflops"] > raw["fp16_tensor_tflops"]:
        raise bad("has tf32_tensor_tflops above fp16_tensor_tflops (a datasheet sparsity figure?)")
    if raw["fp16_acc16_tensor_tflops"] < raw["fp16_tensor_tflops"]:
        raise bad("has fp16_acc16_tensor_tflops below fp16_tensor_tflops (FP16 accumulation is never slower)")
    values = {f: raw[f] for f in (*NUMBERS, *TEXTS, *FLAGS)}
    values["sm_count"] = int(values["sm_count"])
    return GPU(key=key, device_names=tuple(raw["device_names"]), aliases=tuple(raw["aliases"]), **values)


def parse_catalogue(data: Any, where: str) -> Catalogue:
    """Check a whole catalogue document (see module docstring) and build it."""
    if not isinstance(data, dict) or data.get("format") != CATALOGUE_FORMAT:
        raise DeployvitError(f"GPU catalogue {where}: format is not {CATALOGUE_FORMAT!r}")
    raw = data.get("gpus")
    if not isinstance(raw, dict) or not raw:
        raise DeployvitError(f"GPU catalogue {where}: 'gpus' must be a non-empty object")
    gpus = {key: _check_entry(key, entry, where) for key, entry in raw.items()}
    names: dict[str, str] = {}
    for gpu in gpus.values():
        for n in (gpu.key, *gpu.aliases, *gpu.device_names):
            other = names.setdefault(normalise_name(n), gpu.key)
            if other != gpu.key:
                raise DeployvitError(f"GPU catalogue {where}: name {n!r} is used by both {other!r} and {gpu.key!r}")
    reference = data.get("reference")
    if reference not in gpus:
        raise DeployvitError(f"GPU catalogue {where}: 'reference' must name one of its entries")
    return Catalogue(gpus, reference, where)


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """The shipped catalogue (cached), or the one at `path`."""
    if path is None:
        return _shipped()
    return _read(Path(path))


@lru_cache(maxsize=1)
def _shipped() -> Catalogue:
    return _read(catalogue_path())


def _read(path: Path) -> Catalogue:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DeployvitError(f"cannot read the GPU catalogue {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise DeployvitError(f"GPU catalogue {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    return parse_catalogue(data, str(path))
