"""benchmarks/lut_accuracy.py on a freshly profiled tiny table: fresh archs, stats, JSON written."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from deployvit import io
from deployvit.arch import Arch

from tests.conftest import run_cli

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lut_accuracy.py"


def load_script(monkeypatch):
    """The script as `python benchmarks/lut_accuracy.py` runs it: its folder on sys.path (for `_record`)."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("lut_accuracy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lut_accuracy_on_fresh_archs(tmp_path, monkeypatch):
    table = tmp_path / "t.json"
    args = ["profile", "--device", "cpu", "--space", "test", "--runtime", "eager", "--precision", "fp32", "--batch-size", "1",
            "--out", str(table), "--warmup", "0.01", "--repeats", "10", "--calib-archs", "3", "--val-archs", "3", "--threads", "1"]
    assert run_cli(*args).code == 0
    out = tmp_path / "acc.json"
    assert load_script(monkeypatch).main(["--table", str(table), "--archs", "4", "--repeats", "3", "--out", str(out)]) == 0
    result = io.read_json(out)
    (row,) = result["results"]
    assert row["runtime"] == "eager" and row["calibrated"]["n"] == 4 and len(row["archs"]) == 4
    used = {Arch.from_dict(r["arch"]).key for r in io.read_json(table)["calibration"]["archs"] + io.read_json(table)["validation"]["archs"]}
    assert not used & {Arch.from_dict(r["arch"]).key for r in row["archs"]}  # fresh archs only


def test_lut_accuracy_bad_table(tmp_path, capsys, monkeypatch):
    (tmp_path / "t.json").write_text("{")
    assert load_script(monkeypatch).main(["--table", str(tmp_path / "t.json")]) == 2
    assert "malformed latency table" in capsys.readouterr().err
