"""Every registered runtime gets the same tests, generated from the runtime table
(`deployvit.runtime_registry.RECORDS`) the way timm's model tests are generated from `list_models()`:
a runtime added to the table is tested by everything below without a line here.

Per runtime: its record is complete and consistent with its implementation, the README and
pyproject; what makes it unavailable (its package missing, no GPU, a device or precision it does not
run) is a one-line exit-2 refusal; its version string; a tiny part and a tiny whole model run in it
and agree with eager fp32; a file-based runtime's artifact round-trips through its file runner.
What cannot run here (no GPU, a package not installed) skips with the runtime's own reason."""

from __future__ import annotations

import importlib
import json
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import torch

from deployvit.errors import DeployvitError, MissingDependency
from deployvit.models import build_model, build_part
from deployvit.parts import BlockPart
from deployvit.runtime_registry import DEVICE_WORDS, FORMATS, RECORDS, RUNTIMES, format_names, profile_hint, runtime_names
from deployvit.runtimes import build_runner, file_runner, get_runtime
from deployvit.runtimes.base import FileRuntime, Runtime, TorchRuntime
from deployvit.settings import PRECISIONS
from deployvit.spaces import get_space
from deployvit.timing import time_callable
from exporters.benchmark import ExportSpec
from exporters.onnx import batch_spec
from exporters.verify import synthetic_samples
from tests.conftest import assert_one_line_error, run_cli

ROOT = Path(__file__).resolve().parents[1]
NAMES = runtime_names()
FILE_BASED = [r.name for r in RECORDS if r.file_based]
WITH_PACKAGE = [r.name for r in RECORDS if r.package]
PART = BlockPart(tokens=17, embed_dim=32, num_heads=2, head_dim=16, mlp_hidden=64)
ARCH = get_space("test").min_arch()  # 32 px, embed 16, depth 1: the cheapest whole model


def unavailable_on_cpu(name: str) -> str | None:
    """Why `name` cannot run fp32 on this CPU (its own refusal), or None."""
    try:
        get_runtime(name).check("cpu", "fp32")
    except DeployvitError as exc:
        return str(exc)
    return None


def skip_unless_runnable(name: str) -> None:
    reason = unavailable_on_cpu(name)
    if reason:
        pytest.skip(f"{name} cannot run here: {reason}")


# --- the record ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_record_is_complete_and_consistent(name):
    rec = RUNTIMES[name]
    assert rec.name == name and FORMATS[rec.format] is rec and rec.summary
    assert rec.devices and set(rec.devices) <= set(DEVICE_WORDS)
    assert "fp32" in rec.precisions and set(rec.precisions) <= set(PRECISIONS)
    assert (rec.estimate is None) == bool(rec.not_estimated), "an estimate's flavour, or the reason there is none"
    assert rec.artifact is None or re.fullmatch(r"\.[a-z]+", rec.artifact)
    assert not rec.tf32 or "cuda" in rec.devices  # TF32 is a CUDA matter
    if rec.package:
        assert rec.distributions and rec.extra and rec.install, "what to install, and the extra that installs it"
        assert any(d in rec.install for d in rec.distributions)
        assert "\n" not in rec.install and "\n" not in (rec.install_cuda or "")
    else:
        assert not (rec.distributions or rec.extra or rec.install or rec.install_cuda)


@pytest.mark.parametrize("name", NAMES)
def test_record_names_its_implementation(name):
    """`impl` is a Runtime subclass of the right shape, and loading it hands it this record."""
    rec = RUNTIMES[name]
    module_name, attribute = rec.impl.split(":")
    cls = getattr(importlib.import_module(module_name), attribute)
    assert issubclass(cls, FileRuntime if rec.file_based else TorchRuntime) and issubclass(cls, Runtime)
    assert get_runtime(name).record is rec and get_runtime(name).name == name


@pytest.mark.parametrize("name", WITH_PACKAGE)
def test_extra_in_pyproject_installs_the_package(name):
    rec = RUNTIMES[name]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert rec.extra in extras, f"pyproject.toml has no [{rec.extra}] extra for {name}"
    assert any(re.match(re.escape(d) + r"\b", req) for req in extras[rec.extra] for d in rec.distributions)


@pytest.mark.parametrize("name", NAMES)
def test_readme_has_its_row(name):
    rec = RUNTIMES[name]
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(f"| `{name}` |")]
    assert len(rows) == 1, f"README.md: the runtime table needs one row for {name}"
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1] == f"`{rec.format}`"


def test_the_table_as_a_whole():
    assert len({r.format for r in RECORDS}) == len(RECORDS) and len({r.preference for r in RECORDS}) == len(RECORDS)
    for kind in DEVICE_WORDS:
        assert RUNTIMES[profile_hint(kind)].devices and kind in RUNTIMES[profile_hint(kind)].devices
    assert set(format_names(files_only=True)) == {r.format for r in RECORDS if r.file_based}
    with pytest.raises(DeployvitError, match=r"unknown runtime 'magic' \(choose from " + ", ".join(NAMES)):
        get_runtime("magic")


