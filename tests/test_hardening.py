"""Bad input at the door, one test per class of issue 15: code in a data folder, inputs that used to
raise a traceback, and nonsense that used to be accepted. Each refusal is exit 2 with one line on
stderr, and the output folder holds no new file."""

from __future__ import annotations

import json
import os
import pickle
import zlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from deployvit import io
from deployvit.errors import DeployvitError
from deployvit.latency.table import LatencyTable, check_covers
from deployvit.parts import space_parts
from deployvit.spaces import get_space, space_from_dict
from deployvit.train.data import open_data
from tests.conftest import assert_one_line_error, run_cli

SHIPPED_TEST_TABLE = Path(__file__).resolve().parent.parent / "latency_tables" / "cpu" / "test-eager-fp32-b1.json"


def _png_bytes() -> bytes:
    """A valid 1x1 PNG (what a user might pass as a space file by mistake)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00")) + chunk(b"IEND", b"")


def _arch_dict(**changes) -> dict:
    data = get_space("test").max_arch().to_dict()
    data.update(changes)
    return data


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --- no code runs from a data folder ---------------------------------------------------------------


class _RunsCode:
    """Unpickling this calls os.system: what a planted CIFAR batch would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Evals:
    def __reduce__(self):
        return (eval, ("__import__('pathlib').Path('EVAL_RAN').touch()",))


def _cifar_folder(root: Path, poison) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        if name == "data_batch_1":
            batch["payload"] = poison
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


@pytest.mark.parametrize("make", [lambda m: _RunsCode(m), lambda m: _Evals(), lambda m: {"x": __import__("collections").OrderedDict()}])
def test_a_malicious_cifar_pickle_does_not_run(tmp_path, monkeypatch, make):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    folder = _cifar_folder(tmp_path / "cifar", make(marker))
    with pytest.raises(DeployvitError, match="cannot read CIFAR batch .*refused to load"):
        open_data(folder)
    out = tmp_path / "run"
    result = run_cli("train-supernet", "--space", "test", "--data", str(folder), "--epochs", "1", "--out", str(out))
    assert_one_line_error(result, "data_batch_1", "refused to load")
    assert not marker.exists() and not (tmp_path / "EVAL_RAN").exists()
    assert not out.exists()


def test_a_genuine_cifar_folder_still_loads(tmp_path):
    folder = _cifar_folder(tmp_path / "cifar", "just a string")
    meta = {"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": 4}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    source = open_data(folder)
    assert source.classes[3] == "c3" and len(source.train) == 20 and source.train.load(0).size == (32, 32)


@pytest.mark.parametrize("batch, needle", [
    ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "uint8"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 11]}, "labels"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "labels"),
    ({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, "3072"),
    ([1, 2, 3], "expected a dict"),
])
def test_a_malformed_cifar_batch_is_one_line(tmp_path, batch, needle):
    folder = _cifar_folder(tmp_path / "cifar", None)
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(DeployvitError, match=needle):
        open_data(folder)


# --- tracebacks that are now one line --------------------------------------------------------------


DEEP = "[" * 100_000 + "]" * 100_000


def test_deeply_nested_json_as_arch_space_or_table(tmp_path):
    deep = _write(tmp_path / "deep.json", DEEP)
    assert_one_line_error(run_cli("inspect", str(deep)), "nested too deeply")
    assert_one_line_error(run_cli("inspect", "--space", str(deep), "--sample", "1"), "nested too deeply")
    arch = tmp_path / "a.json"
    get_space("test").min_arch().save(arch)
    assert_one_line_error(run_cli("latency", str(arch), "--table", str(deep)), "nested too deeply")
    below_the_recursion_limit = _write(tmp_path / "deep2.json", '{"layers": ' + "[" * 100 + "]" * 100 + "}")
    assert_one_line_error(run_cli("inspect", str(below_the_recursion_limit)), "nested too deeply (at most 64 levels)")


def test_deeply_nested_yaml_space(tmp_path):
    assert_one_line_error(run_cli("inspect", "--space", str(_write(tmp_path / "s.yaml", "a: " + "[" * 5000 + "]" * 5000)), "--sample", "1"),
                          "nested too deeply")


