"""timm ViT / DeiT parents (`--from timm:MODEL [--weights FILE]`).

The model is created by timm itself (`pretrained=False` with a weights file, loaded strictly, so a
missing key or a wrong shape is a one-line error naming it; timm's own download without one), then
every module is checked against what deployvit's ViT computes. What deployvit cannot compute is
refused by name rather than approximated: a distillation token, LayerScale, register tokens, no class
token, QK-norm, a norm before the blocks or after pooling, other activations or attention pooling.
The converted parent is checked against timm's logits before anything is written.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from deployvit.arch import Arch, ArchError, Features, Layer, Stage
from deployvit.errors import DeployvitError
from deployvit.importers.common import Parent, default_stage
from deployvit.models import ViT
from deployvit.spaces import SearchSpace
from deployvit.weights import apply_weights

SUPPORTED = (
    "timm VisionTransformer models: vit_* and deit_* (e.g. vit_tiny_patch16_224, vit_base_patch32_224, "
    "deit_small_patch16_224) with a class token, a learned position embedding, pre-norm blocks of plain "
    "multi-head attention and a GELU MLP, a final LayerNorm and a linear classifier on the class token or "
    "the mean of the patch tokens"
)


def infer_args(state: dict[str, torch.Tensor], args: dict[str, Any]) -> dict[str, Any]:
    """`args` plus the class count, patch size and image size a weights file shows (a parent
    fine-tuned on 10 classes at 32 px loads without saying so); what is given explicitly wins."""
    out = dict(args)
    head = state.get("head.weight")
    if "num_classes" not in out and head is not None and head.dim() == 2:
        out["num_classes"] = int(head.shape[0])
    proj = state.get("patch_embed.proj.weight")
    if "patch_size" not in out and proj is not None and proj.dim() == 4 and proj.shape[-1] == proj.shape[-2]:
        out["patch_size"] = int(proj.shape[-1])
    pos = state.get("pos_embed")
    patch = out.get("patch_size")
    if "img_size" not in out and pos is not None and pos.dim() == 3 and isinstance(patch, int):
        side = math.isqrt(pos.shape[1] - 1)
        if side * side == pos.shape[1] - 1:
            out["img_size"] = side * patch
    return out


def create(name: str, args: dict[str, Any], state: dict[str, torch.Tensor] | None, weights: str | None) -> nn.Module:
    """timm's model `name` with `args`: with a weights file not loaded yet (`timm_parent` loads it once
    the model is known to be supported), else timm's pretrained download."""
    import timm

    try:
        if state is None:
            model = timm.create_model(name, pretrained=True, **args)
        else:
            model = timm.create_model(name, pretrained=False, **infer_args(state, args))
    except RuntimeError as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Unknown model" in text:
            raise DeployvitError(f"--from timm:{name}: timm has no model of that name") from None
        raise DeployvitError(f"--from timm:{name}: {text}") from None
    except (TypeError, ValueError, AssertionError) as exc:
        raise DeployvitError(f"--from timm:{name}: timm cannot build it with {args or 'its defaults'}: {exc}") from None
    except OSError as exc:  # no network, no cached file
        raise DeployvitError(f"--from timm:{name}: cannot download timm's weights ({exc}); pass --weights FILE") from None
    return model.eval()


def _norm_eps(norm: nn.Module, where: str) -> float:
    if not isinstance(norm, nn.LayerNorm) or not norm.elementwise_affine:
        raise DeployvitError(f"unsupported: {where} is {type(norm).__name__}, not an affine LayerNorm")
    return float(norm.eps)


