"""Post-training INT8 quantisation of an fp32 ONNX graph: `quantize_onnx`, calibrated on real images.

The library: onnxruntime's static quantiser (`onnxruntime.quantization.quantize_static`, QDQ format),
configured to write the graph TensorRT's explicit quantisation wants. NVIDIA ModelOpt's ONNX PTQ
(`modelopt.onnx.quantization.quantize`) was measured against it on this CPU (2 cores, no GPU) and not
chosen:
- installing: `pip install "nvidia-modelopt[onnx]"` (0.47) pulls onnxruntime-gpu 1.24 (the same
  `onnxruntime` module as the CPU package `[dev]` installs: whichever is installed last owns the files,
  pyproject.toml), downgrades onnx 1.23 -> 1.21 and adds cupy-cuda12x, polygraphy, onnx-graphsurgeon,
  lief, pulp and cppimport. It was tried in a clean throwaway venv (CPU torch 2.13) instead.
- running: it needs neither CUDA nor TensorRT for INT8 (`calibration_eps=["cpu"]`: it calibrates with
  onnxruntime's CPU provider) and its graphs run in onnxruntime 1.32 here.
- measured (tiny `test`-space ViT, embed 64 depth 4, retrained 5 epochs on digits, 83.01% top-1 on
  the 359 val images; 256 train images for calibration): this module's graph 82.73% (agreement with
  fp32 98.9%, worst-sample logit cosine 0.9974, quantisation 0.8 s of CPU); ModelOpt 83.84% (entropy
  calibration, its default; agreement 97.2%, worst cosine 0.9646, 12 s of CPU). On an
  AutoFormer-tiny-sized model (random weights: latency only, 1 thread, process CPU time, batch 1):
  fp32 37.7 ms, this module 32.0 ms (6.3 MB), ModelOpt 28.8 ms (19.5 MB: fp32 weights behind Q/DQ).
  ModelOpt also quantises the residual stream (the Add inputs, which are the LayerNorm inputs), the
  source of its lower cosine.
So onnxruntime's tool runs wherever deployvit's `[dev]` install runs, leaves the installed packages
alone, and gives as good a graph; ModelOpt is the tool to reach for on a GPU machine only if its
TensorRT-tuned placement or its FP8 modes are wanted (`dq_only=True` is its equivalent of the int8
weights written here).

The graph written (what TensorRT 10/11 builds as an explicitly quantised, strongly typed network, and
onnxruntime's CPU provider fuses into integer MatMul/Conv kernels):
- Q/DQ pairs in front of the *inputs* of MatMul, Gemm and Conv only (the linear layers, the patch
  embedding, and the two activation x activation matmuls of attention: q.k^T and softmax.v), never on
  their outputs: the bias Add, GELU, LayerNorm, Softmax and the residual stream stay float32.
- weights int8, symmetric, per output channel (axis 1 of a MatMul's [K, N] weight, axis 0 of a Conv
  or Gemm(transB) weight), stored as int8 initializers behind a DequantizeLinear; biases stay float.
- activations int8, symmetric (zero point 0, as TensorRT requires), one scale per tensor, from the
  calibration images' ranges (`method`: "minmax", the default, or "percentile", onnxruntime's
  99.999th percentile of a 2048-bin histogram).
- layers in `keep_fp` are left float32 (default: the classifier head, `head`); DequantizeLinear
  nodes feeding them are removed. The choice of which layers to keep is the accuracy gate's
  sensitivity pass (`exporters.quant_gate`).

Calibration: `calibration` must be real images, preprocessed as the model sees them. Noise is refused
(`exporters.images.neighbour_correlation`), as is a `Samples` whose source says synthetic. How many:
DEFAULT_CALIBRATION (512) images from the training split, never the verification split
(`deployvit.train.calibration.calibration_samples`). The result is deterministic: the same graph,
images and options give the same bytes.
"""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import hashlib
import io as _io
import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from deployvit import io
from deployvit.errors import DeployvitError, MissingDependency
from exporters.images import MIN_NEIGHBOUR_CORRELATION, neighbour_correlation
from exporters.onnx import META_PREFIX, ExportFailed, export_for_timing, export_onnx, load_graph, make_low_precision_safe
from exporters.verify import Samples

QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
#: deployvit's name -> onnxruntime's CalibrationMethod. Its "Entropy" is not offered: quantize_static
#: builds that calibrator with 128 histogram bins folded into 128 quantised bins, which leaves one
#: candidate threshold, the full range, so it writes minmax's graph (measured: identical scales).
METHODS = {"minmax": "MinMax", "percentile": "Percentile"}
DEFAULT_METHOD = "minmax"
DEFAULT_KEEP_FP = ("head",)  # the classifier: ten-odd outputs, a few thousand weights, and the logits themselves
DEFAULT_CALIBRATION = 512  # images; TensorRT's developer guide finds about 500 enough for ImageNet classifiers
MIN_CALIBRATION = 32
CALIBRATION_BATCH = 32
NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # the dynamo exporter's per-node module path
QTYPES = ("int8", "fp8")
FLOAT_PARTS = ("fp32", "fp16")  # what a quantised graph's float parts may compute in
INT8_MAX = 127.0  # onnxruntime's symmetric int8 range is [-127, 127]: scale = amax / 127
FP8_MAX = 448.0  # the largest finite FLOAT8 E4M3FN value
HALF_MAX, HALF_TINY = 65504.0, 2.0**-24  # float16's largest finite value and smallest subnormal
TIMING_CALIBRATION = 32  # inputs a latency-table part's ranges come from (at least; whole batches)
TIMING_PATCH = 16  # patch size of the stem that turns photographs into a part's calibration tokens


@dataclass(frozen=True)
class Layer:
    """One quantisable unit: a Linear or Conv module (one node) or the activation matmuls of one
    attention (two nodes). `name` is the module path from the exporter's metadata (`stages.0.1.mlp.fc1`,
    `stages.0.1.attn.scaled_dot_product_attention`) or, without it, the node name; `group` is the
    block it belongs to (the path up to its last numeric part: `stages.0.1`; `stem`, `head`)."""

    name: str
    group: str
    nodes: tuple[str, ...]
    op: str


@dataclass
class QuantizeResult:
    """What `quantize_onnx` wrote and how: the layers quantised and kept float, the calibration."""

    path: Path
    method: str
    per_channel: bool
    layers: list[Layer]
    quantized: list[str]  # layer names, graph order
    kept: list[str]
    calibration: str  # where the images came from (Samples.source), or "caller's images"
    calibration_count: int
    calibration_sha256: str  # of the float32 calibration tensor: same images, same hash
    size_bytes: int
    fp32_size_bytes: int
    onnxruntime_version: str
    qtype: str = "int8"  # int8 or fp8 (FLOAT8 E4M3FN)
    float_precision: str = "fp32"  # what the layers left float compute in: fp32, or fp16 (TensorRT's graph)
    fp32_path: Path | None = None  # the graph it was quantised from
    full_model: onnx.ModelProto | None = field(default=None, repr=False, compare=False)  # every layer quantised, fp32 floats

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("full_model", "layers")}  # asdict would deep-copy the graph
        out["path"], out["fp32_path"] = str(self.path), None if self.fp32_path is None else str(self.fp32_path)
        out["layers"] = {l.name: {"group": l.group, "op": l.op, "nodes": list(l.nodes)} for l in self.layers}
        return out


# --- the graph's quantisable layers ----------------------------------------------------------------


def _scopes(node: onnx.NodeProto) -> list[str] | None:
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES:
            try:
                value = ast.literal_eval(prop.value)  # a Python list literal, written by torch.onnx
            except (ValueError, SyntaxError):
                return None
            return [str(s) for s in value] if isinstance(value, list) and len(value) >= 2 else None
    return None


def _legacy_scopes(node: onnx.NodeProto) -> list[str] | None:
    """[module path, op] from a TorchScript-exporter node name (`/stages.0/stages.0.0/attn/qkv/MatMul`:
    each scope is a child's name, containers' children spelled with their parent's prefix), so that a
    graph of `--legacy-exporter` (and every table part, `export_for_timing`) names its layers as the
    dynamo graph does (`stages.0.0.attn.qkv`; the head is `head.fc`, kept float by default)."""
    if not node.name.startswith("/") or node.name.count("/") < 2:
        return None
    *scopes, op = node.name.strip("/").split("/")
    path = ""
    for scope in scopes:
        path = scope if not path or scope.startswith(path + ".") else f"{path}.{scope}"
    return [path, op]


