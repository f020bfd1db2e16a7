"""Checkpoints: the resumable training state (`checkpoint.pt`), the trained supernet (`last.pt`) and
the retrained standalone model (`checkpoint.safetensors`).

Every file goes through `deployvit.io` (temp file + rename), so a kill -9 at any moment leaves the
previous checkpoint intact. Files are read with `torch.load(weights_only=True)`: checkpoints hold only
tensors and plain Python data (RNG states included), never pickled objects.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deployvit import io
from deployvit.errors import DeployvitError
from deployvit.weights import apply_weights, load_problem, read_weights, stored_arch

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
    with io.open_regular(p, "checkpoint") as fh:  # a FIFO or device is refused, never read
        try:
            state = torch.load(fh, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for truncated / foreign files
            raise DeployvitError(f"cannot read checkpoint {p}: {load_problem(exc)}") from None
    return _checked(state, p)


def _checked(state: Any, p: Path) -> dict[str, Any]:
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DeployvitError(f"{p} is not a deployvit training checkpoint")
    io.check_schema(state, _CHECKPOINT_SCHEMA, str(p))
    return state


def load_supernet(path: str | os.PathLike, prefer_ema: bool = True):
    """(Supernet with trained weights, meta) from `checkpoint.pt` or `last.pt` of `train-supernet`, or
    `supernet.pt` of `import`.

    meta: the supernet config, sampler name, recipe, progress, data source and the held-out image ids
    (what search's `supernet` score evaluates on); an imported supernet adds `imported`."""
    return _supernet_from(read_checkpoint(path), path, prefer_ema)


def _supernet_from(state: dict[str, Any], path: str | os.PathLike, prefer_ema: bool = True):
    from deployvit.supernet import Supernet

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


def supernet_in(path: str | os.PathLike):
    """(Supernet, meta) when `path` is a deployvit supernet checkpoint (`last.pt`, an import's
    `supernet.pt`), else None: lets a command that takes model weights take a supernet too (export
    extracts the arch it is given). A file that is not one is left to the caller's own reader."""
    p = Path(path)
    if p.suffix == ".safetensors" or not p.is_file():
        return None
    try:
        with io.open_regular(p, "checkpoint") as fh:
            state = torch.load(fh, map_location="cpu", weights_only=True)
    except Exception:  # not a torch checkpoint: the caller's reader says what is wrong with it
        return None
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("kind") != "supernet":
        return None
    return _supernet_from(_checked(state, p), p)


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