# --- refusals: one line, exit 2 -------------------------------------------------------------------


@pytest.mark.parametrize("name", WITH_PACKAGE)
def test_missing_package_says_what_to_install(name, monkeypatch):
    rec = RUNTIMES[name]
    monkeypatch.setitem(sys.modules, rec.package, None)  # `import <package>` raises ImportError
    for device in rec.devices:
        with pytest.raises(MissingDependency) as caught:
            get_runtime(name).check(device, "fp32")
        assert str(caught.value).startswith(f"{rec.package} is not installed: {rec.install_line(device)}")
        assert "\n" not in str(caught.value) and caught.value.exit_code == 2
    result = run_cli("profile", "--device", "cpu", "--space", "test", "--runtime", name, "--precision", "fp32",
                     "--batch-size", "1", "--out", "never-written.json")
    assert_one_line_error(result, rec.install_line("cpu"))
    assert not Path("never-written.json").exists()


@pytest.mark.parametrize("name", NAMES)
def test_devices_it_cannot_use_here_are_one_line_refusals(name):
    """A device the runtime does not run on, or CUDA on a machine without it: one line, exit 2
    (after what to install, when the package is missing)."""
    rt = get_runtime(name)
    for device in DEVICE_WORDS:
        usable = device in rt.record.devices and (device == "cpu" or torch.cuda.is_available())
        if usable:
            continue
        with pytest.raises(DeployvitError) as caught:
            rt.check(device, "fp32")
        assert "\n" not in str(caught.value) and caught.value.exit_code == 2
        installed = not rt.record.package or "not installed" not in (unavailable_on_cpu(name) or "")
        if device not in rt.record.devices and installed:  # refused for the device, not for "no GPU here"
            assert str(caught.value).startswith(f"runtime {name} needs "), str(caught.value)
    if "cpu" not in rt.record.devices and unavailable_on_cpu(name) and "not installed" not in unavailable_on_cpu(name):
        result = run_cli("profile", "--device", "cpu", "--space", "test", "--runtime", name, "--precision", "fp32",
                         "--batch-size", "1", "--out", "never-written.json")
        assert_one_line_error(result, f"runtime {name} needs")


@pytest.mark.parametrize("name", NAMES)
def test_precision_and_tf32_refusals(name):
    rt = get_runtime(name)
    with pytest.raises(DeployvitError, match="unknown precision 'int3'"):
        rt.check("cpu", "int3")
    for precision in set(PRECISIONS) - set(rt.record.precisions):
        with pytest.raises(DeployvitError, match=f"does not run {precision}|needs|not installed"):
            rt.check("cpu", precision)
    if not rt.record.tf32 and not unavailable_on_cpu(name):
        with pytest.raises(DeployvitError, match="tf32 applies to fp32 on the .* runtimes only"):
            rt.check("cpu", "fp32", tf32=True)


@pytest.mark.parametrize("name", NAMES)
def test_each_listed_precision_is_available_here_or_refused_in_one_line(name):
    """A precision the record lists may still be missing on this machine (a CPU without fp16 units):
    `check` and `profile` then refuse it in one line instead of timing another precision."""
    rt = get_runtime(name)
    for precision in rt.record.precisions:
        try:
            rt.check("cpu", precision)
        except DeployvitError as exc:
            assert "\n" not in str(exc) and exc.exit_code == 2
            if precision != "fp32" and not unavailable_on_cpu(name):
                result = run_cli("profile", "--device", "cpu", "--space", "test", "--runtime", name, "--precision", precision,
                                 "--batch-size", "1", "--out", "never-written.json")
                assert_one_line_error(result, str(exc))


# --- what it does, where it can run here ----------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_version_names_the_software_doing_the_work(name):
    rec = RUNTIMES[name]
    skip_unless_runnable(name)
    version = get_runtime(name).version()
    if rec.package is None:
        assert version == torch.__version__
    else:
        installed = []
        for dist in rec.distributions:
            try:
                installed.append(metadata.version(dist))
            except metadata.PackageNotFoundError:
                pass
        assert version in installed or any(version.startswith(v) for v in installed), (version, installed)
    assert get_runtime(name).facts() == ({} if rec.package is None else {rec.package: version} | get_runtime(name).facts())


