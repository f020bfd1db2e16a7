"""Analytic parameter and FLOP counts, exact for the standalone model and fast enough for search.

FLOPs are multiply-accumulates of the matrix products and convolutions (the papers' convention:
DeiT-Ti 1.25 G), attention's two token-token products included (four with relative position
encoding: queries times the key embeddings, probabilities times the value embeddings); LayerNorm,
softmax, GELU, additions, embedding look-ups and pooling are not counted. Relative position tables
count as AutoFormer counts them: two tables of (2 x distance + 2) rows x head dim, for keys and for
values, in every block. The per-part formulas take plain numbers or numpy arrays, so the
search can evaluate a whole population at once with the same formulas. `fvcore_flops` is the ground
truth used by the tests: fvcore on the real module, with a handle for fused attention that fvcore
otherwise skips silently.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from deployvit.arch import Arch
from deployvit.parts import BlockPart, HeadPart, Part, ReductionPart, StemPart, arch_parts

# --- per-part formulas (numbers or numpy arrays) -----------------------------------------------------


def stem_params(in_chans, patch_size, num_patches, embed_dim):
    return embed_dim * (in_chans * patch_size * patch_size + 1) + embed_dim + (num_patches + 1) * embed_dim


def stem_macs(in_chans, patch_size, num_patches, embed_dim):
    return num_patches * embed_dim * in_chans * patch_size * patch_size


def block_params(embed_dim, attn_dim, mlp_hidden):
    norms = 4 * embed_dim
    attn = 3 * attn_dim * (embed_dim + 1) + embed_dim * (attn_dim + 1)
    mlp = mlp_hidden * (embed_dim + 1) + embed_dim * (mlp_hidden + 1)
    return norms + attn + mlp


def block_macs(tokens, embed_dim, attn_dim, mlp_hidden):
    qkv_proj = tokens * embed_dim * 4 * attn_dim
    attention = 2 * tokens * tokens * attn_dim  # q @ k^T and attn @ v
    mlp = 2 * tokens * embed_dim * mlp_hidden
    return qkv_proj + attention + mlp


def rel_pos_params(rel_pos, head_dim):
    """Vertical and horizontal tables for keys and for values (0 without relative position encoding)."""
    return 4 * (2 * rel_pos + 2) * head_dim * (rel_pos > 0)


def rel_pos_macs(tokens, attn_dim, rel_pos):
    """q times the key embeddings and the probabilities times the value embeddings, per head."""
    return 2 * tokens * tokens * attn_dim * (rel_pos > 0)


def reduction_params(out_grid, in_dim, out_dim):
    return 2 * in_dim + out_dim * (9 * in_dim + 1) + out_dim * (in_dim + 1) + (out_grid * out_grid + 1) * out_dim


def reduction_macs(out_grid, in_dim, out_dim):
    return out_grid * out_grid * 9 * in_dim * out_dim + in_dim * out_dim


def head_params(embed_dim, num_classes):
    return 2 * embed_dim + num_classes * (embed_dim + 1)


def head_macs(embed_dim, num_classes):
    return embed_dim * num_classes


@lru_cache(maxsize=None)
def part_counts(part: Part) -> tuple[int, int]:
    """(params, MACs) of one part."""
    if isinstance(part, StemPart):
        args = (part.in_chans, part.patch_size, part.num_patches, part.embed_dim)
        return stem_params(*args), stem_macs(*args)
    if isinstance(part, BlockPart):
        return (
            block_params(part.embed_dim, part.attn_dim, part.mlp_hidden) + rel_pos_params(part.rel_pos, part.head_dim),
            block_macs(part.tokens, part.embed_dim, part.attn_dim, part.mlp_hidden) + rel_pos_macs(part.tokens, part.attn_dim, part.rel_pos),
        )
    if isinstance(part, ReductionPart):
        args = (part.out_grid, part.in_dim, part.out_dim)
        return reduction_params(*args), reduction_macs(*args)
    if isinstance(part, HeadPart):
        return head_params(part.embed_dim, part.num_classes), head_macs(part.embed_dim, part.num_classes)
    raise TypeError(f"unknown part {part!r}")


def count_params(arch: Arch) -> int:
    """Exact parameter count of `build_model(arch)`."""
    return sum(part_counts(p)[0] for p in arch_parts(arch))


def count_flops(arch: Arch) -> int:
    """Multiply-accumulates of one image through `build_model(arch)`."""
    return sum(part_counts(p)[1] for p in arch_parts(arch))


# --- fvcore ground truth ------------------------------------------------------------------------------


def _sdpa_flop_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for aten::scaled_dot_product_attention: q @ k^T plus attn @ v."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(t) for t in inputs[:3])
    batch_heads = 1
    for d in q[:-2]:
        batch_heads *= d
    return batch_heads * q[-2] * k[-2] * (q[-1] + v[-1])


def fvcore_flops(model, img_size: int, in_chans: int = 3, count_norms: bool = False) -> int:
    """fvcore's count for one image, fused attention included (fvcore 0.1.5 skips it silently).

    LayerNorm is left out unless `count_norms`, matching the papers' MAC convention."""
    import torch
    from fvcore.nn import FlopCountAnalysis

    x = torch.randn(1, in_chans, img_size, img_size)
    was_training = model.training
    model.eval()
    try:
        analysis = FlopCountAnalysis(model, x)
        analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop_handle)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        by_op = analysis.by_operator()
        return int(sum(n for op, n in by_op.items() if count_norms or op != "layer_norm"))
    finally:
        model.train(was_training)
