"""What machine a latency is measured on: the detected GPU/CPU name and software facts, and the
check that a user's `--device` label matches it.

A table is valid only for the device, runtime, precision, batch and software it was measured with
(docs/DESIGN.md section 4), so the label a user types is checked against the hardware actually found:
profiling "h100" on an A100 would ship a wrong table under a trusted name.
"""

from __future__ import annotations

import os
import platform
import re
from functools import lru_cache

import torch

from deployvit.errors import DeployvitError

#: known labels -> regex the detected device name must match ("a10" must not match "A100").
KNOWN_LABELS: dict[str, str] = {
    "a100": r"\bA100\b",
    "h100": r"\bH100\b",
    "h200": r"\bH200\b",
    "l4": r"\bL4\b",
    "t4": r"\bT4\b",
    "a10": r"\bA10G?\b",
    "rtx4090": r"\b4090\b",
    "orin": r"\bOrin\b",
    "cpu": r"",  # any CPU; checked by device type instead
}
LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def timing_device(label: str) -> str:
    """`cpu` for the `cpu` label or a machine without CUDA, else `cuda`."""
    return "cpu" if label == "cpu" or not torch.cuda.is_available() else "cuda"


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(torch.cuda.current_device()) if device == "cuda" else cpu_name()


def check_label(label: str, force: bool = False) -> tuple[str, str]:
    """Validate `label` against the detected device; return (timing device, detected name).

    Known labels must match the hardware (a GPU label on a CPU-only machine, or `cpu` is fine
    anywhere); a mismatch raises unless `force`. Unknown labels are free-form names, recorded as given."""
    if not LABEL_RE.match(label):
        raise DeployvitError(f"device label {label!r} must be lower-case letters, digits, '.', '_' or '-' (e.g. h100, cpu)")
    device = timing_device(label)
    name = device_name(device)
    if label not in KNOWN_LABELS or force:
        return device, name
    if label != "cpu" and (device != "cuda" or not label_matches(label, name)):
        found = f"GPU {name!r}" if device == "cuda" else f"no CUDA GPU (CPU {name!r})"
        raise DeployvitError(f"device label {label!r} does not match this machine: found {found}; pass --force to profile anyway")
    return device, name


def label_matches(label: str, name: str) -> bool:
    """Whether a detected GPU name fits a known label (`a10` fits "NVIDIA A10G", not "NVIDIA A100")."""
    return bool(re.search(KNOWN_LABELS[label], name, re.IGNORECASE))


def machine_facts(device: str) -> dict[str, object]:
    """Hardware and software facts recorded in table metadata and compared when a table is loaded."""
    facts: dict[str, object] = {
        "device_type": device,
        "device_name": device_name(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        facts["compute_capability"] = f"{props.major}.{props.minor}"
        facts["driver"] = _nvidia_driver()
        facts["cudnn"] = torch.backends.cudnn.version()
    return facts


def _nvidia_driver() -> str | None:
    """The NVIDIA driver version, read from the kernel module (no nvidia-smi subprocess needed)."""
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as fh:
            match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9.]+)", fh.read())
        return match.group(1) if match else None
    except OSError:
        return None
