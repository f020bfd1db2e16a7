"""`deployvit search` end to end on the tiny `test` space with its shipped CPU table."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from deployvit.arch import load_arch
from deployvit.latency.table import LatencyTable, shipped_tables_dir
from deployvit.search.budgets import budget_label
from deployvit.units import parse_amount
from tests.conftest import assert_one_line_error, run_cli

@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    """Tiny models run faster on one thread (and much faster when other jobs share the cores)."""
    torch.set_num_threads(1)
    yield


def default_table(space: str):
    """The shipped CPU eager table of a space (the CLI runs below pin it with CPU_TABLE)."""
    return shipped_tables_dir() / "cpu" / f"{space}-eager-fp32-b1.json"


CPU_TABLE = ["--device", "cpu", "--runtime", "eager"]
TINY = [*CPU_TABLE, "--space", "test", "--population", "8", "--generations", "3", "--parents", "3", "--mutations", "4",
        "--crossovers", "4", "--no-progress"]


def _table() -> LatencyTable:
    return LatencyTable.load(default_table("test"), warn=False)


def _mid_budget() -> str:
    """A latency budget inside the test space's range on its shipped table (so it binds)."""
    from deployvit.search.predictor import MetricModel
    from deployvit.spaces import get_space

    lo, hi = MetricModel(get_space("test"), _table()).range("latency")
    return f"{(lo + 0.5 * (hi - lo)):.1f}us"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "run"
    result = run_cli("search", "--latency", _mid_budget(), "--out", str(out), *TINY)
    assert result.code == 0, result.err
    return out, result


def test_search_writes_the_run_directory_and_respects_the_budget(finished_run):
    out, result = finished_run
    budget = _mid_budget()
    assert result.out.splitlines()[0].startswith("latency table: ") and "eager" in result.out.splitlines()[0]
    for name in ("best.arch.json", "pareto.json", "pareto.csv", "pareto.png", "search_state.json", "log.jsonl"):
        assert (out / name).is_file(), name
    winner = load_arch(out / "best.arch.json")
    assert _table().predict(winner) <= parse_amount(budget, "latency") + 1e-6
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["final"] and "kendall_tau_dss_vs_params" in log[-1]
    front = json.loads((out / "pareto.json").read_text())
    assert front and all(r["latency_us"] <= parse_amount(budget, "latency") + 1e-6 for r in front)


def test_same_seed_gives_identical_winner(finished_run, tmp_path):
    first, _ = finished_run
    assert run_cli("search", "--latency", _mid_budget(), "--out", str(tmp_path / "again"), *TINY).code == 0
    assert (first / "best.arch.json").read_text() == (tmp_path / "again/best.arch.json").read_text()


def test_multi_budget_gives_one_winner_per_budget(tmp_path):
    from deployvit.search.predictor import MetricModel
    from deployvit.spaces import get_space

    lo, hi = MetricModel(get_space("test"), _table()).range("latency")
    budgets = [lo + f * (hi - lo) for f in (0.3, 0.6, 0.9)]
    text = ",".join(f"{b:.1f}us" for b in budgets)
    out = tmp_path / "multi"
    result = run_cli("search", "--latency", text, "--out", str(out), *TINY)
    assert result.code == 0, result.err
    files = sorted(out.glob("best-*.arch.json"))
    assert len(files) == 3
    for budget in (parse_amount(t, "latency") for t in text.split(",")):
        label = budget_label(budget)
        assert _table().predict(load_arch(out / f"best-{label}.arch.json")) <= budget + 1e-6
    assert (out / "best.arch.json").read_text() == (out / f"best-{label}.arch.json").read_text()  # loosest


def test_killed_search_resumes_to_the_same_result(tmp_path):
    budget = _mid_budget()
    args = ["search", *CPU_TABLE, "--latency", budget, "--space", "test", "--population", "6", "--generations", "8",
            "--parents", "3", "--mutations", "3", "--crossovers", "3", "--no-progress"]
    assert run_cli(*args, "--out", str(tmp_path / "whole")).code == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "deployvit", *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "search_state.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["generation"] >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "best.arch.json").exists(), "killed too late to test resume"
    result = run_cli(*args, "--out", str(killed), "--resume")
    assert result.code == 0, result.err
    assert (killed / "best.arch.json").read_text() == (tmp_path / "whole/best.arch.json").read_text()


