"""AutoFormer's model features in deployvit's one ViT, and `deployvit import --from autoformer`.

The checkpoints here are built in the test with the key names, shapes and file layout of AutoFormer's
`Vision_TransformerSuper` (microsoft/Cream, AutoFormer) and random weights; the reference forward
below is written from AutoFormer's published semantics (interleaved qkv rows, a contiguous qkv bias,
2-D relative position tables with a class-token row, global average pooling, LayerNorm eps 1e-5),
independently of deployvit's code, with explicit loops for the relative position indices."""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deployvit.arch import Arch, Features, Layer
from deployvit.counting import count_flops, count_params, fvcore_flops
from deployvit.importers.autoformer import PUBLISHED, published_arch
from deployvit.models import build_model, rel_pos_index
from deployvit.parts import arch_parts, space_parts
from deployvit.spaces import PRESETS, get_space, space_from_dict
from deployvit.supernet import Supernet
from deployvit.train.checkpoint import load_supernet
from tests.conftest import run_cli

AF = Features(rel_pos=14, pool="avg", norm_eps=1e-5)


def _rel_space(rel_pos=3, pool="avg", eps=1e-5):
    return replace(get_space("test"), name="test-relpos", features=Features(rel_pos, pool, eps))


# --- the model features ------------------------------------------------------------------------------


def test_default_features_leave_archs_and_spaces_as_they_were():
    for space in PRESETS.values():
        assert "features" not in space.to_dict() and "features" not in space.max_arch().to_dict()
    arch = get_space("test").min_arch()
    assert all(":r" not in p.key and ":avg" not in p.key for p in arch_parts(arch))


def test_features_round_trip_and_bad_features_name_the_field():
    space = _rel_space()
    assert space_from_dict(space.to_dict()) == space and space.hash() != get_space("test").hash()
    arch = space.sample(np.random.default_rng(0))
    assert Arch.from_dict(arch.to_dict()) == arch and "rel-pos 3, avg pool" in arch.summary()
    with pytest.raises(Exception, match="features.pool"):
        Arch.from_dict({**arch.to_dict(), "features": {"pool": "max"}})
    with pytest.raises(Exception, match="features: unknown key 'dist_token'"):
        Arch.from_dict({**arch.to_dict(), "features": {"dist_token": 1}})
    with pytest.raises(Exception, match="features"):
        get_space("test").validate(replace(arch, space="test"))


def test_relative_position_index_has_a_class_token_row_and_clips():
    p, side = 2, 4
    iv, ih = rel_pos_index(side * side + 1, p)
    for n in range(side * side + 1):
        for m in range(side * side + 1):
            if n == 0 or m == 0:
                want_v = want_h = 0
            else:
                (rn, cn), (rm, cm) = divmod(n - 1, side), divmod(m - 1, side)
                want_v = max(-p, min(p, rm - rn)) + p + 1
                want_h = max(-p, min(p, cm - cn)) + p + 1
            assert (iv[n, m].item(), ih[n, m].item()) == (want_v, want_h)


@pytest.mark.parametrize("features", [Features(3, "avg", 1e-5), Features(2, "token"), Features(0, "avg")])
def test_supernet_and_extracted_model_agree_and_counts_are_exact(features):
    space = replace(get_space("test"), name="test-f", features=features)
    supernet = Supernet(space).eval()
    x = torch.randn(2, 3, 32, 32)
    for arch in (space.max_arch(), space.min_arch(), space.sample(np.random.default_rng(1))):
        supernet.set_arch(arch)
        model = supernet.extract(arch).eval()
        torch.testing.assert_close(supernet(x), model(x), rtol=0, atol=1e-5)
        assert sum(p.numel() for p in model.parameters()) == count_params(arch)
    assert fvcore_flops(model, 32) == count_flops(arch)  # attention's four token products with rel-pos
    rel = 4 * (2 * features.rel_pos + 2) * 16 if features.rel_pos else 0
    no_features = replace(space.min_arch(), features=Features())
    assert count_params(space.min_arch()) - count_params(no_features) == rel * space.min_arch().depth
    keys = {p.key for p in space_parts(space)}
    assert any(k.endswith(f":r{features.rel_pos}") for k in keys) == bool(features.rel_pos)
    assert any(k.endswith(":avg") for k in keys) == (features.pool == "avg")


