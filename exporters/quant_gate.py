"""Is a quantised model still the model? The accuracy gate, and when it fails, which layers to keep float.

`check_accuracy` runs the fp32 reference and the quantised artifact on the verification images and
applies `verify`'s comparisons (`compare`, `failures`) to them: top-1 drop vs the fp32 model (default
at most 1 point, `max_accuracy_drop`) and top-1 agreement over all images, and the mean logit cosine
of every batch (`GateThresholds`: why these and these defaults). A miss fails the gate, as any
verification miss does (exit 1 once export runs it).

`sensitivity` says what to do about a miss, in bounded time. It starts from the graph with every
layer quantised (`QuantizeResult.full_model`) and never recalibrates: keeping a layer float is
`quantize.keep_float`, the graph quantising without it would give.
1. one group at a time (a transformer block, the stem): only that group quantised, the rest float,
   scored on a small fixed subset of the verification images by the mean logit cosine distance to
   fp32 (continuous, so it ranks where a top-1 count on a few images would tie);
2. then the layers (qkv, attention matmuls, proj, fc1, fc2) of the most sensitive groups, one at a
   time, while the time budget lasts;
3. then the advice: keep the most sensitive units float, 1, 2, 4, ... of them and then a bisection,
   until the gate passes on the whole verification set; the answer is a `keep_fp` list for
   `quantize_onnx` and the metrics that list gives.
When the budget runs out the advice is the best found so far, and says it is incomplete.
The ranking uses the verification images the gate uses (the user's `--data` val split), so the
advice is what makes *that* gate pass; the calibration images (train split) are not reused here.

Runners are handed in (`runner_for(path)`: the onnxruntime runner export verifies with), so this
module runs nothing of its own and works with any runtime that opens an ONNX file.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import torch

from deployvit.errors import DeployvitError
from exporters.onnx import load_graph
from exporters.quantize import Layer, QuantizeResult, keep_float
from exporters.verify import Metrics, Runner, Samples, Thresholds, compare, failures, run_batched

DEFAULT_MAX_ACCURACY_DROP = 1.0  # top-1 points, the default gate
#: chosen gates, not measured ones (like fp16's), looser than what INT8 achieved on the digits models
#: of benchmarks/int8.py (agreement 99.2-100%, every batch's mean cosine above 0.998: results/int8-cpu.json)
#: so that the top-1 drop stays the deciding check when labels exist; without labels they are the gate.
#: Agreement is not 0.99: a model at 80% top-1 on a hard data set has many near-tied images, and
#: INT8 flips some of them without costing accuracy. The cosine is a batch's mean, not its worst
#: sample's (verify's `cosine`, reported but not gated here): one near-tied image must not fail an
#: artifact, a batch whose logits all moved must.
DEFAULT_MIN_AGREEMENT = 0.95
DEFAULT_MIN_BATCH_COSINE = 0.99
GATE_BATCH = 32
SENSITIVITY_BUDGET_S = 120.0  # seconds: the pass stops there and says its advice is the best found so far
SENSITIVITY_SUBSET = 128  # images the one-at-a-time passes are scored on


@dataclass(frozen=True)
class GateThresholds:
    """The INT8 accuracy gate; None disables a check. Drop in top-1 points (may be negative: demand a
    gain), agreement a fraction, cosine the mean over one batch of the per-image logit cosine."""

    max_accuracy_drop: float | None = DEFAULT_MAX_ACCURACY_DROP
    min_agreement: float | None = DEFAULT_MIN_AGREEMENT
    min_batch_cosine: float | None = DEFAULT_MIN_BATCH_COSINE

    def __post_init__(self):
        for name, value in asdict(self).items():
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise DeployvitError(f"{name} must be a finite number, got {value!r}")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise DeployvitError(f"min_agreement is a fraction in [0, 1], got {self.min_agreement}")
        if self.min_batch_cosine is not None and not -1 <= self.min_batch_cosine <= 1:
            raise DeployvitError(f"min_batch_cosine is a cosine in [-1, 1], got {self.min_batch_cosine}")

    @property
    def verify(self) -> Thresholds:
        """The checks `verify.failures` applies (no max-|diff| bound: int8 rounding moves every logit)."""
        return Thresholds(max_abs_diff=None, min_cosine=None, min_agreement=self.min_agreement, max_top1_drop=self.max_accuracy_drop)


def batch_cosines(ref_logits: torch.Tensor, logits: torch.Tensor, batch_size: int) -> list[float]:
    """The mean per-image logit cosine of each consecutive chunk of `batch_size` images."""
    cos = torch.nn.functional.cosine_similarity(ref_logits.double(), logits.double(), dim=1, eps=1e-12)
    cos = torch.where(torch.isfinite(cos), cos, torch.full_like(cos, -1.0))  # a NaN logit fails its batch
    return [float(cos[i : i + batch_size].mean()) for i in range(0, len(cos), batch_size)]


def gate_failures(ref_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor | None, batch_size: int,
                  thresholds: GateThresholds) -> tuple[Metrics, list[float], list[str]]:
    """`verify.compare` over all images, the per-batch cosines, and one line per missed threshold."""
    overall = compare(ref_logits, logits, labels, batch_size)
    cosines = batch_cosines(ref_logits, logits, batch_size)
    failed = [f"int8 gate, {line}" for line in failures(overall, thresholds.verify)]
    low = thresholds.min_batch_cosine
    failed += [f"int8 gate, batch {k + 1} of {len(cosines)} ({batch_size} images): mean cosine {c:.5f} < {low:g}"
               for k, c in enumerate(cosines) if low is not None and not c >= low]
    return overall, cosines, failed


@dataclass
class Gate:
    """The gate's verdict: metrics over every image (`overall`), each batch's mean cosine, what failed."""

    thresholds: GateThresholds
    source: str
    overall: Metrics
    batch_cosines: list[float]
    failed: list[str]

    @property
    def passed(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "data": self.source, "thresholds": asdict(self.thresholds),
                "overall": {**asdict(self.overall), "top1_drop": self.overall.top1_drop}, "batch_cosines": self.batch_cosines,
                "failed": self.failed}


def check_accuracy(reference: Runner | torch.Tensor, artifact: Runner, samples: Samples, *, thresholds: GateThresholds | None = None,
                   batch_size: int = GATE_BATCH) -> Gate:
    """The INT8 gate: `artifact` against `reference` (the fp32 model, or its logits on `samples`) on
    every image of `samples`, run in chunks of `batch_size`. Never raises on a miss: `Gate.failed`."""
    if batch_size < 1 or len(samples) < 1:
        raise DeployvitError(f"the accuracy gate needs images and a batch size >= 1, got {len(samples)} images, batch {batch_size}")
    thresholds = thresholds or GateThresholds()
    ref = reference if isinstance(reference, torch.Tensor) else run_batched(reference, samples.images, batch_size)
    overall, cosines, failed = gate_failures(ref, run_batched(artifact, samples.images, batch_size), samples.labels, batch_size, thresholds)
    return Gate(thresholds, samples.source, overall, cosines, failed)


@dataclass(frozen=True)
class QuantSpec:
    """How an export quantises (int8 or fp8, the precision of its `ExportSpec`): the calibration
    images (real ones: `deployvit.train.calibration.calibration_samples` of `--data`), the layers
    kept float, the calibration method, the gate and the sensitivity pass's time budget."""

    calibration: Samples
    keep_fp: tuple[str, ...] | None = None  # None: the default (the classifier head)
    method: str = "minmax"
    gate: GateThresholds = field(default_factory=GateThresholds)
    sensitivity_budget_s: float = SENSITIVITY_BUDGET_S


