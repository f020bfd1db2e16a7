"""Importance ordering of a parent's channels, heads and MLP units, so that leading slices keep what
matters (Once-for-All's channel sorting, ModelOpt FastNAS's `sort_parameters`: deployvit's
implementation of the idea).

A supernet hands a subnet the *leading* embedding channels, the leading heads (q, k and v as three
leading slices) and the leading MLP units of every layer (`supernet.elastic`). A model trained
without weight sharing has no reason to keep its important units first, so before slicing the
importer permutes, per block, the heads and the MLP hidden units, and once for the whole residual
stream the embedding channels, most important first. Every permutation is applied to every tensor
that reads or writes the permuted axis, so the parent computes the same function (LayerNorm is
permutation-equivariant over channels; tested to 1e-5 on the logits).

Criteria (`ORDERS`):
- `magnitude` (weights only; `import`'s default without data): an MLP unit by |fc1 row| x |fc2 column| (its gain from
  input to output), a head by the Frobenius norm of its value-to-output map W_proj[:, head] W_v[head]
  (attention rows sum to one, so this bounds what the head can write), an embedding channel by what
  reads it: the sum over every LayerNorm of |gain| x |the weights that read the normalised channel|
  (q/k/v, fc1, the classifier).
- `activation` (data: a few batches of the user's images; `import`'s default with `--data`, as it
  kept more of the parent than `magnitude` in every measured budget): the same reads and writes weighted by the
  mean absolute activation each carries on those images (|x| of a channel at each LayerNorm output,
  of a unit after GELU, of a head's attention output): what the parent actually uses on this data.
- `none`: the parent's own order (the benchmark's baseline).

`benchmarks/from_parent.py` measures them: inherited accuracy of subnets at 25/50/75% of the
parent's FLOPs with each order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from deployvit.supernet import Supernet
from deployvit.supernet.elastic import ElasticBlock

ORDERS = ("magnitude", "activation", "none")


@dataclass
class Importance:
    """Scores, higher is more important: embedding channels [E]; per block, heads [H] and MLP units [M]."""

    channels: torch.Tensor
    heads: list[torch.Tensor]
    hidden: list[torch.Tensor]


def _blocks(supernet: Supernet) -> list[ElasticBlock]:
    if supernet.space.multi_stage or supernet.cyclic:
        raise ValueError("importance ordering applies to single-stage prefix supernets (what an import builds)")
    return list(supernet.stages[0])


def _head_dim(supernet: Supernet) -> int:
    return supernet.space.stages[0].head_dim


def _value_to_output(block: ElasticBlock, head_dim: int) -> torch.Tensor:
    """Per head, the Frobenius norm of W_proj[:, head] @ W_v[head] (its value-to-output map)."""
    heads = block.proj_weight.shape[1] // head_dim
    w_v = block.qkv_weight[2].reshape(heads, head_dim, -1)  # [H, d, E]
    w_o = block.proj_weight.reshape(-1, heads, head_dim).permute(1, 0, 2)  # [H, E, d]
    return torch.linalg.matrix_norm(w_o @ w_v)


@torch.no_grad()
def magnitude_importance(supernet: Supernet) -> Importance:
    d = _head_dim(supernet)
    blocks = _blocks(supernet)
    channels = supernet.head.norm.weight.abs() * supernet.head.fc_weight.norm(dim=0)
    heads, hidden = [], []
    for b in blocks:
        channels = channels + b.norm1.weight.abs() * b.qkv_weight.norm(dim=(0, 1))
        channels = channels + b.norm2.weight.abs() * b.fc1_weight.norm(dim=0)
        heads.append(_value_to_output(b, d))
        hidden.append(b.fc1_weight.norm(dim=1) * b.fc2_weight.norm(dim=0))
    return Importance(channels, heads, hidden)


@torch.no_grad()
def activation_importance(supernet: Supernet, batches: Iterable[torch.Tensor]) -> Importance:
    """Mean absolute activations of the parent (the supernet's largest arch) on `batches`, times the
    weights that carry them on (see the module docstring)."""
    from deployvit.models import Block, Head

    model = supernet.extract(supernet.space.max_arch()).eval()
    blocks = [m for m in model.part_modules() if isinstance(m, Block)]
    head = model.part_modules()[-1]
    assert isinstance(head, Head)
    sums: dict[str, torch.Tensor] = {}

    def record(name: str, dims: tuple[int, ...]):
        def hook(_module, _inputs, output):
            value = output.abs().mean(dim=dims)
            sums[name] = sums.get(name, 0) + value
        return hook

    handles = [head.norm.register_forward_hook(record("head.norm", (0, 1)))]
    for i, b in enumerate(blocks):
        handles += [
            b.norm1.register_forward_hook(record(f"{i}.norm1", (0, 1))),
            b.norm2.register_forward_hook(record(f"{i}.norm2", (0, 1))),
            b.mlp.act.register_forward_hook(record(f"{i}.act", (0, 1))),
            b.attn.proj.register_forward_pre_hook(lambda _m, args, i=i, b=b: _record_heads(sums, f"{i}.heads", args[0], b)),
        ]
    try:
        n = 0
        for x in batches:
            model(x)
            n += 1
    finally:
        for h in handles:
            h.remove()
    if n == 0:
        raise ValueError("activation importance needs at least one batch")
    channels = sums["head.norm"] * model.head.fc.weight.norm(dim=0)
    heads, hidden = [], []
    for i, b in enumerate(blocks):
        channels = channels + sums[f"{i}.norm1"] * b.attn.qkv.weight.norm(dim=0)
        channels = channels + sums[f"{i}.norm2"] * b.mlp.fc1.weight.norm(dim=0)
        heads.append(sums[f"{i}.heads"])
        hidden.append(sums[f"{i}.act"] * b.mlp.fc2.weight.norm(dim=0))
    return Importance(channels, heads, hidden)


def _record_heads(sums: dict, name: str, attn_out: torch.Tensor, block) -> None:
    """Per head, the mean norm of what it writes through the projection: |W_proj[:, head] o_head|."""
    heads = block.attn.num_heads
    w = block.attn.proj.weight  # [E, H*d]
    o = attn_out.reshape(*attn_out.shape[:-1], heads, -1)  # [B, N, H, d]
    w_h = w.reshape(w.shape[0], heads, -1)  # [E, H, d]
    written = torch.einsum("bnhd,ehd->bnhe", o, w_h).norm(dim=-1).mean(dim=(0, 1))
    sums[name] = sums.get(name, 0) + written


def _order(scores: torch.Tensor) -> torch.Tensor:
    """Most important first; ties keep the parent's order (a stable sort)."""
    return torch.sort(scores, descending=True, stable=True).indices


def _permute_(param: torch.Tensor, dim: int, index: torch.Tensor) -> None:
    param.copy_(param.index_select(dim, index))


def _head_index(order: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (order[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


@torch.no_grad()
def reorder(supernet: Supernet, importance: Importance) -> dict:
    """Permute the supernet's weights so the most important channels, heads and units lead; returns
    how much importance the leading half held before and after (what the order buys)."""
    d = _head_dim(supernet)
    blocks = _blocks(supernet)
    share_before = _leading_share(importance)
    c = _order(importance.channels)
    st = supernet.stem
    _permute_(st.proj_weight, 0, c)
    _permute_(st.proj_bias, 0, c)
    _permute_(st.cls_token, 2, c)
    _permute_(st.pos_embed, 2, c)
    for b, head_scores, unit_scores in zip(blocks, importance.heads, importance.hidden, strict=True):
        h = _head_index(_order(head_scores), d)
        u = _order(unit_scores)
        for norm in (b.norm1, b.norm2):
            _permute_(norm.weight, 0, c)
            _permute_(norm.bias, 0, c)
        qkv = b.qkv_weight.index_select(1, h).index_select(2, c)
        b.qkv_weight.copy_(qkv)
        b.qkv_bias.copy_(b.qkv_bias.view(3, -1).index_select(1, h).reshape(-1))
        b.proj_weight.copy_(b.proj_weight.index_select(0, c).index_select(1, h))
        _permute_(b.proj_bias, 0, c)
        b.fc1_weight.copy_(b.fc1_weight.index_select(0, u).index_select(1, c))
        _permute_(b.fc1_bias, 0, u)
        b.fc2_weight.copy_(b.fc2_weight.index_select(0, c).index_select(1, u))
        _permute_(b.fc2_bias, 0, c)
    hd = supernet.head
    _permute_(hd.norm.weight, 0, c)
    _permute_(hd.norm.bias, 0, c)
    _permute_(hd.fc_weight, 1, c)
    sorted_imp = Importance(
        importance.channels[c], [s[_order(s)] for s in importance.heads], [s[_order(s)] for s in importance.hidden]
    )
    return {"leading_half_share_before": share_before, "leading_half_share_after": _leading_share(sorted_imp)}


def _leading_share(imp: Importance) -> dict[str, float]:
    """Share of the total importance in the leading half of each axis (mean over blocks)."""

    def share(t: torch.Tensor) -> float:
        total = float(t.sum())
        return float(t[: (len(t) + 1) // 2].sum()) / total if total > 0 else 0.0

    def mean(ts: list[torch.Tensor]) -> float:
        return round(sum(share(t) for t in ts) / max(len(ts), 1), 4)

    return {"channels": round(share(imp.channels), 4), "heads": mean(imp.heads), "mlp_units": mean(imp.hidden)}
