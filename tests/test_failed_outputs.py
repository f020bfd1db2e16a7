"""A command that fails leaves no empty or partial output folder: search, profile, export and
benchmark remove what they created (`deployvit.io.output_dir`) unless it holds a state a rerun
resumes from (a search's search_state.json, a profile's timings, a training run's checkpoint.pt),
which is kept and used. Each failure is injected after the folder exists."""

from __future__ import annotations

import json

import pytest
import torch

from deployvit.errors import DeployvitError
from tests.conftest import run_cli

SEARCH = ["search", "--space", "test", "--device", "cpu", "--runtime", "eager", "--latency", "1s", "--population", "4",
          "--generations", "2", "--mutations", "2", "--crossovers", "2", "--no-progress"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)


def failing_after(n: int, exc: BaseException):
    """A replacement that works `n` times, then raises `exc`."""
    calls = {"n": 0}

    def wrap(original):
        def replacement(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] > n:
                raise exc
            return original(*args, **kwargs)
        return replacement
    return wrap


def test_a_search_that_fails_before_its_first_state_leaves_no_folder(tmp_path, monkeypatch):
    from deployvit.search import scores

    monkeypatch.setattr(scores.DSSScore, "score_many", failing_after(0, DeployvitError("scoring failed"))(scores.DSSScore.score_many))
    result = run_cli(*SEARCH, "--out", "new/run")
    assert result.code == 2 and "scoring failed" in result.err
    assert not (tmp_path / "new").exists()  # the parent it created goes too


def test_a_search_that_fails_later_keeps_its_state_and_resumes_to_the_same_winner(tmp_path, monkeypatch):
    from deployvit.search import scores

    whole = run_cli(*SEARCH, "--out", "whole")
    assert whole.code == 0, whole.err
    original = scores.DSSScore.score_many
    monkeypatch.setattr(scores.DSSScore, "score_many", failing_after(6, KeyboardInterrupt())(original))  # one arch at a time: in generation 1
    stopped = run_cli(*SEARCH, "--out", "run")
    assert stopped.code == 130 and (tmp_path / "run" / "search_state.json").is_file() and not (tmp_path / "run" / "best.arch.json").exists()
    monkeypatch.setattr(scores.DSSScore, "score_many", original)
    resumed = run_cli(*SEARCH, "--out", "run", "--resume")
    assert resumed.code == 0, resumed.err
    assert json.loads((tmp_path / "run" / "best.arch.json").read_text()) == json.loads((tmp_path / "whole" / "best.arch.json").read_text())


def test_a_profile_that_fails_before_a_timing_leaves_nothing(tmp_path, monkeypatch):
    from deployvit.latency import profile
    from deployvit.latency.resolve import deployvit_home

    monkeypatch.setattr(profile, "time_runs", failing_after(0, DeployvitError("timing failed"))(profile.time_runs))
    result = run_cli("profile", "--device", "cpu", "--space", "test", "--runtime", "eager", "--precision", "fp32", "--batch-size", "1",
                     "--calib-archs", "2", "--val-archs", "2", "--repeats", "2", "--warmup", "0", "--out", "tables/t.json")
    assert result.code == 2 and "timing failed" in result.err
    assert not (tmp_path / "tables").exists()
    home = run_cli("profile", "--device", "cpu", "--space", "test", "--runtime", "eager", "--precision", "fp32", "--batch-size", "1",
                   "--calib-archs", "2", "--val-archs", "2", "--repeats", "2", "--warmup", "0")
    assert home.code == 2 and not (deployvit_home() / "latency_tables" / "cpu").exists()


