"""Weights I/O of a standalone model: one reader of model files for retrain, evaluate and the
exporters (base layer: training and exporting both read what `retrain` writes, and neither may
import the other for a file format, docs/DESIGN.md section 6).

A model file is `checkpoint.safetensors` (what `retrain` writes, its arch JSON in the metadata) or
a torch checkpoint (`.pt`/`.pth`: a state dict, or a dict holding one under `model`/`state_dict`),
read with `weights_only=True` so it can never run code.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from deployvit import io
from deployvit.arch import Arch
from deployvit.errors import DeployvitError


def load_problem(exc: Exception) -> str:
    """torch's weights-only refusal is a page of advice to run untrusted code; say what it means,
    naming the object the file wanted to build (e.g. `posix.system`: a planted payload)."""
    text = str(exc)
    if "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return f"not a torch checkpoint of tensors and plain data: it holds a pickled object{what}, refused (never unpickled)"
    if "central directory" in text or isinstance(exc, EOFError) or "Ran out of input" in text:
        return "truncated or corrupt file (incomplete torch archive)"
    return (text.splitlines() or [type(exc).__name__])[0]


def safe_torch_load(path: str | os.PathLike, allowed: Sequence[type] = ()) -> Any:
    """`torch.load(weights_only=True)` of `path`: tensors and plain data only, plus the classes in
    `allowed` for this one load (AutoFormer's checkpoints carry their `argparse.Namespace`). Any
    other pickled object is refused before it is built; every failure is one line."""
    p = Path(path)
    if not p.is_file():
        raise DeployvitError(f"checkpoint not found: {p}")
    try:
        if allowed:
            with torch.serialization.safe_globals(list(allowed)):
                return torch.load(p, map_location="cpu", weights_only=True)
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / foreign / hostile files
        raise DeployvitError(f"cannot read checkpoint {p}: {load_problem(exc)}") from None


def save_model(path: str | os.PathLike, model: torch.nn.Module, arch: Arch, extra: dict[str, str] | None = None) -> None:
    """The standalone model as safetensors, its arch JSON in the metadata (exporters read it back)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with io.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"arch": arch.key, **(extra or {})})


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict and metadata of a `.safetensors` file (what `retrain` writes) or a torch checkpoint
    (`.pt`/`.pth`: a state dict, or a dict holding one under `model`/`state_dict`)."""
    p = Path(path)
    if not p.is_file():
        raise DeployvitError(f"checkpoint not found: {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as fh:
                return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors / pickle errors: the file is not a checkpoint
        raise DeployvitError(f"cannot read checkpoint {p}: {load_problem(exc)}") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DeployvitError(f"{p} holds no state dict of tensors")
    return state, {}


def stored_arch(meta: dict[str, str], path: str | os.PathLike) -> Arch | None:
    """The arch a `retrain` checkpoint records in its metadata (None when it records none)."""
    if "arch" not in meta:
        return None
    try:
        data = json.loads(meta["arch"])
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise DeployvitError(f"{path}: its arch metadata is not valid JSON ({getattr(exc, 'msg', type(exc).__name__)})") from None
    try:
        io.check_tree(data, str(path), "arch metadata")
        return Arch.from_dict(data)
    except DeployvitError as exc:
        raise DeployvitError(f"{path}: its arch metadata is not a valid arch: {exc}") from None


def check_shapes(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], checkpoint: str | os.PathLike | None,
                 target: str) -> None:
    """`state` has exactly the keys of `expected`, each of its shape; else one line naming the first
    missing, unexpected or mis-shaped key (and how many of each)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [k for k in expected if k in state and tuple(expected[k]) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        what = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected else
                f"{shapes[0]} has shape {tuple(state[shapes[0]].shape)}, {target} needs {tuple(expected[shapes[0]])}")
        counts = f"({len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} mis-shaped)"
        raise DeployvitError(f"checkpoint {checkpoint} does not match {target}: {what} {counts}")


def apply_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], checkpoint: str | os.PathLike, target: str) -> None:
    """Load `state` strictly; any missing/unexpected key or shape mismatch is one line naming it."""
    check_shapes(state, {k: tuple(v.shape) for k, v in model.state_dict().items()}, checkpoint, target)
    model.load_state_dict(state)
