"""Supernet weight sharing: cyclic channel windows, identity shifting, gradients, config round trip."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from deployvit.arch import ArchError, Layer, Stage
from deployvit.spaces import PRESETS, get_space
from deployvit.supernet import Supernet
from deployvit.supernet.sharing import active_layers, channel_windows


def _usage(windows: dict[int, list[int]]) -> list[int]:
    ring = max(windows)
    counts = Counter(ch for idx in windows.values() for ch in idx)
    return [counts[c] for c in range(ring)]


@pytest.mark.parametrize("name", list(PRESETS))
def test_cyclic_sharing_balances_channel_usage(name):
    for stage in get_space(name).stages:
        cyclic = _usage(channel_windows(stage.embed_dims, cyclic=True))
        assert max(cyclic) - min(cyclic) <= 1
        assert sum(cyclic) == sum(stage.embed_dims)
        prefix = _usage(channel_windows(stage.embed_dims, cyclic=False))
        assert max(prefix) - min(prefix) == len(stage.embed_dims) - 1  # channel 0 by all, last by one
        for c, idx in channel_windows(stage.embed_dims, cyclic=True).items():
            assert len(idx) == len(set(idx)) == c


def test_cyclic_windows_are_laid_end_to_end():
    windows = channel_windows((192, 216, 240), cyclic=True)
    assert windows[192][0] == 0 and windows[216][0] == 192 and windows[240][0] == (192 + 216) % 240


def test_cyclic_supernet_trains_every_channel_for_a_small_width():
    """With prefix sharing the smallest width never touches the last channels; with cyclic it does."""
    space = get_space("test")
    x = torch.randn(2, 3, 32, 32)
    touched = {}
    for cyclic in (False, True):
        supernet = Supernet(space, cyclic=cyclic)
        for embed in (32, 48):
            supernet.set_arch(space.make_arch([Stage(embed, 16, (Layer(1, 2.0),) * 2)]))
            supernet(x).sum().backward()
        touched[cyclic] = supernet.stem.proj_weight.grad.abs().sum(dim=(1, 2, 3)) > 0
    assert not touched[False][48:].any()
    assert touched[True].all()


def test_identity_shifting_spreads_skips_and_rotates():
    d_max, depth = 14, 12
    assert active_layers(d_max, depth) == list(range(12))
    canonical = active_layers(d_max, depth, shift=0, identity_shift=True)
    assert sorted(set(range(14)) - set(canonical)) == [0, 7]  # spread, not the last two
    skipped = Counter()
    for shift in range(d_max):
        used = active_layers(d_max, depth, shift=shift, identity_shift=True)
        assert len(used) == depth and used == sorted(used)
        skipped.update(set(range(d_max)) - set(used))
    assert set(skipped.values()) == {2}  # every layer skipped equally often over D shifts
    assert active_layers(d_max, d_max, shift=5, identity_shift=True) == list(range(14))


def test_identity_shift_changes_which_weights_a_shallow_subnet_uses():
    space = get_space("test")
    supernet = Supernet(space, identity_shift=True).eval()
    x = torch.randn(2, 3, 32, 32)
    shallow = space.make_arch([Stage(64, 16, (Layer(2, 4.0),) * 2)])
    full = space.make_arch([Stage(64, 16, (Layer(2, 4.0),) * 4)])
    with torch.no_grad():
        outs = []
        for shift in range(4):
            supernet.set_arch(shallow, shift=shift)
            outs.append(supernet(x))
        assert not torch.allclose(outs[0], outs[1])  # different layers run
        supernet.set_arch(shallow)  # canonical offset 0
        assert torch.equal(supernet(x), outs[0])
        assert torch.equal(supernet.extract(shallow).eval()(x), outs[0])
        fulls = []
        for shift in range(2):
            supernet.set_arch(full, shift=shift)
            fulls.append(supernet(x))
        assert torch.equal(fulls[0], fulls[1])  # a full-depth subnet has nothing to shift


def test_only_the_subnets_slices_get_gradients():
    space = get_space("test")
    supernet = Supernet(space)
    arch = space.make_arch([Stage(32, 16, (Layer(1, 2.0),) * 2)])
    supernet.set_arch(arch)
    supernet(torch.randn(2, 3, 32, 32)).logsumexp(-1).sum().backward()
    block = supernet.stages[0][0]
    assert block.fc1_weight.grad[:64, :32].abs().sum() > 0
    assert block.fc1_weight.grad[64:].abs().sum() == 0 and block.fc1_weight.grad[:, 32:].abs().sum() == 0
    assert block.qkv_weight.grad[:, 16:].abs().sum() == 0
    assert supernet.stages[0][3].qkv_weight.grad is None  # skipped layer


def test_config_round_trip_and_state_dict():
    space = get_space("test-resnas").with_overrides(num_classes=7)
    a = Supernet(space, cyclic=True, identity_shift=True, drop_path_rate=0.1)
    b = Supernet.from_config(a.config)
    assert b.config == a.config and b.space == space
    b.load_state_dict(a.state_dict())
    arch = space.sample(np.random.default_rng(0))
    x = torch.randn(2, 3, 32, 32)
    a.eval(), b.eval()
    a.set_arch(arch), b.set_arch(arch)
    assert torch.equal(a(x), b(x))


def test_set_arch_rejects_archs_outside_the_space():
    supernet = Supernet(get_space("test"))
    with pytest.raises(ArchError, match="belongs to space"):
        supernet.set_arch(get_space("test-resnas").min_arch())
    with pytest.raises(RuntimeError, match="set_arch"):
        Supernet(get_space("test"))(torch.randn(1, 3, 32, 32))


def test_drop_path_is_active_only_in_training():
    space = get_space("test")
    supernet = Supernet(space, drop_path_rate=0.5)
    supernet.set_arch(space.max_arch())
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    train_outs = [supernet(x) for _ in range(2)]
    assert not torch.allclose(*train_outs)
    supernet.eval()
    assert torch.equal(supernet(x), supernet(x))


def test_extracted_model_uses_fused_attention_and_timm_layers():
    from timm.layers import Attention, Mlp

    space = get_space("test-resnas")
    model = Supernet(space).extract(space.max_arch())
    blocks = [b for stage in model.stages for b in stage]
    assert blocks and all(isinstance(b.attn, Attention) and b.attn.fused_attn for b in blocks)
    assert all(isinstance(b.mlp, Mlp) for b in blocks)


@pytest.mark.parametrize("cyclic", [False, True], ids=["prefix", "cyclic"])
def test_extracted_weights_are_the_documented_slices(cyclic):
    """Independent of `sliced()`: the extracted model's weights are the supernet's token-embedding
    window (leading or cyclic) and leading q/k/v, head and MLP rows, indexed here by hand."""
    space = get_space("test")
    supernet = Supernet(space, cyclic=cyclic)
    middle = sorted(space.stages[0].embed_dims)[1]  # its cyclic window starts past channel 0
    arch = next(a for a in (space.sample(np.random.default_rng(seed)) for seed in range(100)) if a.embed_dim == middle)
    model = supernet.extract(arch)
    ch = torch.tensor(channel_windows(space.stages[0].embed_dims, cyclic)[arch.embed_dim])
    assert cyclic == (ch.tolist() != list(range(arch.embed_dim)))
    stem = supernet.stem
    assert torch.equal(model.stem.patch_embed.proj.weight, stem.proj_weight[ch])
    assert torch.equal(model.stem.pos_embed, stem.pos_embed[:, :, ch])
    for layer, block, sblock in zip(arch.layers, model.stages[0], supernet.stages[0]):
        attn, hidden = layer.num_heads * arch.stages[0].head_dim, int(round(arch.embed_dim * layer.mlp_ratio))
        want_qkv = torch.cat([sblock.qkv_weight[i, :attn][:, ch] for i in range(3)])  # q, k, v: leading rows each
        assert torch.equal(block.attn.qkv.weight, want_qkv)
        assert torch.equal(block.attn.proj.weight, sblock.proj_weight[ch][:, :attn])
        assert torch.equal(block.mlp.fc1.weight, sblock.fc1_weight[:hidden][:, ch])
        assert torch.equal(block.mlp.fc2.weight, sblock.fc2_weight[ch][:, :hidden])
        assert torch.equal(block.norm1.weight, sblock.norm1.weight[ch])
    assert torch.equal(model.head.fc.weight, supernet.head.fc_weight[:, ch])
