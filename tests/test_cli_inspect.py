"""`deployvit inspect` and the CLI's global behaviour (version, help, one-line usage errors)."""

from __future__ import annotations

import json

from deployvit import __version__
from deployvit.counting import count_flops, count_params
from deployvit.spaces import get_space
from tests.conftest import assert_one_line_error, run_cli


def test_inspect_json_for_a_file(tmp_path):
    arch = get_space("autoformer-tiny").max_arch()
    arch.save(tmp_path / "a.json")
    result = run_cli("inspect", str(tmp_path / "a.json"), "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["params"] == count_params(arch) and data["flops"] == count_flops(arch)
    assert data["depth"] == 14 and data["embed_dim"] == 240


def test_inspect_accepts_an_arch_at_its_own_class_count_and_resolution(tmp_path):
    """What a supernet trained on CIFAR-10 / digits produces: a preset's choices, 10 classes, 32 px."""
    arch = get_space("autoformer-tiny").with_overrides(img_size=32, num_classes=10).min_arch()
    arch.save(tmp_path / "a.json")
    result = run_cli("inspect", str(tmp_path / "a.json"), "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["params"] == count_params(arch)


def test_inspect_samples_are_seeded():
    first = run_cli("inspect", "--space", "resnas-small", "--sample", "3", "--seed", "5", "--json")
    again = run_cli("inspect", "--space", "resnas-small", "--sample", "3", "--seed", "5", "--json")
    assert first.code == 0 and first.out == again.out
    rows = json.loads(first.out)
    assert len(rows) == 3 and all(len(r["embed_dim"]) == 3 for r in rows)
    table = run_cli("inspect", "--space", "test", "--sample", "2")
    assert table.code == 0 and "params" in table.out and len(table.out.splitlines()) == 3


def test_version_and_help():
    assert run_cli("--version").out.strip().endswith(__version__)
    assert "inspect" in run_cli("--help").out
    assert run_cli("inspect", "--help").code == 0


def test_usage_errors_are_one_line():
    assert_one_line_error(run_cli("inspect", "--bogus"), "--bogus")
    assert_one_line_error(run_cli("inspect"), "give either ARCH_FILE")
    assert_one_line_error(run_cli("inspect", "--space", "nope", "--sample", "1"), "unknown space 'nope'")
    assert_one_line_error(run_cli("inspect", "--space", "test", "--sample", "0"), "--sample")
    assert_one_line_error(run_cli("no-such-command"), "no-such-command")
