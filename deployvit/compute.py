"""Where tensors are computed: the one parser of a compute-device option (`auto`, `cpu`, `cuda`,
`cuda:N`) for every command that trains, scores or times on this machine.

It lives in the base because search, train, latency and export all need the same answer and the same
one-line error for "CUDA was asked for and this machine has none" (exit 2, docs/DESIGN.md section 3).
"""

from __future__ import annotations

import torch
from torch import nn

from deployvit.errors import DeployvitError

#: the values a compute-device option accepts (besides `cuda:N`), for click help texts.
COMPUTE_CHOICES = ("auto", "cpu", "cuda")
#: the torch dtype of each precision (`deployvit.settings.PRECISIONS`)
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def compute_device(name: str | None = "auto", local_rank: int = 0) -> torch.device:
    """`auto`/None: CUDA when available, else the CPU; `cpu`; `cuda` (this rank's GPU) or `cuda:N`.

    Asking for CUDA on a machine without it is bad input, not a silent fall back to the CPU: a user
    who typed `cuda` wants GPU numbers."""
    text = (name or "auto").strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeployvitError(f"--device {text}: torch sees no CUDA GPU on this machine (use --device cpu)")
        index = local_rank if text == "cuda" else _index(text)
        if index >= torch.cuda.device_count():
            raise DeployvitError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    raise DeployvitError(f"unknown compute device {name!r} (auto, cpu, cuda or cuda:N)")


def _index(text: str) -> int:
    try:
        index = int(text.split(":", 1)[1])
    except ValueError:
        index = -1
    if index < 0:
        raise DeployvitError(f"--device {text}: expected cuda:N with N >= 0")
    return index


class CastModel(nn.Module):
    """Runs `model` in a low precision while taking and returning float32 tensors: how every export
    format runs an fp16/bf16 model, so every artifact takes and returns the same tensors."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model.to(dtype), dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()
