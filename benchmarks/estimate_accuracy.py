"""Fit the GPU latency estimator's constants on published measurements and report held-out error.

Data: /work/shared/data/gpu_latency (or --data): timm's inference benchmarks (RTX 3090/4090/5090,
RTX PRO 6000 Max-Q; autocast fp16/bf16, eager and torch.compile, batch 256-2048), NVIDIA
FasterTransformer's ViT guide (A100, T4; PyTorch and fused FT runtimes, batch 1-32) and AITemplate's
ViT example (A100-40GB; PyTorch eager and AITemplate, batch 1-256). Each row is predicted from its
model's architecture by deployvit.latency.kernels / estimate, the same code estimated tables use.

Validation (numbers that go into every estimated table):
- leave one GPU out: for each GPU, fit on the others, predict it;
- leave one batch regime out: fit without batch 1 and predict batch 1; fit without batch >= 64 and
  predict batch >= 64.
Errors are |predicted - measured| / measured per row, reported per (batch regime, runtime). The
fused FasterTransformer / AITemplate runtimes stand in for TensorRT (no TensorRT-ONNX ViT numbers
are published in the data); no published data covers CUDA-graph replay.

How each published runtime is modelled: timm's files from torch >= 2.1 only (fused attention;
older files used explicit attention with other kernels), with autocast (`Flavour.amp`); the
FasterTransformer and AITemplate PyTorch baselines as eager with explicit attention (their era);
FasterTransformer at 384 px (577 tokens) with unfused attention (its fused MHA stops at 512 tokens).
Rows in NOT_FITTED are predicted and reported apart but never fitted on (the reason is recorded).
The fit minimises the mean |log error|, each (regime, runtime, GPU) group weighted equally, plus
weak priors (START) that decide only what the data cannot.

Then the constants are fitted on all rows and written, with these statistics and this command, to
deployvit/latency/estimate_constants.json (and the report to benchmarks/results/estimate_accuracy.json).

    python benchmarks/estimate_accuracy.py     # ~7 min wall on the shared 2-core machine (9 fits)

Regenerate the shipped estimated tables after it (latency_tables/README.md has the commands).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._record import RESULTS, save_result  # noqa: E402
from deployvit import io  # noqa: E402
from deployvit.latency import estimate  # noqa: E402
from deployvit.latency.estimate import CONSTANTS_FORMAT, MODEL_VERSION, Constants, KernelTerms, kernel_terms, kernel_times_us  # noqa: E402
from deployvit.latency.gpus import load_catalogue  # noqa: E402
from deployvit.latency.kernels import Flavour, block_kernels, head_kernels, stem_kernels  # noqa: E402
from deployvit.parts import BlockPart, HeadPart, StemPart  # noqa: E402

DATA = Path("/work/shared/data/gpu_latency")
TIMM_GPUS = {"RTX 3090": "rtx3090", "RTX 4090": "rtx4090", "RTX 5090": "rtx5090", "RTX PRO 6000 Blackwell Max-Q": "rtx-pro-6000-maxq"}
#: published runtime name -> the deployvit runtime whose kernels it runs (fused runtimes: TensorRT-like)
PUBLISHED_RUNTIMES = {"PyTorch (torch)": "eager", "FT C++": "tensorrt", "FT TRT plugin": "tensorrt",
                      "FT C++ (INT8-vs-FP16 table)": "tensorrt", "PyTorch 1.12 eager": "eager", "AITemplate": "tensorrt"}
PROXIES = {"tensorrt": "FasterTransformer (C++ and TRT plugin) and AITemplate fused runtimes, standing in for TensorRT"}
VIT = {"ViT-B_16": (768, 12, 12, 3072), "ViT-L_16": (1024, 24, 16, 4096), "vit_base_patch16_224": (768, 12, 12, 3072), "vit_large_patch16_384": (1024, 24, 16,
                                                                                                                                                 4096)}
FT_FUSED_MHA_MAX_TOKENS = 512
#: GPUs whose rows are never fitted on (still predicted and reported): their datasheet clocks are not
#: what they sustain, so fitting on them would bend the constants every other GPU uses
NOT_FITTED = {
    "NVIDIA/FasterTransformer PyTorch (torch)": ("FasterTransformer's PyTorch baseline (the jeonsworld ViT-pytorch model) is 2.4x (A100) "
                                                 "and 1.8x (T4) faster in fp16 than in fp32, where tensor-core GEMMs give 8x on T4: "
                                                 "it does not run like a PyTorch ViT in half precision"),
}
#: weak priors (and the fit's starting point): typical values before looking at this data (large
#: cuBLAS GEMMs ~70% of peak, flash attention ~50%, streaming kernels ~80% of bandwidth, ~3 us
#: between graph-replayed kernels, ~20 us per eager PyTorch op, GPU Boost ~10% above rated). They
#: only decide constants the data cannot (e.g. the launch costs when the one GPU with batch-1 eager
#: data is held out); PRIOR_WEIGHT is the cost of a factor e away from a prior, against the
#: weighted mean |log error| of the data.
START = Constants(gemm_eff=0.7, attn_eff=0.5, mem_eff=0.8, k_half=64.0, gap_us=3.0, host_us=20.0, geforce_speedup=1.1)
PRIOR_WEIGHT = 0.01


def regime(batch: int) -> str:
    return "b1" if batch == 1 else ("b64+" if batch >= 64 else "b2-32")


@dataclass
class Row:
    gpu: str
    runtime: str  # deployvit runtime the row validates
    precision: str
    batch: int
    measured_us: float
    source: str
    model: str
    terms: KernelTerms
    host: np.ndarray

    @property
    def regime(self) -> str:
        return regime(self.batch)


def model_terms(gpu, precision, batch, fl, embed, depth, heads, head_dim, hidden, patch, img, prefix, pool, layer_scale):
    tokens = (img // patch) ** 2 + prefix
    kernels = stem_kernels(StemPart(img, patch, 3, embed), batch, precision, fl, prefix_tokens=prefix)
    kernels += [replace(k, count=depth) for k in block_kernels(BlockPart(tokens, embed, heads, head_dim, hidden), batch, precision, fl, layer_scale)]
    kernels += head_kernels(HeadPart(tokens, embed, 1000), batch, precision, fl, pool="avg" if pool == "avg" else "token")
    terms = kernel_terms(kernels, gpu, precision, fl)
    return terms, np.full(len(kernels), fl.host_launch)


def timm_rows(data: Path, cat) -> list[Row]:
    archs = {r["model"]: r for r in csv.DictReader(open(data / "timm_vit_archs.csv"))}
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in csv.DictReader(open(data / "timm_vit_gpu_benchmarks.csv")):
        major, minor = (int(x) for x in r["torch"].split(".")[:2])
        a = archs[r["model"]]
        if (major, minor) < (2, 1) or a["global_pool"] == "map" or "block_fn" in a["notes"]:
            continue  # explicit-attention era files (older kernels), attention-pool heads, parallel blocks
        precision = "bf16" if "bf16" in r["precision"] else "fp16"
        runtime = "eager" if r["compile"] == "eager" else "compile"
        shape = (int(a["embed_dim"]), int(a["depth"]), int(a["num_heads"]), int(a["head_dim"]), int(a["mlp_hidden_dim"]),
                 int(a["patch_size"]), int(r["img_size"]), int(a["num_prefix_tokens"]), a["global_pool"], bool(a["layer_scale_init"]))
        key = (TIMM_GPUS[r["gpu"]], runtime, precision, r["precision"].startswith("amp"), int(r["batch_size"]), shape, r["source_file"])
        groups[key].append(float(r["infer_step_time_ms"]) * 1000)
    rows = []
    for (gkey, runtime, precision, amp, batch, shape, src), times in groups.items():
        gpu = cat.gpus[gkey]
        fl = replace(Flavour.for_runtime(runtime, precision), amp=amp)
        terms, host = model_terms(gpu, precision, batch, fl, *shape)
        rows.append(Row(gkey, runtime, precision, batch, statistics.median(times), f"timm {src}", f"e{shape[0]} d{shape[1]} p{shape[5]} i{shape[6]}", terms,
                        host))
    return rows


def published_rows(data: Path, cat) -> list[Row]:
    rows = []
    for r in csv.DictReader(open(data / "published_vit_latency.csv")):
        runtime = PUBLISHED_RUNTIMES.get(r["runtime"])
        precision = r["precision"].split()[0]
        if runtime is None or precision not in ("fp16", "fp32"):
            continue  # FT torch op (FT kernels behind a PyTorch op), int8
        model = r["model"].split()[0]
        embed, depth, heads, hidden = VIT[model]
        ait = "AITemplate" in r["source"]
        gkey = "a100-40gb" if r["gpu"].startswith("A100") else "t4"  # FT's A100: mclk 1215 MHz = the 40GB part
        img, batch = int(r["img_size"]), int(r["batch_size"])
        # eager PyTorch of that era computed attention explicitly; FasterTransformer's fused MHA kernels
        # stop at 512 tokens, so at 384 px (577 tokens) it runs unfused attention too
        explicit = runtime == "eager" or (not ait and (img // 16) ** 2 + 1 > FT_FUSED_MHA_MAX_TOKENS)
        fl = replace(Flavour.for_runtime(runtime, precision), tf32=False, attention="explicit" if explicit else "fused")
        terms, host = model_terms(cat.gpus[gkey], precision, batch, fl, embed, depth, heads, 64, hidden, 16, img, 0 if ait else 1, "avg" if ait else "token",
                                  False)
        rows.append(Row(gkey, runtime, precision, batch, float(r["value"]) * 1000, f"{r['source'].split()[0]} {r['runtime']}", f"{model} i{img}", terms, host))
    return rows


class Problem:
    """All rows' kernel terms concatenated, so one candidate set of constants costs every row at once."""

    def __init__(self, rows: list[Row]):
        self.rows = rows
        self.terms = KernelTerms(*(np.concatenate([getattr(r.terms, f) for r in rows]) for f in ("compute_us", "memory_us", "kind", "k", "count", "geforce")))
        self.host = np.concatenate([r.host for r in rows])
        self.row_of = np.concatenate([np.full(len(r.host), i) for i, r in enumerate(rows)])
        self.measured = np.array([r.measured_us for r in rows])

    def predict(self, c: Constants) -> np.ndarray:
        times = kernel_times_us(self.terms, c, self.host) * self.terms.count
        return np.bincount(self.row_of, weights=times, minlength=len(self.rows))

    def fit(self, mask: np.ndarray) -> Constants:
        """Minimise the mean |log(predicted / measured)| (plus the weak priors) over the rows in `mask`, each (regime,
        runtime, GPU) group weighted equally so that ~900 large-batch timm rows do not drown batch 1
        and four GeForce cards do not drown the one datacenter GPU; NOT_FITTED rows are left out."""
        mask = mask & np.array([r.gpu not in NOT_FITTED and r.source not in NOT_FITTED for r in self.rows])
        groups = [(r.regime, r.runtime, r.gpu) for r in self.rows]
        sizes = defaultdict(int)
        for g, m in zip(groups, mask):
            sizes[g] += bool(m)
        w = np.array([1.0 / sizes[g] if m else 0.0 for g, m in zip(groups, mask)])
        w /= w.sum()
        names = Constants.names()
        shares = {"gemm_eff", "attn_eff", "mem_eff"}  # in (0, 1): fitted as logits, the rest as logs

        def unpack(x):
            return Constants(**{n: (1 / (1 + math.exp(-v)) if n in shares else math.exp(v)) for n, v in zip(names, x)})

        prior = np.log([getattr(START, n) for n in names])

        def loss(x):
            c = unpack(x)
            drift = np.log([getattr(c, n) for n in names]) - prior
            return float(np.sum(w * np.abs(np.log(self.predict(c) / self.measured)))) + PRIOR_WEIGHT * float(np.sum(drift**2))

        x0 = np.array([math.log(v / (1 - v)) if n in shares else math.log(v) for n, v in START.to_dict().items()])
        best = None
        for start in (x0, x0 + 0.7, x0 - 0.7):
            res = minimize(loss, start, method="Powell", options={"maxiter": 20000, "xtol": 1e-4, "ftol": 1e-8})
            res = minimize(loss, res.x, method="Nelder-Mead", options={"maxiter": 4000, "xatol": 1e-5, "fatol": 1e-9})
            if best is None or res.fun < best.fun:
                best = res
        return unpack(best.x)