def _check_block(i: int, block: nn.Module) -> None:
    """The first feature of block `i` deployvit's Block does not compute, as an error naming it."""
    from timm.layers import Mlp
    from timm.models.vision_transformer import Attention, Block

    where = f"blocks.{i}"
    if type(block) is not Block:
        raise DeployvitError(f"unsupported: {where} is a {type(block).__name__}, not timm's pre-norm Block")
    if not isinstance(block.ls1, nn.Identity) or not isinstance(block.ls2, nn.Identity):
        raise DeployvitError(f"unsupported: LayerScale ({where}.ls1/ls2, init_values) is not supported")
    attn = block.attn
    if type(attn) is not Attention:
        raise DeployvitError(f"unsupported: {where}.attn is a {type(attn).__name__}, not timm's Attention")
    if not isinstance(attn.q_norm, nn.Identity) or not isinstance(attn.k_norm, nn.Identity):
        raise DeployvitError(f"unsupported: QK-norm ({where}.attn.q_norm/k_norm) is not supported")
    if not isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity):
        raise DeployvitError(f"unsupported: a norm after attention ({where}.attn.norm, scale_attn_norm) is not supported")
    if getattr(attn, "gate", None) is not None:
        raise DeployvitError(f"unsupported: gated attention ({where}.attn.gate) is not supported")
    mlp = block.mlp
    if type(mlp) is not Mlp or not isinstance(mlp.fc1, nn.Linear) or not isinstance(mlp.fc2, nn.Linear):
        raise DeployvitError(f"unsupported: {where}.mlp is a {type(mlp).__name__}, not timm's two-layer Mlp")
    if not isinstance(mlp.norm, nn.Identity):
        raise DeployvitError(f"unsupported: a norm inside the MLP ({where}.mlp.norm, scale_mlp_norm) is not supported")
    if type(mlp.act) is not nn.GELU or mlp.act.approximate != "none":
        raise DeployvitError(f"unsupported: activation {mlp.act} ({where}.mlp.act); deployvit's MLP uses exact GELU")


def check_supported(model: nn.Module) -> Features:
    """The features of a supported model, or a one-line error naming the first unsupported part."""
    from timm.layers import PatchEmbed
    from timm.models.vision_transformer import VisionTransformer

    if type(model).__name__ == "VisionTransformerDistilled":
        raise DeployvitError("unsupported: the distillation token (dist_token, head_dist) of deit_*_distilled; use the deit_* model without it")
    if type(model) is not VisionTransformer:
        raise DeployvitError(f"unsupported: model class {type(model).__name__} ({SUPPORTED.split(':')[0]} only)")
    checks = [
        (model.cls_token is None, "no class token (class_token=False)"),
        (model.num_reg_tokens > 0, f"register tokens (reg_tokens={model.num_reg_tokens})"),
        (model.pos_embed is None, "no learned position embedding"),
        (model.no_embed_class, "a position embedding without the class-token row (no_embed_class)"),
        (model.dynamic_img_size, "dynamic image size"),
        (not isinstance(model.norm_pre, nn.Identity), "a norm before the blocks (norm_pre, pre_norm=True)"),
        (model.attn_pool is not None, f"attention pooling (global_pool={model.global_pool!r})"),
        (model.global_pool not in ("token", "avg"), f"global_pool={model.global_pool!r}"),
        (not isinstance(model.fc_norm, nn.Identity), "a norm after pooling (fc_norm)"),
        (model.pool_include_prefix, "pooling that includes the class token (pool_include_prefix)"),
        (not isinstance(model.head, nn.Linear), "no classifier (num_classes=0)"),
        (type(model.patch_embed) is not PatchEmbed, f"patch embedding {type(model.patch_embed).__name__}"),
    ]
    for bad, what in checks:
        if bad:
            raise DeployvitError(f"unsupported: {what}")
    pe = model.patch_embed
    if not isinstance(pe.norm, nn.Identity) or not pe.flatten or pe.proj.padding != (0, 0) or pe.patch_size[0] != pe.patch_size[1] \
            or pe.img_size[0] != pe.img_size[1] or getattr(pe, "dynamic_img_pad", False):
        raise DeployvitError("unsupported: patch embedding other than a square, unpadded, un-normalised conv on a square image")
    eps = {_norm_eps(model.norm, "norm")}
    for i, block in enumerate(model.blocks):
        _check_block(i, block)
        eps |= {_norm_eps(block.norm1, f"blocks.{i}.norm1"), _norm_eps(block.norm2, f"blocks.{i}.norm2")}
    shapes = {(b.attn.num_heads, b.attn.head_dim, b.mlp.fc1.out_features) for b in model.blocks}
    if len(eps) > 1 or len(shapes) > 1:
        raise DeployvitError("unsupported: blocks of different widths or LayerNorm eps")
    return Features(pool=model.global_pool, norm_eps=eps.pop())