@dataclass
class GateReport:
    """The gate on an exported quantised artifact and, when it failed, the sensitivity advice."""

    result: QuantizeResult
    gate: Gate
    sensitivity: Sensitivity | None = None

    def advice(self) -> str | None:
        """What to do about a failed gate, as the command line to rerun with (None: it passed)."""
        if self.gate.passed:
            return None
        if self.sensitivity is None:
            return "the sensitivity pass did not run"
        s = self.sensitivity
        patterns = ",".join(s.keep_fp)
        return s.advice() + (f"; rerun with --keep-fp {patterns}" if s.keep_fp and (s.passed or not s.complete) else "")

    def to_dict(self) -> dict[str, Any]:
        return {**self.result.to_dict(), "gate": self.gate.to_dict(), "advice": self.advice(),
                "sensitivity": None if self.sensitivity is None else self.sensitivity.to_dict()}


def gate_batch(batch_min: int, batch_max: int) -> int:
    """The batch the gate runs the artifact at: GATE_BATCH where the artifact accepts it, else its largest."""
    return GATE_BATCH if batch_min <= GATE_BATCH <= batch_max else batch_max


def gate_artifact(result: QuantizeResult, artifact: Runner, reference: Runner, samples: Samples, spec: QuantSpec, *,
                  batch_size: int, static: bool, runner_for: Callable[[Path], Runner]) -> GateReport:
    """The gate on `artifact` against the fp32 `reference` over every verification image (a `static`
    batch artifact: those that fill whole batches of `batch_size`, as it takes nothing else), and
    when it fails the sensitivity pass (`runner_for` opens a trial graph) within `spec.sensitivity_budget_s`."""
    n = len(samples) // batch_size * batch_size if static else len(samples)
    if n < 1:
        raise DeployvitError(f"the accuracy gate needs at least {batch_size} images (one batch), got {len(samples)}")
    if n < len(samples):
        labels = None if samples.labels is None else samples.labels[:n]
        samples = Samples(samples.images[:n], labels, f"{n} of {samples.source} (whole batches of {batch_size})")
    ref = run_batched(reference, samples.images, batch_size)
    gate = check_accuracy(ref, artifact, samples, thresholds=spec.gate, batch_size=batch_size)
    report = GateReport(result, gate)
    if not gate.passed and result.fp32_path is not None:
        report.sensitivity = sensitivity(result, result.fp32_path, samples, runner_for=runner_for, reference=ref, thresholds=spec.gate,
                                         budget_s=spec.sensitivity_budget_s, batch_size=batch_size)
    return report


