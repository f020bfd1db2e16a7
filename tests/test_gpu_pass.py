"""benchmarks/gpu_pass.py: the dry run (every step on the CPU, tiny settings) passes and writes what
the GPU pass writes; a failing or hanging step is a row in the table, never the end of the pass."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _gpu_pass():
    spec = importlib.util.spec_from_file_location("gpu_pass", ROOT / "benchmarks" / "gpu_pass.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_pass"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_dry_run_runs_every_step_and_writes_one_folder(tmp_path, capsys):
    gpu_pass = _gpu_pass()
    out = tmp_path / "pass"
    tables_before = sorted((ROOT / "latency_tables").rglob("*.json"))
    assert gpu_pass.main(["--dry-run", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["steps"]] == [s.name for s in gpu_pass.STEPS]
    assert all(s["status"] == "ok" for s in summary["steps"]), summary["steps"]
    assert summary["dry_run"] and summary["label"] == "cpu" and not summary["failed"]
    assert "skipped" in summary["pytest_gpu_summary"]  # the CPU skips the GPU tests, with their reason
    scoring = summary["supernet_scoring"]
    assert scoring["cached"]["archs_per_s"] > 0 and scoring["streamed"]["cached_images"] == 0
    assert scoring["cached"]["cached_images"] == scoring["images"]
    tables = sorted(p.name for p in (out / "tables").glob("*.json"))
    assert tables == ["test-eager-fp32-b1.json", "test-eager-fp32-b2.json", "test-eager-fp32-b4.json"]
    lut = json.loads((out / "lut_accuracy.json").read_text())
    assert len(lut["results"]) == 3 and all(r["calibrated"]["n"] == 2 for r in lut["results"])
    speed = json.loads((out / "export_speed.json").read_text())
    assert {r["runtime"] for r in speed["rows"]} == {"eager", "onnxruntime"}
    assert [r["runtime"] for r in speed["not_measured"]] == ["cudagraph"]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(out).parts) <= 3 for p in files)  # what the device tool returns
    assert sorted((ROOT / "latency_tables").rglob("*.json")) == tables_before  # a dry run installs nothing
    printed = capsys.readouterr().out
    assert "step" in printed and "supernet scoring" in printed and "7 of 7 steps ok, 0 failed, 0 skipped" in printed


def test_a_failing_or_hanging_step_does_not_stop_the_pass(tmp_path, monkeypatch, capsys):
    gpu_pass = _gpu_pass()
    py = [sys.executable, "-c"]
    steps = (
        gpu_pass.Step("fails", lambda p: py + ["print('boom'); raise SystemExit(3)"], limit_s=30),
        gpu_pass.Step("hangs", lambda p: py + ["import time; time.sleep(30)"], limit_s=1),
        gpu_pass.Step("cannot start", lambda p: 1 / 0, limit_s=30),
        gpu_pass.Step("needs more time", lambda p: py + ["pass"], limit_s=30, needs_s=10_000, optional=True),
        gpu_pass.Step("works", lambda p: py + ["print('wrote x')"], limit_s=30),
    )
    monkeypatch.setattr(gpu_pass, "STEPS", steps)
    out = tmp_path / "pass"
    assert gpu_pass.main(["--dry-run", "--out", str(out)]) == 1
    summary = json.loads((out / "summary.json").read_text())
    status = {s["name"]: (s["status"], s["note"]) for s in summary["steps"]}
    assert status["fails"] == ("failed", "exit 3: boom")
    assert status["hangs"][0] == "timeout"
    assert status["cannot start"][0] == "failed" and "division by zero" in status["cannot start"][1]
    assert status["needs more time"][0] == "skipped"
    assert status["works"] == ("ok", "wrote x")
    assert summary["failed"] == ["fails", "hangs", "cannot start"] and summary["not_done"] == []
    assert "boom" in (out / "log.txt").read_text()


def test_the_real_pass_refuses_a_machine_without_gpu(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU refusal")
    assert _gpu_pass().main(["--out", str(tmp_path / "p")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err and not (tmp_path / "p").exists()


def test_install_refuses_a_dry_run(tmp_path, capsys):
    (tmp_path / "summary.json").write_text(json.dumps({"dry_run": True, "label": "cpu"}))
    assert _gpu_pass().install(tmp_path) == 2
