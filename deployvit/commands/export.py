"""`deployvit export` and `deployvit benchmark`: ship a verified artifact, or compare every format.

Both validate every input before writing anything (bad input / missing dependency: exit 2, one
line), then export, verify against the fp32 PyTorch model and time each artifact, write
`report.json` + `report.md` into --out and print the table. Exit 1 when an artifact fails
verification (or cannot be verified here), when an export fails, or when a --budget is not met by
the measured latency; exit 3 when the budget lies within the noise of that measurement.
"""

from __future__ import annotations

import copy
import functools
import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import click
import torch

from deployvit.commands import bounds, conflicts
from deployvit.errors import CheckFailed, DeployvitError, MissingDependency, WithinNoise
from deployvit import io
from deployvit.compute import compute_device
from deployvit.contract import contract_runner, measure_contract, plan_contract
from deployvit.runtime_registry import format_names, format_record, formats_for, listing, tf32_runtimes
from deployvit.runtimes import for_format, software
from deployvit.settings import PRECISIONS, QUANTIZED_PRECISIONS, MeasureSettings
from deployvit.units import parse_amount
from exporters.benchmark import ExportSpec, reference_runner, run_format
from exporters.images import natural_samples
from exporters.onnx import BF16_MIN_OPSET, DEFAULT_OPSET, MIN_OPSET, BatchSpec, batch_spec, check_opset
from exporters.quant_gate import DEFAULT_MAX_ACCURACY_DROP, DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_BATCH_COSINE, SENSITIVITY_BUDGET_S, GateThresholds, QuantSpec
from exporters.quantize import DEFAULT_CALIBRATION, DEFAULT_METHOD, METHODS, MIN_CALIBRATION, check_keep_fp
from exporters.report import REFERENCE, SKIPPED, VERIFIED, VERIFY_FAILED, WITHIN_NOISE, Report, Row, format_table, quantization_lines
from exporters.sources import SourceModel, load_arch_model, load_timm_model
from exporters.verify import Runner, Samples, Thresholds, synthetic_samples

SAMPLES, QUANT_SAMPLES = 128, 512  # verification images: a quantised model's gate counts top-1 points (1 image of 128 is 0.8)


def _batch_range(text: str | None, contracts: dict[str, Any]) -> tuple[int, int, int] | None:
    """--dynamic-batch MIN,OPT,MAX; by default None (batch_spec's 1,8,32), widened to the largest
    contract batch so the artifact accepts the batch its table was measured at."""
    if text is None:
        widest = max((c.batch_size for c in contracts.values()), default=1)
        return None if widest <= 32 else (1, 8, widest)
    try:
        lo, opt, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise DeployvitError(f"--dynamic-batch {text!r}: expected MIN,OPT,MAX, e.g. 1,8,32") from None
    if not all(bounds.BATCH.min <= v <= bounds.BATCH.max for v in (lo, opt, hi)):
        raise DeployvitError(f"--dynamic-batch {text!r}: each size must be in [{bounds.BATCH.min}, {bounds.BATCH.max}]")
    return lo, opt, hi


def parse_formats(text: str) -> list[str]:
    """`--formats a,b,c`: every name checked against the runtime table, in the order given."""
    formats = [f.strip() for f in text.split(",") if f.strip()]
    if not formats:
        raise DeployvitError(f"--formats {text!r}: name at least one format (choose from {', '.join(format_names())})")
    for fmt in formats:
        format_record(fmt)  # an unknown name: one line naming the choices
    twice = sorted({f for f in formats if formats.count(f) > 1})
    if twice:
        raise DeployvitError(f"--formats {text!r}: {', '.join(twice)} given twice; name each format once")
    return formats


def parse_baselines(text: str) -> list[str]:
    """`--baselines a,b`: timm model names (never a hub reference or a path), each once."""
    from deployvit.weights import check_timm_name

    names = [check_timm_name(b.strip(), "--baselines", "--checkpoint") for b in text.split(",") if b.strip()]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DeployvitError(f"--baselines {text!r}: {', '.join(twice)} given twice; name each model once")
    return names


def _check_contract_batches(batch, contracts: dict[str, Any]) -> None:
    for fmt, c in contracts.items():
        if not batch.min <= c.batch_size <= batch.max:
            raise DeployvitError(f"--dynamic-batch {batch}: the {fmt} latency contract runs at batch {c.batch_size} "
                                 "(its table's); widen the range or pass --batch-size")


