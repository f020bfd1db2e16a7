"""Does an exported artifact compute what the PyTorch model computes? Hard gates, not warnings.

Reference = the PyTorch model in fp32. The artifact and the reference see the same images (`--data`,
or a fixed seeded synthetic set, said in the report) twice: one image at a time (batch 1) and in
chunks of the largest batch the artifact accepts, because dynamic-batch bugs show up at only one of
the two. Metrics: max |logit diff|, cosine similarity (the worst sample), top-1 agreement, and top-1
accuracy of both when labels exist. Thresholds default to docs/DESIGN.md section 5 and can be overridden;
a miss is CheckFailed (exit 1), unlike Optimum's `--atol`, which only warns.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence

import torch

from deployvit.errors import CheckFailed, DeployvitError

Runner = Callable[[torch.Tensor], torch.Tensor]  # float32 images [B, C, H, W] -> logits [B, classes]

SYNTHETIC_SEED = 0
BATCH1_SAMPLES = 16  # images checked one at a time: enough to catch a batch-1 specialisation bug


@dataclass(frozen=True)
class Thresholds:
    """Pass conditions; None disables a check. Agreement is a fraction, accuracy drop in points."""

    max_abs_diff: float | None = None
    min_cosine: float | None = None
    min_agreement: float | None = None
    max_top1_drop: float | None = None

    @classmethod
    def for_precision(cls, precision: str, tf32: bool = False, **overrides: float | None) -> "Thresholds":
        """docs/DESIGN.md section 5 defaults for `precision`, with `overrides` (None keeps the default).

        `tf32` (fp32 only): the artifact's fp32 matmuls may use TF32, which rounds their inputs to 10
        mantissa bits (as fp16 does) but keeps fp32 range, accumulation and activations. Its logits are
        not within 1e-3 of true fp32, so the fp32 max-|diff| gate would fail a correct TF32 engine; it
        gets a gate between fp32's and fp16's instead: cosine >= 0.9995, top-1 agreement >= 99.5%,
        top-1 drop <= 0.3 points, no max-|diff| bound (a chosen gate, like fp16's, not a measured one)."""
        if tf32 and precision != "fp32":
            raise DeployvitError(f"--tf32 applies to fp32 only (precision is {precision})")
        if tf32:
            base = cls(max_abs_diff=None, min_cosine=0.9995, min_agreement=0.995, max_top1_drop=0.3)
        elif precision == "fp32":
            base = cls(max_abs_diff=1e-3, min_cosine=0.9999, min_agreement=None, max_top1_drop=None)
        elif precision in ("fp16", "bf16"):
            base = cls(max_abs_diff=None, min_cosine=0.999, min_agreement=0.995, max_top1_drop=0.3)
        else:
            raise DeployvitError(f"unknown precision {precision!r}")
        unknown = set(overrides) - set(asdict(base))
        if unknown:
            raise DeployvitError(f"unknown threshold {sorted(unknown)[0]!r}")
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class Samples:
    """The verification inputs: normalised images, labels when the data set has them, and a
    sentence saying where they came from (the report prints it)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    source: str

    def __len__(self) -> int:
        return len(self.images)


def synthetic_samples(n: int, img_size: int, in_chans: int = 3, seed: int = SYNTHETIC_SEED) -> Samples:
    """Seeded standard-normal images (roughly what normalised photos look like to the model)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, in_chans, img_size, img_size, generator=gen)
    return Samples(images, None, f"synthetic: {n} seeded N(0,1) images (seed {seed}), no labels")


@dataclass
class Metrics:
    """Artifact vs reference on one batch size."""

    batch_size: int
    samples: int
    max_abs_diff: float
    cosine: float  # worst sample
    agreement: float  # fraction of samples with the same top-1 class
    top1_reference: float | None = None  # percent, when labels exist
    top1: float | None = None

    @property
    def top1_drop(self) -> float | None:
        return None if self.top1 is None else self.top1_reference - self.top1