def test_relative_position_tables_get_gradients_and_no_weight_decay():
    space = _rel_space()
    supernet = Supernet(space)
    supernet.set_arch(space.min_arch())
    supernet(torch.randn(2, 3, 32, 32)).sum().backward()
    assert supernet.stages[0][0].rel_k_table_v.grad.abs().sum() > 0
    assert {n for n in supernet.no_weight_decay() if "rel_" in n} == {n for n, _ in supernet.named_parameters() if "rel_" in n}
    model = build_model(space.min_arch())
    assert "stages.0.0.attn.rel_v.table_h" in model.no_weight_decay()


# --- AutoFormer's published subnets: params as AutoFormer counts them ----------------------------------


def _autoformer_count(arch: Arch) -> int:
    """AutoFormer's `get_sampled_params_numel`: the sampled slices of every super module of the layers
    in use (patch conv, per layer qkv + relative position tables + proj + two LayerNorms + fc1 + fc2,
    final norm, head) plus embed_dim x (2 + patches) for the class token and position embedding."""
    (stage,) = arch.stages
    e, patches, k = stage.embed_dim, (arch.img_size // arch.patch_size) ** 2, arch.num_classes
    total = e * arch.in_chans * arch.patch_size**2 + e + e * (2 + patches) + 2 * e + k * e + k
    for layer in stage.layers:
        a, hidden = 64 * layer.num_heads, int(e * layer.mlp_ratio)
        rel = 2 * 2 * (2 * arch.features.rel_pos + 2) * 64 if arch.features.rel_pos else 0
        total += 3 * a * e + 3 * a + rel + e * a + e + 4 * e + hidden * e + hidden + e * hidden + e
    return total


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_published_subnets_params_with_relative_position_as_autoformer_counts(size):
    space = replace(PRESETS[f"autoformer-{size}"], name=f"autoformer-{size}-released", features=AF)
    name, arch = published_arch(size, space)
    assert space.contains(arch) and arch.depth == len(PUBLISHED[size][2])
    assert count_params(arch) == _autoformer_count(arch)
    # the README's sizes: 5.8M, 22.9M, 53.7M; without relative position encoding today's counts hold
    assert round(count_params(arch) / 1e6, 1) == {"tiny": 5.9, "small": 22.9, "base": 53.7}[size]
    plain = replace(arch, features=Features(pool="avg", norm_eps=1e-5))
    assert count_params(arch) - count_params(plain) == arch.depth * 4 * 30 * 64
    assert count_params(plain) == count_params(replace(arch, features=Features()))


# --- importing an AutoFormer supernet -------------------------------------------------------------------

EMBED, DEPTH, HIDDEN, CLASSES, IMG, PATCH, REL = 128, 3, 512, 10, 32, 8, 3


def _autoformer_state(seed: int = 0, embed=EMBED, depth=DEPTH, hidden=HIDDEN, classes=CLASSES, img=IMG, patch=PATCH, rel=REL,
                      device: str = "cpu") -> dict[str, torch.Tensor]:
    EMBED, DEPTH, HIDDEN, CLASSES, IMG, PATCH, REL = embed, depth, hidden, classes, img, patch, rel  # noqa: N806
    g = torch.Generator().manual_seed(seed)
    tokens = (IMG // PATCH) ** 2 + 1
    shapes = {"pos_embed": (1, tokens, EMBED), "cls_token": (1, 1, EMBED),
              "patch_embed_super.proj.weight": (EMBED, 3, PATCH, PATCH), "patch_embed_super.proj.bias": (EMBED,),
              "norm.weight": (EMBED,), "norm.bias": (EMBED,), "head.weight": (CLASSES, EMBED), "head.bias": (CLASSES,)}
    for i in range(DEPTH):
        p = f"blocks.{i}."
        shapes |= {p + "attn.qkv.weight": (3 * EMBED, EMBED), p + "attn.qkv.bias": (3 * EMBED,),
                   p + "attn.proj.weight": (EMBED, EMBED), p + "attn.proj.bias": (EMBED,),
                   p + "attn_layer_norm.weight": (EMBED,), p + "attn_layer_norm.bias": (EMBED,),
                   p + "ffn_layer_norm.weight": (EMBED,), p + "ffn_layer_norm.bias": (EMBED,),
                   p + "fc1.weight": (HIDDEN, EMBED), p + "fc1.bias": (HIDDEN,), p + "fc2.weight": (EMBED, HIDDEN), p + "fc2.bias": (EMBED,)}
        shapes |= {f"{p}attn.rel_pos_embed_{w}.embeddings_table_{a}": (2 * REL + 2, 64) for w in "kv" for a in "vh"}
    if device == "meta":
        return {k: torch.empty(*s, device="meta") for k, s in shapes.items()}
    state = {k: torch.randn(*s, generator=g) * (0.3 if len(s) > 1 else 0.5) for k, s in shapes.items()}
    for k in state:
        if "layer_norm.weight" in k or k == "norm.weight":
            state[k] = state[k] + 1.0
    return state


def _autoformer_forward(state, embed: int, layers: list[tuple[int, float]], x: torch.Tensor) -> torch.Tensor:
    """AutoFormer's subnet forward (gp, change_qkv, relative_position), from its published semantics."""
    b, e = x.shape[0], embed
    t = F.conv2d(x, state["patch_embed_super.proj.weight"][:e], state["patch_embed_super.proj.bias"][:e], stride=PATCH)
    t = torch.cat([state["cls_token"][..., :e].expand(b, -1, -1), t.flatten(2).transpose(1, 2)], 1) + state["pos_embed"][..., :e]
    n, side = t.shape[1], IMG // PATCH
    iv, ih = torch.zeros(n, n, dtype=torch.long), torch.zeros(n, n, dtype=torch.long)
    for i in range(1, n):
        for j in range(1, n):
            iv[i, j] = max(-REL, min(REL, (j - 1) // side - (i - 1) // side)) + REL + 1
            ih[i, j] = max(-REL, min(REL, (j - 1) % side - (i - 1) % side)) + REL + 1
    for li, (heads, ratio) in enumerate(layers):
        p, a, hidden = f"blocks.{li}.", 64 * heads, int(e * ratio)
        y = F.layer_norm(t, (e,), state[p + "attn_layer_norm.weight"][:e], state[p + "attn_layer_norm.bias"][:e], 1e-5)
        w = state[p + "attn.qkv.weight"][:, :e]
        w = torch.cat([w[i:3 * a:3] for i in range(3)])  # q, k, v rows interleaved
        q, k, v = F.linear(y, w, state[p + "attn.qkv.bias"][:3 * a]).reshape(b, n, 3, heads, 64).permute(2, 0, 3, 1, 4)
        table = lambda which, axis: state[f"{p}attn.rel_pos_embed_{which}.embeddings_table_{axis}"][:, :64]  # noqa: E731
        r_k, r_v = table("k", "v")[iv] + table("k", "h")[ih], table("v", "v")[iv] + table("v", "h")[ih]
        attn = ((q @ k.transpose(-2, -1)) + torch.einsum("bhnd,nmd->bhnm", q, r_k)) * 64**-0.5
        attn = attn.softmax(-1)
        o = (attn @ v + torch.einsum("bhnm,nmd->bhnd", attn, r_v)).transpose(1, 2).reshape(b, n, a)
        t = t + F.linear(o, state[p + "attn.proj.weight"][:e, :a], state[p + "attn.proj.bias"][:e])
        y = F.layer_norm(t, (e,), state[p + "ffn_layer_norm.weight"][:e], state[p + "ffn_layer_norm.bias"][:e], 1e-5)
        y = F.gelu(F.linear(y, state[p + "fc1.weight"][:hidden, :e], state[p + "fc1.bias"][:hidden]))
        t = t + F.linear(y, state[p + "fc2.weight"][:e, :hidden], state[p + "fc2.bias"][:e])
    t = F.layer_norm(t, (e,), state["norm.weight"][:e], state["norm.bias"][:e], 1e-5)
    return F.linear(t[:, 1:].mean(1), state["head.weight"][:, :e], state["head.bias"])


def _args(**kw) -> argparse.Namespace:
    base = dict(gp=True, change_qkv=True, relative_position=True, max_relative_position=REL, no_abs_pos=False,
                cfg="./experiments/supernet/custom.yaml", input_size=IMG, patch_size=PATCH, lr=5e-4, opt_betas=None)
    return argparse.Namespace(**{**base, **kw})


@pytest.fixture(scope="module")
def autoformer_import(tmp_path_factory):
    folder = tmp_path_factory.mktemp("autoformer")
    state = _autoformer_state()
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 499, "args": _args()}, folder / "supernet.pth")
    result = run_cli("import", "--from", "autoformer", "--weights", str(folder / "supernet.pth"), "--out", str(folder / "imp"))
    assert result.code == 0, result.err
    return folder, state


def test_autoformer_subnets_give_autoformers_logits(autoformer_import):
    folder, state = autoformer_import
    supernet, meta = load_supernet(folder / "imp" / "supernet.pt")
    space = supernet.space
    assert space.features == Features(REL, "avg", 1e-5) and supernet.qkv_bias == "contiguous"
    assert meta["imported"]["source"]["from"] == "autoformer" and meta["imported"]["order"] == "none"
    x = torch.randn(2, 3, IMG, IMG)
    rng = np.random.default_rng(0)
    for arch in [space.max_arch(), space.min_arch()] + [space.sample(rng) for _ in range(4)]:
        (stage,) = arch.stages
        want = _autoformer_forward(state, stage.embed_dim, [(l.num_heads, l.mlp_ratio) for l in stage.layers], x)
        torch.testing.assert_close(supernet.extract(arch).eval()(x), want, rtol=0, atol=1e-4)


def test_autoformer_parent_exported_to_onnx_gives_autoformers_logits(autoformer_import, tmp_path):
    import onnxruntime as ort

    from exporters.onnx import export_onnx

    folder, state = autoformer_import
    supernet, _ = load_supernet(folder / "imp" / "supernet.pt")
    arch = supernet.space.max_arch()
    path = export_onnx(supernet.extract(arch).eval(), tmp_path / "parent.onnx", img_size=IMG, dynamic_batch=(1, 2, 4))
    x = torch.randn(2, 3, IMG, IMG)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    (stage,) = arch.stages
    want = _autoformer_forward(state, stage.embed_dim, [(l.num_heads, l.mlp_ratio) for l in stage.layers], x)
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-4)


def test_released_geometry_gets_the_released_space_and_the_published_subnet():
    """supernet-T's shapes (weights on the meta device: only shapes matter here)."""
    from deployvit.importers.autoformer import autoformer_parent

    state = _autoformer_state(embed=256, depth=14, hidden=1024, classes=1000, img=224, patch=16, rel=14, device="meta")
    parent = autoformer_parent({"model": state, "args": _args(cfg="./experiments/supernet/supernet-T.yaml")}, "supernet-tiny.pth")
    assert parent.space == replace(PRESETS["autoformer-tiny"], name="autoformer-tiny-released", features=AF)
    assert parent.model.arch.embed_dim == 256 and parent.model.arch.layers[0] == Layer(4, 4.0)
    assert list(parent.archs) == ["AutoFormer-T"] and parent.space.contains(parent.archs["AutoFormer-T"])
    assert parent.trained_as_supernet and parent.qkv_bias == "contiguous"
    # a file of the same geometry without args and without relative position tables: no rel-pos, a note
    plain = {k: v for k, v in state.items() if "rel_pos" not in k}
    parent = autoformer_parent(plain, "plain.pth")
    assert parent.space.features == Features(0, "avg", 1e-5) and parent.notes


@pytest.mark.parametrize("change, needle", [
    (lambda s, a: (s, _args(change_qkv=False)), "without --change_qkv"),
    (lambda s, a: (s, _args(relative_position=False)), "relative_position=False"),
    (lambda s, a: ({**s, "blocks.1.fc2.weight": s["blocks.1.fc2.weight"][:, :-1]}, a), "blocks.1.fc2.weight has shape (128, 511)"),
    (lambda s, a: ({k: v for k, v in s.items() if k != "blocks.2.ffn_layer_norm.bias"}, a), "missing blocks.2.ffn_layer_norm.bias"),
    (lambda s, a: ({**s, "blocks.0.attn.extra": torch.zeros(1)}, a), "unexpected blocks.0.attn.extra"),
])
def test_bad_autoformer_files_are_one_line_and_write_nothing(tmp_path, change, needle):
    from tests.conftest import assert_one_line_error

    state, args = change(_autoformer_state(), _args())
    torch.save({"model": state, "args": args}, tmp_path / "bad.pth")
    out = tmp_path / "out"
    assert_one_line_error(run_cli("import", "--from", "autoformer", "--weights", str(tmp_path / "bad.pth"), "--out", str(out)), needle)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_a_supernet_trained_without_qkv_bias_imports_with_a_zero_bias():
    from deployvit.importers.autoformer import autoformer_parent
    from deployvit.importers.common import build_import

    state = {k: v for k, v in _autoformer_state(1).items() if not k.endswith("qkv.bias")}
    supernet, _ = build_import(autoformer_parent({"model": state, "args": _args()}, "nobias.pth"), None, "none", log=lambda m: None)
    arch = supernet.space.sample(np.random.default_rng(3))
    (stage,) = arch.stages
    x = torch.randn(2, 3, IMG, IMG)
    ref_state = {**state, **{f"blocks.{i}.attn.qkv.bias": torch.zeros(3 * EMBED) for i in range(DEPTH)}}
    want = _autoformer_forward(ref_state, stage.embed_dim, [(l.num_heads, l.mlp_ratio) for l in stage.layers], x)
    torch.testing.assert_close(supernet.extract(arch).eval()(x), want, rtol=0, atol=1e-4)


def test_latency_estimate_times_relative_position_blocks_as_explicit_attention(tmp_path):
    import yaml

    from deployvit.latency.kernels import Flavour, part_kernels
    from deployvit.latency.table import LatencyTable
    from deployvit.parts import BlockPart

    plain = BlockPart(197, 192, 3, 64, 768)
    rel = replace(plain, rel_pos=14)
    flavour = Flavour.for_runtime("tensorrt", "fp16")
    kp, kr = part_kernels(plain, 1, "fp16", flavour), part_kernels(rel, 1, "fp16", flavour)
    assert plain.key != rel.key and not any(k.kind == "attention" for k in kr)
    assert sum(k.flops * k.count for k in kr) > sum(k.flops * k.count for k in kp)
    space = _rel_space()
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space.to_dict()))
    result = run_cli("profile", "--device", "h100", "--estimate", "--space", str(tmp_path / "space.yaml"), "--runtime", "tensorrt",
                     "--precision", "fp16", "--batch-size", "1", "--out", str(tmp_path / "table.json"))
    assert result.code == 0, result.err
    table = LatencyTable.load(tmp_path / "table.json", warn=False)
    assert table.predict(space.max_arch()) > 0 and all(k.endswith(":r3") for k in table.entries if k.startswith("block"))
