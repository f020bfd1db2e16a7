"""The parts a ViT is made of, and their shape keys: the one place the block-shape key is defined.

A whole model is a list of parts (stem, blocks, residual spatial reductions, head). The standalone
model is built part by part (`models.build_part`), counting sums per-part formulas, the supernet runs
each part through the very module class the standalone model uses, and a latency table stores one
timing per distinct part key. Keeping the decomposition here means those four agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from deployvit.arch import DEFAULT_NORM_EPS, Arch, Features, mlp_hidden, stage_grid, stage_tokens

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
    """One pre-norm transformer block: attention of `num_heads` x `head_dim`, MLP of `mlp_hidden`;
    with `rel_pos` > 0, AutoFormer-style 2-D relative position encoding of keys and values (explicit
    attention, two more token-token products), which the key names (`:r14`): it times differently."""

    tokens: int
    embed_dim: int
    num_heads: int
    head_dim: int
    mlp_hidden: int
    rel_pos: int = 0
    norm_eps: float = DEFAULT_NORM_EPS  # not in the key: it does not change the time

    @property
    def attn_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def key(self) -> str:
        rel = f":r{self.rel_pos}" if self.rel_pos else ""
        return f"block:t{self.tokens}:e{self.embed_dim}:h{self.num_heads}:d{self.head_dim}:m{self.mlp_hidden}{rel}"

    def input_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.tokens, self.embed_dim)


@dataclass(frozen=True)
class ReductionPart:
    """ViT-ResNAS residual spatial reduction from a `grid` x `grid` token map at `in_dim` to half the
    grid at `out_dim` (docs/REFERENCES.md section 4)."""

    grid: int
    in_dim: int
    out_dim: int
    norm_eps: float = DEFAULT_NORM_EPS

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
    """Final LayerNorm over all tokens + linear classifier on the class token (`pool="token"`) or on
    the mean of the patch tokens (`pool="avg"`, named in the key)."""

    tokens: int
    embed_dim: int
    num_classes: int
    pool: str = "token"
    norm_eps: float = DEFAULT_NORM_EPS

    @property
    def key(self) -> str:
        pool = "" if self.pool == "token" else f":{self.pool}"
        return f"head:t{self.tokens}:e{self.embed_dim}:k{self.num_classes}{pool}"

    def input_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.tokens, self.embed_dim)


Part = Union[StemPart, BlockPart, ReductionPart, HeadPart]


# The one place the features of an arch or space become fields of its parts (models, counting, the
# supernet, latency tables and the search's vectorised metrics all build parts through these).


def block_part(features: Features, tokens: int, embed_dim: int, num_heads: int, head_dim: int, mlp_ratio: float) -> BlockPart:
    return BlockPart(tokens, embed_dim, num_heads, head_dim, mlp_hidden(embed_dim, mlp_ratio), features.rel_pos, features.norm_eps)


def reduction_part(features: Features, grid: int, in_dim: int, out_dim: int) -> ReductionPart:
    return ReductionPart(grid, in_dim, out_dim, features.norm_eps)


def head_part(features: Features, tokens: int, embed_dim: int, num_classes: int) -> HeadPart:
    return HeadPart(tokens, embed_dim, num_classes, features.pool, features.norm_eps)


def arch_parts(arch: Arch) -> list[Part]:
    """The parts of `arch` in execution order."""
    f = arch.features
    parts: list[Part] = [StemPart(arch.img_size, arch.patch_size, arch.in_chans, arch.stages[0].embed_dim)]
    for si, stage in enumerate(arch.stages):
        if si > 0:
            grid_in = stage_grid(arch.img_size, arch.patch_size, si - 1)
            parts.append(reduction_part(f, grid_in, arch.stages[si - 1].embed_dim, stage.embed_dim))
        tokens = stage_tokens(arch.img_size, arch.patch_size, si)
        for layer in stage.layers:
            parts.append(block_part(f, tokens, stage.embed_dim, layer.num_heads, stage.head_dim, layer.mlp_ratio))
    last = len(arch.stages) - 1
    parts.append(head_part(f, stage_tokens(arch.img_size, arch.patch_size, last), arch.stages[-1].embed_dim, arch.num_classes))
    return parts


def space_parts(space: "SearchSpace") -> list[Part]:
    """Every distinct part any arch of `space` can contain (what a latency table must time), sorted by key."""
    f = space.features
    found: set[Part] = {StemPart(space.img_size, space.patch_size, space.in_chans, e) for e in space.stages[0].embed_dims}
    for si, s in enumerate(space.stages):
        tokens = space.tokens(si)
        for e in s.embed_dims:
            for h in s.num_heads:
                for r in s.mlp_ratios:
                    found.add(block_part(f, tokens, e, h, s.head_dim, r))
        if si > 0:
            for e_in in space.stages[si - 1].embed_dims:
                for e_out in s.embed_dims:
                    found.add(reduction_part(f, space.grid(si - 1), e_in, e_out))
    last = len(space.stages) - 1
    found |= {head_part(f, space.tokens(last), e, space.num_classes) for e in space.stages[last].embed_dims}
    return sorted(found, key=lambda p: p.key)
