"""`deployvit export` / `deployvit benchmark` end to end on CPU, through the console entry point:
artifacts, report.json / report.md, the printed table, exit codes 0 / 1 / 2, and every bad input
of the issue (exit 2, one line on stderr, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deployvit.devices import device_name
from deployvit.latency.table import LatencyTable
from deployvit.parts import arch_parts, space_parts
from deployvit.spaces import get_space
from exporters.report import COLUMNS, SKIPPED, VERIFIED, VERIFY_FAILED
from tests.conftest import assert_one_line_error, run_cli
from tests.test_export_verify import train_briefly

FAST = ("--samples", "8", "--dynamic-batch", "1,2,4", "--repeats", "3", "--warmup", "0")


@pytest.fixture(scope="module")
def arch_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("arch") / "tiny.arch.json"
    get_space("test").min_arch().save(path)
    return path


@pytest.fixture(scope="module")
def table_file(arch_file, tmp_path_factory) -> Path:
    """A real LatencyTable file with every part of the arch's space at 100 us (scale 2, bias 50 us)."""
    from deployvit.arch import load_arch

    arch = load_arch(arch_file)
    meta = {"device_label": "cpu", "device_type": "cpu", "device_name": device_name("cpu"), "runtime": "eager",
            "runtime_version": torch.__version__, "precision": "fp32", "batch_size": 1, "img_size": 32,
            "space": "test", "space_hash": get_space("test").hash(), "torch": torch.__version__}
    entries = {p.key: {"median_us": 100.0, "p90_us": 110.0, "mean_us": 101.0, "cv": 0.01, "repeats": 10}
               for p in space_parts(get_space(arch.space))}  # a table of a preset space must cover it
    path = tmp_path_factory.mktemp("table") / "test-eager-fp32-b1.json"
    LatencyTable(meta, entries, scale=2.0, bias=50.0).save(path)
    return path


def test_contract_prediction_comes_from_the_table_measured_like_the_format(arch_file, table_file, tmp_path, monkeypatch):
    """Without --table: the resolver's table of this device for the format's runtime; a format
    whose runtime has no table gets "no prediction for <runtime>", never another runtime's number."""
    import deployvit.latency.resolve as resolve_mod
    from deployvit.arch import load_arch
    from deployvit.contract import plan_contract

    import os

    from deployvit.devices import cpu_name

    # tables profiled on this machine (in $DEPLOYVIT_HOME): a CPU table made elsewhere predicts nothing here
    shipped = Path(os.environ["DEPLOYVIT_HOME"]) / "latency_tables" / "cpu"
    shipped.mkdir(parents=True)
    eager = LatencyTable.load(table_file, warn=False)
    eager.metadata["device_name"] = cpu_name()
    eager.metadata["settings"] = {"clock": "cpu", "threads": 1, "repeats": 7, "warmup_s": 0.0}
    eager.save(shipped / "test-eager-fp32-b1.json")
    ort = LatencyTable({**eager.metadata, "runtime": "onnxruntime"}, eager.entries, scale=1.0, bias=0.0)
    ort.save(shipped / "test-onnxruntime-fp32-b1.json")
    monkeypatch.setattr(resolve_mod, "shipped_tables_dir", lambda: tmp_path / "no-shipped-tables")
    monkeypatch.chdir(tmp_path)
    arch = load_arch(arch_file)
    parts = len(arch_parts(arch))
    timing = {"warmup_s": 0.5, "repeats": 100, "threads": None, "clock": "wall"}

    def plan(fmt, **kw):
        return plan_contract(fmt, arch, precision="fp32", device="cpu", batch_size=None, table_path=None, budget_ms=None,
                             timing=timing, **kw)

    onnx = plan("onnx")
    assert onnx.predicted_ms == pytest.approx(parts * 100.0 / 1e3) and "test-onnxruntime-fp32-b1.json" in onnx.table
    assert (onnx.runtime, onnx.precision, onnx.batch_size) == ("onnxruntime", "fp32", 1)
    torch_ = plan("torch")
    assert torch_.predicted_ms == pytest.approx((2 * parts * 100.0 + 50.0) / 1e3)
    assert torch_.settings["clock"] == "cpu" and torch_.settings["repeats"] == 7  # timed like the table, not like export's defaults
    compiled = plan("compile")
    assert compiled.predicted_ms is None and compiled.no_prediction.startswith("no prediction for compile fp32 on cpu")
    assert compiled.settings["repeats"] == 100
    (tmp_path / "no-shipped-tables" / "cpu").mkdir(parents=True)  # now a shipped compile table, made on another machine
    LatencyTable({**eager.metadata, "runtime": "compile", "device_name": "Other CPU"}, eager.entries).save(
        tmp_path / "no-shipped-tables" / "cpu" / "test-compile-fp32-b1.json")
    elsewhere = plan("compile")
    assert elsewhere.predicted_ms is None and "another machine" in elsewhere.no_prediction  # the resolver's rule
    explicit = plan_contract("onnx", arch, precision="fp32", device="cpu", batch_size=None, table_path=str(table_file),
                             budget_ms=None, timing=timing)  # an eager table given for an onnxruntime artifact
    assert explicit.predicted_ms is None and "predicts eager fp32 b1" in explicit.no_prediction


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def ort_table_file(table_file, tmp_path_factory) -> Path:
    """The same table, as if measured with onnxruntime (what an onnx artifact's contract needs)."""
    eager = LatencyTable.load(table_file, warn=False)
    path = tmp_path_factory.mktemp("ort") / "test-onnxruntime-fp32-b1.json"
    LatencyTable({**eager.metadata, "runtime": "onnxruntime", "runtime_version": "x", "settings": {"repeats": 3, "warmup_s": 0}},
                 eager.entries, scale=2.0, bias=50.0).save(path)
    return path


