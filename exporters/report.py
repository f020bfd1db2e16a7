"""What an export or benchmark found, three ways: `report.json` (machines), `report.md` (people),
and a printed table in the Ultralytics `yolo benchmark` style (docs/REFERENCES.md section 6) with the
latency contract beside it: measured latency next to the LUT prediction and the budget."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from deployvit import __version__, io
from exporters.verify import Verification

REPORT_FORMAT = "deployvit.export-report/1"

VERIFIED = "exported and verified"
VERIFY_FAILED = "exported but verification failed"
UNVERIFIED = "exported, not verified"
EXPORT_FAILED = "export failed"
SKIPPED = "skipped"
REFERENCE = "reference"
STATUSES = (VERIFIED, VERIFY_FAILED, UNVERIFIED, EXPORT_FAILED, SKIPPED, REFERENCE)
PASSING = (VERIFIED, REFERENCE)

@dataclass
class Contract:
    """One artifact's contract: what was measured, what was predicted for exactly that, the budget."""

    runtime: str
    precision: str
    batch_size: int
    device: str  # cpu | cuda: where the measurement runs (this machine)
    settings: dict[str, Any]
    budget_ms: float | None = None
    predicted_ms: float | None = None
    table: str | None = None  # the table's path and description
    source: str | None = None  # measured | estimated (the table's)
    no_prediction: str | None = None  # why there is no prediction
    measured_ms: float | None = None
    measured_cv: float | None = None
    measured_ci_ms: tuple[float, float] | None = None  # the 95% interval of the measured latency
    notes: list[str] = field(default_factory=list)

    @property
    def setting(self) -> str:
        return f"{self.runtime} {self.precision} b{self.batch_size}"

    @property
    def status(self) -> str | None:
        """When a budget is set: MET when the whole 95% interval of the measured latency is within
        it, NOT MET when the whole interval is above it, WITHIN NOISE when the budget lies inside the
        interval (the measurement cannot tell; `WITHIN_NOISE`, its own exit code). A contract measured
        without an interval is judged on its value."""
        if self.budget_ms is None:
            return None
        if self.measured_ms is None:
            return "NOT MET"
        low, high = self.measured_ci_ms or (self.measured_ms, self.measured_ms)
        if high <= self.budget_ms:
            return "MET"
        return "NOT MET" if low > self.budget_ms else WITHIN_NOISE

    def to_dict(self) -> dict[str, Any]:
        setting = {"runtime": self.runtime, "precision": self.precision, "batch_size": self.batch_size, "device": self.device}
        prediction = ({**setting, "predicted_ms": self.predicted_ms, "table": self.table, "source": self.source}
                      if self.predicted_ms is not None else {"none": self.no_prediction})
        ci = None if self.measured_ci_ms is None else list(self.measured_ci_ms)
        return {"measurement": {**setting, "measured_ms": self.measured_ms, "ci95_ms": ci, "cv": self.measured_cv, "settings": self.settings},
                "prediction": prediction, "budget_ms": self.budget_ms, "status": self.status, "notes": self.notes}


WITHIN_NOISE = "WITHIN NOISE"
# One latency per artifact: the contract's measurement (timed like its table) when there is one, else
# the bs1 benchmark timing; "Contract as" says which setting it is, "95% CI ms" how sure it is.
COLUMNS = ("Format", "Status", "Size (MB)", "Top-1", "Agreement", "Max |diff|", "Latency ms",
           "95% CI ms", "Throughput img/s", "Contract as", "Predicted ms", "Budget")


