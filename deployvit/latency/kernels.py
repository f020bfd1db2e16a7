"""The kernels each ViT part launches, per runtime, and who launches them: the structure of the estimate.

Not fitted: these lists are read off what the code runs. deployvit's parts (`models.py`) are timm
layers. In eager PyTorch and its CUDA-graph replay a block is LayerNorm, qkv GEMM (bias in the
cuBLAS epilogue), fused scaled-dot-product attention, projection GEMM, residual add, LayerNorm, fc1
GEMM, GELU, fc2 GEMM, residual add: 10 kernels (the head merge `transpose(1, 2).reshape` is a view:
SDPA's flash and memory-efficient kernels write their output token-major). Inductor (`compile`)
fuses each residual add into the LayerNorm after it and the fc1 bias into GELU, and calls cuBLAS
and the attention kernel as extern kernels: 8 launches per block. TensorRT fuses bias, GELU and
residual adds into GEMM epilogues and runs fused attention in fp16 (7 kernels); in fp32 it has no
fused attention kernel, so attention is two batched GEMMs around a softmax (9).

Who launches a kernel decides its host cost (the runtime record's `estimate.host`): eager PyTorch launches each
one from Python (an nn.Module call, the op's binding and the ATen dispatcher per kernel), inductor's
generated Python wrapper launches each fused kernel (a wrapper line and a Triton or extern call per
kernel, plus guards once per call), a CUDA graph is one replay with no per-kernel host work, and a
C++ runtime (TensorRT, FasterTransformer, AITemplate) enqueues each kernel from C++.

Variants that exist only to model the published measurements the constants are fitted on:
`attention="explicit"` (torch < 2.1-era models: QK^T GEMM, scale, softmax, AV GEMM, head-merge copy,
with the N x N scores through memory), `amp` (torch.autocast as timm benchmarks: the residual
stream, LayerNorm and softmax in fp32, casts before GEMMs, weights cast from fp32 on every call) and
`fusion="fastertransformer"` (NVIDIA FasterTransformer's ViT: cuBLAS GEMMs without epilogues, then
its own bias+transpose, bias+residual+LayerNorm and bias+GELU kernels: 9 per block).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from deployvit.parts import BlockPart, HeadPart, Part, ReductionPart, StemPart
from deployvit.runtime_registry import runtime_record


@dataclass(frozen=True)
class Kernel:
    """One kernel: FLOPs and DRAM bytes; GEMMs also their shape (m x n output, k reduction, `groups`
    independent problems); attention `m` = tokens, `groups` = sequences x heads."""

    name: str
    kind: str  # "gemm", "attention" or "memory"
    flops: float
    bytes: float
    m: int = 0
    n: int = 0
    k: int = 0
    groups: int = 1
    count: int = 1


@dataclass(frozen=True)
class Flavour:
    """How a runtime executes the parts (see the module docstring)."""

    runtime: str
    fusion: str  # "none", "inductor" or "tensorrt"
    host: str  # "python", "inductor", "graph" or "native" (the runtime record's estimate.host)
    tf32: bool = False  # fp32 GEMMs on TF32 tensor cores (off in torch by default, and in deployvit's TensorRT builds)
    attention: str = "fused"
    amp: bool = False

    @classmethod
    def for_runtime(cls, runtime: str, precision: str) -> "Flavour":
        """deployvit's own runners: fp32 is fp32 everywhere (TF32 off: torch's default for matmuls and
        `exporters.tensorrt`'s default build), so fp32 GEMMs run on CUDA cores. TensorRT has no fused
        attention kernel in fp32: its attention is explicit there."""
        est = runtime_record(runtime).estimate  # the runtime's record says how it runs its kernels
        attention = est.fp32_attention if precision == "fp32" else "fused"
        return cls(runtime, est.fusion, est.host, tf32=False, attention=attention)


def element_bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def _gemm(name: str, m: int, n: int, k: int, s: int, groups: int = 1, extra_bytes: float = 0.0, weights: bool = True) -> Kernel:
    b_bytes = (k * n) * (1 if weights else groups)
    return Kernel(name, "gemm", 2.0 * m * n * k * groups, (m * k * groups + b_bytes + m * n * groups) * s + extra_bytes, m, n, k, groups)


def _mem(name: str, nbytes: float) -> Kernel:
    return Kernel(name, "memory", 0.0, nbytes)


def _weight_casts(fl: Flavour, n_weights: float) -> list[Kernel]:
    """autocast re-casts fp32 weights to half on every call (one kernel per weight tensor; inductor
    fuses them into one)."""
    if not fl.amp:
        return []
    return [_mem("weight casts (autocast)", n_weights * 6)]


def block_kernels(p: BlockPart, batch: int, precision: str, fl: Flavour, layer_scale: bool = False) -> list[Kernel]:
    s = element_bytes(precision)
    t, e, a, m = batch * p.tokens, p.embed_dim, p.attn_dim, p.mlp_hidden
    attention = _rel_pos_attention if p.rel_pos else _attention
    attn = attention(t, a, batch * p.num_heads, p.tokens, p.head_dim, s, fl)
    if fl.fusion == "tensorrt":
        return [
            _mem("layernorm", t * e * 2 * s),
            _gemm("qkv", t, 3 * a, e, s),
            *attn,
            _gemm("proj+residual", t, e, a, s, extra_bytes=t * e * s),
            _mem("layernorm", t * e * 2 * s),
            _gemm("fc1+gelu", t, m, e, s),
            _gemm("fc2+residual", t, e, m, s, extra_bytes=t * e * s),
        ]
    if fl.fusion == "inductor":
        return _inductor_block(t, e, a, m, s, attn, fl, e * 3 * a + a * e + 2 * e * m)
    if fl.fusion == "fastertransformer":
        return [
            _gemm("qkv", t, 3 * a, e, s),
            _mem("add bias + transpose", 2 * 3 * t * a * s),
            *attn,
            _gemm("proj", t, e, a, s),
            _mem("add bias + residual + layernorm", 4 * t * e * s),
            _gemm("fc1", t, m, e, s),
            _mem("add bias + gelu", 2 * t * m * s),
            _gemm("fc2", t, e, m, s),
            _mem("add bias + residual + layernorm", 4 * t * e * s),
        ]
    return _eager_block(t, e, a, m, s, attn, fl, layer_scale)


def _eager_block(t: int, e: int, a: int, m: int, s: int, attn: list[Kernel], fl: Flavour, layer_scale: bool) -> list[Kernel]:
    r = 4 if fl.amp else s  # residual stream element size (autocast keeps it fp32)
    ln_out = 4 if fl.amp else s  # autocast runs LayerNorm in fp32 ...
    cast = [_mem("cast (autocast)", t * e * (4 + s))] if fl.amp else []  # ... and casts its output before the GEMM
    ls = [_mem("layer scale", 2 * t * e * s)] if layer_scale else []
    ks = [
        _mem("layernorm", t * e * (r + ln_out)),
        *cast,
        *_weight_casts(fl, e * 3 * a + a * e + 2 * e * m),
        _gemm("qkv", t, 3 * a, e, s),
        *attn,
        _gemm("proj", t, e, a, s),
        *ls,
        _mem("residual add", t * e * (2 * r + s)),
        _mem("layernorm", t * e * (r + ln_out)),
        *cast,
        _gemm("fc1", t, m, e, s),
        _mem("gelu", 2 * t * m * s),
        _gemm("fc2", t, e, m, s),
        *ls,
        _mem("residual add", t * e * (2 * r + s)),
    ]
    if fl.amp:  # one weight cast per Linear, not one for all
        ks += [_mem("weight cast (autocast)", 0.0)] * 3
    return ks


def _inductor_block(t: int, e: int, a: int, m: int, s: int, attn: list[Kernel], fl: Flavour, n_weights: int) -> list[Kernel]:
    """The residual add that ends a block is fused into the LayerNorm that opens the next one (or the
    head's): a block is charged that fused kernel at its start, so parts add up to whole models."""
    r = 4 if fl.amp else s
    return [
        _mem("residual add+layernorm", t * e * (r + s + r + s)),
        *_weight_casts(fl, n_weights),
        _gemm("qkv", t, 3 * a, e, s),
        *attn,
        _gemm("proj", t, e, a, s),
        _mem("residual add+layernorm", t * e * (r + s + r + s)),
        _gemm("fc1", t, m, e, s),
        _mem("bias+gelu", 2 * t * m * s),
        _gemm("fc2", t, e, m, s),
    ]


def _attention(t: int, a: int, bh: int, n: int, d: int, s: int, fl: Flavour) -> list[Kernel]:
    if fl.attention == "fused":
        return [Kernel("fused attention", "attention", 4.0 * bh * n * n * d, 4 * t * a * s, n, 0, d, bh)]
    scores = bh * n * n
    sm_out = 4 if fl.amp else s
    ks = [_gemm("q @ k^T", n, n, d, s, groups=bh, weights=False)]
    if fl.fusion == "none":
        ks.append(_mem("scale", 2 * scores * s))
    ks.append(_mem("softmax", scores * (s + sm_out)))
    if sm_out != s and fl.fusion == "none":
        ks.append(_mem("cast (autocast)", scores * (sm_out + s)))
    ks.append(_gemm("attn @ v", n, d, n, s, groups=bh, weights=False))
    if fl.fusion in ("none", "fastertransformer"):  # a batched GEMM's output is head-major: merging heads is a copy
        ks.append(_mem("head merge copy", 2 * t * a * s))
    return ks


def _rel_pos_attention(t: int, a: int, bh: int, n: int, d: int, s: int, fl: Flavour) -> list[Kernel]:
    """Attention with 2-D relative position encoding (`models.RelPosAttention`): explicit attention
    (the probabilities are needed for the value term) plus, per query token, a GEMM of its b x h query
    rows with the token's key embeddings and of its probabilities with the value embeddings, and the
    gathers that build both [n, n, d] embeddings. No runtime fuses these, so every flavour runs them."""
    batch = bh * d // a if a else 1
    explicit = _attention(t, a, bh, n, d, s, replace(fl, attention="explicit"))
    gather = [_mem("relative position gather", 3 * n * n * d * s)] * 2
    return [
        *gather,
        _gemm("q @ rel_k^T", bh, n, d, s, groups=n, weights=False),
        _mem("add position scores", 3 * bh * n * n * s),
        *explicit,
        _gemm("attn @ rel_v", bh, d, n, s, groups=n, weights=False),
        _mem("add position values", 3 * batch * n * a * s),
    ]


def stem_kernels(p: StemPart, batch: int, precision: str, fl: Flavour, prefix_tokens: int = 1) -> list[Kernel]:
    s = element_bytes(precision)
    r = 4 if fl.amp else s
    image = batch * p.in_chans * p.img_size**2
    t = batch * (p.num_patches + prefix_tokens)
    ks = [_mem("cast input (autocast)", image * (4 + s))] if fl.amp else []
    ks += [
        _mem("layout NCHW->NHWC", 2 * image * s),
        _gemm("patch conv", batch * p.num_patches, p.embed_dim, p.in_chans * p.patch_size**2, s),
    ]
    pos = (2 * t + p.num_patches + prefix_tokens) * p.embed_dim
    if fl.fusion == "none":
        if prefix_tokens:
            ks.append(_mem("cat class token", 2 * t * p.embed_dim * s))
        ks.append(_mem("add pos embed", pos * r))
    else:
        ks.append(_mem("cat + pos embed", pos * r))
    return ks


def head_kernels(p: HeadPart, batch: int, precision: str, fl: Flavour, pool: str = "token") -> list[Kernel]:
    s = element_bytes(precision)
    r = 4 if fl.amp else s
    t = batch * p.tokens
    # inductor: the last block's residual add is fused into this LayerNorm (see _inductor_block)
    ln_bytes = t * p.embed_dim * ((r + s + r + s) if fl.fusion == "inductor" else (r + s))
    ks = [_mem("layernorm", ln_bytes)]
    if pool == "avg":
        ks.append(_mem("mean pool", (t + batch) * p.embed_dim * s))
    ks.append(_gemm("classifier", batch, p.num_classes, p.embed_dim, s))
    return ks


def reduction_kernels(p: ReductionPart, batch: int, precision: str, fl: Flavour) -> list[Kernel]:
    s = element_bytes(precision)
    grid_in, grid_out = batch * p.grid**2, batch * p.out_grid**2
    t_in, t_out = grid_in + batch, grid_out + batch
    conv = _gemm("3x3 stride-2 conv", grid_out, p.out_dim, 9 * p.in_dim, s, extra_bytes=(grid_in - 9 * grid_out) * p.in_dim * s)
    ln = _mem("layernorm", t_in * p.in_dim * 2 * s)
    cls = _gemm("class token linear", batch, p.out_dim, p.in_dim, s)
    if fl.fusion != "none":
        return [ln, conv, _mem("avg pool + pad + add", (grid_in * p.in_dim + 2 * grid_out * p.out_dim) * s), cls,
                _mem("cat + pos embed", 3 * t_out * p.out_dim * s)]
    return [
        ln,
        _mem("to grid (copy)", 2 * grid_in * p.in_dim * s),
        conv,
        _mem("to grid (copy)", 2 * grid_in * p.in_dim * s),
        _mem("avg pool", (grid_in + grid_out) * p.in_dim * s),
        _mem("pad", (grid_out * p.in_dim + grid_out * p.out_dim) * s),
        _mem("add", 3 * grid_out * p.out_dim * s),
        cls,
        _mem("pad + add (class token)", 4 * batch * p.out_dim * s),
        _mem("cat", 2 * t_out * p.out_dim * s),
        _mem("add pos embed", 3 * t_out * p.out_dim * s),
    ]


def part_kernels(part: Part, batch: int, precision: str, fl: Flavour) -> list[Kernel]:
    """The kernels `part` launches at `batch` (deployvit's parts: class token, token pooling)."""
    if isinstance(part, StemPart):
        return stem_kernels(part, batch, precision, fl)
    if isinstance(part, BlockPart):
        return block_kernels(part, batch, precision, fl)
    if isinstance(part, HeadPart):
        return head_kernels(part, batch, precision, fl, pool=part.pool)
    if isinstance(part, ReductionPart):
        return reduction_kernels(part, batch, precision, fl)
    raise TypeError(f"not a part: {part!r}")