def _common_options(fn: Callable) -> Callable:
    """Options `export` and `benchmark` share (one definition, so they cannot drift apart)."""
    options = [
        click.option("--arch", "arch_path", type=click.Path(),
                     help="Arch JSON file, or a run folder: a search run (its best.arch.json) or a retrain run (its arch and "
                          "trained weights)."),
        click.option("--checkpoint", type=click.Path(),
                     help="Weights: checkpoint.safetensors from retrain (or its run folder), a supernet checkpoint (train-supernet's "
                          "last.pt, import's supernet.pt: --arch is extracted from it), or a .pt state dict. Default: random weights "
                          "(or the retrain run's given as --arch)."),
        click.option("--timm-model", help="Export a timm model (pretrained=False, never downloads) instead of --arch."),
        click.option("--img-size", type=bounds.IMG_SIZE, help="Input size of a --timm-model (default: its own)."),
        click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
                     help="Precision of the exported graph or engine (verified against PyTorch fp32)."),
        click.option("--tf32", is_flag=True,
                     help=f"fp32 only: let {listing(tf32_runtimes(), 'and')} on CUDA use TF32 for fp32 matmuls (recorded; verified "
                          "with its own gate: cosine >= 0.9995, top-1 agreement >= 99.5%). Default: TF32 off, fp32 means fp32."),
        click.option("--batch-size", type=bounds.BATCH,
                     help="Static batch size, and the batch of the latency contract (default: dynamic batch 1,8,32 "
                          "widened to the table's batch; the contract at the table's batch)."),
        click.option("--dynamic-batch", help="Dynamic batch MIN,OPT,MAX (OPT: the size TensorRT tunes for)."),
        click.option("--opset", type=bounds.ints(1, 99), help=f"ONNX opset, >= {MIN_OPSET} (default {DEFAULT_OPSET}; {BF16_MIN_OPSET} for bf16)."),
        click.option("--legacy-exporter", is_flag=True, help="Use the TorchScript ONNX exporter instead of dynamo."),
        click.option("--data", help="Verify on the val split of: digits, a CIFAR folder or an ImageFolder root (int8/fp8: "
                                    "calibrate on its train split; required)."),
        click.option("--samples", type=bounds.IMAGES,
                     help=f"Images to verify on (default {SAMPLES}; {QUANT_SAMPLES} for int8/fp8): the val split of --data, else "
                          "natural photographs (crops of scikit-learn's two sample images)."),
        click.option("--budget", help="Latency budget of the contract (measured in the table's runtime, precision and "
                                      "batch), e.g. 5ms or 800us: MET (the whole 95%% interval of the measurement within it) exit 0, NOT MET "
                                      "exit 1, WITHIN NOISE (the budget inside that interval) exit 3."),
        click.option("--table", type=click.Path(dir_okay=False),
                     help="Latency table for the contract's prediction (default: the resolver's table of this machine's "
                          "device for the format's runtime and precision; see `deployvit tables`)."),
        click.option("--out", type=click.Path(file_okay=False), help="Output folder (default: beside --arch)."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                     help="Where the artifact is built, verified and timed (auto: CUDA when available)."),
        click.option("--workspace", type=bounds.floats(0, 1024, min_open=True), default=4.0, show_default=True, help="TensorRT workspace (GB)."),
        click.option("--timing-cache", type=click.Path(dir_okay=False), help="TensorRT timing cache file (reused)."),
        click.option("--max-abs-diff", type=bounds.NON_NEGATIVE, help="Override: max |logit diff| (default 1e-3 for fp32)."),
        click.option("--min-cosine", type=bounds.floats(-1, 1), help="Override: min cosine similarity (0.9999 fp32, 0.999 fp16/bf16)."),
        click.option("--min-agreement", type=bounds.FRACTION, help="Override: min top-1 agreement, fraction (0.995 fp16/bf16)."),
        click.option("--max-top1-drop", "--max-accuracy-drop", "max_top1_drop", type=bounds.floats(-100, 100),
                     help=f"Override: max top-1 drop vs fp32 in points (0.3 fp16/bf16; int8/fp8: the accuracy gate, "
                          f"{DEFAULT_MAX_ACCURACY_DROP:g}, over every verification image)."),
        click.option("--warmup", type=bounds.WARMUP_S, default=MeasureSettings.warmup_s, show_default=True,
                     help="Timing warm-up seconds (the contract uses its table's own settings)."),
        click.option("--repeats", type=bounds.REPEATS, default=MeasureSettings.repeats, show_default=True,
                     help="Timed repeats (the contract uses its table's own settings)."),
        click.option("--clock", type=click.Choice(["wall", "cpu"]), default=MeasureSettings.clock, show_default=True,
                     help="CPU timing: wall clock, or single-thread process CPU time (as CPU latency tables "
                          "profiled on a shared machine)."),
    ] + _quantization_options()
    return functools.reduce(lambda f, opt: opt(f), reversed(options), fn)


