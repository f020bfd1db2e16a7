"""Which supernet weights a subnet uses: channel windows (prefix or ViTAS-style cyclic) and which
layers a shallower subnet skips (last layers, or ViTAS-style identity shifting).

deployvit's implementation of the ideas of ViTAS (docs/REFERENCES.md section 7), not a reproduction.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

ChannelSelect = slice | torch.Tensor  # a leading slice, or gathered channel indices in window order


def channel_windows(choices: Sequence[int], cyclic: bool) -> dict[int, list[int]]:
    """Channel indices of every width choice on a ring of max(choices) channels.

    Prefix (AutoFormer weight entanglement): choice c uses channels 0..c-1, so channel 0 is trained by
    every width and the last channel only by the widest. Cyclic: the windows of the sorted choices are
    laid end to end around the ring (o_1 = 0, o_{k+1} = o_k + c_k mod C), so every channel is used
    floor or ceil(sum c_k / C) times across the choices.
    """
    ring = max(choices)
    windows, offset = {}, 0
    for c in sorted(set(choices)):
        windows[c] = [(offset + j) % ring for j in range(c)] if cyclic else list(range(c))
        offset = (offset + c) % ring
    return windows


def to_select(indices: list[int]) -> ChannelSelect:
    """A leading run becomes a slice (a view, no copy); anything else an index tensor."""
    if indices == list(range(len(indices))):
        return slice(0, len(indices))
    return torch.tensor(indices, dtype=torch.long)


def take(t: torch.Tensor, dim: int, sel: ChannelSelect) -> torch.Tensor:
    """Select channels `sel` of `t` along `dim` (differentiable, so the supernet trains through it)."""
    if isinstance(sel, slice):
        return t.narrow(dim, sel.start, sel.stop - sel.start)
    return t.index_select(dim, sel.to(t.device))


def active_layers(max_depth: int, depth: int, shift: int = 0, identity_shift: bool = False) -> list[int]:
    """Supernet layer indices a depth-`depth` subnet runs, in order.

    Without identity shifting the last max_depth - depth layers are skipped (AutoFormer). With it, the
    skipped (identity) positions are spread evenly through the stack and rotated by `shift`:
    skip round(shift + i * D / (D - d)) mod D for i < D - d, so over D consecutive shifts every layer
    is skipped equally often. Offset 0 is canonical: search, evaluation and extraction use it.
    """
    if not identity_shift or depth == max_depth:
        return list(range(depth))
    n_skip = max_depth - depth
    skipped = {math.floor(shift + i * max_depth / n_skip + 0.5) % max_depth for i in range(n_skip)}
    return [i for i in range(max_depth) if i not in skipped]
