"""The standalone ViT: what `Supernet.extract` returns, `retrain` trains and the exporters consume.

Built only from timm layers (PatchEmbed, Attention with a fixed head dim, Mlp, DropPath, LayerNorm)
and plain torch ops, one module per part of `deployvit.parts`, so a latency table can time each part
with exactly the module the whole model runs, and the supernet can run a part through the same class
with sliced weights. No supernet code lives here.

The features of imported parents (`arch.Features`) are options of these same modules, not a second
model: blocks with 2-D relative position encoding run `RelPosAttention` (AutoFormer's encoding,
deployvit's implementation), the head can average the patch tokens, and the LayerNorm eps is the arch's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import Attention, DropPath, LayerNorm, Mlp, PatchEmbed, trunc_normal_
from torch import nn

from deployvit.arch import DEFAULT_NORM_EPS, Arch
from deployvit.parts import BlockPart, HeadPart, Part, ReductionPart, StemPart, arch_parts

LN_EPS = DEFAULT_NORM_EPS


class PatchStem(nn.Module):
    """Patch embedding + class token + learned position embedding."""

    def __init__(self, part: StemPart):
        super().__init__()
        self.patch_embed = PatchEmbed(part.img_size, part.patch_size, part.in_chans, part.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, part.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, part.num_patches + 1, part.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat((cls, x), dim=1) + self.pos_embed


def rel_pos_index(tokens: int, max_distance: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices into the vertical and horizontal tables of 2-D relative position encoding for a
    class token plus a square grid of `tokens - 1` patches, each [tokens, tokens].

    Patches i and j at grid rows/columns (r_i, c_i), (r_j, c_j) use rows d + max_distance + 1 of the
    tables, d = r_j - r_i (vertical) and c_j - c_i (horizontal) clipped to +-max_distance; every pair
    with the class token uses row 0 of both (AutoFormer's class-token row)."""
    side = math.isqrt(tokens - 1)
    if side * side != tokens - 1:
        raise ValueError(f"relative position encoding needs a square patch grid, got {tokens - 1} patches")
    pos = torch.arange(tokens - 1, device=device)

    def index(coord: torch.Tensor) -> torch.Tensor:
        d = (coord[None, :] - coord[:, None]).clamp(-max_distance, max_distance) + max_distance + 1
        return F.pad(d, (1, 0, 1, 0), value=0)

    return index(pos // side), index(pos % side)


class RelativePosition2D(nn.Module):
    """A learned 2-D relative position embedding of head_dim per token pair: the sum of a vertical
    and a horizontal table row (2 * max_distance + 2 rows each, row 0 for the class token), shared by
    all heads of a block (AutoFormer's `RelativePosition2D`, deployvit's implementation)."""

    def __init__(self, tokens: int, head_dim: int, max_distance: int):
        super().__init__()
        self.tokens, self.max_distance = tokens, max_distance
        self.table_v = nn.Parameter(torch.zeros(2 * max_distance + 2, head_dim))
        self.table_h = nn.Parameter(torch.zeros(2 * max_distance + 2, head_dim))
        self._index: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # per device; not state: a function of the shape

    def forward(self) -> torch.Tensor:
        """[tokens, tokens, head_dim] embeddings of every (query, key) pair."""
        device = self.table_v.device
        index = self._index.get(str(device))
        if index is None:
            index = self._index[str(device)] = rel_pos_index(self.tokens, self.max_distance, device)
        return self.table_v[index[0]] + self.table_h[index[1]]


class RelPosAttention(nn.Module):
    """Multi-head attention with 2-D relative position encoding added to the keys and the values:
    softmax(q (k + r_k)^T / sqrt(d)) (v + r_v) per pair, as AutoFormer's supernets compute it.

    The token-pair embeddings make it explicit attention (the N x N probabilities are needed for the
    value term), so it cannot use fused attention; names match timm's `Attention` (qkv, proj) so the
    weights of both load alike."""

    def __init__(self, part: BlockPart):
        super().__init__()
        self.num_heads, self.head_dim = part.num_heads, part.head_dim
        self.scale = part.head_dim**-0.5
        self.qkv = nn.Linear(part.embed_dim, 3 * part.attn_dim)
        self.rel_k = RelativePosition2D(part.tokens, part.head_dim, part.rel_pos)
        self.rel_v = RelativePosition2D(part.tokens, part.head_dim, part.rel_pos)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(part.attn_dim, part.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # [b, h, n, d] each
        q = q * self.scale
        # per query token n: its b*h query rows times that token's [n, d] key embeddings (a batched matmul)
        q_rows = q.permute(2, 0, 1, 3).reshape(n, b * h, d)
        pos_scores = (q_rows @ self.rel_k().transpose(1, 2)).reshape(n, b, h, n).permute(1, 2, 0, 3)
        attn = self.attn_drop((q @ k.transpose(-2, -1) + pos_scores).softmax(dim=-1))
        pos_values = (attn.permute(2, 0, 1, 3).reshape(n, b * h, n) @ self.rel_v()).reshape(n, b, h, d).permute(1, 2, 0, 3)
        out = (attn @ v + pos_values).transpose(1, 2).reshape(b, n, h * d)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block whose attention width is num_heads x head_dim (not embed_dim), as
    in AutoFormer; fused attention through timm's Attention (`F.scaled_dot_product_attention`), or
    `RelPosAttention` when the part has relative position encoding."""

    def __init__(self, part: BlockPart, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = LayerNorm(part.embed_dim, eps=part.norm_eps)
        if part.rel_pos:
            self.attn = RelPosAttention(part)
        else:
            self.attn = Attention(part.embed_dim, part.num_heads, attn_head_dim=part.head_dim, qkv_bias=True)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = LayerNorm(part.embed_dim, eps=part.norm_eps)
        self.mlp = Mlp(part.embed_dim, hidden_features=part.mlp_hidden)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class ResidualReduction(nn.Module):
    """ViT-ResNAS residual spatial reduction: LayerNorm then 3x3 stride-2 conv to the new width plus a
    new position embedding, shortcut = 2x2 average pool of the un-normalised tokens zero-padded to
    the new width; the class token goes through a Linear plus the same zero-padded shortcut."""

    def __init__(self, part: ReductionPart):
        super().__init__()
        self.grid, self.pad = part.grid, part.out_dim - part.in_dim
        self.norm = LayerNorm(part.in_dim, eps=part.norm_eps)
        self.conv = nn.Conv2d(part.in_dim, part.out_dim, kernel_size=3, stride=2, padding=1)
        self.cls_proj = nn.Linear(part.in_dim, part.out_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, part.out_grid**2 + 1, part.out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        normed = self.norm(x)
        to_grid = lambda t: t.transpose(1, 2).reshape(b, c, self.grid, self.grid)  # noqa: E731
        main = self.conv(to_grid(normed[:, 1:])).flatten(2).transpose(1, 2)
        shortcut = F.avg_pool2d(to_grid(x[:, 1:]), 2).flatten(2).transpose(1, 2)
        tokens = main + F.pad(shortcut, (0, self.pad))
        cls = self.cls_proj(normed[:, :1]) + F.pad(x[:, :1], (0, self.pad))
        return torch.cat((cls, tokens), dim=1) + self.pos_embed


class Head(nn.Module):
    """Final LayerNorm over all tokens, then the classifier on the class token (timm's ViT order), or
    on the mean of the normalised patch tokens (`pool="avg"`, AutoFormer's global pooling)."""

    def __init__(self, part: HeadPart):
        super().__init__()
        self.pool = part.pool
        self.norm = LayerNorm(part.embed_dim, eps=part.norm_eps)
        self.fc = nn.Linear(part.embed_dim, part.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.fc(x[:, 1:].mean(dim=1) if self.pool == "avg" else x[:, 0])


def build_part(part: Part, drop_path: float = 0.0) -> nn.Module:
    """The module class the standalone ViT uses for `part` (timed alone by the latency profiler)."""
    if isinstance(part, StemPart):
        return PatchStem(part)
    if isinstance(part, BlockPart):
        return Block(part, drop_path)
    if isinstance(part, ReductionPart):
        return ResidualReduction(part)
    if isinstance(part, HeadPart):
        return Head(part)
    raise TypeError(f"unknown part {part!r}")


class ViT(nn.Module):
    """A single- or multi-stage ViT for one `Arch`: stem, stages of blocks (a residual spatial
    reduction opening every stage after the first), head."""

    def __init__(self, arch: Arch, drop_path_rate: float = 0.0):
        super().__init__()
        self.arch = arch
        parts = arch_parts(arch)
        block_parts = [p for p in parts if isinstance(p, BlockPart)]
        rates = drop_path_rates(drop_path_rate, len(block_parts))
        self.stem = build_part(parts[0])
        self.reductions = nn.ModuleList(build_part(p) for p in parts if isinstance(p, ReductionPart))
        self.stages = nn.ModuleList()
        i = 0
        for stage in arch.stages:
            self.stages.append(nn.Sequential(*(build_part(block_parts[i + j], rates[i + j]) for j in range(stage.depth))))
            i += stage.depth
        self.head = build_part(parts[-1])
        init_weights(self)

    def no_weight_decay(self) -> set[str]:
        """timm's convention (`create_optimizer_v2` reads it): position embeddings (relative ones
        included) and the class token are not decayed; norms and biases are 1-D, which timm exempts by shape. The supernet names the
        same tensors (`Supernet.no_weight_decay`), so both trainers regularise a weight alike."""
        names = {"stem.pos_embed", "stem.cls_token"} | {n for n, _ in self.named_parameters() if ".rel_" in n}
        return names | {f"reductions.{i}.pos_embed" for i in range(len(self.reductions))}

    def part_modules(self) -> list[nn.Module]:
        """Modules in the order of `arch_parts(self.arch)` (stem, [reduction,] blocks..., head)."""
        modules: list[nn.Module] = [self.stem]
        for si, stage in enumerate(self.stages):
            if si > 0:
                modules.append(self.reductions[si - 1])
            modules.extend(stage)
        return modules + [self.head]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for si, stage in enumerate(self.stages):
            if si > 0:
                x = self.reductions[si - 1](x)
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def drop_path_rates(rate: float, n_blocks: int) -> list[float]:
    """Stochastic depth per executed block: linear from 0 (first block) to `rate` (last), as timm.
    The one formula: the standalone model and the supernet running the same arch index blocks by
    their position in the arch (not in the supernet), so both drop the same paths with the same odds."""
    return [rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]


def init_weights(module: nn.Module) -> None:
    """ViT/DeiT initialisation (truncated normal 0.02 for weights and embeddings, zero biases).

    Modules on the meta device (shape-only templates, extraction targets) have nothing to initialise."""
    if any(p.is_meta for p in module.parameters()):
        return
    for name, param in module.named_parameters():
        if name.endswith("cls_token") or name.endswith("pos_embed") or ".rel_" in name:
            trunc_normal_(param, std=0.02)
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_model(arch: Arch, drop_path_rate: float = 0.0) -> ViT:
    """The standalone model of `arch`, freshly initialised."""
    return ViT(arch, drop_path_rate)