def _quantization_options() -> list:
    """The int8/fp8 options (the calibration, the layers kept float, the accuracy gate) and the
    dynamic-vs-static comparison."""
    return [
        click.option("--min-batch-cosine", type=bounds.floats(-1, 1),
                     help=f"int8/fp8 gate: min mean logit cosine of every batch (default {DEFAULT_MIN_BATCH_COSINE:g}; "
                          f"agreement default {DEFAULT_MIN_AGREEMENT:g}, --min-agreement)."),
        click.option("--calibration", type=bounds.ints(MIN_CALIBRATION, 100_000),
                     help=f"int8/fp8: calibration images, drawn with seed 0 from the train split of --data "
                          f"(default {DEFAULT_CALIBRATION}, or the whole split when smaller)."),
        click.option("--calibration-method", type=click.Choice(list(METHODS)),
                     help=f"int8/fp8: activation ranges from the calibration images' min/max or their 99.999th percentile (default {DEFAULT_METHOD})."),
        click.option("--keep-fp", help="int8/fp8: comma-separated layers to keep in higher precision, replacing the default (the "
                                       "classifier head): a layer (stages.0.1.mlp.fc2), a block (stages.0.1), a prefix (head) or a "
                                       "pattern (*.attn.qkv); the gate's sensitivity advice prints the list to use."),
        click.option("--sensitivity-budget", type=bounds.floats(0, 86_400, min_open=True), default=SENSITIVITY_BUDGET_S, show_default=True,
                     help="int8/fp8: seconds the sensitivity pass may take when the gate fails (its advice says when it ran out)."),
        click.option("--static-compare/--no-static-compare", default=True, show_default=True,
                     help="A dynamic-batch artifact: also build a static one at the contract's batch and compare their latency there."),
    ]


@dataclass
class Job:
    """A validated request: nothing has been written yet."""

    source: SourceModel
    spec: ExportSpec
    samples: Samples
    out: Path
    budget_ms: float | None
    notes: list[str]
    opts: dict[str, Any]
    contracts: dict[str, Any]  # format -> the latency contract planned for it (deployvit.contract)


def data_samples(data: str, img_size: int, in_chans: int = 3, limit: int = 256) -> Samples:
    """`limit` images evenly spaced through the `val` split of `data` (digits, CIFAR folder or
    ImageFolder root; an ImageFolder split is ordered by class, so its first images would be a few
    classes only), preprocessed exactly as `deployvit evaluate` does. It lives here, at the command
    layer, because it joins the training data readers with the exporters' `Samples`."""
    import numpy as np

    from deployvit.train.augment import get_aug
    from deployvit.train.data import SplitDataset, open_data
    from deployvit.train.setup import transforms_for

    source = open_data(data)
    split = source.val
    if len(split) == 0:
        raise DeployvitError(f"{data}: the val split is empty")
    if in_chans != 3:
        raise DeployvitError(f"--data gives RGB images, but the model takes {in_chans} channels")
    transform = transforms_for(source, get_aug("none"), img_size).eval
    picked = np.unique(np.linspace(0, len(split) - 1, num=min(limit, len(split))).round().astype(int))
    dataset = SplitDataset(split, transform, indices=picked.tolist())
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    where = source.kind if str(data) == source.kind else f"{source.kind} {data}"
    return Samples(torch.stack(images), torch.tensor(labels), f"{where}: {len(dataset)} val images, evenly spaced")


def _samples(data: str | None, source: SourceModel, n: int) -> Samples:
    """The val split of `data`; without data, natural photographs (`exporters.images`: a parity check
    on noise can pass a graph that is wrong on real inputs), or seeded noise for a model whose input
    is not one or three channels (said in the report, as every source is)."""
    if data is None:
        if source.in_chans in (1, 3):
            return natural_samples(n, source.img_size, source.in_chans)
        return synthetic_samples(n, source.img_size, source.in_chans)
    return data_samples(data, source.img_size, source.in_chans, limit=n)


