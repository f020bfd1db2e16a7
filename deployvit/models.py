"""The standalone ViT: what `Supernet.extract` returns, `retrain` trains and the exporters consume.

Built only from timm layers (PatchEmbed, Attention with a fixed head dim, Mlp, DropPath, LayerNorm)
and plain torch ops, one module per part of `deployvit.parts`, so a latency table can time each part
with exactly the module the whole model runs, and the supernet can run a part through the same class
with sliced weights. No supernet code lives here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Attention, DropPath, LayerNorm, Mlp, PatchEmbed, trunc_normal_
from torch import nn

from deployvit.arch import Arch
from deployvit.parts import BlockPart, HeadPart, Part, ReductionPart, StemPart, arch_parts

LN_EPS = 1e-6


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


class Block(nn.Module):
    """Pre-norm transformer block whose attention width is num_heads x head_dim (not embed_dim), as
    in AutoFormer; fused attention through timm's Attention (`F.scaled_dot_product_attention`)."""

    def __init__(self, part: BlockPart, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = LayerNorm(part.embed_dim, eps=LN_EPS)
        self.attn = Attention(part.embed_dim, part.num_heads, attn_head_dim=part.head_dim, qkv_bias=True)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = LayerNorm(part.embed_dim, eps=LN_EPS)
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
        self.norm = LayerNorm(part.in_dim, eps=LN_EPS)
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
    """Final LayerNorm over all tokens, then the classifier on the class token (timm's ViT order)."""

    def __init__(self, part: HeadPart):
        super().__init__()
        self.norm = LayerNorm(part.embed_dim, eps=LN_EPS)
        self.fc = nn.Linear(part.embed_dim, part.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x)[:, 0])


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
        """timm's convention (`create_optimizer_v2` reads it): position embeddings and the class token
        are not decayed; norms and biases are 1-D, which timm exempts by shape. The supernet names the
        same tensors (`Supernet.no_weight_decay`), so both trainers regularise a weight alike."""
        names = {"stem.pos_embed", "stem.cls_token"}
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
        if name.endswith("cls_token") or name.endswith("pos_embed"):
            trunc_normal_(param, std=0.02)
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_model(arch: Arch, drop_path_rate: float = 0.0) -> ViT:
    """The standalone model of `arch`, freshly initialised."""
    return ViT(arch, drop_path_rate)