def test_non_binding_budget_is_said_plainly(tmp_path):
    result = run_cli("search", "--latency", "5s", "--out", str(tmp_path / "r"), *TINY)
    assert result.code == 0
    assert "admits every arch: the budget does not bind" in result.out and "test spans" in result.out


def test_measure_top_times_candidates_here(tmp_path):
    out = tmp_path / "m"
    result = run_cli("search", "--latency", "5s", "--measure-top", "2", "--out", str(out), *TINY)
    assert result.code == 0, result.err
    assert "measured" in result.out and "predicted" in result.out
    final = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    rows = next(iter(final["measured"].values()))
    assert len(rows) == 2 and all(r["measured_us"] > 0 for r in rows)


def test_measure_top_fails_when_no_candidate_meets_the_budget_here(tmp_path):
    """A table from a (pretend) 1000x faster machine: every candidate fits on paper, none when timed."""
    data = json.loads(default_table("test").read_text())
    data["calibration"]["scale"] *= 1e-3
    data["calibration"]["bias"] *= 1e-3
    fast = tmp_path / "fast.json"
    fast.write_text(json.dumps(data))
    out = tmp_path / "m"
    result = run_cli("search", "--latency", "2us", "--table", str(fast), "--measure-top", "1", "--out", str(out), *TINY)
    assert result.code == 1, result.err
    assert "no candidate met budget 2us when timed on this machine" in result.err
    assert "measured" in result.out and not (out / "best.arch.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a CUDA GPU")
def test_measure_top_with_a_gpu_table_fails_before_the_search_here(tmp_path):
    data = json.loads(default_table("test").read_text())
    data["metadata"].update(device_type="cuda", device_name="NVIDIA H100 80GB HBM3", device_label="h100")
    data["metadata"]["settings"]["clock"] = "wall"
    gpu = tmp_path / "gpu.json"
    gpu.write_text(json.dumps(data))
    out = tmp_path / "m"
    result = run_cli("search", "--latency", "5s", "--table", str(gpu), "--measure-top", "1", "--out", str(out), *TINY)
    assert_one_line_error(result, "cannot time archs like the table", "CUDA")
    assert not out.exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--latency", "5 parsecs"], "unknown unit"),
        (["--latency", "0ms"], "must be positive"),
        (["--latency", "-3ms"], "expected a number"),
        (["--flops", "2M", "--min-flops", "3M"], "is not below"),
        (["--latency", "1us", *CPU_TABLE], "is infeasible: the smallest achievable latency"),
        (["--params", "10"], "is infeasible: the smallest achievable params"),
        (["--latency", "5ms", "--table", "/nonexistent/table.json"], "latency table not found"),
        (["--latency", "5ms", "--device", "mygpu"], "no latency table for space test on mygpu"),
        (["--latency", "5ms", "--device", "mygpu"], "is no GPU of the estimator's catalogue (a100, "),
        (["--space", "auto", "--latency", "1ms"], "latency budget 1 ms is below every family's span (no arch of any family fits it); "
                                                  "the nearest: vit-tiny spans 3.02 ms"),
        (["--space", "auto", "--latency", "5ms,1s"], "latency budget 1000 ms is above every family's span"),
        (["--score", "supernet"], "--score supernet needs a supernet (--supernet CHECKPOINT): none under runs/ (train one with "
                                  "`deployvit train-supernet --space test --data digits`)"),
        (["--score", "supernet", "--supernet", "/nonexistent.pt", "--data", "digits"], "checkpoint not found"),
        (["--batch-size", "0", "--latency", "5ms", "--device", "cpu"], "0 is not in the range 1<=x<=4096"),
        (["--population", "0"], "--population"),
        (["--screen", "0"], "--screen"),
        (["--screen", "many"], "--screen"),
    ] + ([] if torch.cuda.is_available() else [
        (["--flops", "2M", "--device", "cuda"], "--device cuda: torch sees no CUDA GPU"),
        (["--score", "supernet", "--device", "cuda", "--data", "digits"], "--device cuda: torch sees no CUDA GPU"),
    ]),
)
def test_bad_input_exit_2_and_no_run_directory(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)  # no runs/ here: a supernet is not found by accident
    out = tmp_path / "never"
    result = run_cli("search", "--space", "test", "--out", str(out), "--no-progress", *args)
    assert_one_line_error(result, needle)
    assert not out.exists()