def _group(name: str) -> str:
    parts = name.split(".")
    numeric = [i for i, p in enumerate(parts) if p.isdigit()]
    return ".".join(parts[: numeric[-1] + 1]) if numeric else parts[0]


def quantizable_layers(proto: onnx.ModelProto) -> list[Layer]:
    """The MatMul/Gemm/Conv nodes of `proto`, grouped into layers by module, in graph order."""
    weights = {t.name for t in proto.graph.initializer}
    names: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        scopes = _scopes(node) or _legacy_scopes(node)
        if scopes is None:
            name = node.name
        elif len(node.input) > 1 and node.input[1] in weights:
            name = scopes[-2]  # the Linear/Conv module owning the weight
        else:  # activation x activation: the op inside its module (sdpa's q.k^T and attn.v)
            name = f"{scopes[-2]}.{re.sub(r'_[0-9]+$', '', scopes[-1])}".lstrip(".")
        names.setdefault(name, []).append(node)
    return [Layer(name, _group(name), tuple(n.name for n in nodes), "+".join(n.op_type for n in nodes))
            for name, nodes in names.items()]


def select_layers(layers: Sequence[Layer], patterns: Iterable[str], strict: bool = True) -> list[Layer]:
    """The layers matching any of `patterns`: a layer name, a group, a module prefix (`head` matches
    `head.fc`), a node name, or an fnmatch pattern (`*.attn.qkv`). `strict`: a pattern matching no
    layer is an error naming the groups there are (a typo must not quantise what the user meant to keep)."""
    chosen: dict[str, Layer] = {}
    for pattern in patterns:
        hits = [l for l in layers if l.name == pattern or l.group == pattern or l.name.startswith(pattern + ".")
                or pattern in l.nodes or fnmatch.fnmatchcase(l.name, pattern)]
        if not hits and strict:
            groups = ", ".join(dict.fromkeys(l.group for l in layers))
            raise DeployvitError(f"keep-fp pattern {pattern!r} matches no quantisable layer (groups: {groups})")
        chosen.update((l.name, l) for l in hits)
    return [l for l in layers if l.name in chosen]


def check_keep_fp(model: torch.nn.Module, patterns: Sequence[str]) -> None:
    """Refuse, before anything is exported, a `keep_fp` pattern that matches no quantisable layer of
    `model`: the layers its graph will have, named from its modules (every Linear and convolution,
    and `<attention>.scaled_dot_product_attention` for a module with a `qkv` child), matched as
    `select_layers` matches them after export (which checks again, on the graph itself)."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
            names.append(name)
        if hasattr(module, "qkv"):
            names.append(f"{name}.scaled_dot_product_attention".lstrip("."))
    select_layers([Layer(n, _group(n), (), "") for n in names], patterns, strict=True)


# --- calibration input -----------------------------------------------------------------------------


def calibration_array(calibration: Samples | torch.Tensor | np.ndarray, input_shape: Sequence[Any]) -> tuple[np.ndarray, str]:
    """The calibration images as a contiguous float32 [N, C, H, W] array, and where they came from.
    Refused in one line: synthetic or noise images, too few, the wrong shape, non-finite values."""
    source = "caller's images"
    if isinstance(calibration, Samples):
        if calibration.source.startswith("synthetic"):
            raise DeployvitError(f"INT8 calibration needs real images (--data), not {calibration.source.split(':')[0]} ones")
        source, calibration = calibration.source, calibration.images
    x = calibration.detach().cpu().numpy() if isinstance(calibration, torch.Tensor) else np.asarray(calibration)
    want = [d if isinstance(d, int) and d > 0 else None for d in input_shape]
    if x.ndim != len(want) or any(w is not None and w != s for w, s in zip(want[1:], x.shape[1:])):
        shape = "x".join("N" if w is None else str(w) for w in want)
        raise DeployvitError(f"calibration images have shape {tuple(x.shape)}, the model takes {shape}")
    if len(x) < MIN_CALIBRATION:
        raise DeployvitError(f"INT8 calibration needs at least {MIN_CALIBRATION} images, got {len(x)}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise DeployvitError("calibration images contain NaN or infinite values")
    corr = neighbour_correlation(x)
    if corr < MIN_NEIGHBOUR_CORRELATION:
        raise DeployvitError(f"calibration images look like noise (adjacent-pixel correlation {corr:.2f} < {MIN_NEIGHBOUR_CORRELATION}): "
                             "INT8 ranges must come from real images (--data)")
    return x, source


def _input_shape(proto: onnx.ModelProto) -> list[Any]:
    if len(proto.graph.input) != 1:
        raise DeployvitError(f"INT8 quantisation takes a graph with one input, this one has {len(proto.graph.input)}")
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def _check_fp32_graph(proto: onnx.ModelProto, path: Path) -> None:
    ops = {n.op_type for n in proto.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "QLinearConv", "MatMulInteger", "ConvInteger"}:
        raise DeployvitError(f"{path.name} is already quantised")
    precision = next((p.value for p in proto.metadata_props if p.key == META_PREFIX + "precision"), "fp32")
    floats = {t.data_type for t in proto.graph.initializer if t.data_type != onnx.TensorProto.INT64}
    if precision != "fp32" or floats - {onnx.TensorProto.FLOAT, onnx.TensorProto.INT32, onnx.TensorProto.BOOL}:
        raise DeployvitError(f"INT8 quantisation starts from an fp32 graph; {path.name} is {precision if precision != 'fp32' else 'not fp32'}"
                             " (export it with --precision fp32)")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise DeployvitError(f"{path.name} keeps its weights in an external file (> 2 GB): INT8 quantisation of such models is not supported")


# --- quantising ------------------------------------------------------------------------------------


def _ort_quantization():
    try:
        import onnxruntime
        from onnxruntime import quantization
    except ImportError:
        raise MissingDependency('INT8 quantisation needs onnxruntime: pip install onnxruntime (or: pip install -e ".[cpu]")') from None
    return onnxruntime.__version__, quantization


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over one array, in fixed batches."""

    def __init__(self, name: str, images: np.ndarray, batch: int):
        self.name, self.images, self.batch, self.pos = name, images, batch, 0

    def get_next(self):
        if self.pos >= len(self.images):
            return None
        self.pos += self.batch
        return {self.name: self.images[self.pos - self.batch : self.pos]}

    def rewind(self) -> None:
        self.pos = 0