def prepare(opts: dict[str, Any], formats: list[str]) -> Job:
    """Validate every input, cheapest first; raise before anything is written."""
    precision = opts["precision"]
    opset = check_opset(precision, opts["opset"])
    budget_ms = parse_amount(opts["budget"], "latency", "--budget") / 1e3 if opts["budget"] is not None else None
    thresholds = _thresholds(opts, precision)
    _check_quantized(opts, formats)
    if opts["workspace"] <= 0:
        raise DeployvitError(f"--workspace must be > 0 GB, got {opts['workspace']}")
    if len(formats) == 1 and opts["device"] != "auto":
        for_format(formats[0]).check(opts["device"], precision)  # what to install is true on any machine: said before "no GPU here"
    device = compute_device(opts["device"]).type
    if opts["timing_cache"] is not None:  # read, then rewritten: a FIFO, a folder or an over-long name is refused now
        io.check_out_path(opts["timing_cache"], "--timing-cache")
    if opts["table"] is not None and not Path(opts["table"]).is_file():
        raise DeployvitError(f"latency table not found: {opts['table']}")
    if len(formats) == 1:
        for_format(formats[0]).check(device, precision)  # `export`: a runtime unavailable here is exit 2, up front
    source = _source(opts)
    notes = ["--table ignored: a latency table predicts deployvit archs, not timm models"] if opts["table"] and source.arch is None else []
    timing = {"warmup_s": opts["warmup"], "repeats": opts["repeats"], "threads": 1 if opts["clock"] == "cpu" else None, "clock": opts["clock"]}
    contracts = {fmt: plan_contract(fmt, source.arch, precision=precision, device=device, batch_size=opts["batch_size"],
                                    table_path=opts["table"] if source.arch is not None else None, budget_ms=budget_ms, timing=timing)
                 for fmt in formats}  # a user's table must load and fit the arch: checked before any work
    notes += _skipped_tables(contracts)
    batch = batch_spec(opts["batch_size"], _batch_range(opts["dynamic_batch"], contracts))
    _check_contract_batches(batch, contracts)
    samples = _samples(opts["data"], source, opts["samples"] or (QUANT_SAMPLES if precision in QUANTIZED_PRECISIONS else SAMPLES))
    quant = _quant_spec(opts, source) if precision in QUANTIZED_PRECISIONS else None  # also validates --data (and --keep-fp)
    if len(samples) < batch.max:
        raise DeployvitError(f"verification needs at least {batch.max} images (the largest batch), got {len(samples)}: "
                             "raise --samples or lower the batch")
    if opts["out"] is not None and not opts["out"].strip():
        io.check_out_path(opts["out"], "--out", folder=True)  # '' is no folder: one line (never the current one)
    out = Path(opts["out"]) if opts["out"] is not None else _default_out(opts)
    spec = ExportSpec(
        img_size=source.img_size, in_chans=source.in_chans, precision=precision, batch=batch, opset=opset,
        dynamo=not opts["legacy_exporter"], device=device, workspace_gb=opts["workspace"],
        timing_cache=opts["timing_cache"], thresholds=thresholds, warmup_s=opts["warmup"], repeats=opts["repeats"],
        clock=opts["clock"], tf32=opts["tf32"], quant=quant,
        metadata={"source": source.info, "tf32": opts["tf32"]},
    )
    return Job(source, spec, samples, out, budget_ms, notes, opts, contracts)


def with_run_folders(opts: dict[str, Any]) -> dict[str, Any]:
    """--arch / --checkpoint given as run folders (`deployvit.runs`): a search run is its
    best.arch.json; a retrain run given as --arch is its trained weights, which carry the arch."""
    from deployvit.runs import arch_file, is_retrain_run, model_file

    opts = dict(opts)
    if opts.get("arch_path") and is_retrain_run(opts["arch_path"]) and not opts.get("checkpoint"):
        opts["arch_path"], opts["checkpoint"] = None, str(model_file(opts["arch_path"], "--arch"))
    if opts.get("arch_path"):
        opts["arch_path"] = str(arch_file(opts["arch_path"]))
    if opts.get("checkpoint"):
        opts["checkpoint"] = str(model_file(opts["checkpoint"]))
    return opts


def _skipped_tables(contracts: dict[str, Any]) -> list[str]:
    """The table files the resolver skipped (each format's contract carries them): said once on
    stderr for all formats, and kept once in the report's notes instead of in every row."""
    skipped: list[str] = []
    for contract in contracts.values():
        found = [n for n in contract.notes if n.startswith("skipped ")]
        contract.notes[:] = [n for n in contract.notes if not n.startswith("skipped ")]
        if contract.no_prediction:
            first, *rest = contract.no_prediction.split("; ")
            found += [p for p in rest if p.startswith("skipped ")]
            contract.no_prediction = "; ".join([first, *(p for p in rest if not p.startswith("skipped "))])
        skipped += [n for n in found if n not in skipped]
    for line in skipped:
        click.echo(f"deployvit: warning: {line}", err=True)
    return skipped