@pytest.mark.parametrize("suffix", [".png", ".yaml", ".json"])
def test_a_png_given_as_a_space_or_arch(tmp_path, suffix):
    png = _write(tmp_path / f"picture{suffix}", _png_bytes())
    assert_one_line_error(run_cli("inspect", "--space", str(png), "--sample", "1"), "binary file")
    assert_one_line_error(run_cli("inspect", str(png)), "binary file")


def test_undecodable_text_is_one_line(tmp_path):
    assert_one_line_error(run_cli("inspect", str(_write(tmp_path / "a.json", b'{"space": "\xff\xfe"}'))), "UTF-8")


def test_yaml_that_would_build_objects_is_refused(tmp_path):
    marker = tmp_path / "RAN"
    text = f"!!python/object/apply:os.system ['touch {marker}']\n"
    assert_one_line_error(run_cli("inspect", "--space", str(_write(tmp_path / "s.yaml", text)), "--sample", "1"), "malformed space file")
    assert not marker.exists()


def test_billion_laughs_yaml_is_refused_quickly(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    assert_one_line_error(run_cli("inspect", "--space", str(_write(tmp_path / "s.yaml", "\n".join(lines) + "\n")), "--sample", "1"),
                          "more than")


@pytest.mark.parametrize("argv, needle", [
    (["inspect", "--space", "test", "--sample", "2", "--seed", "-1"], "--seed"),
    (["inspect", "--space", "test", "--sample", "1000000000"], "--sample"),
    (["search", "--space", "test", "--seed", "-5"], "--seed"),
    (["search", "--space", "test", "--population", "1000000000"], "--population"),
    (["search", "--space", "test", "--generations", "1000000000"], "--generations"),
    (["search", "--space", "test", "--mutation-prob", "nan"], "finite"),
    (["profile", "--device", "cpu", "--space", "test", "--runtime", "eager", "--batch-size", "1000000000"], "--batch-size"),
    (["profile", "--device", "cpu", "--space", "test", "--runtime", "eager", "--batch-size", "1", "--repeats", "1000000000"], "--repeats"),
    (["profile", "--device", "cpu", "--space", "test", "--runtime", "eager", "--batch-size", "1", "--seed", "-1"], "--seed"),
    (["train-supernet", "--space", "test", "--data", "digits", "--seed", "-1"], "--seed"),
    (["train-supernet", "--space", "test", "--data", "digits", "--batch-size", "1000000000"], "--batch-size"),
    (["train-supernet", "--space", "test", "--data", "digits", "--lr", "inf"], "finite"),
    (["retrain", "--arch", "a.json", "--data", "digits", "--epochs", "1000000000"], "--epochs"),
    (["evaluate", "--model", "m.safetensors", "--data", "digits", "--batch-size", "1000000000"], "--batch-size"),
    (["export", "--arch", "a.json", "--samples", "1000000000"], "--samples"),
    (["benchmark", "--arch", "a.json", "--repeats", "1000000000"], "--repeats"),
    (["export", "--arch", "a.json", "--dynamic-batch", "1,8,100000000"], "--dynamic-batch"),
])
def test_absurd_or_negative_options_are_one_line(tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    get_space("test").min_arch().save(tmp_path / "a.json")
    before = _listing(tmp_path)
    assert_one_line_error(run_cli(*argv), needle)
    assert _listing(tmp_path) == before  # nothing written, not even a run folder


@pytest.mark.parametrize("command", ["inspect", "search", "profile", "latency", "train-supernet", "retrain", "evaluate", "export", "benchmark"])
def test_every_numeric_option_is_bounded_and_says_so_in_help(command):
    """Every int option has a lower and an upper bound; every float option refuses nan/inf; --help shows the range."""
    import click

    from deployvit.cli import cli
    from deployvit.commands.bounds import FiniteFloat

    cmd = cli.get_command(click.Context(cli), command)
    ctx = click.Context(cmd)
    for param in cmd.params:
        if not isinstance(param, click.Option) or param.is_flag:
            continue
        if isinstance(param.type, click.types.IntParamType):
            assert isinstance(param.type, click.IntRange) and None not in (param.type.min, param.type.max), (command, param.name)
        elif isinstance(param.type, click.types.FloatParamType):
            assert isinstance(param.type, FiniteFloat), (command, param.name)
        else:
            continue
        help_text = " ".join(param.get_help_record(ctx)[1].split())
        assert any(f"x{op}" in help_text or f"{op}x" in help_text for op in ("<=", ">=", "<", ">")), (command, param.name, help_text)
    assert run_cli(command, "--help").code == 0


# --- nonsense that is now refused ------------------------------------------------------------------


def _table_dict() -> dict:
    return json.loads(SHIPPED_TEST_TABLE.read_text())


def _break_table(data: dict, how: str) -> dict:
    entry = next(iter(data["entries"].values()))
    if how == "negative-bias":
        data["calibration"]["bias"] = -66.0
    elif how == "infinite-scale":
        data["calibration"]["scale"] = float("inf")
    elif how == "missing-entry":
        data["entries"].pop(next(iter(data["entries"])))
    elif how == "huge-entry":
        entry["median_us"] = 1e300
    elif how == "string-median":
        entry["median_us"] = "94.4"
    elif how == "string-batch":
        data["metadata"]["batch_size"] = "1"
    elif how == "nan-cv":
        entry["cv"] = float("nan")
    elif how == "negative-validation":
        data["validation"]["calibrated"]["mape"] = -1.0
    elif how == "tau-out-of-range":
        data["validation"]["calibrated"]["kendall_tau"] = 3.0
    elif how == "string-calibration-sum":
        data["calibration"]["archs"][0]["sum_us"] = "big"
    elif how == "absurd-repeats-setting":
        data["metadata"]["settings"]["repeats"] = 10**12
    return data


TABLE_BREAKS = ["negative-bias", "infinite-scale", "missing-entry", "huge-entry", "string-median", "string-batch", "nan-cv",
                "negative-validation", "tau-out-of-range", "string-calibration-sum", "absurd-repeats-setting"]


@pytest.mark.parametrize("how", TABLE_BREAKS)
def test_a_table_with_nonsense_is_refused_at_load(tmp_path, how):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_break_table(_table_dict(), how)))
    with pytest.raises(DeployvitError, match="malformed latency table"):
        LatencyTable.load(path, warn=False)
    arch = tmp_path / "a.json"
    get_space("test").min_arch().save(arch)
    assert_one_line_error(run_cli("latency", str(arch), "--table", str(path)), "malformed latency table")
    out = tmp_path / "run"
    assert_one_line_error(run_cli("search", "--space", "test", "--latency", "5ms", "--table", str(path), "--out", str(out)), "malformed latency table")
    assert not out.exists()