def error_table(rows: list[Row], predicted: np.ndarray, mask: np.ndarray) -> dict[str, dict]:
    """Per 'regime/runtime' cell: n, median / mean / p90 |error| %, signed median %, the sources."""
    cells: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        if mask[i]:
            cells[f"{r.regime}/{r.runtime}"].append(i)
    out = {}
    for cell, idx in sorted(cells.items()):
        err = (predicted[idx] - np.array([rows[i].measured_us for i in idx])) / np.array([rows[i].measured_us for i in idx]) * 100
        out[cell] = {
            "n": len(idx),
            "median_abs_pct": round(float(np.median(np.abs(err))), 2),
            "mean_abs_pct": round(float(np.mean(np.abs(err))), 2),
            "p90_abs_pct": round(float(np.percentile(np.abs(err), 90)), 2),
            "median_signed_pct": round(float(np.median(err)), 2),
            "gpus": sorted({rows[i].gpu for i in idx}),
            "sources": sorted({rows[i].source.split(" benchmark")[0] if rows[i].source.startswith("timm") else rows[i].source for i in idx}),
        }
    return out


def fitted_rows(rows: list[Row]) -> np.ndarray:
    """Rows the statistics are over: NOT_FITTED rows are reported apart (`not_fitted`), so that a
    baseline known not to behave like a PyTorch ViT does not move the per-cell numbers."""
    return np.array([r.gpu not in NOT_FITTED and r.source not in NOT_FITTED for r in rows])