def _thresholds(opts: dict[str, Any], precision: str) -> Thresholds:
    """Verification's thresholds; for int8/fp8 agreement and top-1 drop belong to the accuracy gate."""
    gated = ("min_agreement", "max_top1_drop") if precision in QUANTIZED_PRECISIONS else ()
    overrides = {k: opts[k] for k in ("max_abs_diff", "min_cosine", "min_agreement", "max_top1_drop") if k not in gated}
    return Thresholds.for_precision(precision, tf32=opts["tf32"], **overrides)


QUANT_OPTIONS = {"min_batch_cosine": "--min-batch-cosine", "calibration": "--calibration", "calibration_method": "--calibration-method",
                 "keep_fp": "--keep-fp"}


def _check_quantized(opts: dict[str, Any], formats: list[str]) -> None:
    """int8/fp8 requests that cannot work, refused before anything is loaded: no calibration data, a
    format that cannot hold the precision, fp8 where there are no FP8 tensor cores; and the int8/fp8
    options given with a float precision."""
    from deployvit.devices import fp8_refusal

    precision = opts["precision"]
    if precision not in QUANTIZED_PRECISIONS:
        given = [flag for key, flag in QUANT_OPTIONS.items() if opts[key] is not None]
        if given:
            raise DeployvitError(f"{given[0]} applies to --precision {' or '.join(QUANTIZED_PRECISIONS)} (this export is {precision})")
        return
    if opts["data"] is None:
        raise DeployvitError(f"--precision {precision} needs calibration images: give --data (digits, a CIFAR folder or an ImageFolder "
                             f"root); its ranges are fitted on the train split, never on noise")
    able = formats_for(precision)
    if len(formats) == 1 and formats[0] not in able:
        raise DeployvitError(f"format {formats[0]} cannot be quantised to {precision} (formats that can: {listing(able)})")
    reason = fp8_refusal(compute_device(opts["device"]).type) if precision == "fp8" else None
    if reason:
        raise DeployvitError(f"--precision fp8: {reason}")


def _quant_spec(opts: dict[str, Any], source: SourceModel) -> QuantSpec:
    """The calibration images (the train split of --data, seeded), the layers kept float (checked
    against the model's layers now, before anything is written) and the accuracy gate."""
    from deployvit.train.calibration import calibration_samples

    keep = None if opts["keep_fp"] is None else tuple(p.strip() for p in opts["keep_fp"].split(",") if p.strip())
    if keep:
        check_keep_fp(source.model, keep)
    gate = GateThresholds(
        max_accuracy_drop=DEFAULT_MAX_ACCURACY_DROP if opts["max_top1_drop"] is None else opts["max_top1_drop"],
        min_agreement=DEFAULT_MIN_AGREEMENT if opts["min_agreement"] is None else opts["min_agreement"],
        min_batch_cosine=DEFAULT_MIN_BATCH_COSINE if opts["min_batch_cosine"] is None else opts["min_batch_cosine"])
    calibration = calibration_samples(opts["data"], source.img_size, source.in_chans, n=opts["calibration"] or DEFAULT_CALIBRATION)
    return QuantSpec(calibration, keep, opts["calibration_method"] or DEFAULT_METHOD, gate, opts["sensitivity_budget"])


def _source(opts: dict[str, Any]) -> SourceModel:
    if opts["arch_path"] and opts["timm_model"]:
        raise DeployvitError("give either --arch or --timm-model, not both")
    if opts["img_size"] and not opts["timm_model"]:
        raise DeployvitError("--img-size applies to --timm-model only (an arch fixes its own input size)")
    if opts["timm_model"]:
        return load_timm_model(opts["timm_model"], opts["checkpoint"], img_size=opts["img_size"])
    if opts["checkpoint"]:
        from deployvit.train.checkpoint import supernet_in

        loaded = supernet_in(opts["checkpoint"])
        if loaded is not None:
            return _supernet_source(opts["arch_path"], opts["checkpoint"], loaded[0])
    if opts["arch_path"] or opts["checkpoint"]:
        return load_arch_model(opts["arch_path"], opts["checkpoint"])
    raise DeployvitError("give --arch ARCH.json (with --checkpoint) or --timm-model NAME")


def _supernet_source(arch_path: str | None, checkpoint: str, supernet) -> SourceModel:
    """--arch extracted from a supernet checkpoint (`train-supernet`'s last.pt, `import`'s supernet.pt)."""
    from deployvit.arch import load_arch
    from deployvit.counting import count_flops, count_params

    if arch_path is None:
        raise DeployvitError(f"{checkpoint} is a supernet checkpoint: give --arch ARCH.json (e.g. parent.arch.json of an import)")
    arch = load_arch(arch_path)
    supernet.space.validate(arch)
    info = {"arch": arch.to_dict(), "params": count_params(arch), "flops": count_flops(arch),
            "checkpoint": f"{checkpoint} (supernet: {arch_path} extracted with its inherited weights)"}
    return SourceModel(Path(arch_path).name.split(".")[0], supernet.extract(arch).eval(), arch.img_size, arch.in_chans, arch, info)