def test_the_shipped_tables_pass_and_predict_positive_latencies():
    for path in sorted(SHIPPED_TEST_TABLE.parent.glob("*.json")):
        table = LatencyTable.load(path, warn=False)
        assert table.bias >= 0 and table.scale > 0
        space = get_space(table.metadata["space"])
        check_covers(table, space)
        assert table.scale * table.sum_us(space.min_arch()) + table.bias > 0


def test_a_user_space_table_must_cover_the_space_it_is_used_for(tmp_path):
    space_file = _write(tmp_path / "mine.yaml", "name: mine\nimg_size: 32\npatch_size: 8\nnum_classes: 10\nembed_dim: [32, 48]\n"
                        "depth: [1, 2]\nnum_heads: [1]\nmlp_ratio: [2]\nhead_dim: 16\n")
    space = get_space(str(space_file))
    data = _table_dict()
    data["metadata"].update(space="mine", space_hash=space.hash())
    data["entries"] = {p.key: {"median_us": 10.0} for p in space_parts(space)[:-1]}  # one part short
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    LatencyTable.load(path, warn=False)  # a user space is not known at load ...
    out = tmp_path / "run"
    result = run_cli("search", "--space", str(space_file), "--latency", "5ms", "--table", str(path), "--out", str(out), "--no-progress")
    assert_one_line_error(result, "lacks 1 part(s) of space 'mine'")  # ... but is checked when used for it
    assert not out.exists()


