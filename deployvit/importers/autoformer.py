"""AutoFormer's released supernets (`--from autoformer --weights supernet-{tiny,small,base}.pth`).

The files hold AutoFormer's `Vision_TransformerSuper` state dict under `model` (beside optimizer and
scheduler state and the training `args`, an `argparse.Namespace`), trained with `--gp --change_qkv
--relative_position` (microsoft/Cream, AutoFormer/README.md). What deployvit reads from them, and how
its one ViT computes the same function (read from AutoFormer's model code, not copied):

- relative position encoding: per block, vertical and horizontal tables ([2 x 14 + 2, 64] for keys and
  for values, row 0 for every pair with the class token) -> `Features.rel_pos` (models.RelPosAttention);
- `change_qkv`: attention width 64 x heads; AutoFormer's qkv rows interleave q, k, v (row 3j + i is
  part i of channel j) and a subnet takes rows [0, 3 x 64 x heads) -> three leading slices [3, A, E];
  its bias is sliced contiguously (a subnet of width A takes entries [0, 3A): q, k, v one after the
  other), which no per-part layout reproduces -> the supernet's `qkv_bias="contiguous"`;
- `gp`: the classifier reads the mean of the normalised patch tokens -> `Features.pool = "avg"`;
- LayerNorm is torch's default (eps 1e-5) -> `Features.norm_eps`; pre-norm blocks, exact GELU;
- every other weight a leading slice, layers past the depth skipped: as deployvit's prefix supernet.

The space is the released one: the choices of `experiments/supernet/supernet-{T,S,B}.yaml` together
with those the published subnets use (`experiments/subnet/AutoFormer-{T,S,B}.yaml`: tiny MLP ratio
3.0, base 8 heads), which are deployvit's `autoformer-*` presets, plus the features above. The
published subnet of the size is written beside the parent (`AutoFormer-T.arch.json`, ...).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from typing import Any

import torch

from deployvit.arch import Arch, Features, Layer, Stage
from deployvit.errors import DeployvitError
from deployvit.importers.common import Parent, default_stage
from deployvit.models import ViT
from deployvit.spaces import PRESETS, SearchSpace
from deployvit.weights import check_shapes

HEAD_DIM = 64  # change_qkv: AutoFormer fixes q, k and v at 64 per head
NORM_EPS = 1e-5  # AutoFormer's LayerNormSuper is torch.nn.LayerNorm with its default eps
ALLOWED_GLOBALS = (argparse.Namespace,)  # what a released file may hold beyond tensors and plain data

#: released supernets: (weights' embed dim, depth) at 224 / 16 -> size (supernet-{T,S,B}.yaml SUPERNET)
RELEASED = {(256, 14): "tiny", (448, 14): "small", (640, 16): "base"}

#: the published subnets (experiments/subnet/AutoFormer-{T,S,B}.yaml RETRAIN): embed dim, per-layer
#: heads and MLP ratios
PUBLISHED = {
    "tiny": ("AutoFormer-T", 192, (3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4, 3, 3),
             (3.5, 3.5, 3.0, 3.5, 3.0, 3.0, 4.0, 4.0, 3.5, 4.0, 3.5, 4.0, 3.5)),
    "small": ("AutoFormer-S", 384, (6, 6, 5, 7, 5, 5, 5, 6, 6, 7, 7, 6, 7),
              (3.0, 3.5, 3.0, 3.5, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 3.5, 4.0)),
    "base": ("AutoFormer-B", 576, (9, 9, 9, 9, 9, 10, 9, 9, 10, 9, 10, 9, 9, 10),
             (3.5, 3.5, 4.0, 3.5, 4.0, 3.5, 3.5, 3.0, 4.0, 4.0, 3.0, 4.0, 3.0, 3.5)),
}


def unwrap(checkpoint: Any, path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, training args) of a loaded AutoFormer checkpoint (`{"model": ..., "args": ...}` or a
    bare state dict; a `module.` prefix from DistributedDataParallel is dropped)."""
    args: dict[str, Any] = {}
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("args"), argparse.Namespace):
        args = vars(checkpoint["args"])
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise DeployvitError(f"{path}: holds no AutoFormer state dict of tensors (expected one under 'model')")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, args


def _need(state: dict[str, torch.Tensor], key: str, dims: int, path: str) -> torch.Tensor:
    t = state.get(key)
    if t is None:
        raise DeployvitError(f"{path} is not an AutoFormer supernet checkpoint: missing {key}")
    if t.dim() != dims:
        raise DeployvitError(f"{path}: {key} has shape {tuple(t.shape)}, expected {dims} dimensions")
    return t