def test_a_profile_that_fails_after_timings_keeps_them_for_the_rerun(tmp_path, monkeypatch):
    from deployvit.latency import profile

    args = ["profile", "--device", "cpu", "--space", "test", "--runtime", "eager", "--precision", "fp32", "--batch-size", "1",
            "--calib-archs", "2", "--val-archs", "2", "--rounds", "5", "--round-time", "0", "--max-time", "0", "--warmup", "0",
            "--out", "tables/t.json"]
    original = profile.time_runs

    def fails_after_3_rounds(runs, settings, device, seed=0, done=None, on_round=None):
        rounds = {"n": 0}

        def hook(sample):
            on_round(sample)
            rounds["n"] += 1
            if rounds["n"] >= 3:
                raise DeployvitError("timing failed")
        return original(runs, settings, device, seed, done, hook)

    monkeypatch.setattr(profile, "time_runs", fails_after_3_rounds)
    assert run_cli(*args).code == 2
    assert (tmp_path / "tables" / "t.json.progress.json").is_file()
    monkeypatch.setattr(profile, "time_runs", original)
    rerun = run_cli(*args)
    assert rerun.code == 0 and "3 rounds" in rerun.out + rerun.err and (tmp_path / "tables" / "t.json").is_file()


def test_an_export_that_fails_leaves_no_output_folder(tmp_path, monkeypatch):
    from deployvit.commands import export

    assert run_cli(*SEARCH, "--out", "run").code == 0
    monkeypatch.setattr(export, "run_format", failing_after(0, DeployvitError("export failed"))(export.run_format))
    for command in (["export"], ["benchmark", "--formats", "torch"]):
        result = run_cli(*command, "--arch", "run", "--samples", "32", "--out", "out/x")
        assert result.code == 2 and "export failed" in result.err
        assert not (tmp_path / "out").exists()
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert run_cli("export", "--arch", "run", "--samples", "32").code == 2  # into the run folder: nothing added to it
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before


@pytest.mark.parametrize("command", ["train-supernet", "retrain"])
def test_a_training_run_that_fails_keeps_only_a_checkpoint_it_resumes_from(tmp_path, monkeypatch, command):
    from deployvit.train import retrain, supernet_train

    task = supernet_train.SupernetTask if command == "train-supernet" else retrain.RetrainTask
    if command == "retrain":
        assert run_cli(*SEARCH, "--out", "run").code == 0
    args = [command, *(["--space", "test"] if command == "train-supernet" else ["--arch", "run"]), "--data", "digits", "--epochs", "1",
            "--out", "train/run"]
    original = task.train_step
    monkeypatch.setattr(task, "train_step", failing_after(1, DeployvitError("step failed"))(original))
    assert run_cli(*args).code == 2
    assert not (tmp_path / "train").exists()  # nothing was checkpointed: nothing written
    monkeypatch.setattr(task, "train_step", failing_after(3, DeployvitError("step failed"))(original))
    assert run_cli(*args, "--ckpt-every", "2").code == 2
    assert sorted(p.name for p in (tmp_path / "train" / "run").iterdir()) == ["checkpoint.pt"]  # step 2's: resumable
    monkeypatch.setattr(task, "train_step", original)
    resumed = run_cli(*args, "--ckpt-every", "2", "--resume")
    assert resumed.code == 0, resumed.err


def test_a_run_folder_written_before_units_were_in_its_keys_still_resumes(tmp_path):
    """search_state.json of an older deployvit: metrics `latency`/`flops`/`params` and constraints
    `max_latency` (now `latency_us`, `flops_macs`, `max_latency_us`)."""
    assert run_cli(*SEARCH, "--out", "run").code == 0
    state_path = tmp_path / "run" / "search_state.json"
    state = json.loads(state_path.read_text())
    assert set(state["evaluated"][0]["metrics"]) == {"latency_us", "flops_macs", "params"} and "max_latency_us" in state["constraints"]
    best = json.loads((tmp_path / "run" / "best.arch.json").read_text())
    assert set(best["metadata"]["metrics"]) == {"latency_us", "flops_macs", "params"}
    old = {"latency_us": "latency", "flops_macs": "flops", "params": "params"}
    for cand in state["evaluated"]:
        cand["metrics"] = {old[k]: v for k, v in cand["metrics"].items()}
    state["constraints"] = {"max_latency": state["constraints"].pop("max_latency_us")}
    state_path.write_text(json.dumps(state))
    (tmp_path / "run" / "best.arch.json").unlink()
    resumed = run_cli(*SEARCH, "--out", "run", "--resume")
    assert resumed.code == 0, resumed.err
    assert json.loads((tmp_path / "run" / "best.arch.json").read_text()) == best
