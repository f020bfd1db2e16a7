"""Analytic counts against published DeiT numbers, timm's own modules and fvcore."""

from __future__ import annotations

import pytest
import timm
import torch

from deployvit.arch import Layer, Stage
from deployvit.counting import count_flops, count_params, fvcore_flops
from deployvit.models import build_model
from deployvit.spaces import get_space


def _deit(embed: int, heads: int):
    space = get_space("autoformer-tiny")  # only geometry (224/16, 1000 classes) matters here
    return space.make_arch([Stage(embed, 64, tuple(Layer(heads, 4.0) for _ in range(12)))])


@pytest.mark.parametrize(
    "timm_name, embed, heads, params_m, gmacs",
    [
        ("deit_tiny_patch16_224", 192, 3, 5.72, 1.25),
        ("deit_small_patch16_224", 384, 6, 22.05, 4.60),
        ("deit_base_patch16_224", 768, 12, 86.57, 17.56),
    ],
)
def test_published_deit_numbers(timm_name, embed, heads, params_m, gmacs):
    arch = _deit(embed, heads)
    timm_model = timm.create_model(timm_name, pretrained=False)
    assert count_params(arch) == sum(p.numel() for p in timm_model.parameters())
    assert round(count_params(arch) / 1e6, 2) == params_m
    assert round(count_flops(arch) / 1e9, 2) == gmacs


def test_deit_tiny_fvcore_agrees_exactly_and_needs_the_attention_handle():
    arch = _deit(192, 3)
    model = build_model(arch)
    assert fvcore_flops(model, 224) == count_flops(arch)
    # LayerNorm adds ~0.4% under fvcore's default handles; still within 1%.
    assert 0 < fvcore_flops(model, 224, count_norms=True) / count_flops(arch) - 1 < 0.01
    # without the handle fvcore misses attention's two token products (2 N^2 d per layer)
    from fvcore.nn import FlopCountAnalysis

    plain = FlopCountAnalysis(model.eval(), torch.randn(1, 3, 224, 224))
    plain.unsupported_ops_warnings(False)
    missed = count_flops(arch) - sum(n for op, n in plain.by_operator().items() if op != "layer_norm")
    assert missed == 12 * 2 * 197 * 197 * 192