@pytest.mark.parametrize("change, needle", [
    ({"layers": [{"num_heads": 1, "mlp_ratio": 2.0}] * 5000, "depth": 5000}, "at most 256 layers"),
    ({"img_size": 10**6}, "img_size"),
    ({"embed_dim": 10**9}, "embed_dim"),
    ({"num_classes": 0}, "num_classes"),
])
def test_arch_bounds(tmp_path, change, needle):
    assert_one_line_error(run_cli("inspect", str(_write(tmp_path / "a.json", json.dumps(_arch_dict(**change))))), needle)


def test_an_img_size_far_outside_the_space_is_refused(tmp_path):
    arch = get_space("test").with_overrides(img_size=64).min_arch()  # 2x: fine-tuning at a higher resolution
    arch.save(tmp_path / "ok.json")
    assert run_cli("inspect", str(tmp_path / "ok.json")).code == 0
    far = _arch_dict(img_size=4096, patch_size=16)
    assert_one_line_error(run_cli("inspect", str(_write(tmp_path / "far.json", json.dumps(far)))), "far outside space 'test'")


def test_duplicate_keys_are_refused(tmp_path):
    text = json.dumps(_arch_dict())[:-1] + ', "img_size": 64}'
    assert_one_line_error(run_cli("inspect", str(_write(tmp_path / "a.json", text))), "duplicate key 'img_size'")
    yaml_text = "name: x\nimg_size: 32\nimg_size: 64\npatch_size: 8\nnum_classes: 10\nembed_dim: [32]\ndepth: [1]\nnum_heads: [1]\nmlp_ratio: [2]\n"
    assert_one_line_error(run_cli("inspect", "--space", str(_write(tmp_path / "s.yaml", yaml_text)), "--sample", "1"), "duplicate key 'img_size'")


@pytest.mark.parametrize("field, value", [("embed_dim", list(range(1, 200))), ("depth", [10**6]), ("num_heads", [0]), ("mlp_ratio", [100])])
def test_space_bounds(field, value):
    data = {"name": "mine", "img_size": 32, "patch_size": 8, "num_classes": 10, "embed_dim": [32], "depth": [2],
            "num_heads": [1], "mlp_ratio": [2.0], field: value}
    with pytest.raises(DeployvitError, match=field):
        space_from_dict(data)


def test_a_degenerate_multi_arch_sampler_is_refused(tmp_path):
    out = tmp_path / "run"
    result = run_cli("train-supernet", "--space", "test", "--data", "digits", "--sampler", "multi-arch", "--groups", "8",
                     "--batch-size", "64", "--epochs", "1", "--out", str(out))
    assert_one_line_error(result, "--groups 8 needs --batch-size >= 128")
    assert not out.exists()


# --- run, checkpoint and sampler state -------------------------------------------------------------


def test_a_corrupt_search_state_is_one_line(tmp_path):
    out = tmp_path / "run"
    args = ["search", "--space", "test", "--flops", "1G", "--population", "4", "--generations", "1", "--parents", "2",
            "--mutations", "2", "--crossovers", "2", "--out", str(out), "--no-progress"]
    assert run_cli(*args).code == 0
    state = out / "search_state.json"
    data = json.loads(state.read_text())
    for broken in ({**data, "generation": "zero"}, {**data, "evaluated": [{"arch": {}, "score": 1.0, "metrics": {}}]},
                   {**data, "evaluated": [{**data["evaluated"][0], "score": "high"}]}):
        state.write_text(json.dumps(broken))
        before = _listing(out)
        assert_one_line_error(run_cli(*args, "--resume"), str(state))
        assert _listing(out) == before


def test_a_checkpoint_with_wrong_types_is_one_line(tmp_path):
    from deployvit.train.checkpoint import FORMAT, load_supernet

    path = tmp_path / "last.pt"
    torch.save({"format": FORMAT, "kind": "supernet", "meta": {"supernet": {"space": "x", "space_hash": 1}}, "model": {}}, path)
    with pytest.raises(DeployvitError, match="meta.supernet.space: expected a mapping"):
        load_supernet(path)
    torch.save({"format": FORMAT, "kind": "supernet", "meta": {}, "model": {"w": "not a tensor"}}, path)
    with pytest.raises(DeployvitError, match=r"model\['w'\]: expected Tensor"):
        load_supernet(path)