def quantize_all(fp32_path: Path, images: np.ndarray, method: str, per_channel: bool, batch: int) -> onnx.ModelProto:
    """Every quantisable node of `fp32_path` quantised with ranges from `images` (module docstring's
    placement). Runs onnxruntime's calibration (its CPU provider) in a temp folder; nothing else is written."""
    _, q = _ort_quantization()
    proto = load_graph(fp32_path)
    nodes = [n for layer in quantizable_layers(proto) for n in layer.nodes]
    if not nodes:
        raise DeployvitError(f"{fp32_path.name} has no MatMul, Gemm or Conv node to quantise")
    options = {
        "ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
        "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS), "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
    }
    work = Path(tempfile.mkdtemp(prefix="deployvit-int8-"))
    try:
        out = work / "full.onnx"
        reader = _Reader(proto.graph.input[0].name, images, batch)
        with _quiet():
            q.quantize_static(str(fp32_path), str(out), reader, quant_format=q.QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS),
                              per_channel=per_channel, reduce_range=False, activation_type=q.QuantType.QInt8,
                              weight_type=q.QuantType.QInt8, nodes_to_quantize=nodes,
                              calibrate_method=getattr(q.CalibrationMethod, METHODS[method]), extra_options=options)
        return onnx.load(str(out))
    except DeployvitError:
        raise
    except Exception as exc:  # onnxruntime's quantiser raises many types; the user needs the first line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportFailed(f"INT8 quantisation failed (onnxruntime.quantization): {first}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantiser logs advice to the root logger and prints progress: keep the CLI's
    output to what deployvit says (its failures still raise)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(_io.StringIO()), contextlib.redirect_stderr(_io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def keep_float(quantized: onnx.ModelProto, fp32: onnx.ModelProto, nodes: Iterable[str]) -> onnx.ModelProto:
    """A copy of `quantized` in which `nodes`, and every node that is not a MatMul/Gemm/Conv, read
    their fp32 inputs again (the fp32 graph's tensors and weights), with the Q/DQ nodes and int8
    weights nothing reads any more removed. Every other MatMul/Gemm/Conv keeps its quantisation, so
    a layer kept float here is exactly the graph that quantising without it gives (the calibration
    ranges are per tensor, from the fp32 model). The second rule undoes onnxruntime's habit of
    feeding a quantised tensor's other readers (a Shape, a pooling shortcut) its dequantised copy:
    only the inputs of the quantised ops are rounded to int8."""
    out = onnx.ModelProto()
    out.CopyFrom(quantized)
    original = {n.name: n for n in fp32.graph.node}
    fp32_weights = {t.name: t for t in fp32.graph.initializer}
    present = {t.name for t in out.graph.initializer}
    nodes = set(nodes)
    for node in out.graph.node:
        if node.name not in original or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.name in nodes or node.op_type not in QUANTIZED_OPS:
            del node.input[:]
            node.input.extend(original[node.name].input)
            for name in original[node.name].input:
                if name in fp32_weights and name not in present:
                    out.graph.initializer.append(fp32_weights[name])
                    present.add(name)
    _prune(out.graph)
    return out


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nothing reads, repeatedly, then initializers nothing reads."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        keep = [n for n in graph.node if any(o in used for o in n.output)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input}
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def quantize_onnx(
    fp32_onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration: Samples | torch.Tensor | np.ndarray,
    *,
    keep_fp: Sequence[str] | None = None,
    method: str = DEFAULT_METHOD,
    per_channel: bool = True,
    batch: int = CALIBRATION_BATCH,
    qtype: str = "int8",
    float_precision: str = "fp32",
) -> QuantizeResult:
    """Write the Q/DQ graph of the fp32 ONNX model `fp32_onnx_path` to `out_path` (atomically) and
    say what was quantised. `calibration`: real, preprocessed images [N, C, H, W] (a `Samples`
    carries its source into the result). `keep_fp`: layer patterns to leave float (`select_layers`);
    None keeps the classifier head when the graph has one, () quantises every layer. `batch`: images
    per calibration run (memory only; the ranges do not depend on it). `qtype`: "int8", or "fp8"
    (FLOAT8 E4M3FN Q/DQ for GPUs with FP8 tensor cores, `to_fp8`). `float_precision`: what the float
    parts compute in, "fp32", or "fp16" (`cast_float16`: TensorRT's graph)."""
    fp32_path, out_path = Path(fp32_onnx_path), Path(out_path)
    _check_options(method, batch, qtype, float_precision)
    fp32 = load_graph(fp32_path)  # the whole model: external weights are refused next
    _check_fp32_graph(fp32, fp32_path)
    images, source = calibration_array(calibration, _input_shape(fp32))
    return _quantize(fp32_path, fp32, out_path, images, source, keep_fp, method=method, per_channel=per_channel, batch=batch,
                     qtype=qtype, float_precision=float_precision, min_count=MIN_CALIBRATION)


def _check_options(method: str, batch: int, qtype: str, float_precision: str) -> None:
    if method not in METHODS:
        raise DeployvitError(f"unknown calibration method {method!r} (choose from {', '.join(METHODS)})")
    if batch < 1:
        raise DeployvitError(f"calibration batch must be >= 1, got {batch}")
    if qtype not in QTYPES:
        raise DeployvitError(f"unknown quantised type {qtype!r} (choose from {', '.join(QTYPES)})")
    if float_precision not in FLOAT_PARTS:
        raise DeployvitError(f"the float parts of a quantised graph are fp32 or fp16, not {float_precision!r}")


def _quantize(fp32_path: Path, fp32: onnx.ModelProto, out_path: Path, images: np.ndarray, source: str, keep_fp: Sequence[str] | None, *,
              method: str, per_channel: bool, batch: int, qtype: str, float_precision: str, min_count: int) -> QuantizeResult:
    """Quantise every layer once with ranges from `images`, then keep `keep_fp` float (module docstring)."""
    shape = _input_shape(fp32)
    if isinstance(shape[0], int) and shape[0] > 0:  # a static batch: calibrate in batches of exactly that size
        batch, images = shape[0], images[: len(images) // shape[0] * shape[0]]
        if len(images) < min_count:
            raise DeployvitError(f"{qtype.upper()} calibration needs at least {min_count} images in whole batches of {batch}, got {len(images)}")
    layers = quantizable_layers(fp32)
    kept = select_layers(layers, DEFAULT_KEEP_FP if keep_fp is None else keep_fp, strict=keep_fp is not None)
    version, _ = _ort_quantization()
    full = keep_float(quantize_all(fp32_path, images, method, per_channel, batch), fp32, ())
    if qtype == "fp8":
        full = to_fp8(full, fp32)
    proto = keep_float(full, fp32, [n for l in kept for n in l.nodes])
    if float_precision == "fp16":
        proto = cast_float16(proto)
    result = QuantizeResult(
        out_path, method, per_channel, layers, [l.name for l in layers if l not in kept], [l.name for l in kept], source,
        len(images), hashlib.sha256(images.tobytes()).hexdigest(), 0, fp32_path.stat().st_size, version, qtype, float_precision,
        fp32_path, full)
    _write(proto, result)
    result.size_bytes = out_path.stat().st_size
    return result


def _write(proto: onnx.ModelProto, result: QuantizeResult) -> None:
    """Record precision and quantisation in the graph's metadata, check it, write it atomically."""
    info = {k: v for k, v in result.to_dict().items() if k in ("method", "per_channel", "quantized", "kept", "calibration", "qtype",
                                                                 "float_precision", "calibration_count", "calibration_sha256",
                                                                 "onnxruntime_version")}
    meta = {p.key: p.value for p in proto.metadata_props if p.key != "onnx.infer"}
    meta.update({META_PREFIX + "precision": result.qtype, META_PREFIX + "float_precision": result.float_precision,
                 META_PREFIX + "quantization": json.dumps(info, sort_keys=True)})
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, meta)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportFailed(f"the {result.qtype.upper()} graph failed onnx.checker: {str(exc).strip().splitlines()[0]}") from None
    with io.atomic_path(result.path) as tmp:
        onnx.save(proto, str(tmp))


# --- FP8 and fp16 float parts --------------------------------------------------------------------------


def to_fp8(quantized: onnx.ModelProto, fp32: onnx.ModelProto) -> onnx.ModelProto:
    """`quantized` (int8 Q/DQ, fp32 floats) with FLOAT8 E4M3FN in place of int8, at the same places:
    an activation's scale is its calibration amax / 448 (E4M3's largest finite value; onnxruntime's
    symmetric int8 scale is amax / 127, so the amax is 127 x that scale), a weight is quantised again
    from the fp32 graph's weight, per output channel (scale = channel amax / 448, values rounded to
    E4M3, saturating), zero points are FLOAT8 zeros. What TensorRT's explicit FP8 quantisation takes
    (and what NVIDIA ModelOpt's `quantize_mode="fp8"` writes: amax calibration, E4M3, zero offset);
    onnxruntime's CPU provider runs it too, simulating FP8 by rounding, so its accuracy is checked here."""
    import ml_dtypes

    out = onnx.ModelProto()
    out.CopyFrom(quantized)
    inits = {t.name: t for t in out.graph.initializer}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in out.graph.node:
        for i, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, i))
    fp32_nodes, fp32_weights = {n.name: n for n in fp32.graph.node}, {t.name: t for t in fp32.graph.initializer}
    done: set[str] = set()

    def put(name: str, array: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(array, name))
        done.add(name)

    for node in out.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        scale, zero = node.input[1], node.input[2]
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:  # a weight
            weight = _fp32_weight(node, readers, fp32_nodes, fp32_weights)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            per_channel = len(inits[scale].dims) == 1
            q, s = _fp8_weight(weight, axis if per_channel else None)
            put(node.input[0], q.astype(ml_dtypes.float8_e4m3fn))
            put(scale, s)
        elif scale not in done:
            put(scale, (numpy_helper.to_array(inits[scale]).astype(np.float64) * INT8_MAX / FP8_MAX).astype(np.float32))
        if zero not in done:
            put(zero, np.zeros(tuple(inits[zero].dims), np.float32).astype(ml_dtypes.float8_e4m3fn))
    return out