def test_export_onnx_writes_artifact_report_and_table(arch_file, ort_table_file, tmp_path):
    out = tmp_path / "out"
    result = run_cli("export", "--arch", str(arch_file), "--out", str(out), "--table", str(ort_table_file),
                     "--budget", "10s", *FAST)
    assert result.code == 0, result.err
    assert {p.name for p in out.iterdir()} == {"model.onnx", "report.json", "report.md"}
    header = result.out.splitlines()[0]
    assert all(col in header for col in COLUMNS)
    report = _report(out)
    (row,) = report["rows"]
    assert row["status"] == VERIFIED and row["format"] == "onnx" and row["contract"] == "MET"
    parts = len(arch_parts(get_space("test").min_arch()))
    assert row["predicted_ms"] == pytest.approx((2.0 * 100.0 * parts + 50.0) / 1e3)
    contract = row["latency_contract"]
    measured, predicted = contract["measurement"], contract["prediction"]
    assert all(measured[k] == predicted[k] for k in ("runtime", "precision", "batch_size", "device"))
    assert measured["runtime"] == "onnxruntime" and measured["settings"]["repeats"] == 3 and measured["measured_ms"] > 0
    assert row["latency_ms"] > 0 and row["throughput_img_s"] > 0 and row["throughput_batch"] == 4
    checks = row["verification"]["checks"]
    assert [c["batch_size"] for c in checks] == [1, 4] and all(c["max_abs_diff"] < 1e-4 for c in checks)
    assert report["data"].startswith("natural:") and report["settings"]["batch"] == "1,2,4"  # photographs, not noise
    md = (out / "report.md").read_text()
    assert "exported and verified" in md and "latency contract" in md and "MET" in md


def test_verification_miss_is_exit_1_with_a_report(arch_file, tmp_path):
    out = tmp_path / "out"
    result = run_cli("export", "--arch", str(arch_file), "--out", str(out), "--max-abs-diff", "1e-12", *FAST)
    assert result.code == 1
    assert "exported but verification failed" in result.err and "max |diff|" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert _report(out)["rows"][0]["status"] == VERIFY_FAILED