def leave_one_gpu_out(p: Problem) -> tuple[dict, dict]:
    predicted = np.zeros(len(p.rows))
    fits = {}
    gpus = np.array([r.gpu for r in p.rows])
    for g in sorted(set(gpus)):
        c = p.fit(gpus != g)
        predicted[gpus == g] = p.predict(c)[gpus == g]
        fits[g] = {k: round(v, 4) for k, v in c.to_dict().items()}
        print(f"  held out {g:18s}: " + ", ".join(f"{k} {v:.3g}" for k, v in c.to_dict().items()), flush=True)
    return error_table(p.rows, predicted, fitted_rows(p.rows)), fits


def leave_one_regime_out(p: Problem) -> tuple[dict, dict]:
    predicted = np.full(len(p.rows), np.nan)
    regimes = np.array([r.regime for r in p.rows])
    fits = {}
    for held in ("b1", "b64+"):
        c = p.fit(regimes != held)
        predicted[regimes == held] = p.predict(c)[regimes == held]
        fits[held] = {k: round(v, 4) for k, v in c.to_dict().items()}
        print(f"  held out {held:18s}: " + ", ".join(f"{k} {v:.3g}" for k, v in c.to_dict().items()), flush=True)
    return error_table(p.rows, predicted, ~np.isnan(predicted) & fitted_rows(p.rows)), fits