def _default_out(opts: dict[str, Any]) -> Path:
    if opts["arch_path"]:
        return Path(opts["arch_path"]).parent
    if opts["checkpoint"]:
        return Path(opts["checkpoint"]).parent
    return Path("runs") / f"export-{opts['timm_model']}"


def _settings(job: Job, formats: list[str]) -> dict[str, Any]:
    s = job.spec
    return {"formats": formats, "precision": s.precision, "tf32": job.opts["tf32"], "batch": str(s.batch), "opset": s.opset,
            "exporter": "dynamo" if s.dynamo else "legacy", "device": s.device, "samples": len(job.samples),
            "budget_ms": job.budget_ms, "table": job.opts["table"], "warmup_s": s.warmup_s, "repeats": s.repeats,
            "clock": s.clock if s.device == "cpu" else "cuda events", "cpu_timing_threads": s.threads or torch.get_num_threads()}


def finish(command: str, job: Job, rows: list[Row], formats: list[str], models: dict[str, Any]) -> Report:
    """Write the report, print the table, and turn failures into exit 1 (3: WITHIN NOISE)."""
    report = write_report(command, job, rows, formats, models)
    failure = failure_of(job, rows)
    if failure:
        raise failure_error(failure)
    return report


def write_report(command: str, job: Job, rows: list[Row], formats: list[str], models: dict[str, Any]) -> Report:
    """report.json and report.md into the job's folder; the table printed."""
    report = Report(command, models, job.samples.source, rows, _settings(job, formats), job.notes, software())
    json_path, md_path = report.write(job.out)
    click.echo(format_table(rows))
    for r in rows:
        for line in quantization_lines(r.quantization)[2:] + ([f"- {r.dynamic_vs_static['summary']}"] if r.dynamic_vs_static else []):
            click.echo(f"{r.model} {r.format} {r.precision}: {line[2:]}")
    click.echo(f"\nreport: {json_path} and {md_path.name}")
    return report


def failure_of(job: Job, rows: list[Row]) -> str | None:
    """Why the command fails its checks (exit 1): an artifact that failed verification, or a
    --budget no artifact met; None when it passed."""
    gating = [r for r in rows if r.counts_for_exit and r.status != SKIPPED]
    bad = [r for r in gating if not r.passed]
    if bad:
        r = bad[0]
        why = "; ".join(r.verification.failed) if r.verification and r.verification.failed else "; ".join(r.notes[:1])
        if r.quantization and r.quantization.get("advice"):
            why += f"; {r.quantization['advice']}"
        return f"{r.model} {r.format} {r.precision}: {r.status}: {why}"
    if job.budget_ms is not None and gating and not any(r.contract == "MET" for r in gating):
        timed = [r.latency for r in gating if r.latency is not None and r.latency.measured_ms is not None]
        best = min(timed, key=lambda c: c.measured_ms, default=None)
        if best is None:
            return f"latency budget {job.budget_ms:g} ms NOT MET: no contract latency measured"
        ci = "" if best.measured_ci_ms is None else f", 95% interval {best.measured_ci_ms[0]:.3f}-{best.measured_ci_ms[1]:.3f} ms"
        return f"latency budget {job.budget_ms:g} ms {best.status}: measured {best.measured_ms:.3f} ms ({best.setting}{ci})"
    return None


def failure_error(failure: str) -> CheckFailed:
    """The exception of a failed check: WithinNoise (exit 3) when the verdict is WITHIN NOISE, else exit 1."""
    return (WithinNoise if f"ms {WITHIN_NOISE}:" in failure else CheckFailed)(failure)


@dataclass
class ExportOutcome:
    """What an export wrote and found (`run_export`; the Python API's `deployvit.export`)."""

    report: Report
    out: Path  # the output folder: report.json, report.md and the artifact
    artifact: Path | None  # model.onnx / model.engine
    failure: str | None  # why it fails its checks (the CLI's exit 1), None when it passed

    @property
    def passed(self) -> bool:
        return self.failure is None


def run_export(opts: dict[str, Any], fmt: str) -> ExportOutcome:
    """`deployvit export` as a function: every input checked before anything is written; a failure
    before the report leaves no output folder this call created (`io.output_dir`)."""
    job = prepare(with_run_folders(opts), [fmt])
    with io.output_dir(job.out, keep=lambda d: (d / "report.json").is_file()):
        io.check_writable(job.out, "to output folder")
        row = _row(job, job.source, job.samples, fmt, "model", None)
        report = write_report("export", job, [row], [fmt], {job.source.name: job.source.info})
    return ExportOutcome(report, job.out, Path(row.path) if row.path else None, failure_of(job, [row]))


