"""`deployvit profile --calibrate K` on the tiny `test` space: the table it writes (source, provenance,
validation), where the resolver ranks it, every bad input the issue lists (one line, exit 2, nothing
written), resuming after a kill, and the fits on synthetic data (exact, so nothing noisy is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import deployvit.latency.calibrate as cal
import deployvit.latency.profile as profile_mod
from deployvit.counting import count_flops
from deployvit.latency.resolve import TableQuery, resolve_table
from deployvit.latency.table import LatencyTable
from deployvit.settings import MeasureSettings
from deployvit.spaces import get_space

from tests.conftest import assert_one_line_error, interrupting_time_runs, run_cli

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "latency_tables" / "cpu" / "test-eager-fp32-b1.json"
FAST = ["--warmup", "0.01", "--rounds", "3", "--round-time", "0", "--max-time", "0", "--threads", "1"]


def calibrate_args(out, *extra: str, k: int = 3, base: Path | str = SHIPPED) -> list[str]:
    return ["profile", "--device", "cpu", "--space", "test", "--runtime", "eager", "--precision", "fp32", "--batch-size", "1",
            "--calibrate", str(k), "--val-archs", "3", "--base", str(base), "--out", str(out), *FAST, *extra]


def test_calibrate_end_to_end(tmp_path):
    out = tmp_path / "c.json"
    result = run_cli(*calibrate_args(out))
    assert result.code == 0, result.err
    assert "validation on 3 held-out archs measured here" in result.out and "Spearman" in result.out and "next: `deployvit search" in result.out
    table = LatencyTable.load(out)
    meta = table.metadata
    assert table.source == "calibrated" and meta["calibrated_on"] == f"calibrated on 3 measurements of {meta['device_name']}"
    assert "CALIBRATED" in table.describe() and meta["settings"]["calibrate"] == 3
    for key in ("mape", "p90_abs_pct", "within_5", "within_10", "spearman", "kendall_tau"):
        assert key in table.validation["calibrated"] and key in table.validation["uncalibrated"]
    assert set(table.validation["models"]) | set(table.validation["models_not_fitted"]) == set(cal.MODELS)
    assert table.calibration["base"]["path"] == str(SHIPPED) and table.calibration["base"]["source"] == "measured"
    calib = {json.dumps(a["arch"], sort_keys=True) for a in table.calibration["archs"]}
    assert len(calib) == 3 and not calib & {json.dumps(a["arch"], sort_keys=True) for a in table.validation["archs"]}
    from deployvit.arch import Arch

    for row in table.validation["archs"]:  # the recorded prediction is what the written table predicts
        assert table.predict(Arch.from_dict(row["arch"])) == pytest.approx(row["predicted_us"])
    assert not (tmp_path / "c.json.progress.json").exists()


def test_resolver_ranks_calibrated_between_profile_and_estimate(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("DEPLOYVIT_HOME", str(home))
    assert run_cli(*calibrate_args(home / "latency_tables" / "cpu" / "test-eager-fp32-b1-calibrated.json")).code == 0
    space = get_space("test")
    query = TableQuery(space.name, space.hash(), device="cpu", runtime="eager", precision="fp32", batch_size=1)
    chosen = resolve_table(query)
    assert chosen.info.source == "calibrated" and "calibrated on this machine" in chosen.reason  # above the shipped table
    full = json.loads((home / "latency_tables" / "cpu" / "test-eager-fp32-b1-calibrated.json").read_text())
    full["metadata"]["source"] = "measured"  # stands for a full profile made here: same device, same settings
    (home / "latency_tables" / "cpu" / "test-eager-fp32-b1.json").write_text(json.dumps(full))
    chosen = resolve_table(query)
    assert chosen.info.source == "measured" and "measured on this machine" in chosen.reason


def _foreign_class_base(tmp_path) -> Path:
    data = json.loads(SHIPPED.read_text())
    data["metadata"].update(device_type="cuda", device_name="NVIDIA H100 SXM5 80GB", device_label="h100")
    path = tmp_path / "gpu-base.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("case,needles", [
    ("k-too-large", ("--calibrate 5000", "only 4644 distinct archs")),
    ("other-space", ("base table is of space 'autoformer-tiny'",)),
    ("other-class", ("made for a GPU", "same device class")),
    ("missing-base", ("no such table",)),
])
def test_bad_input_exit_2_nothing_written(tmp_path, case, needles):
    out = tmp_path / "sub" / "c.json"
    if case == "k-too-large":
        args = calibrate_args(out, k=5000)
    elif case == "other-space":
        args = calibrate_args(out, base=REPO / "latency_tables" / "cpu" / "autoformer-tiny-eager-fp32-b1.json")
    elif case == "other-class":
        args = calibrate_args(out, base=_foreign_class_base(tmp_path))
    else:
        args = calibrate_args(out, base=tmp_path / "nope.json")
    assert_one_line_error(run_cli(*args), *needles)
    assert not (tmp_path / "sub").exists()


def test_resume_after_interruption(tmp_path, monkeypatch):
    """A kill during the rounds keeps the finished rounds; the rerun times only the missing ones."""
    out = tmp_path / "c.json"
    settings = MeasureSettings("eager", "fp32", 1, warmup_s=0.0, repeats=1, threads=1, rounds=5, round_s=0.0, max_s=0.0)
    seen = {"rounds": 0, "done": []}

    timed = interrupting_time_runs(seen)

    plan = cal.plan_calibration(get_space("test"), "cpu", settings, out, 3, 3, str(SHIPPED))
    monkeypatch.setattr(profile_mod, "time_runs", timed(3))
    with pytest.raises(KeyboardInterrupt):
        cal.calibrate(plan, echo=lambda s: None)
    assert not out.exists()
    progress = profile_mod.io.read_json(profile_mod.progress_path(out))
    assert len(progress["rounds"]) == 6 and all(len(r) == 3 for r in progress["rounds"].values())
    seen.update(rounds=0, done=[])
    monkeypatch.setattr(profile_mod, "time_runs", timed(10**9))
    said = []
    table = cal.calibrate(plan, echo=said.append)
    assert seen == {"rounds": 2, "done": [3]} and any("resuming" in s for s in said)
    assert table.source == "calibrated" and not profile_mod.progress_path(out).exists()


def test_spread_archs_cover_the_range():
    space = get_space("test")
    base = LatencyTable.load(SHIPPED, warn=False)
    archs = cal.spread_archs(space, base, 6, seed=0)
    assert len({a.key for a in archs}) == 6
    preds = [base.sum_us(a) for a in archs]
    assert preds == sorted(preds)  # evenly spaced quantiles, fastest first
    assert preds[0] <= base.sum_us(space.min_arch()) and preds[-1] >= base.sum_us(space.max_arch())  # the pool's extremes


@pytest.mark.parametrize("model", ["compute", "affine", "scale"])
def test_fits_recover_a_known_device(model):
    """Measurements made up from the base by each model's own form: the fit finds the form exactly."""
    space = get_space("test")
    base = LatencyTable.load(SHIPPED, warn=False)
    archs = cal.spread_archs(space, base, 10, seed=1)
    sums = np.array([base.sum_us(a) for a in archs])
    if model == "compute":
        measured = 1.7 * sums + 3e-5 * np.array([count_flops(a) for a in archs]) + 4.0
    elif model == "affine":
        measured = 2.5 * sums + 6.0
    else:
        measured = 0.8 * (base.scale * sums + base.bias)
    fix = cal.MODELS[model](base, archs, list(measured))
    table = cal.corrected_table(base, space, fix)
    rng = np.random.default_rng(5)
    for arch in [space.sample(rng) for _ in range(20)]:
        s = base.sum_us(arch)
        want = {"compute": 1.7 * s + 3e-5 * count_flops(arch) + 4.0, "affine": 2.5 * s + 6.0,
                "scale": 0.8 * (base.scale * s + base.bias)}[model]
        assert cal._predict(table, arch) == pytest.approx(want, rel=1e-6)


def test_latency_measure_does_not_compare_with_a_table_of_another_machine(tmp_path):
    """The resolver's rule for `latency --measure`: the shipped CPU table (made on another machine)
    is measured against but not compared ("not compared", no error percentage)."""
    get_space("test").sample(np.random.default_rng(4)).save(tmp_path / "a.json")
    result = run_cli("latency", str(tmp_path / "a.json"), "--device", "cpu", "--runtime", "eager", "--measure")
    assert result.code == 0, result.err
    assert "measured:" in result.out and "not compared" in result.out and "another machine" in result.out
    assert "% (predicted vs measurement)" not in result.out