def coverage(logo: dict) -> dict[str, str]:
    """For each runtime x regime the estimator serves: validated (by which data) or unvalidated."""
    out = {}
    for rt in estimate.ESTIMATED_RUNTIMES:
        for reg in ("b1", "b2-32", "b64+"):
            cell = logo.get(f"{reg}/{rt}")
            if cell:
                out[f"{reg}/{rt}"] = "validated on " + "; ".join(cell["sources"]) + (f" ({PROXIES[rt]})" if rt in PROXIES else "")
            else:
                out[f"{reg}/{rt}"] = "UNVALIDATED: no published measurements of this runtime at this batch"
    return out


EXAMPLES = {"DeiT-Ti": (192, 3), "DeiT-S": (384, 6), "DeiT-B": (768, 12)}


def examples(c: Constants, cat) -> list[dict]:
    """DeiT-Ti/S/B (12 blocks, 224 px, 1000 classes) as deployvit's parts, estimated like a table
    entry sum: what the README quotes."""
    out = []
    for gkey in ("h100", "a100"):
        gpu = cat.gpus[gkey]
        for name, (embed, heads) in EXAMPLES.items():
            parts = [StemPart(224, 16, 3, embed)] + [BlockPart(197, embed, heads, 64, 4 * embed)] * 12 + [HeadPart(197, embed, 1000)]
            for runtime in ("eager", "cudagraph", "tensorrt"):
                for batch in (1, 64):
                    us = sum(estimate.estimate_part_us(p, gpu, batch, "fp16", runtime, c) for p in parts)
                    out.append({"gpu": gkey, "model": name, "runtime": runtime, "precision": "fp16", "batch": batch, "estimated_ms": round(us / 1000, 3)})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--no-write-constants", action="store_true", help="report only; keep the shipped constants")
    args = ap.parse_args(argv)
    cat = load_catalogue()
    rows = timm_rows(args.data, cat) + published_rows(args.data, cat)
    p = Problem(rows)
    print(f"{len(rows)} published rows; counts per regime/runtime: "
          + ", ".join(f"{k} {v}" for k, v in sorted(Counter(f'{r.regime}/{r.runtime}' for r in rows).items())))
    print("leave one GPU out:")
    logo, logo_fits = leave_one_gpu_out(p)
    print("leave one batch regime out:")
    loro, loro_fits = leave_one_regime_out(p)
    final = p.fit(np.ones(len(rows), bool))
    in_sample = error_table(rows, p.predict(final), fitted_rows(rows))
    not_fitted = error_table(rows, p.predict(final), ~fitted_rows(rows))
    print("final constants (all rows): " + ", ".join(f"{k} {v:.4g}" for k, v in final.to_dict().items()))
    print(f"\n{'regime/runtime':18s} {'n':>4s} {'LOGO med%':>10s} {'LORO med%':>10s} {'in-sample med%':>15s}")
    for cell in sorted(in_sample):
        lo, lr = logo.get(cell, {}), loro.get(cell, {})
        print(f"{cell:18s} {in_sample[cell]['n']:4d} {lo.get('median_abs_pct', float('nan')):10.1f} {lr.get('median_abs_pct', float('nan')):10.1f} "
              f"{in_sample[cell]['median_abs_pct']:15.1f}")
    ex = examples(final, cat)
    print("\nexample estimates (fp16, ms per batch):")
    for e in ex:
        print(f"  {e['gpu']:5s} {e['model']:8s} {e['runtime']:10s} b{e['batch']:<3d} {e['estimated_ms']:8.3f}")
    validation = {
        "method": "fit on published measurements; |predicted - measured| / measured on held-out rows (leave one GPU out; leave one batch regime out)",
        "goal": "median abs error <= 15% at batch >= 64 and <= 25% at batch 1 for the runtimes the data covers",
        "leave_one_gpu_out": logo,
        "leave_one_regime_out": loro,
        "in_sample": in_sample,
        "not_fitted": {"why": NOT_FITTED, "errors_with_final_constants": not_fitted},
        "coverage": coverage(logo),
    }
    argv_used = sys.argv[1:] if argv is None else argv
    command = " ".join(["python", "benchmarks/estimate_accuracy.py", *argv_used])
    data = {"rows": len(rows), "sources": sorted({r.source for r in rows}), "path": str(args.data)}
    if not args.no_write_constants:
        io.write_json(estimate.constants_path(), {
            "format": CONSTANTS_FORMAT, "model_version": MODEL_VERSION,
            "command": command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "constants": {k: round(v, 6) for k, v in final.to_dict().items()},
            "validation": validation, "data": data,
        })
        print(f"wrote {estimate.constants_path()}")
    save_result(RESULTS / "estimate_accuracy.json", "estimate_accuracy", {
        "model_version": MODEL_VERSION, "constants": final.to_dict(), "validation": validation, "data": data,
        "fits": {"leave_one_gpu_out": logo_fits, "leave_one_regime_out": loro_fits},
        "not_fitted": NOT_FITTED,
        "examples": ex,
        "rows": [{"gpu": r.gpu, "runtime": r.runtime, "precision": r.precision, "batch": r.batch, "model": r.model, "source": r.source,
                  "measured_us": r.measured_us, "predicted_us": round(float(x), 2)} for r, x in zip(rows, p.predict(final))],
    }, argv_used)


if __name__ == "__main__":
    main()