@pytest.mark.parametrize("name", NAMES)
def test_runs_a_part_like_eager_fp32(name):
    skip_unless_runnable(name)
    torch.manual_seed(0)
    module = build_part(PART).eval()
    run = build_runner(module, PART.input_shape(2), runtime=name, device="cpu", precision="fp32", threads=1)
    assert time_callable(run, device="cpu", warmup_s=0.0, repeats=3, cv_warn=float("inf")).repeats == 3
    x = torch.randn(PART.input_shape(2), generator=torch.Generator().manual_seed(3))
    run.input.copy_(x)  # the bound input buffer: every runner reads it in place
    with torch.inference_mode():
        got, want = run(), module(x)
    assert (got - want).abs().max() < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_runs_a_whole_model_like_eager_fp32(name):
    skip_unless_runnable(name)
    torch.manual_seed(0)
    model = build_model(ARCH).eval()
    shape = (1, ARCH.in_chans, ARCH.img_size, ARCH.img_size)
    run = build_runner(model, shape, runtime=name, device="cpu", precision="fp32", threads=1)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    run.input.copy_(x)
    with torch.inference_mode():
        got, want = run(), model(x)
    assert got.shape == want.shape and (got - want).abs().max() < 1e-4


def _spec(**kw) -> ExportSpec:
    return ExportSpec(img_size=ARCH.img_size, in_chans=ARCH.in_chans, precision="fp32", batch=batch_spec(None, (1, 2, 4)),
                      warmup_s=0.0, repeats=3, clock="cpu", **kw)


@pytest.mark.parametrize("name", FILE_BASED)
def test_artifact_round_trips_through_its_file_runner(name, tmp_path):
    """The export artifact is a file of the runtime's suffix, runs like the model at two batch sizes,
    and the contract's file runner (a table entry's bound call) runs that file like the model too."""
    skip_unless_runnable(name)
    rec = RUNTIMES[name]
    torch.manual_seed(0)
    model = build_model(ARCH).eval()
    samples = synthetic_samples(4, ARCH.img_size)
    artifact = get_runtime(name).artifact(model, _spec(), samples, tmp_path, "m")
    assert artifact.path == tmp_path / f"m{rec.artifact}" and artifact.path.is_file() and artifact.size_bytes > 0
    assert artifact.device == "cpu" and not artifact.reference and artifact.runtime
    with torch.inference_mode():
        want = model(samples.images)
        assert (artifact.runner(samples.images) - want).abs().max() < 1e-4
        assert (artifact.runner(samples.images[:1]) - want[:1]).abs().max() < 1e-4
    run = file_runner(artifact.path, (2, ARCH.in_chans, ARCH.img_size, ARCH.img_size), runtime=name, device="cpu", threads=1)
    run.input.copy_(samples.images[:2])
    assert (run() - want[:2]).abs().max() < 1e-4


@pytest.mark.parametrize("name", [n for n in NAMES if n not in FILE_BASED])
def test_a_module_runtime_refuses_files(name, tmp_path):
    with pytest.raises(DeployvitError, match=f"runtime {name} runs modules, not files"):
        file_runner(tmp_path / "m.onnx", (1, 3, 32, 32), runtime=name, device="cpu")


def _shipped_cpu_table(name: str) -> Path | None:
    from deployvit.latency.table import shipped_tables_dir, table_filename

    path = shipped_tables_dir() / "cpu" / table_filename("test", name, "fp32", 1)
    return path if path.is_file() else None


@pytest.mark.parametrize("name", FILE_BASED)
def test_export_is_verified_timed_and_held_to_its_runtime_table(name, tmp_path):
    """`deployvit export --format <its format>` on the CPU: the artifact is verified, timed, and its
    latency contract is measured in this runtime with the settings of the shipped `test`-space CPU
    table of this runtime, beside that table's prediction (a generous budget: MET)."""
    skip_unless_runnable(name)
    table = _shipped_cpu_table(name)
    if table is None:
        pytest.skip(f"no shipped CPU table of the test space for {name} (deployvit profile --device cpu --runtime {name} ...)")
    arch_path = tmp_path / "a.arch.json"
    ARCH.save(arch_path)
    rec = RUNTIMES[name]
    result = run_cli("export", "--arch", str(arch_path), "--format", rec.format, "--device", "cpu", "--budget", "1s",
                     "--samples", "8", "--dynamic-batch", "1,2,4", "--repeats", "5", "--warmup", "0", "--out", str(tmp_path / "out"),
                     "--table", str(table))  # given: the resolver alone would not compare a table of another machine with this one
    assert result.code == 0, result.err
    (row,) = json.loads((tmp_path / "out" / "report.json").read_text())["rows"]
    assert row["format"] == rec.format and row["status"] == "exported and verified" and row["path"].endswith(rec.artifact)
    assert row["latency_ms"] > 0 and row["size_mb"] > 0
    contract = row["latency_contract"]
    assert contract["measurement"]["runtime"] == name and contract["prediction"]["runtime"] == name
    assert contract["prediction"]["table"].startswith(str(table)) and contract["status"] == "MET" == row["contract"]
    assert contract["measurement"]["settings"]["clock"] == "cpu" and contract["measurement"]["settings"]["threads"] == 1
