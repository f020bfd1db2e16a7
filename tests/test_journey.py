"""The user's journey on one table, as a user types it: `profile` (default output) -> `search` from
another directory, no --table -> `export --format onnx --budget` timed like that table.

In a temporary DEPLOYVIT_HOME and working directory, on the CPU, with a `test`-space onnxruntime
fp32 batch-1 one-thread table (seconds of timing, not minutes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from deployvit.latency.table import LatencyTable
from deployvit.search.predictor import MetricModel
from deployvit.spaces import get_space
from tests.conftest import run_cli

PROFILE = ["profile", "--device", "cpu", "--space", "test", "--runtime", "onnxruntime", "--precision", "fp32",
           "--batch-size", "1", "--threads", "1", "--calib-archs", "2", "--val-archs", "2", "--repeats", "10", "--warmup", "0.01"]


def test_profile_then_search_then_export_use_one_table(tmp_path, monkeypatch):
    home = Path(os.environ["DEPLOYVIT_HOME"])
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    result = run_cli(*PROFILE)
    assert result.code == 0, result.err
    table_path = home / "latency_tables" / "cpu" / "test-onnxruntime-fp32-b1.json"
    assert f"wrote {table_path}" in result.out and not (tmp_path / "here" / "latency_tables").exists()

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # search looks where profile wrote, from any directory
    lo, hi = MetricModel(get_space("test"), LatencyTable.load(table_path, warn=False)).range("latency")
    told = run_cli("tables", "--space", "test", "--device", "cpu", "--runtime", "onnxruntime", "--budget")  # as the README's block
    assert told.code == 0 and told.out.strip().endswith("us"), told.err
    budget = told.out.strip()
    assert lo < float(budget[:-2]) < hi  # inside the span of the table just made
    result = run_cli("search", "--space", "test", "--latency", budget, "--population", "8", "--generations", "2",
                     "--parents", "3", "--mutations", "4", "--crossovers", "4", "--no-progress", "--out", "run")
    assert result.code == 0, result.err
    first = result.out.splitlines()[0]
    assert first.startswith(f"latency table: {table_path} ") and "measured on this machine" in first
    best = Path("run/best.arch.json")
    assert json.loads(best.read_text())["metadata"]["latency"]["latency_table"] == str(table_path)

    result = run_cli("export", "--arch", str(best), "--format", "onnx", "--budget", budget, "--samples", "8",
                     "--batch-size", "1")
    (row,) = json.loads(Path("run/report.json").read_text())["rows"]
    contract = row["latency_contract"]
    measured, predicted = contract["measurement"], contract["prediction"]
    assert (measured["runtime"], measured["precision"], measured["batch_size"]) == ("onnxruntime", "fp32", 1)
    assert all(measured[k] == predicted[k] for k in ("runtime", "precision", "batch_size", "device"))
    assert predicted["table"].startswith(str(table_path)) and measured["settings"]["threads"] == 1
    low, high = measured["ci95_ms"]  # the verdict follows the whole interval, never its noisy point
    budget_ms = float(budget[:-2]) / 1e3
    want = "MET" if high <= budget_ms else ("NOT MET" if low > budget_ms else "WITHIN NOISE")
    assert contract["status"] == want and row["contract"] == want
    assert result.code == {"MET": 0, "NOT MET": 1, "WITHIN NOISE": 3}[want], result.err
    assert ("NOT MET" in result.err) == (want == "NOT MET")