def test_table_for_another_space_is_refused(tmp_path):
    table = default_table("test")
    out = tmp_path / "never"
    result = run_cli("search", "--space", "autoformer-tiny", "--latency", "5ms", "--table", str(table), "--out", str(out))
    assert_one_line_error(result, "profiled for space 'test', not 'autoformer-tiny'")
    assert not out.exists()


def test_corrupt_table_is_refused(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"format": "deployvit.latency_table/1", "metadata": {}}))
    result = run_cli("search", "--space", "test", "--latency", "5ms", "--table", str(bad), "--out", str(tmp_path / "x"))
    assert_one_line_error(result, "malformed latency table")


def test_existing_run_directory_needs_resume(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "something").write_text("x")
    assert_one_line_error(run_cli("search", "--space", "test", "--out", str(out)), "is not empty")
    assert_one_line_error(run_cli("search", "--space", "test", "--out", str(tmp_path / "new"), "--resume"), "no search state")


def test_default_command_uses_the_default_target_and_binds(tmp_path, monkeypatch):
    """`deployvit search --latency 5ms` with its defaults on a machine without a GPU: the default
    target (L4, TensorRT, fp16, batch 64; `DefaultTarget`), its estimate built on demand, space auto
    choosing vit-tiny (5 ms lies in its span there), DSS, seed 0. The evolution is shortened here
    only to keep the suite fast; the default's time is benchmarks/search_default.py's."""
    if torch.cuda.is_available():
        pytest.skip("the default target on a machine without a GPU")
    monkeypatch.chdir(tmp_path)
    result = run_cli("search", "--latency", "5ms", "--population", "6", "--generations", "1", "--mutations", "3",
                     "--crossovers", "3", "--no-progress")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].startswith("target: l4, the default target on a machine without a GPU, tensorrt fp16 batch 64 (change it with --device")
    assert lines[1].startswith("space: vit-tiny for 5 ms: vit-tiny spans 3.02 ms - 8.6 ms on this target")
    assert lines[2].startswith("ESTIMATED latency table: ") and "built on demand" in lines[2]
    assert "does not bind" not in result.out + result.err
    (best,) = (tmp_path / "runs").glob("search-vit-tiny-*/best.arch.json")
    meta = json.loads(best.read_text())["metadata"]
    assert meta["latency"]["device_label"] == "l4" and meta["latency"]["latency_source"] == "estimated"
    assert (meta["latency"]["runtime"], meta["latency"]["batch_size"]) == ("tensorrt", 64)
    assert 0.85 * 5000 <= meta["metrics"]["latency_us"] <= 5000 and meta["space"] == "vit-tiny"  # binds: within 15% under
    assert f"next: `deployvit export --arch {best.parent.relative_to(tmp_path)}`" in result.out




def test_search_measures_its_top_candidates_by_default_on_a_table_made_here(tmp_path, monkeypatch):
    """A table that describes this machine (here: the shipped one, relabelled as profiled on this CPU
    and put where `profile` writes): the winner is picked on a measurement and the summary says so."""
    from deployvit.devices import cpu_name

    data = json.loads(default_table("test").read_text())
    data["metadata"]["device_name"] = cpu_name()
    folder = tmp_path / "home" / "latency_tables" / "cpu"
    folder.mkdir(parents=True)
    (folder / "test-eager-fp32-b1.json").write_text(json.dumps(data))
    monkeypatch.setenv("DEPLOYVIT_HOME", str(tmp_path / "home"))
    out = tmp_path / "m"
    result = run_cli("search", "--latency", "5s", "--out", str(out), *TINY)
    assert result.code == 0, result.err
    assert "winner: measured" in result.out and "vs budget 5000 ms: MET" in result.out
    rows = next(iter(json.loads((out / "log.jsonl").read_text().splitlines()[-1])["measured"].values()))
    assert len(rows) == 3 and sum(bool(r.get("winner")) for r in rows) == 1


def test_search_does_not_measure_by_default_on_a_table_of_another_machine(tmp_path):
    out = tmp_path / "m"
    result = run_cli("search", "--latency", "5s", "--out", str(out), *TINY)  # the shipped CPU table: made elsewhere
    assert result.code == 0, result.err
    assert "measured here" not in result.out and "winner: measured" not in result.out and "measuring the top" not in result.out
    assert not json.loads((out / "log.jsonl").read_text().splitlines()[-1])["measured"]