# --- sensitivity -----------------------------------------------------------------------------------


@dataclass
class Unit:
    """A group or a layer scored alone: only it quantised, everything else float."""

    name: str
    kind: str  # "group" or "layer"
    nodes: tuple[str, ...]
    cosine_distance: float  # mean over the subset of 1 - cosine(fp32 logits, logits)
    metrics: Metrics


@dataclass
class Sensitivity:
    """The ranking (most damaging first), the advice and whether it passes the gate."""

    units: list[Unit]
    keep_fp: list[str]  # patterns for quantize_onnx(keep_fp=...): the result's kept layers plus the advice
    passed: bool  # the graph with `keep_fp` float passes the gate on the whole verification set
    metrics: Metrics | None  # that graph's metrics (None: no advice was evaluated in time)
    complete: bool  # False: the time budget ran out before the pass finished
    elapsed_s: float
    budget_s: float
    subset: int
    failed: list[str] = field(default_factory=list)  # the advised graph's remaining misses

    def advice(self) -> str:
        """One sentence for the report and the CLI."""
        extra = "" if self.complete else f" (time budget {self.budget_s:g} s ran out: best found so far)"
        drop = "" if self.metrics is None or self.metrics.top1_drop is None else f", top-1 drop {self.metrics.top1_drop:.2f} points"
        verdict = "passes the gate" if self.passed else "still fails the gate"
        return f"keep in higher precision: {', '.join(self.keep_fp) or 'nothing'} ({verdict}{drop}){extra}"

    def to_dict(self) -> dict[str, Any]:
        return {"advice": self.advice(), "keep_fp": self.keep_fp, "passed": self.passed, "complete": self.complete,
                "metrics": None if self.metrics is None else {**asdict(self.metrics), "top1_drop": self.metrics.top1_drop},
                "failed": self.failed, "elapsed_s": self.elapsed_s, "budget_s": self.budget_s, "subset": self.subset,
                "ranking": [{"name": u.name, "kind": u.kind, "cosine_distance": u.cosine_distance, "agreement": u.metrics.agreement,
                             "top1_drop": u.metrics.top1_drop} for u in self.units]}


class _Trials:
    """Builds partially quantised graphs from one fully quantised graph and runs them."""

    def __init__(self, result: QuantizeResult, fp32_path: Path, runner_for: Callable[[Path], Runner], batch_size: int, work: Path):
        if result.full_model is None:
            raise DeployvitError("sensitivity needs the fully quantised graph of quantize_onnx's result (QuantizeResult.full_model)")
        self.full, self.fp32, self.runner_for = result.full_model, load_graph(fp32_path), runner_for
        self.all_nodes = [n for l in result.layers for n in l.nodes]
        self.batch_size, self.work, self.count = batch_size, work, 0

    def logits(self, quantized_nodes: set[str], images: torch.Tensor) -> torch.Tensor:
        """Logits of the graph in which only `quantized_nodes` are quantised."""
        proto = keep_float(self.full, self.fp32, [n for n in self.all_nodes if n not in quantized_nodes])
        self.count += 1
        path = self.work / f"trial{self.count}.onnx"
        onnx.save(proto, str(path))
        try:
            return run_batched(self.runner_for(path), images, self.batch_size)
        finally:
            path.unlink(missing_ok=True)


def _score(name: str, kind: str, nodes: Sequence[str], trials: _Trials, subset: Samples, ref: torch.Tensor) -> Unit:
    out = trials.logits(set(nodes), subset.images)
    cos = torch.nn.functional.cosine_similarity(ref.double(), out.double(), dim=1, eps=1e-12)
    return Unit(name, kind, tuple(nodes), float((1 - cos).mean()), compare(ref, out, subset.labels, trials.batch_size))


def _subset(samples: Samples, n: int) -> tuple[Samples, torch.Tensor]:
    """`n` images evenly spaced through `samples` (fixed: the same every run), and their indices."""
    idx = torch.from_numpy(np.unique(np.linspace(0, len(samples) - 1, num=min(n, len(samples))).round().astype(np.int64)))
    labels = None if samples.labels is None else samples.labels[idx]
    return Samples(samples.images[idx], labels, f"{len(idx)} of {samples.source}"), idx