@dataclass
class Row:
    """One artifact (or one skipped format) of one model."""

    model: str  # arch name / timm model name: several models share a benchmark table
    format: str  # an export format (`deployvit.runtime_registry`)
    precision: str
    status: str
    runtime: str = ""  # what actually ran it, e.g. "onnxruntime CPUExecutionProvider"
    path: str | None = None
    size_mb: float | None = None
    verification: Verification | None = None
    latency_ms: float | None = None  # THE latency: the contract's measurement, else the median at batch 1
    latency_cv: float | None = None
    throughput: float | None = None  # images/s at `throughput_batch`
    throughput_batch: int | None = None
    budget_ms: float | None = None
    notes: list[str] = field(default_factory=list)
    counts_for_exit: bool = True  # False for timm baselines: compared, never gating
    latency: Contract | None = None  # the latency contract, measured like its table
    quantization: dict[str, Any] | None = None  # int8/fp8: layers quantised and kept, calibration, gate, advice
    batch_latency: dict[int, dict[str, float]] | None = None  # a dynamic batch range: ms per call at min, opt, max (and 1)
    dynamic_vs_static: dict[str, Any] | None = None  # the dynamic artifact vs a static build at the contract's batch

    @property
    def predicted_ms(self) -> float | None:
        return None if self.latency is None else self.latency.predicted_ms

    @property
    def contract(self) -> str | None:
        """MET / NOT MET when a budget is set: met only when the *measured* contract latency is within it."""
        if self.budget_ms is None or self.status == SKIPPED:
            return None
        return "NOT MET" if self.latency is None else self.latency.status

    @property
    def passed(self) -> bool:
        return self.status in PASSING

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "format": self.format,
            "precision": self.precision,
            "status": self.status,
            "runtime": self.runtime,
            "path": self.path,
            "size_mb": self.size_mb,
            "verification": self.verification.to_dict() if self.verification else None,
            "latency_ms": self.latency_ms,
            "latency_setting": self.latency.setting if self.latency is not None and self.latency.measured_ms is not None else "bs1",
            "latency_cv": self.latency_cv,
            "throughput_img_s": self.throughput,
            "throughput_batch": self.throughput_batch,
            "predicted_ms": self.predicted_ms,
            "budget_ms": self.budget_ms,
            "contract": self.contract,
            "latency_contract": None if self.latency is None else self.latency.to_dict(),
            "batch_latency_ms": None if self.batch_latency is None else {str(b): t for b, t in self.batch_latency.items()},
            "dynamic_vs_static": self.dynamic_vs_static,
            "quantization": self.quantization,
            "notes": self.notes,
        }

    def cells(self) -> tuple[str, ...]:
        m = self.verification.summary if self.verification else None
        top1 = f"{m.top1:.2f}" if m is not None and m.top1 is not None else "-"
        budget = "-" if self.budget_ms is None else f"{self.budget_ms:g} {self.contract}"
        return (
            f"{self.model} {self.format} {self.precision}",
            self.status,
            _num(self.size_mb, "{:.2f}"),
            top1,
            "-" if m is None else f"{m.agreement:.2%}",
            "-" if m is None else f"{m.max_abs_diff:.2e}",
            _num(self.latency_ms, "{:.3f}"),
            _ci_cell(self.latency),
            _num(self.throughput, "{:.1f}"),
            "-" if self.latency is None or self.latency.measured_ms is None else self.latency.setting,
            _predicted_cell(self.latency),
            budget,
        )


def _ci_cell(c: Contract | None) -> str:
    if c is None or c.measured_ci_ms is None:
        return "-"
    return f"{c.measured_ci_ms[0]:.3f}-{c.measured_ci_ms[1]:.3f}"


def _predicted_cell(c: Contract | None) -> str:
    """The prediction, marked when it is an estimate (never passed off as a measurement)."""
    if c is None:
        return "-"
    if c.predicted_ms is None:
        return "no prediction"
    return f"{c.predicted_ms:.3f}" + (" (estimate)" if c.source == "estimated" else "")


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _contract_line(c: Contract) -> str:
    """The contract in one sentence: measured and predicted for the same runtime/precision/batch."""
    ci = "" if c.measured_ci_ms is None else f", 95% interval {c.measured_ci_ms[0]:.3f}-{c.measured_ci_ms[1]:.3f} ms"
    measured = f"measured {_num(c.measured_ms, '{:.3f}')} ms ({c.setting} on {c.device}{ci})"
    if c.predicted_ms is not None:
        kind = "ESTIMATED" if c.source == "estimated" else "predicted"
        pred = f"{kind} {c.predicted_ms:.3f} ms for {c.setting} by {c.table}"
    else:
        pred = c.no_prediction or "no prediction"
    budget = "" if c.budget_ms is None else f"; budget {c.budget_ms:g} ms: **{c.status}**"
    return f"- latency contract: {measured}; {pred}{budget}"


def quantization_lines(q: dict[str, Any] | None) -> list[str]:
    """What a quantised row says in report.md: the layers quantised and kept float, the calibration,
    the gate, and when it failed which layers to keep in higher precision."""
    if not q:
        return []
    kind, floats = q["qtype"].upper(), q["float_precision"]
    lines = [f"- {kind}: {len(q['quantized'])} of {len(q['layers'])} layers quantised ({', '.join(q['quantized']) or 'none'}); "
             f"kept in {floats}: {', '.join(q['kept']) or 'none'}",
             f"- calibration: {q['calibration']} ({q['method']}, {q['calibration_count']} images, sha256 {q['calibration_sha256'][:12]})"]
    gate, m = q["gate"], q["gate"]["overall"]
    drop = "" if m.get("top1_drop") is None else f"top-1 {m['top1_reference']:.2f}% -> {m['top1']:.2f}% (drop {m['top1_drop']:.2f} points), "
    lowest = min(gate["batch_cosines"], default=float("nan"))
    t = gate["thresholds"]
    limits = ", ".join(f"{name} {op} {t[key]:g}" for key, name, op in (("max_accuracy_drop", "top-1 drop", "<="), ("min_agreement", "agreement", ">="),
                                                                      ("min_batch_cosine", "batch cosine", ">=")) if t.get(key) is not None)
    lines.append(f"- accuracy gate ({'passed' if gate['passed'] else 'FAILED'}; {limits or 'no limits'}) on {m['samples']} images: {drop}"
                 f"agreement {m['agreement']:.2%}, lowest batch mean cosine {lowest:.5f}")
    if q.get("advice"):
        lines.append(f"- sensitivity: {q['advice']}")
    return lines