@click.command()
@_common_options
@click.option("--format", "fmt", type=click.Choice(format_names(files_only=True)), default=format_names(files_only=True)[0],
              show_default=True, help="Export format (each runs in the latency-table runtime of that format).")
def export(fmt: str, **opts: Any) -> None:
    """Export a model to a file (an ONNX graph, a TensorRT engine, ...), verify it against PyTorch
    fp32, time it, and check the latency contract. Writes model.<format>, report.json and report.md
    into --out."""
    conflicts.check("export")
    outcome = run_export(opts, fmt)
    if outcome.failure:
        raise failure_error(outcome.failure)
    source = ("--arch " + opts["arch_path"]) if opts["arch_path"] else ("--timm-model " + opts["timm_model"] if opts["timm_model"] else "")
    if opts["checkpoint"]:
        source += f" --checkpoint {opts['checkpoint']}"
    click.echo(f"next: `deployvit benchmark {source.strip()}` (every format side by side), or ship {outcome.artifact}")


@click.command()
@_common_options
@click.option("--formats", default=",".join(format_names()), show_default=True, help="Comma-separated formats to benchmark.")
@click.option("--baselines", default="", help="Comma-separated timm models to compare, e.g. deit_tiny_patch16_224.")
def benchmark(formats: str, baselines: str, **opts: Any) -> None:
    """Export, verify and time every available format of a model (and timm baselines at the same
    input size) into one table. Unavailable formats are listed as skipped with the reason. Exit 1
    when a format of the model fails, or when --budget is met by none of them."""
    conflicts.check("benchmark")
    fmts = parse_formats(formats)
    baseline_names = parse_baselines(baselines)  # before anything is loaded or created
    job = prepare(with_run_folders(opts), fmts)
    job.spec = replace(job.spec, trt_onnx_suffix=".trt.onnx")
    if not opts["out"]:
        job.out = job.out / "benchmark"
    with io.output_dir(job.out, keep=lambda d: (d / "report.json").is_file()):
        io.check_writable(job.out, "to output folder")
        _benchmark(job, opts, fmts, baseline_names)


def _benchmark(job: Job, opts: dict[str, Any], fmts: list[str], baselines: list[str]) -> None:
    base_jobs = []  # every baseline is loaded before anything is exported: a typo is exit 2, up front
    for name in baselines:
        base = load_timm_model(name, img_size=job.source.img_size,
                               num_classes=job.source.arch.num_classes if job.source.arch else None)
        spec = replace(job.spec, img_size=base.img_size, in_chans=base.in_chans, metadata={"source": base.info})
        contracts = {fmt: _baseline_contract(job, fmt) for fmt in fmts}
        base_jobs.append((name, Job(base, spec, _samples(opts["data"], base, len(job.samples)), job.out, job.budget_ms, [], opts, contracts)))
    models = {job.source.name: job.source.info, **{name: b.source.info for name, b in base_jobs}}
    rows = _benchmark_model(job, job.source, job.samples, fmts, "model", gating=True)
    for name, base_job in base_jobs:
        rows += _benchmark_model(base_job, base_job.source, base_job.samples, fmts, name, gating=False)
    finish("benchmark", job, rows, fmts, models)


def _row(job: Job, source: SourceModel, samples: Samples, fmt: str, stem: str, reference: Runner | None) -> Row:
    """One format of one model: exported, verified, timed, and its latency contract measured like
    its table (`deployvit.contract`)."""
    runtime = for_format(fmt)
    row = run_format(runtime, source.model, source.name, job.spec, samples, job.out, stem=stem,
                     reference=reference, budget_ms=job.budget_ms)
    contract = copy.deepcopy(job.contracts[fmt])
    if row.status in (VERIFIED, VERIFY_FAILED, REFERENCE):
        run = contract_runner(contract, fmt, source.model, row.path, source.in_chans, source.img_size)
        measure_contract(contract, run)
        if contract.measured_ms is not None:  # one latency per artifact: the contract's, timed like its table
            row.latency_ms, row.latency_cv = contract.measured_ms, contract.measured_cv
        if contract.predicted_ms is not None and job.spec.batch.min != job.spec.batch.max:
            contract.notes.append(f"the artifact has a dynamic batch axis ({job.spec.batch.min}..{job.spec.batch.max}); the table timed "
                                  f"static graphs, which a runtime may run faster: --batch-size {contract.batch_size} exports the graph it predicts")
        if job.opts["static_compare"]:
            row.dynamic_vs_static = dynamic_vs_static(job.spec, runtime, source, samples, contract, row.path)
    row.latency = contract
    row.notes.extend(contract.notes)
    if row.dynamic_vs_static and row.dynamic_vs_static["slower"]:
        row.notes.append("WARNING: " + row.dynamic_vs_static["summary"])
    return row