def _rank(layers: Sequence[Layer], kept: set[str], trials: _Trials, subset: Samples, ref: torch.Tensor, deadline: float) -> tuple[list[Unit], bool]:
    """Groups one at a time, then the layers of the worst groups; (finest units ranked, complete)."""
    active = [l for l in layers if l.name not in kept]
    groups: dict[str, list[Layer]] = {}
    for l in active:
        groups.setdefault(l.group, []).append(l)
    scored: list[Unit] = []
    for name, members in groups.items():
        if time.monotonic() > deadline:
            return sorted(scored, key=lambda u: -u.cosine_distance), False
        scored.append(_score(name, "group", [n for l in members for n in l.nodes], trials, subset, ref))
    finest = {u.name: [u] for u in scored}
    for unit in sorted(scored, key=lambda u: -u.cosine_distance):
        if len(groups[unit.name]) == 1:
            continue
        if time.monotonic() > deadline:
            return sorted((u for us in finest.values() for u in us), key=lambda u: -u.cosine_distance), False
        finest[unit.name] = [_score(l.name, "layer", l.nodes, trials, subset, ref) for l in groups[unit.name]]
    return sorted((u for us in finest.values() for u in us), key=lambda u: -u.cosine_distance), True


def sensitivity(result: QuantizeResult, fp32_path: str | Path, samples: Samples, *, runner_for: Callable[[Path], Runner],
                reference: Runner | torch.Tensor | None = None, thresholds: GateThresholds | None = None, budget_s: float = SENSITIVITY_BUDGET_S,
                subset: int = SENSITIVITY_SUBSET, batch_size: int = GATE_BATCH) -> Sensitivity:
    """Rank the quantised layers of `result` by the damage each does alone and name the fewest to
    keep float for the gate to pass on `samples` (module docstring). `reference`: the fp32 model
    (a runner or its logits on `samples`; default: `fp32_path` run by `runner_for`). `budget_s`
    bounds the wall time of the whole pass."""
    if budget_s <= 0 or subset < 1:
        raise DeployvitError(f"sensitivity needs a positive time budget and subset, got {budget_s} s, {subset} images")
    start, thresholds = time.monotonic(), thresholds or GateThresholds()
    deadline, fp32_path = start + budget_s, Path(fp32_path)
    work = Path(tempfile.mkdtemp(prefix="deployvit-sensitivity-"))
    try:
        trials = _Trials(result, fp32_path, runner_for, batch_size, work)
        reference = runner_for(fp32_path) if reference is None else reference
        ref = reference if isinstance(reference, torch.Tensor) else run_batched(reference, samples.images, batch_size)
        picked, idx = _subset(samples, max(batch_size, subset // batch_size * batch_size))  # whole batches: a static graph takes nothing else
        units, complete = _rank(result.layers, set(result.kept), trials, picked, ref[idx], deadline)
        keep, metrics, failed, done = _advise(units, result, trials, samples, ref, thresholds, deadline)
        return Sensitivity(units, keep, not failed and metrics is not None, metrics, complete and done,
                           time.monotonic() - start, budget_s, len(picked), failed)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _advise(units: list[Unit], result: QuantizeResult, trials: _Trials, samples: Samples, ref: torch.Tensor, thresholds: GateThresholds,
            deadline: float) -> tuple[list[str], Metrics | None, list[str], bool]:
    """Keep the k most damaging units float, k = 1, 2, 4, ... then bisect down to the fewest that
    pass; (keep_fp patterns, their metrics, their misses, finished in time)."""
    kept = set(result.kept)
    quantizable = {n for l in result.layers if l.name not in kept for n in l.nodes}
    tried: dict[int, tuple[Metrics, list[str]]] = {}

    def attempt(k: int) -> bool:
        dropped = {n for u in units[:k] for n in u.nodes}
        out = trials.logits(quantizable - dropped, samples.images)
        metrics, _, failed = gate_failures(ref, out, samples.labels, trials.batch_size, thresholds)
        tried[k] = (metrics, failed)
        return not failed

    lo, hi, k, done = 0, None, 1, True  # lo: largest k known to fail; hi: smallest k known to pass
    while hi is None and units:
        if time.monotonic() > deadline:
            done = False
            break
        if attempt(min(k, len(units))):
            hi = min(k, len(units))
        elif k >= len(units):
            break
        else:
            lo, k = min(k, len(units)), k * 2
    while hi is not None and hi - lo > 1:
        if time.monotonic() > deadline:
            done = False
            break
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if attempt(mid) else (mid, hi)
    best = hi if hi is not None else max(tried, default=0)
    metrics, failed = tried.get(best, (None, []))
    return list(result.kept) + [u.name for u in units[:best]], metrics, failed, done