def format_table(rows: list[Row]) -> str:
    """Fixed-width text table, one line per row (what the CLI prints)."""
    body = [COLUMNS] + [r.cells() for r in rows]
    widths = [max(len(line[i]) for line in body) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def environment(device: str, software: dict[str, Any] | None = None) -> dict[str, Any]:
    """Machine facts (the same ones latency tables record) and package versions: a timing means
    nothing without them (docs/DESIGN.md section 4). `software`: the runtimes' packages and versions
    (`deployvit.runtimes.software()`, None for one not installed), handed in by the caller because
    this package sits below the runtimes."""
    import onnx
    import timm

    from deployvit.devices import machine_facts

    return {**machine_facts(device), "deployvit": __version__, "timm": timm.__version__, "onnx": onnx.__version__,
            **(software or {}), "torch_threads": torch.get_num_threads()}


@dataclass
class Report:
    """Everything `report.json` / `report.md` hold for one export or benchmark run."""

    command: str
    models: dict[str, dict[str, Any]]  # model name -> arch / timm name, params, FLOPs, checkpoint
    data: str
    rows: list[Row]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    software: dict[str, Any] = field(default_factory=dict)  # the runtimes' packages and versions

    @cached_property
    def environment(self) -> dict[str, Any]:
        return environment(self.settings.get("device", "cpu"), self.software)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "command": self.command,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "environment": self.environment,
            "settings": self.settings,
            "models": self.models,
            "data": self.data,
            "rows": [r.to_dict() for r in self.rows],
            "notes": self.notes,
        }

    def markdown(self) -> str:
        lines = [f"# deployvit {self.command} report", ""]
        header = "| " + " | ".join(c.replace("|", "\\|") for c in COLUMNS) + " |"
        lines += [header, "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r.cells()) + " |" for r in self.rows]
        lines += ["", f"Verification data: {self.data}", ""]
        for r in self.rows:
            lines.append(f"## {r.model} {r.format} {r.precision}: {r.status}")
            if r.runtime:
                lines.append(f"- runtime: {r.runtime}")
            if r.path:
                lines.append(f"- file: `{r.path}`")
            if r.verification:
                t = ", ".join(f"{k} {v:g}" for k, v in vars(r.verification.thresholds).items() if v is not None)
                gate = " (the accuracy gate below judges accuracy)" if r.quantization else ""
                lines.append(f"- thresholds: {t or 'none at batch 1 and the largest batch'}{gate}")
                for m in r.verification.checks:
                    top1 = "" if m.top1 is None else f", top-1 {m.top1:.2f}% (reference {m.top1_reference:.2f}%)"
                    lines.append(
                        f"- batch {m.batch_size} ({m.samples} images): max |diff| {m.max_abs_diff:.3e}, "
                        f"cosine {m.cosine:.6f}, agreement {m.agreement:.2%}{top1}"
                    )
                lines += [f"- FAILED: {f}" for f in r.verification.failed]
            if r.latency_ms is not None and (r.latency is None or r.latency.measured_ms is None):
                lines.append(f"- latency bs1: {r.latency_ms:.3f} ms median (cv {r.latency_cv:.1%})")
            if r.throughput is not None:
                lines.append(f"- throughput: {r.throughput:.1f} img/s at batch {r.throughput_batch}")
            if r.batch_latency:
                lines.append("- dynamic batch: " + ", ".join(f"b{b} {t['ms']:.3f} ms ({t['img_s']:.1f} img/s)" for b, t in r.batch_latency.items()))
            if r.dynamic_vs_static:
                lines.append(f"- dynamic vs static: {r.dynamic_vs_static['summary']}")
            if r.latency is not None:
                lines.append(_contract_line(r.latency))
            lines += quantization_lines(r.quantization)
            lines += [f"- note: {n}" for n in r.notes]
            lines.append("")
        lines += [f"- {n}" for n in self.notes]
        env = self.environment
        lines += ["", "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items() if v is not None), ""]
        return "\n".join(lines)

    def write(self, out_dir: str | os.PathLike) -> tuple[Path, Path]:
        out = Path(out_dir)
        io.write_json(out / "report.json", self.to_dict())
        io.write_text(out / "report.md", self.markdown())
        return out / "report.json", out / "report.md"
