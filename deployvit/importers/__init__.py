"""Importing weights users already have: timm ViT/DeiT models and AutoFormer's released supernets
become a deployvit supernet checkpoint with its space and parent arch (`deployvit import`).

`common` holds what every import shares (the steps, the output folder), `timm_vit` and `autoformer`
read one source each, `ordering` sorts a parent's channels, heads and MLP units by importance.
Layer: above `train` (it writes the supernet checkpoint format and carves held-out images the way
`train-supernet` does), beside `search`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from deployvit import io
from deployvit.errors import DeployvitError
from deployvit.weights import safe_torch_load

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".tar")


def read_state(path: str, allowed: tuple[type, ...] = ()) -> Any:
    """A weights file, safely: safetensors, or torch's weights-only unpickler (tensors and plain data,
    plus `allowed` classes for this load). Whatever else a file holds is refused in one line."""
    p = Path(path)
    if p.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError, safe_open

        io.check_regular(p, "checkpoint")  # a FIFO would block the open forever
        try:
            with safe_open(str(p), framework="pt") as fh:
                return {k: fh.get_tensor(k) for k in fh.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise DeployvitError(f"cannot read checkpoint {p}: {str(exc).splitlines()[0] if str(exc) else 'not a safetensors file'}") from None
    return safe_torch_load(p, allowed)


def state_dict_of(checkpoint: Any, path: str) -> dict[str, torch.Tensor]:
    """The state dict in a loaded file: itself, or under `model` / `state_dict` / `model_ema` (DeiT's and
    timm's training checkpoints); a `module.` prefix (DistributedDataParallel) is dropped."""
    state = checkpoint
    if isinstance(state, dict):
        for key in ("model", "state_dict", "model_ema"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise DeployvitError(f"{path} holds no state dict of tensors (at the top level or under 'model' / 'state_dict')")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state