def expected_shapes(embed: int, depth: int, hidden: int, classes: int, in_chans: int, patch: int, tokens: int,
                    rel_rows: int, rel_width: int, qkv_bias: bool = True) -> dict[str, tuple[int, ...]]:
    """Every key of a `Vision_TransformerSuper` state dict (change_qkv, absolute position embedding;
    relative position tables when rel_rows > 0, the qkv bias when `qkv_bias`) and its shape."""
    shapes = {"pos_embed": (1, tokens, embed), "cls_token": (1, 1, embed),
              "patch_embed_super.proj.weight": (embed, in_chans, patch, patch), "patch_embed_super.proj.bias": (embed,),
              "norm.weight": (embed,), "norm.bias": (embed,), "head.weight": (classes, embed), "head.bias": (classes,)}
    for i in range(depth):
        p = f"blocks.{i}."
        shapes |= {p + "attn.qkv.weight": (3 * embed, embed), **({p + "attn.qkv.bias": (3 * embed,)} if qkv_bias else {}),
                   p + "attn.proj.weight": (embed, embed), p + "attn.proj.bias": (embed,),
                   p + "attn_layer_norm.weight": (embed,), p + "attn_layer_norm.bias": (embed,),
                   p + "ffn_layer_norm.weight": (embed,), p + "ffn_layer_norm.bias": (embed,),
                   p + "fc1.weight": (hidden, embed), p + "fc1.bias": (hidden,),
                   p + "fc2.weight": (embed, hidden), p + "fc2.bias": (embed,)}
        if rel_rows:
            shapes |= {f"{p}attn.rel_pos_embed_{w}.embeddings_table_{a}": (rel_rows, rel_width) for w in "kv" for a in "vh"}
    return shapes


def _features(state: dict[str, torch.Tensor], args: dict[str, Any], path: str, notes: list[str]) -> tuple[Features, int, int]:
    """(features, relative position table rows, table width), from the weights and the training args."""
    if args and not args.get("change_qkv", True):
        raise DeployvitError(f"unsupported: {path} was trained without --change_qkv (attention as wide as the embedding); "
                             "deployvit's attention is 64 x heads wide")
    if args.get("no_abs_pos", False):
        raise DeployvitError(f"unsupported: {path} was trained with --no_abs_pos (no absolute position embedding)")
    table = state.get("blocks.0.attn.rel_pos_embed_k.embeddings_table_v")
    if args and bool(args.get("relative_position", table is not None)) != (table is not None):
        raise DeployvitError(f"{path}: its args say relative_position={args.get('relative_position')} but its weights "
                             f"{'have' if table is not None else 'have no'} relative position tables")
    rows = width = 0
    if table is not None:
        rows, width = table.shape if table.dim() == 2 else (0, 0)
        if rows < 4 or rows % 2 or width < HEAD_DIM:
            raise DeployvitError(f"{path}: blocks.0.attn.rel_pos_embed_k.embeddings_table_v has shape {tuple(table.shape)}, "
                                 f"expected [2 x distance + 2, >= {HEAD_DIM}]")
    if not args:
        notes.append("no training args in the file: assuming the released supernets' --gp --change_qkv")
    pool = "avg" if args.get("gp", True) else "token"
    return Features(rel_pos=(rows - 2) // 2 if rows else 0, pool=pool, norm_eps=NORM_EPS), rows, width


def _geometry(state: dict[str, torch.Tensor], path: str) -> dict[str, int]:
    conv = _need(state, "patch_embed_super.proj.weight", 4, path)
    pos = _need(state, "pos_embed", 3, path)
    embed, in_chans, patch = int(conv.shape[0]), int(conv.shape[1]), int(conv.shape[2])
    side = math.isqrt(pos.shape[1] - 1)
    if side * side != pos.shape[1] - 1 or conv.shape[2] != conv.shape[3]:
        raise DeployvitError(f"{path}: pos_embed {tuple(pos.shape)} and patch_embed_super.proj.weight {tuple(conv.shape)} "
                             "are not a square grid of square patches plus a class token")
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()})
    hidden = int(_need(state, "blocks.0.fc1.weight", 2, path).shape[0])
    classes = int(_need(state, "head.weight", 2, path).shape[0])
    if depth == 0:
        raise DeployvitError(f"{path} is not an AutoFormer supernet checkpoint: no blocks.N keys")
    return {"embed": embed, "in_chans": in_chans, "patch": patch, "img_size": side * patch, "depth": depth,
            "hidden": hidden, "classes": classes, "tokens": side * side + 1}


