"""How fast does an AutoFormer-tiny / -small sized ViT run in each deployment runtime?

    python benchmarks/export_speed.py                       # GPU when available, else CPU
    python benchmarks/export_speed.py --batches 1,256 --precision fp16 --runtimes eager,compile,cudagraph,onnxruntime

For each arch, runtime and batch size: median latency (the codebase's one timing loop,
`deployvit.timing.time_callable`, CUDA events on GPU), images/s, and achieved TFLOP/s
(2 x MACs x batch / time) as a fraction of the measured matmul peak (a large bf16 matmul on GPU, as
the issue asks: fp16 and bf16 tensor-core peaks are the same on the GPUs we target; on a CPU the
matmul peak of the precision being measured, because CPU bf16 speed says nothing about fp32 work).
fp16 is the default on a GPU; on a CPU, where fp16 matmul is emulated and slow (the measured fp16 and
bf16 matmul rates are recorded to show it), the default is fp32.
Runners come from `deployvit.runtimes.build_runner`, the ones latency tables are built with.

What cannot be measured is written down with the reason, never silently dropped: cudagraph needs
CUDA; onnxruntime on a GPU needs onnxruntime-gpu; on a CPU a configuration whose single call would
take longer than --max-call-s (estimated from its batch-1 time) is skipped. On a CPU shared with other
jobs, `--clock cpu` times single-threaded process CPU time instead of wall time. Results go to
benchmarks/results/export_speed-<device>.json.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import torch

from _record import RESULTS, save_result
from deployvit.arch import Arch, Layer, Stage
from deployvit.counting import count_flops
from deployvit.errors import DeployvitError
from deployvit.devices import machine_facts
from deployvit.compute import TORCH_DTYPES
from deployvit.runtimes import build_runner, check_runtime
from deployvit.timing import time_callable
from deployvit.models import build_model
from deployvit.spaces import get_space



def sized_arch(space_name: str, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float) -> Arch:
    """A uniform arch of the published size (AutoFormer-T: embed 192, depth 13; -S: 384, 13), checked
    to be a member of its space."""
    space = get_space(space_name)
    arch = space.make_arch([Stage(embed_dim, 64, tuple(Layer(num_heads, mlp_ratio) for _ in range(depth)))])
    space.validate(arch)
    return arch


ARCHS = {
    "autoformer-tiny": lambda: sized_arch("autoformer-tiny", 192, 13, 3, 3.5),
    "autoformer-small": lambda: sized_arch("autoformer-small", 384, 13, 6, 3.5),
    "test": lambda: get_space("test").max_arch(),  # 32x32 images: the GPU pass's CPU dry run
}


def matmul_peak_tflops(device: str, dtype: torch.dtype, repeats: int, clock: str = "wall", n: int | None = None,
                       warmup_s: float = 1.0) -> float:
    """Measured dense matmul throughput: 8192^3 on GPU, 1024^3 on CPU (enough to saturate either)."""
    n = n or (8192 if device == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_callable(lambda: a @ b, device=device, warmup_s=warmup_s, repeats=repeats, clock=clock, label=f"matmul {n}")
    return 2 * n**3 / (t.median_us * 1e-6) / 1e12


def ort_matmul_tflops(n: int, threads: int | None, clock: str, repeats: int, warmup_s: float = 1.0) -> float:
    """fp32 MatMul throughput of onnxruntime's own kernels (MLAS) on the CPU: on some CPUs it is
    twice torch's CPU sgemm, so a CPU "peak" must be the faster of the two."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "ABC"]
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "matmul", spec[:2], spec[2:])
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {k: np.random.default_rng(0).standard_normal((n, n), dtype=np.float32) for k in "AB"}
    t = time_callable(lambda: session.run(None, feeds), device="cpu", warmup_s=warmup_s, repeats=repeats, clock=clock,
                      label=f"onnxruntime matmul {n}")
    return 2 * n**3 / (t.median_us * 1e-6) / 1e12


def unavailable(runtime: str, device: str, precision: str = "fp32") -> str | None:
    """Why `runtime` cannot run on this machine (None when it can): the runtime's own one-line refusal
    (e.g. no CUDA provider: the install line, never a CPU fallback)."""
    try:
        check_runtime(runtime, device, precision)
    except DeployvitError as exc:
        return str(exc)
    return None