def test_check_schema_words_every_problem_as_one_line():
    spec = {"a": (int, 0, 5), "b?": [str], "c": io.nullable({str: float})}
    io.check_schema({"a": 3, "c": None}, spec, "f.json")
    for data, needle in [({"a": 9, "c": None}, r"a: expected an integer in \[0, 5\]"), ({"c": None}, "a: missing"),
                         ({"a": 1, "b": [1], "c": None}, r"b\[0\]: expected a string"),
                         ({"a": 1, "c": {"k": float("nan")}}, r"c\['k'\]: expected a finite number")]:
        with pytest.raises(DeployvitError, match=needle):
            io.check_schema(data, spec, "f.json")


def test_a_damaged_profile_progress_file_is_ignored_not_used(tmp_path):
    from deployvit.latency import profile as profile_mod

    key = {"space": "test"}
    path = tmp_path / "t.json.progress.json"
    said = []
    timing = {"median_us": 5.0, "latency_us": 4.0, "cv": 0.1, "rounds": 2}
    good = {"format": profile_mod.PROGRESS_FORMAT, "key": key, "rounds": {"part:stem": [5.0, 4.0]}, "timings": {"part:stem": timing}}
    io.write_json(path, good)
    assert profile_mod.load_progress(path, key, said.append)["timings"] == good["timings"]
    for damage in ({**timing, "median_us": -5.0}, {**timing, "median_us": "5"}, {"cv": 0.1}):
        io.write_json(path, {**good, "timings": {"stem": damage}})
        assert profile_mod.load_progress(path, key, said.append)["timings"] == {}
    assert len(said) == 3 and all("damaged progress file" in line and "timings['stem']" in line for line in said)


@pytest.mark.parametrize("argv, needle", [
    (["--latency", "1e999ms"], "positive and finite"),
    (["--flops", "1e999G"], "positive and finite"),
    (["--latency", ",".join(f"{i}ms" for i in range(1, 100))], "at most 64"),
])
def test_budgets_that_are_no_budget_are_refused(tmp_path, argv, needle):
    out = tmp_path / "run"
    assert_one_line_error(run_cli("search", "--space", "test", *argv, "--out", str(out)), needle)
    assert not out.exists()


def test_a_search_too_large_to_hold_is_refused_up_front(tmp_path):
    out = tmp_path / "run"
    result = run_cli("search", "--space", "test", "--flops", "1G", "--population", "100", "--generations", "10000", "--out", str(out))
    assert_one_line_error(result, "evaluations; expected at most 50,000")
    assert not out.exists()


def test_real_checkpoints_pass_their_schemas(tmp_path):
    """The checked readers accept what the writers write: a focus-sampler supernet run and a retrain run."""
    from deployvit.train.checkpoint import load_supernet, read_checkpoint
    from deployvit.train.focus import load_sampler

    torch.set_num_threads(1)
    tiny = ["--data", "digits", "--epochs", "1", "--batch-size", "128", "--aug", "none", "--warmup-epochs", "0", "--log-every", "0"]
    supernet = tmp_path / "supernet"
    result = run_cli("train-supernet", "--space", "test", "--sampler", "focus", "--held-out-per-class", "5", "--out", str(supernet), *tiny)
    assert result.code == 0, result.err
    for name in ("checkpoint.pt", "last.pt"):
        read_checkpoint(supernet / name)
    load_supernet(supernet / "last.pt")
    load_sampler(supernet / "last.pt")
    get_space("test").min_arch().save(tmp_path / "a.json")
    retrain = tmp_path / "retrain"
    result = run_cli("retrain", "--arch", str(tmp_path / "a.json"), "--out", str(retrain), *tiny)
    assert result.code == 0, result.err
    assert read_checkpoint(retrain / "checkpoint.pt")["kind"] == "retrain"