#: below this the difference of two medians is never called a slowdown (drift between two timings that
#: their own repeats do not show: clocks, caches, a neighbour's load)
NOISE_FLOOR = 0.03


def timing_noise(a, b) -> float:
    """The relative difference between two contract timings that their noise explains: twice the
    standard error of the difference of the two medians (each about 1.25 x cv / sqrt(repeats), the
    median's standard error for a near-normal spread), at least NOISE_FLOOR."""
    se = [1.2533 * (c.measured_cv or 0.0) / math.sqrt(max(int(c.settings.get("repeats") or 1), 1)) for c in (a, b)]
    return max(NOISE_FLOOR, 2 * math.sqrt(se[0] ** 2 + se[1] ** 2))


def dynamic_vs_static(spec: ExportSpec, runtime, source: SourceModel, samples: Samples, contract, path: str | None) -> dict[str, Any] | None:
    """A dynamic-batch artifact at the contract's batch vs a static build of the same model at that
    batch, timed the same way (the contract's settings): TensorRT issue 976's 7 ms static vs 20 ms
    dynamic at batch 1 is what this catches. None when there is nothing to compare (a static artifact,
    a module runtime, the contract's batch outside the range); the static build goes to a temporary
    folder and is not kept."""
    b = contract.batch_size
    if path is None or not runtime.record.file_based or not spec.batch.dynamic or not spec.batch.min <= b <= spec.batch.max:
        return None
    static = copy.deepcopy(contract)
    static.measured_ms, static.measured_cv, static.notes = None, None, []
    with tempfile.TemporaryDirectory(prefix="deployvit-static-") as tmp:
        try:
            built = runtime.artifact(source.model, replace(spec, batch=BatchSpec(b, b, b), trt_onnx_suffix=".onnx"), samples, Path(tmp), "static")
            measure_contract(static, contract_runner(static, runtime.record.format, source.model, str(built.path), source.in_chans, source.img_size))
        except (DeployvitError, CheckFailed) as exc:
            return {"batch": b, "slower": False, "summary": f"no static build at batch {b} to compare with: {str(exc).splitlines()[0]}"}
    return latency_verdict(contract, static, b, str(spec.batch))


def latency_verdict(dynamic, static, batch: int, batch_range: str) -> dict[str, Any]:
    """Dynamic vs static timings of one model at `batch` (two measured contracts): slower when the
    dynamic build's median exceeds the static one's by more than their timing noise."""
    ratio, noise = dynamic.measured_ms / static.measured_ms - 1, timing_noise(dynamic, static)
    slower = ratio > noise
    verdict = (f"slower than the static build by more than the timing noise ({noise:.1%}): for batch {batch}, export with --batch-size {batch}"
               if slower else f"within the timing noise ({noise:.1%}) or faster")
    return {"batch": batch, "range": batch_range, "dynamic_ms": dynamic.measured_ms, "static_ms": static.measured_ms,
            "dynamic_cv": dynamic.measured_cv, "static_cv": static.measured_cv, "relative": ratio, "noise": noise, "slower": slower,
            "summary": f"dynamic batch {batch_range} at batch {batch}: {dynamic.measured_ms:.3f} ms vs static {static.measured_ms:.3f} ms "
                       f"({ratio:+.1%}), {verdict}"}


def _baseline_contract(job: Job, fmt: str):
    """A timm baseline has no table (tables predict deployvit archs) but is timed like the model."""
    model = job.contracts[fmt]
    return plan_contract(fmt, None, precision=job.spec.precision, device=job.spec.device, batch_size=model.batch_size,
                         table_path=None, budget_ms=job.budget_ms, timing=model.settings)


def _benchmark_model(job: Job, source: SourceModel, samples: Samples, fmts: list[str], stem: str, gating: bool) -> list[Row]:
    rows = []
    reference = reference_runner(source.model, job.spec.device)
    for fmt in fmts:
        try:
            row = _row(job, source, samples, fmt, stem, reference)
        except MissingDependency as exc:
            row = Row(source.name, fmt, job.spec.precision, SKIPPED, budget_ms=job.budget_ms, notes=[str(exc)])
        row.counts_for_exit = gating
        rows.append(row)
    return rows
