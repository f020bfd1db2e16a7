"""The parts a ViT is made of, and their shape keys: the one place the block-shape key is defined.

A whole model is a list of parts (stem, blocks, residual spatial reductions, head). The standalone
model is built part by part (`models.build_part`), counting sums per-part formulas, the supernet runs
each part through the very module class the standalone model uses, and a latency table stores one
timing per distinct part key. Keeping the decomposition here means those four agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from deployvit.arch import Arch, mlp_hidden, stage_grid, stage_tokens

if TYPE_CHECKING:
    from deployvit.spaces import SearchSpace


@dataclass(frozen=True)
class StemPart:
    """Patch embedding (conv patch x patch, stride patch) + class token + position embedding."""

    img_size: int
    patch_size: int
    in_chans: int
    embed_dim: int

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def key(self) -> str:
        return f"stem:i{self.img_size}:p{self.patch_size}:c{self.in_chans}:e{self.embed_dim}"

    def input_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.in_chans, self.img_size, self.img_size)


@dataclass(frozen=True)
class BlockPart:
    """One pre-norm transformer block: attention of `num_heads` x `head_dim`, MLP of `mlp_hidden`."""

    tokens: int
    embed_dim: int
    num_heads: int
    head_dim: int
    mlp_hidden: int

    @property
    def attn_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def key(self) -> str:
        return f"block:t{self.tokens}:e{self.embed_dim}:h{self.num_heads}:d{self.head_dim}:m{self.mlp_hidden}"

    def input_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.tokens, self.embed_dim)


@dataclass(frozen=True)
class ReductionPart:
    """ViT-ResNAS residual spatial reduction from a `grid` x `grid` token map at `in_dim` to half the
    grid at `out_dim` (REFERENCES.md section 4)."""

    grid: int
    in_dim: int
    out_dim: int

    @property
    def out_grid(self) -> int:
        return self.grid // 2

    @property
    def key(self) -> str:
        return f"reduce:g{self.grid}:e{self.in_dim}:o{self.out_dim}"

    def input_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.grid**2 + 1, self.in_dim)


@dataclass(frozen=True)
class HeadPart:
    """Final LayerNorm over all tokens + linear classifier on the class token."""

    tokens: int
    embed_dim: int
    num_classes: int

    @property
    def key(self) -> str:
        return f"head:t{self.tokens}:e{self.embed_dim}:k{self.num_classes}"

    def input_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.tokens, self.embed_dim)


Part = Union[StemPart, BlockPart, ReductionPart, HeadPart]


def arch_parts(arch: Arch) -> list[Part]:
    """The parts of `arch` in execution order."""
    parts: list[Part] = [StemPart(arch.img_size, arch.patch_size, arch.in_chans, arch.stages[0].embed_dim)]
    for si, stage in enumerate(arch.stages):
        if si > 0:
            grid_in = stage_grid(arch.img_size, arch.patch_size, si - 1)
            parts.append(ReductionPart(grid_in, arch.stages[si - 1].embed_dim, stage.embed_dim))
        tokens = stage_tokens(arch.img_size, arch.patch_size, si)
        for layer in stage.layers:
            parts.append(
                BlockPart(tokens, stage.embed_dim, layer.num_heads, stage.head_dim, mlp_hidden(stage.embed_dim, layer.mlp_ratio))
            )
    parts.append(HeadPart(stage_tokens(arch.img_size, arch.patch_size, len(arch.stages) - 1), arch.stages[-1].embed_dim, arch.num_classes))
    return parts


def space_parts(space: "SearchSpace") -> list[Part]:
    """Every distinct part any arch of `space` can contain (what a latency table must time), sorted by key."""
    found: set[Part] = {StemPart(space.img_size, space.patch_size, space.in_chans, e) for e in space.stages[0].embed_dims}
    for si, s in enumerate(space.stages):
        tokens = space.tokens(si)
        for e in s.embed_dims:
            for h in s.num_heads:
                for r in s.mlp_ratios:
                    found.add(BlockPart(tokens, e, h, s.head_dim, mlp_hidden(e, r)))
        if si > 0:
            for e_in in space.stages[si - 1].embed_dims:
                for e_out in s.embed_dims:
                    found.add(ReductionPart(space.grid(si - 1), e_in, e_out))
    last = len(space.stages) - 1
    found |= {HeadPart(space.tokens(last), e, space.num_classes) for e in space.stages[last].embed_dims}
    return sorted(found, key=lambda p: p.key)