def run(args: argparse.Namespace) -> dict:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("export_speed: --device cuda: torch sees no CUDA GPU on this machine")
    device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    clock = "wall" if device == "cuda" else args.clock
    threads = 1 if clock == "cpu" else None  # process CPU time measures work only when single-threaded
    if threads:
        torch.set_num_threads(threads)
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    batches = sorted(int(b) for b in args.batches.split(","))
    notes = []
    precision = args.precision or ("fp16" if device == "cuda" else "fp32")
    peak_warmup = max(args.warmup, 0.1)  # the peak matmuls warm up like the models (1 s by default)
    if device == "cpu":
        notes.append("no CUDA GPU on this machine: the fp16 GPU numbers (eager, compile, cudagraph and the onnxruntime "
                     "CUDA provider at batch 1 and 256) were not measured; run this script on a GPU machine, with "
                     "onnxruntime-gpu installed for the onnxruntime CUDA rows")
        low = {k: matmul_peak_tflops("cpu", TORCH_DTYPES[k], 5, clock, n=256, warmup_s=peak_warmup) for k in ("fp16", "bf16")}
        notes.append("no GPU here: measured on the CPU. Dense matmul on this CPU: "
                     + ", ".join(f"{k} {v:.4f} TFLOP/s" for k, v in low.items())
                     + (f"; fp16/bf16 are GPU deployment precisions, so the default here is {precision}" if not args.precision else ""))
    peak_dtype = torch.bfloat16 if device == "cuda" else TORCH_DTYPES[precision]
    peaks = {"torch": matmul_peak_tflops(device, peak_dtype, args.repeats, clock, n=args.peak_n, warmup_s=peak_warmup)}
    if device == "cpu" and precision == "fp32" and unavailable("onnxruntime", "cpu") is None:
        peaks["onnxruntime"] = ort_matmul_tflops(args.peak_n or 1024, threads, clock, args.repeats, peak_warmup)
    peak = max(peaks.values())
    peak_kind = (f"{'bf16' if device == 'cuda' else precision} matmul on {device}, best of "
                 + ", ".join(f"{k} {v:.3f}" for k, v in peaks.items()) + " TFLOP/s")
    print(f"device {device}: measured {peak_kind} peak {peak:.3f} TFLOP/s", flush=True)
    for note in notes:
        print(note, flush=True)
    rows, skipped = [], []
    for name in [a.strip() for a in args.archs.split(",") if a.strip()]:
        arch = ARCHS[name]()
        macs = count_flops(arch)
        for runtime in runtimes:
            reason = unavailable(runtime, device)
            if reason:
                skipped.append({"arch": name, "runtime": runtime, "batch": batches, "reason": reason})
                continue
            per_image_s = None
            for batch in batches:
                if device == "cpu" and per_image_s is not None and per_image_s * batch > args.max_call_s:
                    skipped.append({"arch": name, "runtime": runtime, "batch": [batch], "reason":
                                    f"one call would take about {per_image_s * batch:.0f} s on this CPU "
                                    f"(batch 1 x {batch}), over --max-call-s {args.max_call_s:g}"})
                    continue
                shape = (batch, arch.in_chans, arch.img_size, arch.img_size)
                try:
                    start = time.perf_counter()
                    fn = build_runner(build_model(arch), shape, runtime=runtime, device=device, precision=precision,
                                      threads=threads)
                    build_s = time.perf_counter() - start
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always", RuntimeWarning)
                        t = time_callable(fn, device=device, warmup_s=args.warmup, repeats=args.repeats,
                                          clock=clock, label=f"{name} {runtime} b{batch}")
                except DeployvitError as exc:
                    skipped.append({"arch": name, "runtime": runtime, "batch": [batch], "reason": str(exc)})
                    continue
                seconds = t.median_us * 1e-6
                per_image_s = per_image_s or seconds / batch
                tflops = 2 * macs * batch / seconds / 1e12
                row = {"arch": name, "runtime": runtime, "batch": batch, "precision": precision,
                       "median_ms": t.median_us / 1e3, "p90_ms": t.p90_us / 1e3, "cv": t.cv, "repeats": t.repeats,
                       "images_per_s": batch / seconds, "tflops": tflops, "fraction_of_peak": tflops / peak,
                       "build_s": build_s, "warnings": [str(w.message) for w in caught]}
                if hasattr(fn, "compiled"):  # compile: every timed call entered compiled code
                    row["compiled"] = {"graphs": fn.compiled.graphs, "calls": fn.compiled.calls}
                rows.append(row)
                print(f"{name:17s} {runtime:12s} b{batch:<4d} {row['median_ms']:9.3f} ms  {row['images_per_s']:9.1f} img/s"
                      f"  {tflops:7.3f} TFLOP/s ({tflops / peak:6.1%} of peak)  cv {t.cv:.1%}", flush=True)
    return {
        "machine": machine_facts(device),
        "threads": torch.get_num_threads(),
        "clock": clock,
        "load_average_1m_at_end": os.getloadavg()[0],  # other processes share the machine: read timings with it
        "settings": {"precision": precision, "batches": batches, "runtimes": runtimes, "warmup_s": args.warmup,
                     "repeats": args.repeats, "max_call_s": args.max_call_s},
        "archs": {n: {"arch": ARCHS[n]().to_dict(), "macs": count_flops(ARCHS[n]())} for n in args.archs.split(",")},
        "peak": {"kind": peak_kind, "tflops": peak, "by_library": peaks},
        "rows": rows,
        "not_measured": skipped,
        "notes": notes,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="autoformer-tiny,autoformer-small")
    p.add_argument("--runtimes", default="eager,compile,cudagraph,onnxruntime")
    p.add_argument("--batches", default="1,256")
    p.add_argument("--precision", choices=sorted(TORCH_DTYPES), help="default: fp16 on GPU, fp32 on CPU")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="CPU only: 'cpu' times single-threaded process CPU time (robust on a shared machine)")
    p.add_argument("--max-call-s", type=float, default=2.0, help="CPU only: skip configurations slower than this per call")
    p.add_argument("--peak-n", type=int, help="matmul size of the measured peak (default 8192 on GPU, 1024 on CPU)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    result = run(args)
    for item in result["not_measured"]:
        print(f"not measured: {item['arch']} {item['runtime']} batch {item['batch']}: {item['reason']}")
    out = args.out or RESULTS / f"export_speed-{result['machine']['device_type']}.json"
    save_result(out, "export_speed", result)


if __name__ == "__main__":
    main()
