"""Arch JSON: round trips and strict, one-line errors (through the CLI, as users meet them)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deployvit.arch import Arch, ArchError, load_arch
from deployvit.spaces import get_space
from tests.conftest import assert_one_line_error, run_cli


@pytest.mark.parametrize("space_name", ["autoformer-tiny", "resnas-small", "test", "test-resnas"])
def test_round_trip(tmp_path, space_name):
    space = get_space(space_name)
    arch = space.sample(np.random.default_rng(3))
    path = tmp_path / "a.arch.json"
    arch.save(path)
    assert load_arch(path) == arch
    data = json.loads(path.read_text())
    assert ("stages" in data) == space.multi_stage
    if not space.multi_stage:
        assert data["depth"] == len(data["layers"]) == arch.depth
    assert Arch.from_dict(data).key == arch.key


def test_design_example_parses():
    """The docs/DESIGN.md example (no head_dim: AutoFormer's 64 is the default)."""
    arch = Arch.from_dict(
        {"format": "deployvit.arch/1", "space": "autoformer-tiny", "img_size": 224, "patch_size": 16, "in_chans": 3,
         "num_classes": 1000, "embed_dim": 192, "depth": 2,
         "layers": [{"num_heads": 3, "mlp_ratio": 3.5}, {"num_heads": 4, "mlp_ratio": 4}]}
    )
    assert arch.stages[0].head_dim == 64 and arch.depth == 2 and arch.layers[1].mlp_ratio == 4.0


def _write(tmp_path, obj) -> str:
    path = tmp_path / "arch.json"
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def _valid() -> dict:
    return get_space("test").min_arch().to_dict()


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda d: '{"space": "test",', "malformed arch file"),
        (lambda d: {**d, "colour": "red"}, "unknown key 'colour'"),
        (lambda d: {**d, "embed_dim": "32"}, "embed_dim: expected an integer"),
        (lambda d: {**d, "img_size": True}, "img_size: expected an integer"),
        (lambda d: {**d, "depth": 3}, "depth is 3 but 2 layers"),
        (lambda d: {**d, "embed_dim": 40}, "embed_dim: 40 is not in space 'test' (allowed: 32, 48, 64)"),
        (lambda d: {**d, "layers": [{"num_heads": 3, "mlp_ratio": 2.0}] * 2}, "layers[0].num_heads: 3 is not in space"),
        (lambda d: {**d, "layers": [{"num_heads": 1, "mlp_ratio": 2.0, "x": 1}] * 2}, "layers[0]: unknown key 'x'"),
        (lambda d: {**d, "layers": []}, "layers: expected a non-empty list"),
        (lambda d: {**d, "space": "nope"}, "unknown space 'nope'"),
        (lambda d: {k: v for k, v in d.items() if k != "layers"}, "missing key 'layers'"),
        (lambda d: [1, 2], "arch: expected an object"),
        (lambda d: json.dumps(d).replace('"mlp_ratio": 2.0', '"mlp_ratio": Infinity', 1), "expected a finite number"),
        (lambda d: json.dumps(d).replace('"mlp_ratio": 2.0', '"mlp_ratio": 2.0000000001', 1), "2.0000000001 is not in space 'test'"),
        (lambda d: {k: v for k, v in d.items() if k != "head_dim"}, "head_dim: 64 does not match space 'test' (16) (an arch without head_dim means 64)"),
    ],
)
def test_bad_arch_files_exit_2_with_one_line(tmp_path, mutate, needle):
    assert_one_line_error(run_cli("inspect", _write(tmp_path, mutate(_valid()))), needle)


def test_missing_file_exit_2(tmp_path):
    assert_one_line_error(run_cli("inspect", str(tmp_path / "none.json")), "arch file not found")


def test_multi_stage_errors_name_the_stage():
    data = get_space("test-resnas").min_arch().to_dict()
    data["stages"][1]["embed_dim"] = 40
    arch = Arch.from_dict(data)
    with pytest.raises(ArchError, match=r"stages\[1\]\.embed_dim: 40 is not in space 'test-resnas'"):
        get_space("test-resnas").validate(arch)


def test_arch_from_other_space_is_rejected():
    arch = get_space("test").min_arch()
    with pytest.raises(ArchError, match="belongs to space 'test', not 'autoformer-tiny'"):
        get_space("autoformer-tiny").validate(arch)


def test_atomic_files_get_the_umask_mode_and_no_temp_is_left(tmp_path):
    import os

    from deployvit import io

    io.write_json(tmp_path / "x.json", {"a": 1})
    assert (os.stat(tmp_path / "x.json").st_mode & 0o777) == 0o666 & ~io._umask()
    with pytest.raises(RuntimeError):
        with io.atomic_path(tmp_path / "y.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_a_successful_write_removes_temp_files_a_killed_write_left(tmp_path):
    from deployvit import io

    (tmp_path / ".ckpt.pt.k3j9x_a2.tmp").write_bytes(b"x" * 100)  # what kill -9 during a save leaves
    others = [".other.pt.ab12cd34.tmp", ".ckpt.pt.json.ab12cd34.tmp"]  # other paths' leftovers (one shares our prefix)
    for name in others:
        (tmp_path / name).write_bytes(b"y")
    io.write_bytes(tmp_path / "ckpt.pt", b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*others, "ckpt.pt"])