def compare(reference: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor | None, batch_size: int) -> Metrics:
    """Metrics of `logits` against `reference` logits (both [N, classes]), in float64."""
    ref, out = reference.double().cpu(), logits.double().cpu()
    if ref.shape != out.shape:
        raise CheckFailed(f"artifact returned logits of shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
    finite = bool(torch.isfinite(out).all())
    cos = torch.nn.functional.cosine_similarity(ref, out, dim=1, eps=1e-12)
    metrics = Metrics(
        batch_size=batch_size,
        samples=len(ref),
        max_abs_diff=float((ref - out).abs().max()) if finite else math.inf,
        cosine=float(cos.min()) if finite else -1.0,
        agreement=float((ref.argmax(1) == out.argmax(1)).double().mean()),
    )
    if labels is not None:
        metrics.top1_reference = float((ref.argmax(1) == labels).double().mean() * 100)
        metrics.top1 = float((out.argmax(1) == labels).double().mean() * 100)
    return metrics


def failures(metrics: Metrics, thresholds: Thresholds) -> list[str]:
    """One line per missed threshold (empty when the metrics pass)."""
    out, t, b = [], thresholds, f"batch {metrics.batch_size}"
    if t.max_abs_diff is not None and not metrics.max_abs_diff < t.max_abs_diff:
        out.append(f"{b}: max |diff| {metrics.max_abs_diff:.3g} >= {t.max_abs_diff:g}")
    if t.min_cosine is not None and not metrics.cosine >= t.min_cosine:
        out.append(f"{b}: cosine {metrics.cosine:.6f} < {t.min_cosine:g}")
    if t.min_agreement is not None and not metrics.agreement >= t.min_agreement:
        out.append(f"{b}: top-1 agreement {metrics.agreement:.2%} < {t.min_agreement:.2%}")
    drop = metrics.top1_drop
    if t.max_top1_drop is not None and drop is not None and not drop <= t.max_top1_drop:
        out.append(f"{b}: top-1 drop {drop:.2f} points > {t.max_top1_drop:g}")
    return out


@dataclass
class Verification:
    """The verdict on one artifact: metrics at batch 1 and at the largest batch, and what failed."""

    precision: str
    thresholds: Thresholds
    source: str
    checks: list[Metrics] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and not self.failed

    @property
    def summary(self) -> Metrics | None:
        """The largest-batch check (covers the most images): what the summary table shows."""
        return self.checks[-1] if self.checks else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "precision": self.precision,
            "data": self.source,
            "thresholds": asdict(self.thresholds),
            "checks": [{**asdict(m), "top1_drop": m.top1_drop} for m in self.checks],
            "failed": self.failed,
        }


def run_batched(fn: Runner, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`fn` over `images` in chunks of `batch_size`, logits gathered on the CPU in float32."""
    with torch.no_grad():
        return torch.cat([fn(images[i : i + batch_size]).float().cpu() for i in range(0, len(images), batch_size)])


def verify(
    reference: Runner,
    artifact: Runner,
    samples: Samples,
    *,
    batch_sizes: Sequence[int],
    precision: str,
    thresholds: Thresholds | None = None,
) -> Verification:
    """Compare `artifact` with `reference` at each of `batch_sizes` (batch 1 and the largest batch
    the artifact accepts). Never raises on a miss: the caller turns it into a report status and the
    CLI into exit 1. An artifact that crashes on a batch fails that check.

    Batch 1 runs the first 16 images; a larger batch B runs the largest multiple of B images (a
    static-batch artifact accepts nothing else), and that check carries the top-1 accuracies."""
    thresholds = thresholds or Thresholds.for_precision(precision)
    result = Verification(precision, thresholds, samples.source)
    sizes = sorted(set(batch_sizes))
    if not sizes or sizes[0] < 1:
        raise DeployvitError(f"verification batch sizes must be >= 1, got {list(batch_sizes)}")
    if len(samples) < sizes[-1]:
        raise DeployvitError(f"verification needs at least {sizes[-1]} images (the largest batch), got {len(samples)}")
    ref_logits = run_batched(reference, samples.images, sizes[-1])
    for bs in sizes:
        n = min(len(samples), BATCH1_SAMPLES) if bs == 1 and len(sizes) > 1 else len(samples) // bs * bs
        labels = samples.labels[:n] if samples.labels is not None and bs == sizes[-1] else None
        try:
            logits = run_batched(artifact, samples.images[:n], bs)
        except Exception as exc:  # runtimes raise their own types; a crash is a failed check
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            result.failed.append(f"batch {bs}: the artifact failed to run: {first}")
            continue
        if logits.shape != ref_logits[:n].shape:
            result.failed.append(f"batch {bs}: logits of shape {tuple(logits.shape)}, expected {tuple(ref_logits[:n].shape)}")
            continue
        metrics = compare(ref_logits[:n], logits, labels, bs)
        result.checks.append(metrics)
        result.failed.extend(failures(metrics, thresholds))
    return result