def _fp32_weight(dq: onnx.NodeProto, readers, fp32_nodes, fp32_weights) -> np.ndarray:
    """The fp32 weight a weight DequantizeLinear stands for: the same input of the same node in the fp32 graph."""
    for reader, i in readers.get(dq.output[0], []):
        original = fp32_nodes.get(reader.name)
        if original is not None and i < len(original.input) and original.input[i] in fp32_weights:
            return numpy_helper.to_array(fp32_weights[original.input[i]]).astype(np.float32)
    raise ExportFailed(f"FP8: cannot find the fp32 weight behind {dq.name} (the quantised graph no longer matches the fp32 one)")


def _fp8_weight(weight: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(weight / scale clipped to E4M3's range, scale): per channel along `axis`, or one scale (None)."""
    if axis is None:
        amax = np.asarray(np.abs(weight).max(), np.float32)
        scale = np.float32(amax / FP8_MAX) if amax > 0 else np.float32(1.0)
        return np.clip(weight / scale, -FP8_MAX, FP8_MAX), np.asarray(scale, np.float32)
    axis = axis % weight.ndim
    amax = np.abs(weight).max(axis=tuple(d for d in range(weight.ndim) if d != axis)).astype(np.float32)
    scale = np.where(amax > 0, amax / FP8_MAX, 1.0).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    return np.clip(weight / scale.reshape(shape), -FP8_MAX, FP8_MAX), scale


def cast_float16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The Q/DQ graph with its float parts in float16, as TensorRT runs them next to the quantised
    layers: every float32 initializer and constant float16 (Q/DQ scales included, so a
    DequantizeLinear hands its reader float16, and Casts to float32 become Casts to float16), the
    graph's input and output float32 with a Cast at each end (every artifact takes and returns the
    same tensors), then the fp16 export's safety rules (`exporters.onnx.make_low_precision_safe`:
    LayerNorm statistics and Softmax in float32). The ranges were calibrated on the fp32 graph, as
    TensorRT's own calibrators and ModelOpt calibrate before casting."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    for tensor in graph.initializer:
        _to_half(tensor)
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type in ("Constant", "ConstantOfShape") and attr.type == onnx.AttributeProto.TENSOR:
                _to_half(attr.t)
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == onnx.TensorProto.FLOAT:
                attr.i = onnx.TensorProto.FLOAT16
    nodes = list(graph.node)
    for value in graph.input:
        if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            half = f"{value.name}__fp16"
            _rename_reads(nodes, value.name, half)
            nodes.insert(0, onnx.helper.make_node("Cast", [value.name], [half], name=f"{value.name}_to_fp16", to=onnx.TensorProto.FLOAT16))
    for value in graph.output:
        if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            half = f"{value.name}__fp16"
            for node in nodes:
                node.output[:] = [half if o == value.name else o for o in node.output]
            _rename_reads(nodes, value.name, half)
            nodes.append(onnx.helper.make_node("Cast", [half], [value.name], name=f"{value.name}_to_fp32", to=onnx.TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # the intermediate types changed: the checker infers them again
    make_low_precision_safe(out, onnx.TensorProto.FLOAT16)
    return out


def _rename_reads(nodes: list[onnx.NodeProto], old: str, new: str) -> None:
    for node in nodes:
        node.input[:] = [new if i == old else i for i in node.input]


def _to_half(tensor: onnx.TensorProto) -> None:
    """A float32 tensor as float16, in place: saturating at +-65504, and a non-zero value that would
    round to zero (a tiny scale) kept at the smallest subnormal instead."""
    if tensor.data_type != onnx.TensorProto.FLOAT:
        return
    x = numpy_helper.to_array(tensor).astype(np.float32)
    half = np.clip(x, -HALF_MAX, HALF_MAX).astype(np.float16)
    half = np.where((half == 0) & (x != 0), np.sign(x).astype(np.float16) * HALF_TINY, half).astype(np.float16)
    tensor.CopyFrom(numpy_helper.from_array(half, tensor.name))


# --- timing (latency-table parts) and export --------------------------------------------------------------


def quantize_for_timing(fp32_path: str | os.PathLike, out_path: str | os.PathLike, inputs: np.ndarray, source: str, *,
                        qtype: str = "int8", float_precision: str = "fp32") -> QuantizeResult:
    """The Q/DQ graph of a latency-table part or whole model: the placement `quantize_onnx` gives an
    exported model, ranges from `inputs` (whatever the module takes: images, or tokens for a
    block), without the image checks (a part's input is no photograph). `source` says where the
    inputs came from, for the table's metadata; what an int8 kernel costs does not depend on them."""
    fp32_path = Path(fp32_path)
    _check_options(DEFAULT_METHOD, CALIBRATION_BATCH, qtype, float_precision)
    fp32 = load_graph(fp32_path)
    _check_fp32_graph(fp32, fp32_path)
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    return _quantize(fp32_path, fp32, Path(out_path), x, source, None, method=DEFAULT_METHOD, per_channel=True,
                     batch=CALIBRATION_BATCH, qtype=qtype, float_precision=float_precision, min_count=1)


def timing_inputs(input_shape: Sequence[int]) -> tuple[np.ndarray, str]:
    """Calibration inputs for a table entry of `input_shape` (its batch first) and where they came
    from: natural photographs for a module that takes images (a stem, a whole model); for one that
    takes tokens [B, T, E] (a block, a reduction), the tokens a seeded random-weight patch stem of
    width E makes of natural photographs of sqrt(T - 1) x 16 pixels; seeded N(0, 1) otherwise.
    TIMING_CALIBRATION inputs at least, in whole batches (a part's graph has a static batch)."""
    from deployvit.models import PatchStem
    from deployvit.parts import StemPart
    from exporters.images import natural_samples

    batch = int(input_shape[0])
    n = batch * -(-TIMING_CALIBRATION // batch)
    if len(input_shape) == 4 and input_shape[1] in (1, 3) and input_shape[2] == input_shape[3]:
        samples = natural_samples(n, int(input_shape[2]), int(input_shape[1]))
        return samples.images.numpy(), samples.source
    grid = math.isqrt(max(int(input_shape[1]) - 1, 0)) if len(input_shape) == 3 else 0
    if grid > 0 and grid * grid + 1 == input_shape[1]:
        torch.manual_seed(0)
        stem = PatchStem(StemPart(grid * TIMING_PATCH, TIMING_PATCH, 3, int(input_shape[2]))).eval()
        with torch.no_grad():
            tokens = stem(natural_samples(n, grid * TIMING_PATCH).images)
        return tokens.numpy(), (f"tokens of a seeded random-weight patch stem (width {input_shape[2]}) on {n} natural photographs "
                                f"of {grid * TIMING_PATCH} px")
    x = torch.randn((n, *input_shape[1:]), generator=torch.Generator().manual_seed(0))
    return x.numpy(), f"{n} seeded N(0,1) inputs"


def quantize_part(module: torch.nn.Module, work: Path, input_shape: Sequence[int], qtype: str, float_precision: str = "fp32") -> Path:
    """A table part (or whole model) as the quantised graph a runtime times: exported like every
    part (`export_for_timing`, static shape), quantised like an exported model (`quantize_for_timing`).
    The classifier head stays float in every quantised model (DEFAULT_KEEP_FP), so its part is timed
    as a float part, in `float_precision`."""
    from deployvit.models import Head

    if isinstance(module, Head):
        return export_for_timing(module, work / "part.onnx", tuple(input_shape), float_precision)
    fp32 = export_for_timing(module, work / "part.fp32.onnx", tuple(input_shape), "fp32")
    inputs, source = timing_inputs(input_shape)
    return quantize_for_timing(fp32, work / "part.onnx", inputs, source, qtype=qtype, float_precision=float_precision).path


def fp32_graph_path(path: str | os.PathLike) -> Path:
    """Where a quantised graph's fp32 source is kept: `model.onnx` -> `model.fp32.onnx`."""
    path = Path(path)
    stem = path.name[: -len(".onnx")] if path.name.endswith(".onnx") else path.name
    return path.with_name(f"{stem}.fp32.onnx")


def export_quantized(model: torch.nn.Module, path: str | os.PathLike, calibration: Samples, *, img_size: int, in_chans: int,
                     qtype: str, float_precision: str = "fp32", keep_fp: Sequence[str] | None = None, method: str = DEFAULT_METHOD,
                     opset: int | None = None, dynamic_batch: tuple[int, int, int] | None = None, dynamo: bool = True,
                     metadata: dict[str, Any] | None = None) -> QuantizeResult:
    """Export `model` as fp32 ONNX beside `path` (`fp32_graph_path`: what it was quantised from, and
    what the sensitivity pass and a re-quantisation start from), then write its Q/DQ graph at `path`."""
    fp32 = export_onnx(model, fp32_graph_path(path), img_size=img_size, in_chans=in_chans, precision="fp32", opset=opset,
                       dynamic_batch=dynamic_batch, dynamo=dynamo, metadata=metadata)
    return quantize_onnx(fp32, path, calibration, keep_fp=keep_fp, method=method, qtype=qtype, float_precision=float_precision)
