"""Checkpoints: the resumable training state (`checkpoint.pt`), the trained supernet (`last.pt`) and
the retrained standalone model (`checkpoint.safetensors`).

Every file goes through `deployvit.io` (temp file + rename), so a kill -9 at any moment leaves the
previous checkpoint intact. Files are read with `torch.load(weights_only=True)`: checkpoints hold only
tensors and plain Python data (RNG states included), never pickled objects.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deployvit import io
from deployvit.arch import Arch
from deployvit.errors import DeployvitError

FORMAT = "deployvit.train/1"
_TENSORS = {str: torch.Tensor}
#: the fields of a training checkpoint that readers use, checked at read time (`io.check_schema`);
#: torch.load(weights_only=True) already limits what a file can hold to tensors and plain data
_CHECKPOINT_SCHEMA = {
    "kind": str,
    "meta": {
        "supernet?": {"space": dict, "space_hash": str},
        "held_out?": {"ids": [str]},
    },
    "model": _TENSORS,
    "ema?": io.nullable(_TENSORS),
    "progress?": io.nullable({"epoch": (int, 0, 10**9), "step": (int, 0, 10**12), "steps_per_epoch": (int, 0, 10**12)}),
    "recipe?": dict,
    "sampler?": io.nullable({"name?": str}),  # a retrain checkpoint records {}
    "history?": list,
}


def capture_rng() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": gauss},
        "torch": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    """random.setstate needs tuples; a loaded checkpoint may give lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    io.save_torch(path, {"format": FORMAT, **state})


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A deployvit training checkpoint; missing, corrupt or foreign files are one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise DeployvitError(f"checkpoint not found: {p}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / foreign files
        raise DeployvitError(f"cannot read checkpoint {p}: {_load_problem(exc)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DeployvitError(f"{p} is not a deployvit training checkpoint")
    io.check_schema(state, _CHECKPOINT_SCHEMA, str(p))
    return state


def _load_problem(exc: Exception) -> str:
    """torch's weights-only refusal is a page of advice to run untrusted code; say what it means."""
    text = str(exc)
    if "Weights only load failed" in text:
        return "not a torch checkpoint of tensors and plain data (refused to unpickle anything else)"
    return (text.splitlines() or [type(exc).__name__])[0]


def load_supernet(path: str | os.PathLike, prefer_ema: bool = True):
    """(Supernet with trained weights, meta) from `checkpoint.pt` or `last.pt` of `train-supernet`.

    meta: the supernet config, sampler name, recipe, progress, data source and the held-out image ids
    (what search's `supernet` score evaluates on)."""
    from deployvit.supernet import Supernet

    state = read_checkpoint(path)
    if state.get("kind") != "supernet":
        raise DeployvitError(f"{path} is a {state.get('kind')} checkpoint, not a supernet checkpoint")
    if "supernet" not in state["meta"] or "held_out" not in state["meta"]:
        raise DeployvitError(f"{path}: meta.supernet and meta.held_out: expected both in a supernet checkpoint")
    try:
        supernet = Supernet.from_config(state["meta"]["supernet"])
    except DeployvitError as exc:
        raise io.in_file(path, exc) from None
    weights = state["ema"] if prefer_ema and state.get("ema") is not None else state["model"]
    apply_weights(supernet, weights, path, "its supernet")
    meta = dict(state["meta"], progress=state.get("progress"), recipe=state.get("recipe"),
                sampler=(state.get("sampler") or {}).get("name"), used_ema=weights is state.get("ema"))
    return supernet.eval(), meta


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
        raise DeployvitError(f"cannot read checkpoint {p}: {_load_problem(exc)}") from None
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


def apply_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], checkpoint: str | os.PathLike, target: str) -> None:
    """Load `state` strictly; any missing/unexpected key or shape mismatch is one line naming it."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        what = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected else
                f"{shapes[0]} has shape {tuple(state[shapes[0]].shape)}, {target} needs {tuple(own[shapes[0]].shape)}")
        counts = f"({len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} mis-shaped)"
        raise DeployvitError(f"checkpoint {checkpoint} does not match {target}: {what} {counts}")
    model.load_state_dict(state)


def load_model(path: str | os.PathLike):
    """(ViT, arch) from `checkpoint.safetensors` written by `retrain`."""
    from deployvit.models import build_model

    state, meta = read_weights(path)
    arch = stored_arch(meta, path)
    if arch is None:
        raise DeployvitError(f"{path} has no arch metadata (not written by deployvit retrain)")
    model = build_model(arch)
    apply_weights(model, state, path, "its arch")
    return model.eval(), arch
