"""Elastic (weight-sharing) parts: each holds the largest weights of one supernet position and hands
out a subnet's slice of them as a state dict of the standalone part module.

AutoFormer weight entanglement: a subnet uses leading slices (`W[:out, :in]`) of every weight, with
q, k and v kept as three separate leading slices (a cleaner layout than AutoFormer's interleaved
rows, docs/REFERENCES.md section 1). Residual-stream (token-embedding) channels are selected by a
`ChannelSelect` so the cyclic windows of `sharing.channel_windows` apply to every layer alike. The
supernet runs a part by calling the standalone module with these sliced tensors, so the supernet
and the extracted model compute the same function by construction.
"""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import nn

from deployvit.supernet.sharing import ChannelSelect, take

Sliced = dict[str, torch.Tensor]


def _weight(*shape: int) -> nn.Parameter:
    p = nn.Parameter(torch.empty(*shape))
    trunc_normal_(p, std=0.02)
    return p


def _zeros(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(*shape))


def _ones(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.ones(*shape))


def _head_rows(t: torch.Tensor, width: int) -> torch.Tensor:
    return t.narrow(0, 0, width)


class ElasticNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight, self.bias = _ones(dim), _zeros(dim)

    def sliced(self, prefix: str, ch: ChannelSelect) -> Sliced:
        return {f"{prefix}.weight": take(self.weight, 0, ch), f"{prefix}.bias": take(self.bias, 0, ch)}


class ElasticStem(nn.Module):
    def __init__(self, img_size: int, patch_size: int, in_chans: int, max_dim: int):
        super().__init__()
        num_patches = (img_size // patch_size) ** 2
        self.proj_weight = _weight(max_dim, in_chans, patch_size, patch_size)
        self.proj_bias = _zeros(max_dim)
        self.cls_token = _weight(1, 1, max_dim)
        self.pos_embed = _weight(1, num_patches + 1, max_dim)

    def sliced(self, ch: ChannelSelect) -> Sliced:
        return {
            "patch_embed.proj.weight": take(self.proj_weight, 0, ch),
            "patch_embed.proj.bias": take(self.proj_bias, 0, ch),
            "cls_token": take(self.cls_token, 2, ch),
            "pos_embed": take(self.pos_embed, 2, ch),
        }


QKV_BIAS_LAYOUTS = ("split", "contiguous")


class ElasticBlock(nn.Module):
    """`rel_pos` > 0: the block's relative position tables too ([2 rel_pos + 2, head_dim] each, for
    keys and for values); every subnet uses them whole (the head dim is fixed per stage).

    `qkv_bias`: "split" (deployvit's layout): the q, k and v biases are three leading slices, like
    their weights; "contiguous" (AutoFormer's supernets): a subnet of attention width A takes the
    leading 3 A entries, q, k and v one after the other, so a key's bias depends on the subnet's width."""

    def __init__(self, max_dim: int, max_attn_dim: int, max_hidden: int, rel_pos: int = 0, head_dim: int = 0,
                 qkv_bias: str = "split"):
        super().__init__()
        self.rel_pos, self.qkv_bias_layout = rel_pos, qkv_bias
        if rel_pos:
            rows = 2 * rel_pos + 2
            self.rel_k_table_v, self.rel_k_table_h = _weight(rows, head_dim), _weight(rows, head_dim)
            self.rel_v_table_v, self.rel_v_table_h = _weight(rows, head_dim), _weight(rows, head_dim)
        self.norm1, self.norm2 = ElasticNorm(max_dim), ElasticNorm(max_dim)
        self.qkv_weight = _weight(3, max_attn_dim, max_dim)
        self.qkv_bias = _zeros(3 * max_attn_dim)  # q, k, v biases end to end; 1-D like the standalone qkv bias
        self.proj_weight = _weight(max_dim, max_attn_dim)
        self.proj_bias = _zeros(max_dim)
        self.fc1_weight = _weight(max_hidden, max_dim)
        self.fc1_bias = _zeros(max_hidden)
        self.fc2_weight = _weight(max_dim, max_hidden)
        self.fc2_bias = _zeros(max_dim)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints written before the qkv bias became 1-D stored it as [3, attn]: same values."""
        key = prefix + "qkv_bias"
        if key in state_dict and state_dict[key].dim() == 2:
            state_dict[key] = state_dict[key].reshape(-1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def sliced(self, ch: ChannelSelect, attn_dim: int, hidden: int) -> Sliced:
        qkv_w = self.qkv_weight.narrow(1, 0, attn_dim)
        rel = {}
        if self.rel_pos:
            rel = {f"attn.rel_{w}.table_{a}": getattr(self, f"rel_{w}_table_{a}") for w in "kv" for a in "vh"}
        return {
            **rel,
            **self.norm1.sliced("norm1", ch),
            "attn.qkv.weight": take(qkv_w, 2, ch).reshape(3 * attn_dim, -1),
            "attn.qkv.bias": (self.qkv_bias.narrow(0, 0, 3 * attn_dim) if self.qkv_bias_layout == "contiguous"
                              else self.qkv_bias.view(3, -1).narrow(1, 0, attn_dim).reshape(-1)),
            "attn.proj.weight": take(self.proj_weight, 0, ch).narrow(1, 0, attn_dim),
            "attn.proj.bias": take(self.proj_bias, 0, ch),
            **self.norm2.sliced("norm2", ch),
            "mlp.fc1.weight": take(_head_rows(self.fc1_weight, hidden), 1, ch),
            "mlp.fc1.bias": _head_rows(self.fc1_bias, hidden),
            "mlp.fc2.weight": take(self.fc2_weight, 0, ch).narrow(1, 0, hidden),
            "mlp.fc2.bias": take(self.fc2_bias, 0, ch),
        }


class ElasticReduction(nn.Module):
    def __init__(self, out_grid: int, max_in: int, max_out: int):
        super().__init__()
        self.norm = ElasticNorm(max_in)
        self.conv_weight = _weight(max_out, max_in, 3, 3)
        self.conv_bias = _zeros(max_out)
        self.cls_weight = _weight(max_out, max_in)
        self.cls_bias = _zeros(max_out)
        self.pos_embed = _weight(1, out_grid * out_grid + 1, max_out)

    def sliced(self, ch_in: ChannelSelect, ch_out: ChannelSelect) -> Sliced:
        return {
            **self.norm.sliced("norm", ch_in),
            "conv.weight": take(take(self.conv_weight, 0, ch_out), 1, ch_in),
            "conv.bias": take(self.conv_bias, 0, ch_out),
            "cls_proj.weight": take(take(self.cls_weight, 0, ch_out), 1, ch_in),
            "cls_proj.bias": take(self.cls_bias, 0, ch_out),
            "pos_embed": take(self.pos_embed, 2, ch_out),
        }


class ElasticHead(nn.Module):
    def __init__(self, max_dim: int, num_classes: int):
        super().__init__()
        self.norm = ElasticNorm(max_dim)
        self.fc_weight = _weight(num_classes, max_dim)
        self.fc_bias = _zeros(num_classes)

    def sliced(self, ch: ChannelSelect) -> Sliced:
        return {**self.norm.sliced("norm", ch), "fc.weight": take(self.fc_weight, 1, ch), "fc.bias": self.fc_bias}