def parent_arch(model: nn.Module, space_name: str, features: Features) -> Arch:
    block = model.blocks[0]
    embed, hidden = model.embed_dim, block.mlp.fc1.out_features
    layer = Layer(block.attn.num_heads, hidden / embed)
    pe = model.patch_embed
    arch = Arch(space_name, pe.img_size[0], pe.patch_size[0], pe.proj.in_channels, model.head.out_features,
                (Stage(embed, block.attn.head_dim, tuple(layer for _ in model.blocks)),), features)
    try:
        return Arch.from_dict(arch.to_dict())  # the limits every arch file is held to
    except ArchError as exc:
        raise DeployvitError(f"the parent is outside deployvit's limits: {exc}") from None


def _or_zeros(t: torch.Tensor | None, n: int) -> torch.Tensor:
    """A bias the parent does not have (qkv_bias=False, proj_bias=False) is a zero bias."""
    return t.detach() if t is not None else torch.zeros(n)


@torch.no_grad()
def to_deployvit(model: nn.Module, arch: Arch) -> ViT:
    """deployvit's standalone ViT of `arch` holding the timm model's weights."""
    e = arch.embed_dim
    state = {
        "stem.patch_embed.proj.weight": model.patch_embed.proj.weight,
        "stem.patch_embed.proj.bias": _or_zeros(model.patch_embed.proj.bias, e),
        "stem.cls_token": model.cls_token,
        "stem.pos_embed": model.pos_embed,
        "head.norm.weight": model.norm.weight,
        "head.norm.bias": _or_zeros(model.norm.bias, e),
        "head.fc.weight": model.head.weight,
        "head.fc.bias": _or_zeros(model.head.bias, arch.num_classes),
    }
    for i, b in enumerate(model.blocks):
        p = f"stages.0.{i}."
        state |= {
            p + "norm1.weight": b.norm1.weight, p + "norm1.bias": _or_zeros(b.norm1.bias, e),
            p + "attn.qkv.weight": b.attn.qkv.weight, p + "attn.qkv.bias": _or_zeros(b.attn.qkv.bias, b.attn.qkv.out_features),
            p + "attn.proj.weight": b.attn.proj.weight, p + "attn.proj.bias": _or_zeros(b.attn.proj.bias, e),
            p + "norm2.weight": b.norm2.weight, p + "norm2.bias": _or_zeros(b.norm2.bias, e),
            p + "mlp.fc1.weight": b.mlp.fc1.weight, p + "mlp.fc1.bias": _or_zeros(b.mlp.fc1.bias, b.mlp.fc1.out_features),
            p + "mlp.fc2.weight": b.mlp.fc2.weight, p + "mlp.fc2.bias": _or_zeros(b.mlp.fc2.bias, e),
        }
    with torch.device("meta"):
        vit = ViT(arch)
    vit.load_state_dict({k: v.detach().clone().contiguous() for k, v in state.items()}, assign=True)
    return vit.eval()


def timm_parent(name: str, args: dict[str, Any], state: dict[str, torch.Tensor] | None, weights: str | None,
                space_name: str | None = None) -> Parent:
    """A timm model (weights from `state`, or timm's download when None) as an import's `Parent`."""
    model = create(name, args, state, weights)
    features = check_supported(model)  # an unsupported model is refused for what it is, not for its keys
    if state is not None:
        apply_weights(model, state, weights, f"timm model {name}")
    arch = parent_arch(model, space_name or name.split(".")[0], features)
    (stage,) = arch.stages
    layer = stage.layers[0]
    choices = default_stage(stage.embed_dim, stage.depth, layer.num_heads, stage.head_dim, layer.mlp_ratio)
    space = SearchSpace(arch.space, arch.img_size, arch.patch_size, arch.in_chans, arch.num_classes, (choices,), features)
    source = {"from": f"timm:{name}", "model_args": args, "weights": weights or "timm pretrained download"}
    return Parent(to_deployvit(model, arch), space, source, reference=model)