def _convert(state: dict[str, torch.Tensor], arch: Arch) -> ViT:
    """deployvit's ViT of `arch` (the weights' full extent) from AutoFormer's state dict."""
    (stage,) = arch.stages
    a = stage.layers[0].num_heads * HEAD_DIM
    out = {
        "stem.patch_embed.proj.weight": state["patch_embed_super.proj.weight"],
        "stem.patch_embed.proj.bias": state["patch_embed_super.proj.bias"],
        "stem.cls_token": state["cls_token"], "stem.pos_embed": state["pos_embed"],
        "head.norm.weight": state["norm.weight"], "head.norm.bias": state["norm.bias"],
        "head.fc.weight": state["head.weight"], "head.fc.bias": state["head.bias"],
    }
    for i in range(stage.depth):
        src, dst = f"blocks.{i}.", f"stages.0.{i}."
        qkv_w = state[src + "attn.qkv.weight"]
        qkv_b = state.get(src + "attn.qkv.bias", torch.zeros(qkv_w.shape[0]))  # trained without qkv bias: a zero one
        out |= {
            dst + "norm1.weight": state[src + "attn_layer_norm.weight"], dst + "norm1.bias": state[src + "attn_layer_norm.bias"],
            # interleaved rows (3j + i: part i of channel j) -> q, k and v as three leading blocks
            dst + "attn.qkv.weight": qkv_w.reshape(-1, 3, qkv_w.shape[1])[:a].transpose(0, 1).reshape(3 * a, -1),
            dst + "attn.qkv.bias": qkv_b[: 3 * a],  # contiguous: a subnet takes the leading 3 x its width
            dst + "attn.proj.weight": state[src + "attn.proj.weight"][:, :a], dst + "attn.proj.bias": state[src + "attn.proj.bias"],
            dst + "norm2.weight": state[src + "ffn_layer_norm.weight"], dst + "norm2.bias": state[src + "ffn_layer_norm.bias"],
            dst + "mlp.fc1.weight": state[src + "fc1.weight"], dst + "mlp.fc1.bias": state[src + "fc1.bias"],
            dst + "mlp.fc2.weight": state[src + "fc2.weight"], dst + "mlp.fc2.bias": state[src + "fc2.bias"],
        }
        if arch.features.rel_pos:
            out |= {f"{dst}attn.rel_{w}.table_{x}": state[f"{src}attn.rel_pos_embed_{w}.embeddings_table_{x}"][:, :HEAD_DIM]
                    for w in "kv" for x in "vh"}
    with torch.device("meta"):
        model = ViT(arch)
    model.load_state_dict({k: v.detach().clone().contiguous() for k, v in out.items()}, assign=True)
    return model.eval()


def published_arch(size: str, space: SearchSpace) -> tuple[str, Arch]:
    name, embed, heads, ratios = PUBLISHED[size]
    return name, space.make_arch([Stage(embed, HEAD_DIM, tuple(Layer(h, r) for h, r in zip(heads, ratios, strict=True)))])


def autoformer_parent(checkpoint: Any, path: str, space_name: str | None = None) -> Parent:
    """An AutoFormer supernet checkpoint (already loaded, safely) as an import's `Parent`."""
    state, args = unwrap(checkpoint, path)
    notes: list[str] = []
    g = _geometry(state, path)
    features, rows, width = _features(state, args, path, notes)
    check_shapes(state, expected_shapes(g["embed"], g["depth"], g["hidden"], g["classes"], g["in_chans"], g["patch"],
                                        g["tokens"], rows, width, "blocks.0.attn.qkv.bias" in state), path, "an AutoFormer supernet")
    heads = g["embed"] // HEAD_DIM
    if heads < 1:
        raise DeployvitError(f"{path}: embed dim {g['embed']} is narrower than one {HEAD_DIM}-wide head")
    size = RELEASED.get((g["embed"], g["depth"])) if (g["img_size"], g["patch"]) == (224, 16) else None
    name = space_name or (f"autoformer-{size}-released" if size else "autoformer-supernet")
    full = Arch(name, g["img_size"], g["patch"], g["in_chans"], g["classes"],
                (Stage(g["embed"], HEAD_DIM, tuple(Layer(heads, g["hidden"] / g["embed"]) for _ in range(g["depth"]))),), features)
    if size:
        preset = PRESETS[f"autoformer-{size}"]
        space = replace(preset, name=name, num_classes=g["classes"], features=features)
    else:
        stage = default_stage(g["embed"], g["depth"], heads, HEAD_DIM, g["hidden"] / g["embed"])
        space = SearchSpace(name, g["img_size"], g["patch"], g["in_chans"], g["classes"], (stage,), features)
        notes.append(f"embed {g['embed']}, depth {g['depth']} is none of the released supernets: default space below it (--space to set yours)")
    archs = dict([published_arch(size, space)]) if size else {}
    source = {"from": "autoformer", "released": size, "weights": path,
              "args": {k: args[k] for k in ("gp", "change_qkv", "relative_position", "max_relative_position", "cfg") if k in args}}
    return Parent(_convert(state, full), space, source, reference=None, trained_as_supernet=True, qkv_bias="contiguous",
                  archs=archs, notes=notes)