def test_budget_not_met_is_exit_1(arch_file, tmp_path):
    out = tmp_path / "out"
    result = run_cli("export", "--arch", str(arch_file), "--out", str(out), "--budget", "1us", "--clock", "cpu", *FAST)
    assert result.code == 1 and "NOT MET" in result.err
    report = _report(out)
    row = report["rows"][0]
    assert row["status"] == VERIFIED and row["contract"] == "NOT MET" and row["budget_ms"] == 0.001
    assert report["settings"]["clock"] == "cpu" and report["settings"]["cpu_timing_threads"] == 1


def test_fp16_export_of_a_retrained_checkpoint_on_digits(tmp_path):
    """The retrain hand-off: checkpoint.safetensors carries its arch; labels give a Top-1 column."""
    from deployvit.weights import save_model

    arch, model = train_briefly()
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    save_model(ckpt, model, arch)
    result = run_cli("export", "--checkpoint", str(ckpt), "--precision", "fp16", "--data", "digits",
                     "--samples", "64", "--dynamic-batch", "1,8,32", "--repeats", "3", "--warmup", "0")
    assert result.code == 0, result.err
    out = ckpt.parent  # default: beside the checkpoint
    row = _report(out)["rows"][0]
    assert row["status"] == VERIFIED and row["precision"] == "fp16"
    top1 = row["verification"]["checks"][-1]["top1"]
    assert top1 is not None and f"{top1:.2f}" in result.out


def test_timm_model_goes_through_the_same_path(tmp_path):
    """A CNN (no img_size argument in timm) at 32x32: the --timm-model path for any family."""
    out = tmp_path / "out"
    result = run_cli("export", "--timm-model", "test_resnet", "--img-size", "32", "--out", str(out), *FAST)
    assert result.code == 0, result.err
    report = _report(out)
    assert report["models"]["test_resnet"]["timm_model"] == "test_resnet"
    assert report["rows"][0]["status"] == VERIFIED


def test_benchmark_lists_every_format_and_baselines(arch_file, tmp_path):
    out = tmp_path / "bench"
    result = run_cli("benchmark", "--arch", str(arch_file), "--out", str(out), "--formats", "torch,onnx,trt",
                     "--baselines", "test_vit", "--budget", "10s", *FAST)
    assert result.code == 0, result.err
    rows = _report(out)["rows"]
    assert [(r["model"], r["format"]) for r in rows] == [
        ("tiny", "torch"), ("tiny", "onnx"), ("tiny", "trt"),
        ("test_vit", "torch"), ("test_vit", "onnx"), ("test_vit", "trt"),
    ]
    trt = rows[2]
    assert trt["status"] == SKIPPED and "tensorrt is not installed" in trt["notes"][0] and trt["contract"] is None
    assert rows[0]["status"] == "reference" and rows[1]["status"] == VERIFIED
    assert all(r["latency_ms"] for r in rows if r["status"] != SKIPPED)
    assert result.out.count("skipped") == 2
    assert {"model.onnx", "test_vit.onnx", "report.json", "report.md"} <= {p.name for p in out.iterdir()}


# --- bad input: exit 2, one line, nothing written -----------------------------------------------------


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory) -> Path:
    """Weights of a different arch of the same space (retrain's format) and as a bare state dict."""
    from deployvit.models import build_model
    from deployvit.weights import save_model

    arch = get_space("test").max_arch()
    folder = tmp_path_factory.mktemp("other")
    model = build_model(arch)
    save_model(folder / "checkpoint.safetensors", model, arch)
    torch.save(model.state_dict(), folder / "weights.pt")
    return folder


