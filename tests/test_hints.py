"""Hints that work: every command a deployvit line prints in backquotes (`deployvit ...`), run as
printed on this machine, succeeds, and so does every flag a refusal asks for. The hints are
collected from what the commands print: refusals that name the command to run instead, notes, and
the `next:` line each command of the journey ends with, followed hint after hint from one failing
command to an exported model.

Only the time of a long hint is bounded (`BOUNDED`: fewer epochs, archs, repeats or formats than
its defaults); that changes how long it runs, not whether it works. In a temporary working
directory and DEPLOYVIT_HOME, on the CPU."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from tests.conftest import CliResult, run_cli

#: flags appended to a hint only to bound its time in the suite
BOUNDED = {
    "profile": ["--calib-archs", "2", "--val-archs", "2", "--repeats", "3", "--warmup", "0"],
    "train-supernet": ["--epochs", "1"],
    "retrain": ["--epochs", "1"],
    "search": ["--population", "2", "--generations", "0", "--no-progress"],
    "benchmark": ["--formats", "torch,onnx", "--samples", "32"],
    "export": ["--samples", "32"],
}


def hints(result: CliResult) -> list[str]:
    """Every `deployvit ...` command in backquotes in what a command printed."""
    return re.findall(r"`(deployvit [^`]+)`", result.out + result.err)


def run_hint(hint: str) -> CliResult:
    args = shlex.split(hint)[1:]
    result = run_cli(*args, *BOUNDED.get(args[0], []))
    assert result.code == 0, (hint, result.err)
    return result


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the hints of a machine without a CUDA GPU")
def test_profile_of_a_gpu_on_a_cpu_offers_the_estimate_and_the_estimate_the_search():
    refused = run_cli("profile", "--device", "a100", "--space", "test", "--runtime", "cudagraph", "--batch-size", "1")
    assert refused.code == 2 and "--force" not in refused.err
    (estimate,) = hints(refused)
    assert estimate.endswith("--estimate")
    made = run_hint(estimate)
    (search,) = hints(made)  # next: the search that uses it
    assert search.startswith("deployvit search --space test --device a100 --runtime cudagraph --precision fp16 --batch-size 1 --latency ")
    run_hint(search)
    again = run_cli(*shlex.split(estimate)[1:])  # the table exists now: the refusal asks for a flag
    assert again.code == 2 and "pass --force to overwrite it" in again.err
    assert run_cli(*shlex.split(estimate)[1:], "--force").code == 0


def test_a_table_nothing_has_made_names_the_profile_that_makes_it():
    args = ["search", "--space", "test", "--device", "cpu", "--runtime", "eager", "--batch-size", "4", "--latency", "1s"]
    refused = run_cli(*args, *BOUNDED["search"])
    assert refused.code == 2
    (profile,) = hints(refused)
    assert profile == "deployvit profile --device cpu --space test --runtime eager --precision fp32 --batch-size 4"
    (search,) = hints(run_hint(profile))
    run_hint(search)
    assert run_cli(*args, *BOUNDED["search"]).code == 0  # one step closer: the refused search runs now


def test_a_budget_that_does_not_bind_and_a_full_run_folder_say_what_works(tmp_path):
    result = run_cli("search", "--space", "test", "--latency", "5ms", "--out", "run", *BOUNDED["search"])
    assert result.code == 0, result.err
    (instead, export) = hints(result)
    assert instead == "deployvit search --space vit-tiny --latency 5ms" and export == "deployvit export --arch run"
    run_hint(instead)
    again = run_cli("search", "--space", "test", "--latency", "5ms", "--out", "run", *BOUNDED["search"])
    assert again.code == 2 and "use --resume to continue it" in again.err
    assert run_cli("search", "--space", "test", "--latency", "5ms", "--out", "run", *BOUNDED["search"], "--resume").code == 0
    assert export == "deployvit export --arch run"  # run by the journey below, on the retrained model


def test_the_journey_follows_its_hints_from_a_search_without_a_supernet_to_an_exported_model():
    """search --score supernet (no supernet yet) -> train-supernet -> search (the newest supernet
    run, its data) -> retrain from it -> export / evaluate the retrain run."""
    refused = run_cli("search", "--space", "test", "--score", "supernet", *BOUNDED["search"])
    assert refused.code == 2
    (train,) = hints(refused)
    assert train == "deployvit train-supernet --space test --data digits"
    (search,) = hints(run_hint(train))
    assert search == "deployvit search --score supernet --supernet runs/supernet"
    searched = run_cli("search", "--space", "test", "--score", "supernet", *BOUNDED["search"])  # the refused command, as typed
    assert searched.code == 0, searched.err
    assert "supernet: runs/supernet/last.pt, the newest supernet run under runs/" in searched.out
    assert "data: digits, recorded in runs/supernet/last.pt" in searched.out
    (retrain,) = hints(searched)
    assert re.fullmatch(r"deployvit retrain --arch runs/search-test-\S+ --init runs/supernet/last.pt --data digits", retrain)
    run_hint(search)
    export, evaluate = hints(run_hint(retrain))
    assert export == "deployvit export --arch runs/retrain" and evaluate == "deployvit evaluate --model runs/retrain --data digits"
    run_hint(evaluate)
    exported = run_hint(export)
    assert "report: runs/retrain/report.json" in exported.out
    (benchmark,) = hints(exported)
    assert benchmark == "deployvit benchmark --arch runs/retrain"
    run_hint(benchmark)


def test_two_default_searches_in_one_second_get_two_run_folders(tmp_path, monkeypatch):
    """The default run folder is named to the second: a second search within it gets `-2`, not a refusal."""
    from deployvit.runs import new_run_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("time.strftime", lambda fmt: "20261203-120000")
    first = new_run_dir("search-test")
    first.mkdir(parents=True)
    (first / "best.arch.json").write_text("{}")
    assert first == Path("runs/search-test-20261203-120000")
    assert new_run_dir("search-test") == Path("runs/search-test-20261203-120000-2")
