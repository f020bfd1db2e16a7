"""The ViT family ladder: published members, the choice rule, and (on the shipped estimator and
catalogue) spans that reach every budget from below DeiT-Ti to above ViT-H/14 on every GPU."""

from __future__ import annotations

import numpy as np
import pytest

from deployvit.errors import DeployvitError
from deployvit.latency.estimate import estimate_table
from deployvit.latency.gpus import load_catalogue
from deployvit.search.families import Span, check_ladder, choose_family, estimated_ladder, estimated_tables, reachable_latencies
from deployvit.spaces import FAMILIES, PRESET_SOURCES, PRESETS, get_space, reference_archs


@pytest.mark.parametrize("family, member, dims", [
    ("vit-tiny", "DeiT-Ti", (192, 12, 3, 64)),
    ("vit-small", "DeiT-S", (384, 12, 6, 64)),
    ("vit-base", "DeiT-B", (768, 12, 12, 64)),
    ("vit-large", "ViT-L/16", (1024, 24, 16, 64)),
    ("vit-huge", "ViT-H/14", (1280, 32, 16, 80)),  # 16 heads x 80 = 1280, patch 14
])
def test_each_family_holds_its_published_model(family, member, dims):
    space = get_space(family)
    arch = reference_archs(space)[member]
    stage = arch.stages[0]
    assert (stage.embed_dim, stage.depth, stage.layers[0].num_heads, stage.head_dim) == dims
    assert all(l.mlp_ratio == 4.0 for l in stage.layers)
    assert space.patch_size == (14 if family == "vit-huge" else 16) and space.img_size == 224
    assert member in PRESET_SOURCES[family]


def test_families_are_presets_with_sources_and_reference_patch_sizes_count():
    assert set(FAMILIES) <= set(PRESETS) and set(PRESET_SOURCES) == set(PRESETS)
    # ViT-H/14's dims at patch 16 are no member of anything: the patch is part of the model
    assert "ViT-H/14" not in reference_archs(get_space("vit-large"))
    assert list(reference_archs(get_space("autoformer-tiny"))) == ["DeiT-Ti"]
    small = reference_archs(get_space("vit-tiny").with_overrides(img_size=32))["DeiT-Ti"]  # a resolution override keeps members
    assert small.img_size == 32 and small.stages == reference_archs(get_space("vit-tiny"))["DeiT-Ti"].stages


SPANS = [Span("a", 100.0, 400.0), Span("b", 300.0, 1200.0), Span("c", 1000.0, 5000.0)]


def test_choose_family_takes_the_most_central_span():
    assert choose_family(150.0, SPANS) == "a"  # only a holds it
    assert choose_family(350.0, SPANS) == "b"  # a: min(3.5, 1.14); b: min(1.17, 3.43) -> b
    assert choose_family(305.0, SPANS) == "a"  # a: min(3.05, 1.31) beats b: min(1.02, 3.9)
    assert choose_family(1100.0, SPANS) == "c"  # b: 1.09, c: 1.1
    assert choose_family(200.0, [Span("x", 100.0, 400.0), Span("y", 100.0, 400.0)]) == "x"  # tie: the smaller (first)


def test_choose_family_refuses_budgets_outside_every_span():
    with pytest.raises(DeployvitError, match=r"below every family's span .*nearest: a spans 0.1 ms - 0.4 ms"):
        choose_family(50.0, SPANS)
    with pytest.raises(DeployvitError, match=r"above every family's span .*does not bind.*nearest: c spans 1 ms - 5 ms"):
        choose_family(9000.0, SPANS)


def test_reachable_latencies_are_real_archs_and_fill_the_span():
    gpu = load_catalogue().get("h100")
    space = get_space("vit-tiny")
    table = estimate_table(space, gpu, "tensorrt", "fp16", 1)
    reach = reachable_latencies(space, table)
    assert reach[0] == pytest.approx(table.predict(space.min_arch()))
    assert reach[-1] == pytest.approx(table.predict(space.max_arch()))
    rng = np.random.default_rng(0)
    for arch in (space.sample(rng) for _ in range(20)):  # every arch lies within the reachable range
        assert reach[0] - 1e-6 <= table.predict(arch) <= reach[-1] + 1e-6
    assert (reach[1:] / reach[:-1]).max() < 1.1
    with pytest.raises(DeployvitError, match="one-stage"):
        reachable_latencies(get_space("test-resnas"), table)


def test_ladder_check_names_a_gap():
    tables = estimated_tables(load_catalogue().get("h100"), "tensorrt", "fp16", 64)
    check = check_ladder(tables, "h100")
    assert not check.problems()
    assert check.problems(min_overlap=100.0)[0].startswith("h100: vit-tiny and vit-small overlap by")
    with pytest.raises(DeployvitError, match="no latency table for family vit-huge"):
        check_ladder({k: v for k, v in tables.items() if k != "vit-huge"})


@pytest.mark.parametrize("runtime", ["tensorrt", "cudagraph"])
@pytest.mark.parametrize("batch", [1, 64])
def test_families_reach_every_budget_on_every_catalogue_gpu(runtime, batch):
    """The requirement on the shipped estimate: from below DeiT-Ti to above ViT-H/14 without a gap,
    and dense enough that a winner can land within 15% under any budget in between. (The design
    margins are wider: `python benchmarks/family_spans.py`.)"""
    problems = []
    for gpu in load_catalogue().gpus.values():
        problems += estimated_ladder(gpu, runtime, "fp16", batch).problems()
    assert not problems, problems
