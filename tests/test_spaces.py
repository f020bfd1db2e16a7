"""Search spaces: presets as published, seeded sampling, valid mutation/crossover, exact size."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployvit.arch import Layer, Stage
from deployvit.errors import DeployvitError
from deployvit.spaces import PRESETS, get_space, load_space

ALL = list(PRESETS)


def test_presets_match_references():
    tiny, small, base = (get_space(f"autoformer-{n}").stages[0] for n in ("tiny", "small", "base"))
    assert (tiny.embed_dims, tiny.depths, tiny.num_heads, tiny.mlp_ratios) == ((192, 216, 240), (12, 13, 14), (3, 4), (3.0, 3.5, 4.0))
    assert (small.embed_dims, small.depths, small.num_heads, small.mlp_ratios) == ((320, 384, 448), (12, 13, 14), (5, 6, 7), (3.0, 3.5, 4.0))
    assert (base.embed_dims, base.depths, base.num_heads, base.mlp_ratios) == ((528, 576, 624), (14, 15, 16), (8, 9, 10), (3.0, 3.5, 4.0))
    assert all(s.head_dim == 64 for s in (tiny, small, base))
    resnas = get_space("resnas-small")
    first = (200, 220, 240, 280, 320)
    assert [s.embed_dims for s in resnas.stages] == [first, tuple(2 * e for e in first), tuple(4 * e for e in first)]
    assert all(s.num_heads == (5, 6, 7, 8) for s in resnas.stages)  # attention width 160-256 at head dim 32
    assert [resnas.grid(i) for i in range(3)] == [16, 8, 4]
    assert [s.head_dim for s in resnas.stages] == [32, 48, 64]
    assert all(len(s.mlp_ratios) == 7 and s.depths == (4, 5, 6, 7) for s in resnas.stages)


@pytest.mark.parametrize(
    "space_name, embed, depth, heads, ratio",
    [("autoformer-tiny", 192, 13, 3, 3.0), ("autoformer-small", 384, 13, 6, 4.0), ("autoformer-base", 576, 14, 8, 4.0)],
)
def test_published_subnet_shapes_are_members(space_name, embed, depth, heads, ratio):
    space = get_space(space_name)
    arch = space.make_arch([Stage(embed, 64, tuple(Layer(heads, ratio) for _ in range(depth)))])
    assert space.contains(arch)


@pytest.mark.parametrize("name", ALL)
def test_sampling_is_seeded_and_valid(name):
    space = get_space(name)
    a = [space.sample(np.random.default_rng(7)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(1)
    archs = [space.sample(rng) for _ in range(50)]
    assert all(space.contains(x) for x in archs)
    assert len({x.key for x in archs}) > 40
    assert space.contains(space.max_arch()) and space.contains(space.min_arch())


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), name=st.sampled_from(ALL))
def test_mutation_and_crossover_stay_in_space(seed, name):
    space = get_space(name)
    rng = np.random.default_rng(seed)
    a, b = space.sample(rng), space.sample(rng)
    assert space.contains(space.mutate(a, rng, layer_prob=0.5, stage_prob=0.5))
    child = space.crossover(a, b, rng)
    assert space.contains(child)
    for cs, sa, sb in zip(child.stages, a.stages, b.stages):
        assert cs.depth in (sa.depth, sb.depth) and cs.embed_dim in (sa.embed_dim, sb.embed_dim)
        for i, layer in enumerate(cs.layers):
            assert layer in [s.layers[i] for s in (sa, sb) if i < s.depth]


def test_crossover_of_different_depths_takes_tail_from_deeper_parent():
    space = get_space("test")
    shallow = space.make_arch([Stage(32, 16, (Layer(1, 2.0),) * 2)])
    deep = space.make_arch([Stage(64, 16, (Layer(2, 4.0),) * 4)])
    rng = np.random.default_rng(0)
    children = [space.crossover(shallow, deep, rng) for _ in range(40)]
    deep_children = [c for c in children if c.depth == 4]
    assert deep_children and all(c.layers[2:] == (Layer(2, 4.0),) * 2 for c in deep_children)


def test_size_equals_enumeration():
    space = get_space("test")
    s = space.stages[0]
    per_layer = list(itertools.product(s.num_heads, s.mlp_ratios))
    count = sum(1 for _ in s.embed_dims for d in s.depths for _ in itertools.product(per_layer, repeat=d))
    assert space.size() == count == 3 * (6**2 + 6**3 + 6**4)
    resnas = get_space("test-resnas")
    assert resnas.size() == (2 * (4 + 16)) ** 3


def test_mutation_changes_something_with_probability_one():
    space = get_space("autoformer-tiny")
    rng = np.random.default_rng(0)
    a = space.sample(rng)
    assert space.mutate(a, rng, layer_prob=1.0, stage_prob=0.0) != a or space.mutate(a, rng, 1.0, 0.0) != a
    assert space.mutate(a, rng, layer_prob=0.0, stage_prob=0.0) == a


def test_user_space_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\nimg_size: 64\npatch_size: 16\nnum_classes: 5\n"
        "embed_dim: [32, 64]\ndepth: [2, 3]\nnum_heads: [1, 2]\nmlp_ratio: [2, 4]\nhead_dim: 16\n"
    )
    space = get_space(str(path))
    assert space.name == "mine" and space.size() == 2 * (16 + 64)
    assert space.contains(space.sample(np.random.default_rng(0)))
    assert load_space(path).hash() == space.hash()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("name: x\nimg_size: 64\npatch_size: 16\nnum_classes: 5\nembed_dim: [32]\ndepth: [2]\nnum_heads: [1]\nmlp_ratio: [2]\nwidth: 3\n",
         "unknown key 'width'"),
        ("name: x\nimg_size: 64\npatch_size: 16\nnum_classes: 5\nembed_dim: []\ndepth: [2]\nnum_heads: [1]\nmlp_ratio: [2]\n", "embed_dim: expected"),
        ("name: test\nimg_size: 64\npatch_size: 16\nnum_classes: 5\nembed_dim: [32]\ndepth: [2]\nnum_heads: [1]\nmlp_ratio: [2]\n", "preset name"),
        ("name: x\nimg_size: 60\npatch_size: 16\nnum_classes: 5\nembed_dim: [32]\ndepth: [2]\nnum_heads: [1]\nmlp_ratio: [2]\n", "not a multiple"),
        ("name: x\n  img_size: [\n", "malformed space file"),
        ("name: x\nimg_size: [64, 128]\npatch_size: 16\nnum_classes: 5\nembed_dim: [32]\ndepth: [2]\nnum_heads: [1]\nmlp_ratio: [2]\n",
         "img_size: expected one positive integer"),
        ("name: x\nimg_size: 64\npatch_size: 16\nnum_classes: 5\nembed_dim: [32]\ndepth: [2]\nnum_heads: [1]\nmlp_ratio: [.inf]\n",
         r"mlp_ratio\[0\]: expected a finite number"),
        ("name: x\nimg_size: 64\npatch_size: 16\nnum_classes: 5\nembed_dim: [32]\ndepth: [2]\nnum_heads: [1]\nmlp_ratio: [.nan]\n",
         r"mlp_ratio\[0\]: expected a finite number"),
        ("name: x\nimg_size: 64\npatch_size: 16\nnum_classes: 5\nstages: 5\n", "stages: expected a list"),
        ("name: x\nimg_size: 64\npatch_size: 16\nnum_classes: 5\nstages: {a: 1}\n", "stages: expected a list"),
        ("name: x\nimg_size: 64\npatch_size: 16\nnum_classes: 5\nhead_dim: 16\nstages: []\n",
         r"allowed: features, img_size, in_chans, name, num_classes, patch_size, stages\)"),
    ],
)
def test_bad_space_files(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(DeployvitError, match=needle):
        get_space(str(path))


def test_overrides_keep_choices_and_change_hash():
    tiny = get_space("autoformer-tiny")
    small_img = tiny.with_overrides(img_size=32, num_classes=10)
    assert small_img.stages == tiny.stages and small_img.hash() != tiny.hash()
    with pytest.raises(DeployvitError, match="cannot be halved"):
        get_space("resnas-small").with_overrides(img_size=42)
