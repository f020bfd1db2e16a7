"""What a latency table's onnxruntime entries cost to make: the ONNX export of one part, torch's dynamo
exporter vs the legacy TorchScript exporter (`exporters.onnx.export_for_timing`), in process CPU
seconds; and a whole `profile --runtime onnxruntime` of a space with each, in process CPU seconds.

    python benchmarks/part_export.py                          # test space: parts, then a whole profile
    python benchmarks/part_export.py --space autoformer-tiny --no-profile

CPU time (not wall time) is measured, so the numbers mean the work done even on a shared machine;
the first export of a process pays for imports and tracing caches, so warm exports are reported
apart. Writes benchmarks/results/part_export-<space>.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

from _record import RESULTS, save_result
from deployvit.models import build_part
from deployvit.parts import BlockPart, space_parts
from deployvit.settings import MeasureSettings
from deployvit.spaces import get_space
from exporters import onnx as onnx_export


def part_seconds(space_name: str, repeats: int) -> dict:
    """CPU seconds per block export, first and warm, for each exporter."""
    parts = [p for p in space_parts(get_space(space_name)) if isinstance(p, BlockPart)]
    out = {}
    with tempfile.TemporaryDirectory() as work, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for exporter, dynamo in (("legacy", False), ("dynamo", True)):
            times = []
            for i in range(repeats + 1):
                part = parts[i % len(parts)]
                module = build_part(part).eval()
                t0 = time.process_time()
                onnx_export.export_onnx(module, Path(work) / "p.onnx", input_shape=part.input_shape(1), dynamo=dynamo)
                times.append(time.process_time() - t0)
            out[exporter] = {"first_s": round(times[0], 3), "warm_median_s": round(sorted(times[1:])[len(times[1:]) // 2], 3),
                             "warm_n": repeats}
    out["speedup_warm"] = round(out["dynamo"]["warm_median_s"] / max(out["legacy"]["warm_median_s"], 1e-9), 1)
    return out


def profile_seconds(space_name: str, fast: bool, calib: int, val: int) -> float:
    """Process CPU seconds of one onnxruntime profile (1 thread, CPU clock, 1 repeat per timing: the
    timing itself is a small share) with the cheap timing export, or with dynamo for every part."""
    from deployvit.latency.profile import profile

    original = onnx_export.export_for_timing
    if not fast:
        onnx_export.export_for_timing = lambda module, path, shape, precision="fp32": onnx_export.export_onnx(
            module, path, input_shape=shape, precision=precision)
    import deployvit.runtimes.onnxruntime as ort_runtime

    ort_runtime.export_for_timing = onnx_export.export_for_timing
    try:
        with tempfile.TemporaryDirectory() as work:
            settings = MeasureSettings("onnxruntime", "fp32", 1, warmup_s=0.0, repeats=1, threads=1, clock="cpu")
            t0 = time.process_time()
            profile(get_space(space_name), label="cpu", settings=settings, out=Path(work) / "t.json", calib_archs=calib,
                    val_archs=val, force=True, echo=lambda s: None)
            return round(time.process_time() - t0, 1)
    finally:
        onnx_export.export_for_timing = original
        ort_runtime.export_for_timing = original


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--space", default="test")
    p.add_argument("--repeats", type=int, default=5, help="warm exports per exporter")
    p.add_argument("--no-profile", action="store_true", help="skip the whole-profile comparison")
    p.add_argument("--calib-archs", type=int, default=10)
    p.add_argument("--val-archs", type=int, default=50)
    args = p.parse_args()
    torch.set_num_threads(1)
    result = {"space": args.space, "torch": torch.__version__, "clock": "process CPU time (time.process_time), 1 thread",
              "part_export": part_seconds(args.space, args.repeats)}
    print(f"one block export, CPU s: {result['part_export']}")
    if not args.no_profile:
        n = len(space_parts(get_space(args.space))) + args.calib_archs + args.val_archs
        result["profile"] = {"exports": n, "calib_archs": args.calib_archs, "val_archs": args.val_archs,
                             "dynamo_every_part_s": profile_seconds(args.space, False, args.calib_archs, args.val_archs),
                             "export_for_timing_s": profile_seconds(args.space, True, args.calib_archs, args.val_archs)}
        print(f"profile --runtime onnxruntime of {args.space}, CPU s: {result['profile']}")
    save_result(RESULTS / f"part_export-{args.space}.json", "part_export", result)


if __name__ == "__main__":
    main()
