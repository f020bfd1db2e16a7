"""What does INT8 post-training quantisation cost in accuracy, and buy in latency and size, on this CPU?

    python benchmarks/int8.py                         # three digits-retrained test-space archs + an AutoFormer-tiny-sized one
    python benchmarks/int8.py --epochs 2 --archs test-max --repeats 10 --out /tmp/int8.json   # a quick run

For each arch: the fp32 ONNX export and its INT8 graph (`exporters.quantize.quantize_onnx`, onnxruntime's
QDQ quantiser, every MatMul/Conv quantised but the classifier head), for each calibration method:
- accuracy: top-1 of fp32 and INT8 on the digits val split (359 images), the drop, top-1 agreement
  with fp32, the worst sample's and the lowest batch-mean logit cosine (`exporters.quant_gate.check_accuracy`,
  the gate, with its default thresholds);
- latency: onnxruntime on the CPU with ONE thread, timed by the codebase's one timing loop on the
  process's CPU time (`clock="cpu"`: this machine is shared with other jobs, and CPU time is what the
  run itself costs; it equals wall latency only on an idle machine), median per call at each batch;
- size: the ONNX file in bytes; and the CPU time quantisation itself took (calibration included).

The digits archs are trained here first (`deployvit retrain --init scratch --data digits`, the real
training path, `--epochs`, default 10); calibration uses `--calibration` (default 512) train images
drawn with seed 0, never the val images. `autoformer-tiny` (embed 192, depth 13, 224 px, as
AutoFormer-T) has random weights: its accuracy means nothing, so it is calibrated on natural
photographs (`exporters.images.natural_samples`) and its agreement and cosine are measured on other
crops of them, a numerical-fidelity check only. Results: benchmarks/results/int8-cpu.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _record import RESULTS, save_result
from deployvit.arch import Layer, Stage
from deployvit.counting import count_flops, count_params
from deployvit.devices import machine_facts
from deployvit.models import build_model
from deployvit.spaces import get_space
from deployvit.commands.export import data_samples
from deployvit.train.calibration import calibration_samples
from exporters.images import natural_samples
from exporters.onnx import export_onnx, file_size
from exporters.quant_gate import check_accuracy
from exporters.quantize import METHODS, quantize_onnx
from exporters.sources import load_arch_model

from deployvit.runtimes.onnxruntime import OnnxRunner
from deployvit.timing import time_callable


def _uniform(space: str, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float):
    s = get_space(space)
    arch = s.make_arch([Stage(embed_dim, s.stages[0].head_dim, tuple(Layer(num_heads, mlp_ratio) for _ in range(depth)))])
    s.validate(arch)
    return arch


ARCHS = {  # name -> (arch, trained on digits?)
    "test-max": (lambda: get_space("test").max_arch(), True),  # embed 64, depth 4, 2 heads, mlp 4
    "test-mid": (lambda: _uniform("test", 48, 3, 1, 3.0), True),
    "test-resnas": (lambda: get_space("test-resnas").max_arch(), True),  # three stages, convolutional reductions
    "autoformer-tiny": (lambda: _uniform("autoformer-tiny", 192, 13, 3, 3.5), False),  # latency only: random weights
}


def trained_model(name: str, work: Path, epochs: int):
    """Train `name` from scratch on digits through `deployvit retrain` and load the checkpoint."""
    arch = ARCHS[name][0]()
    arch.save(work / f"{name}.arch.json")
    out = work / name
    cmd = [sys.executable, "-m", "deployvit", "retrain", "--arch", str(work / f"{name}.arch.json"), "--init", "scratch",
           "--data", "digits", "--epochs", str(epochs), "--log-every", "0", "--out", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return load_arch_model(None, str(out / "checkpoint.safetensors")).model


def latency_ms(path: Path, shape: tuple[int, ...], repeats: int, warmup: float) -> float:
    runner = OnnxRunner(path, "cpu", threads=1)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    return time_callable(runner.bind(x), device="cpu", warmup_s=warmup, repeats=repeats, clock="cpu", label=path.name).median_us / 1e3


def measure_arch(name: str, args: argparse.Namespace, work: Path) -> dict:
    arch, trained = ARCHS[name][0](), ARCHS[name][1]
    torch.manual_seed(0)
    model = trained_model(name, work, args.epochs) if trained else build_model(arch).eval()
    fp32 = export_onnx(model, work / f"{name}-fp32.onnx", img_size=arch.img_size)
    if trained:
        calib, val = calibration_samples("digits", arch.img_size, n=args.calibration), data_samples("digits", arch.img_size, limit=359)
    else:
        calib, val = natural_samples(64, arch.img_size), natural_samples(96, arch.img_size, seed=1)
    shapes = [(b, arch.in_chans, arch.img_size, arch.img_size) for b in args.batches]
    row = {"arch": arch.to_dict(), "trained": f"digits, {args.epochs} epochs from scratch" if trained else "no: random weights",
           "params": count_params(arch), "macs": count_flops(arch), "calibration": calib.source, "verification": val.source,
           "fp32": {"size_bytes": file_size(fp32), "latency_ms": {b: latency_ms(fp32, s, args.repeats, args.warmup) for b, s in zip(args.batches, shapes)}},
           "int8": {}}
    reference = OnnxRunner(fp32, "cpu", threads=1)
    for method in args.methods:
        start = time.process_time()
        result = quantize_onnx(fp32, work / f"{name}-int8-{method}.onnx", calib, method=method)
        quantize_cpu_s = time.process_time() - start
        gate = check_accuracy(reference, OnnxRunner(result.path, "cpu", threads=1), val)
        m = gate.overall
        row["int8"][method] = {
            "top1_fp32": m.top1_reference, "top1_int8": m.top1, "top1_drop": m.top1_drop, "agreement": m.agreement,
            "worst_cosine": m.cosine, "lowest_batch_cosine": min(gate.batch_cosines), "gate_passed": gate.passed, "gate_failed": gate.failed,
            "size_bytes": result.size_bytes,
            "quantize_cpu_s": quantize_cpu_s, "quantized_layers": len(result.quantized), "kept": result.kept,
            "latency_ms": {b: latency_ms(result.path, s, args.repeats, args.warmup) for b, s in zip(args.batches, shapes)}}
        _print(name, method, row, row["int8"][method])
    return row


def _print(name: str, method: str, row: dict, q: dict) -> None:
    acc = "n/a (random weights)" if q["top1_fp32"] is None else f"{q['top1_fp32']:.2f} -> {q['top1_int8']:.2f} (drop {q['top1_drop']:+.2f})"
    lat = ", ".join(f"b{b} {row['fp32']['latency_ms'][b]:.3f} -> {ms:.3f} ms" for b, ms in q["latency_ms"].items())
    print(f"{name:16s} {method:10s} top-1 {acc}  agree {q['agreement']:.2%}  batch cos >= {q['lowest_batch_cosine']:.5f}  {lat}  "
          f"size {row['fp32']['size_bytes'] / 1e6:.2f} -> {q['size_bytes'] / 1e6:.2f} MB  quantise {q['quantize_cpu_s']:.1f} s CPU", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--calibration", type=int, default=512)
    p.add_argument("--batches", default="1,32")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--out", type=Path, default=RESULTS / "int8-cpu.json")
    args = p.parse_args()
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(1)  # process CPU time means latency only for one thread
    rows = {}
    with tempfile.TemporaryDirectory(prefix="int8-bench-") as tmp:
        for name in [a.strip() for a in args.archs.split(",") if a.strip()]:
            rows[name] = measure_arch(name, args, Path(tmp))
    save_result(args.out, "int8", {
        "machine": machine_facts("cpu"), "runtime": "onnxruntime CPU execution provider, 1 thread",
        "clock": "process CPU time (the machine is shared; equals wall latency only when idle)",
        "load_average_1m_at_end": os.getloadavg()[0],
        "settings": {"methods": args.methods, "epochs": args.epochs, "calibration": args.calibration, "batches": args.batches,
                     "repeats": args.repeats, "warmup_s": args.warmup},
        "archs": rows})


if __name__ == "__main__":
    main()