@pytest.mark.parametrize(
    "args, needles",
    [
        (("--format", "xyz"), ("'xyz' is not one of",)),
        (("--opset", "16"), ("opset 16", ">= 17")),
        (("--dynamic-batch", "8,4,2"), ("8,4,2", "min <= opt <= max")),
        (("--dynamic-batch", "8,4"), ("MIN,OPT,MAX",)),
        (("--data", "{tmp}/no-such-dir"), ("data not found",)),
        (("--budget", "fast"), ("--budget 'fast'", "expected a number with a unit")),
        (("--budget", "5"), ("--budget '5'", "no unit: a latency needs ms, us or s")),  # the parser search uses
        (("--table", "{tmp}/missing.json"), ("latency table not found",)),
        (("--samples", "2", "--dynamic-batch", "1,2,8"), ("at least 8 images",)),
        (("--precision", "bf16", "--opset", "20"), ("need >= 22",)),
        (("--timm-model", "deit_tiny_patch16_224"), ("either --arch or --timm-model",)),
        (("--img-size", "64"), ("--img-size needs --timm-model",)),  # commands.conflicts' wording
        (("--checkpoint", "{other}/checkpoint.safetensors"), ("was saved for another arch",)),
        (("--checkpoint", "{other}/weights.pt"), ("does not match arch tiny.arch.json", "mis-shaped")),
        (("--checkpoint", "{tmp}/none.safetensors"), ("checkpoint not found",)),
    ],
)
def test_bad_export_input(arch_file, other_checkpoint, tmp_path, args, needles):
    out = tmp_path / "out"
    args = tuple(a.format(tmp=tmp_path, other=other_checkpoint) for a in args)
    result = run_cli("export", "--arch", str(arch_file), "--out", str(out), *args)
    assert_one_line_error(result, *needles)
    assert not out.exists()


def test_unwritable_out_dir(arch_file, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = run_cli("export", "--arch", str(arch_file), "--out", str(blocker / "out"), *FAST)
    assert_one_line_error(result, "output folder", str(blocker / "out"), "Not a directory")
    assert blocker.read_text() == "x"


def test_unknown_timm_model_and_benchmark_format(arch_file, tmp_path):
    assert_one_line_error(run_cli("export", "--timm-model", "no_such_net", "--out", str(tmp_path / "o")), "no_such_net")
    assert_one_line_error(run_cli("benchmark", "--arch", str(arch_file), "--formats", "onnx,xyz",
                                  "--out", str(tmp_path / "b")), "unknown format 'xyz'")
    assert_one_line_error(run_cli("export"), "give --arch")
    assert list(tmp_path.iterdir()) == []


def test_unknown_baseline_is_refused_before_the_model_is_exported(arch_file, tmp_path):
    out = tmp_path / "b"
    result = run_cli("benchmark", "--arch", str(arch_file), "--formats", "onnx", "--baselines", "no_such_net",
                     "--out", str(out), *FAST)
    assert_one_line_error(result, "no_such_net")
    assert not out.exists() or list(out.iterdir()) == []


def test_an_export_nothing_here_can_run_is_exit_1_not_a_pass(arch_file, tmp_path):
    """bf16 ONNX: onnxruntime CPU has no bf16 kernels, so the artifact is kept but not called verified."""
    out = tmp_path / "out"
    result = run_cli("export", "--arch", str(arch_file), "--out", str(out), "--precision", "bf16", *FAST)
    assert result.code == 1 and "exported, not verified" in result.err and "bf16" in result.err
    row = _report(out)["rows"][0]
    assert row["status"] == "exported, not verified" and row["verification"] is None
    assert (out / "model.onnx").is_file()


def test_checkpoint_with_corrupt_arch_metadata_is_one_line(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "checkpoint.safetensors"
    save_file({"w": torch.zeros(1)}, str(bad), metadata={"arch": "{not json"})
    out = tmp_path / "out"
    assert_one_line_error(run_cli("export", "--checkpoint", str(bad), "--out", str(out)), "arch metadata is not valid JSON")
    assert not out.exists()


def test_onnx_on_cuda_with_cpu_onnxruntime_is_exit_2_with_the_install_line(arch_file, tmp_path):
    """Asking for onnxruntime on CUDA where only the CPU package is installed names what to install,
    on any machine, before anything is exported (never a silent CPU run compared with a GPU budget)."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime here has the CUDA provider")
    out = tmp_path / "out"
    result = run_cli("export", "--arch", str(arch_file), "--format", "onnx", "--device", "cuda", "--out", str(out), *FAST)
    assert_one_line_error(result, "no CUDA provider", "pip install onnxruntime-gpu")
    assert not out.exists()
