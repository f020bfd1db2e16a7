"""PyTorch -> ONNX: one function, `export_onnx`, shared by `deployvit export`, `deployvit benchmark`
and the latency profiler's file-based runtimes (`deployvit.runtimes`, which run what it writes).

Why each rule (docs/DESIGN.md section 5, docs/REFERENCES.md section 6):
- opset >= 17 keeps LayerNorm one `LayerNormalization` node; older opsets decompose it into
  ReduceMean/Pow/Sqrt, which overflows in fp16 on TensorRT.
- the dynamo exporter (torch's default) is used unless `dynamo=False`; it specialises the batch dim
  when traced at batch 1, so a dynamic batch is exported from an example batch >= 2.
- TensorRT 11 builds strongly typed networks only, so an fp16/bf16 engine needs an fp16/bf16 graph:
  the model is cast inside the graph (float32 input and logits, so every artifact takes the same
  tensors), LayerNormalization keeps `stash_type=1` (statistics in float32) and every Softmax is
  computed in float32 between two Casts.
- one self-contained file unless the weights pass protobuf's 2 GB limit (then `<name>.data` beside it);
  written through a temp folder and renamed last, so a killed export never leaves a half file.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from deployvit import __version__, io
from deployvit.compute import TORCH_DTYPES, CastModel
from deployvit.errors import CheckFailed, DeployvitError
from deployvit.settings import PRECISIONS

MIN_OPSET = 17
DEFAULT_OPSET = 20  # native Gelu; opset 23+ may emit Attention nodes that older TensorRT cannot parse
BF16_MIN_OPSET = 22  # Conv accepts bfloat16 only from opset 22
ONNX_DTYPES = {"fp32": onnx.TensorProto.FLOAT, "fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}
INPUT_NAME, OUTPUT_NAME = "input", "logits"
PROTOBUF_LIMIT = 2**31  # bytes: beyond this a ModelProto cannot be serialised as one file
META_PREFIX = "deployvit."


class ExportFailed(CheckFailed):
    """The exporter itself failed on a valid request (exit 1, status "export failed")."""


@dataclass(frozen=True)
class BatchSpec:
    """The batch sizes an artifact accepts: static when min == max, else a dynamic dim.

    `opt` is the size TensorRT tunes kernels for; onnxruntime only needs the range."""

    min: int
    opt: int
    max: int

    @property
    def dynamic(self) -> bool:
        return self.min != self.max

    @property
    def example(self) -> int:
        """Batch of the traced example: >= 2 for a dynamic dim (batch 1 specialises it)."""
        return self.max if not self.dynamic else min(max(self.opt, 2), self.max)

    def __str__(self) -> str:
        return f"{self.min},{self.opt},{self.max}" if self.dynamic else str(self.max)


def batch_spec(batch_size: int | None = None, dynamic_batch: tuple[int, int, int] | None = None) -> BatchSpec:
    """Validate `--batch-size` / `--dynamic-batch` into one BatchSpec (default: dynamic 1..32, opt 8)."""
    if batch_size is not None and dynamic_batch is not None:
        raise DeployvitError("give either a static batch size or a dynamic batch range, not both")
    if batch_size is not None:
        if batch_size < 1:
            raise DeployvitError(f"batch size must be >= 1, got {batch_size}")
        return BatchSpec(batch_size, batch_size, batch_size)
    lo, opt, hi = dynamic_batch if dynamic_batch is not None else (1, 8, 32)
    if not 1 <= lo <= opt <= hi:
        raise DeployvitError(f"dynamic batch range {lo},{opt},{hi}: need 1 <= min <= opt <= max")
    return BatchSpec(lo, opt, hi)


def default_opset(precision: str) -> int:
    return BF16_MIN_OPSET if precision == "bf16" else DEFAULT_OPSET


def check_opset(precision: str, opset: int | None) -> int:
    """The opset to export `precision` with (the default when None); DeployvitError if too old."""
    opset = default_opset(precision) if opset is None else opset
    if opset < MIN_OPSET:
        raise DeployvitError(f"opset {opset} is too old: need >= {MIN_OPSET} (one LayerNormalization node, fp16-safe)")
    if precision == "bf16" and opset < BF16_MIN_OPSET:
        raise DeployvitError(f"opset {opset} cannot hold a bf16 graph: need >= {BF16_MIN_OPSET} (bfloat16 Conv)")
    return opset


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    img_size: int | None = None,
    in_chans: int = 3,
    input_shape: tuple[int, ...] | None = None,
    precision: str = "fp32",
    opset: int | None = None,
    batch_size: int | None = None,
    dynamic_batch: tuple[int, int, int] | None = None,
    dynamo: bool = True,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export `model` (float32, any device) to a checked ONNX file at `path` and return the path.

    Without `batch_size` or `dynamic_batch` the batch dim is dynamic (1..32). `opset` defaults to 20
    (22 for bf16). `metadata` entries are stored as `deployvit.<key>` metadata_props (non-strings as
    JSON); the deployvit version, precision, opset, exporter and batch are always stored, and a
    deployvit ViT's arch JSON too. The input is `input` [B, in_chans, img_size, img_size] float32 and
    the output `logits` [B, classes] float32 at every precision.

    `input_shape` instead of `img_size` exports any module (a latency-table part takes tokens, not
    images) with exactly that static input shape, batch included."""
    if precision not in PRECISIONS:
        raise DeployvitError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    opset = check_opset(precision, opset)
    if (img_size is None) == (input_shape is None):
        raise DeployvitError("give the export either img_size or input_shape")
    if input_shape is not None:
        if batch_size is not None or dynamic_batch is not None:
            raise DeployvitError("input_shape fixes the batch; do not also give a batch size or range")
        batch_size = input_shape[0]
    batch = batch_spec(batch_size, dynamic_batch)
    path = Path(path)
    meta = _metadata(model, precision, opset, dynamo, batch, metadata)

    net = copy.deepcopy(model).float().eval().cpu()
    if precision != "fp32":
        net = CastModel(net, TORCH_DTYPES[precision]).eval()
    shape = input_shape if input_shape is not None else (batch.example, in_chans, img_size, img_size)
    example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=_writable_parent(path)))
    except OSError as exc:
        raise DeployvitError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        raw = work / path.name
        proto = _run_exporter(net, example, raw, opset, dynamo, batch)
        if precision != "fp32":
            make_low_precision_safe(proto, ONNX_DTYPES[precision])
        _set_metadata(proto, meta)
        _install(proto, raw, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def export_for_timing(module: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...], precision: str = "fp32") -> Path:
    """A static-shape graph of `module` to time (a latency-table part or whole model), made cheaply.

    `export_onnx` runs torch's dynamo exporter, about 2 s of CPU per block (1.8 s for an
    autoformer-tiny block, 2.5 s for a `test` one; a profile exports every part and 60 whole models).
    At fp32 this uses the legacy TorchScript exporter instead, 0.05 s per block, when this torch still
    has it: its graph computes the same outputs (checked by the tests), and after onnxruntime's graph
    optimisation it runs the same kernels; dynamo's graph keeps a few more Reshapes (no-copy), timed
    within 0.1% at autoformer-tiny size and at most 5% apart on the 60-100 us blocks of the `test`
    space (1% on its whole models, which calibrate the parts in the same graphs). fp16/bf16 keep
    dynamo: the legacy graph computes attention's scale with Sqrt/Div nodes that onnxruntime cannot
    fold in fp16, extra kernels on a GPU. Any legacy failure falls back to dynamo. `deployvit export`
    keeps `export_onnx`'s dynamo graph."""
    if precision == "fp32":
        try:
            return export_onnx(module, path, input_shape=input_shape, precision=precision, dynamo=False)
        except ExportFailed:
            pass
    return export_onnx(module, path, input_shape=input_shape, precision=precision)


def _writable_parent(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeployvitError(f"cannot create {path.parent}: {exc.strerror or exc}") from None
    return path.parent


def _run_exporter(net: nn.Module, example: torch.Tensor, raw: Path, opset: int, dynamo: bool, batch: BatchSpec) -> onnx.ModelProto:
    """Run the exporter; the graph comes back in memory when it fits in one protobuf, else it is
    saved to `raw` (weights beside it in `raw.data`) and returned without its weights."""
    big = sum(t.numel() * t.element_size() for t in net.state_dict().values()) >= PROTOBUF_LIMIT
    names = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
    which = "dynamo" if dynamo else "legacy"
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer chatter; failures surface as exceptions
            if dynamo:
                dims = ({0: torch.export.Dim("batch", min=batch.min, max=batch.max)},) if batch.dynamic else None
                program = torch.onnx.export(net, (example,), dynamo=True, verbose=False, dynamic_shapes=dims, **names)
                if not big:
                    return program.model_proto
                program.save(raw, external_data=True)
            else:
                axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if batch.dynamic else None
                torch.onnx.export(net, (example,), str(raw), dynamo=False, dynamic_axes=axes, **names)
            return onnx.load(str(raw), load_external_data=False)
    except DeployvitError:
        raise
    except Exception as exc:  # the exporters raise many types; the user needs the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "; try the legacy exporter" if dynamo else ""
        raise ExportFailed(f"ONNX export failed ({which} exporter, opset {opset}): {first}{hint}") from None


def make_low_precision_safe(proto: onnx.ModelProto, dtype: int) -> None:
    """Make a float16/bfloat16 graph numerically safe in place: LayerNormalization statistics in
    float32 (`stash_type=1`) and every Softmax computed in float32 between two Casts."""
    nodes = []
    for node in proto.graph.node:
        if node.op_type == "LayerNormalization":
            _set_int_attr(node, "stash_type", 1)
        if node.op_type != "Softmax":
            nodes.append(node)
            continue
        src, dst = node.input[0], node.output[0]
        up, down = f"{src}__fp32_{node.name}", f"{dst}__fp32_{node.name}"
        nodes.append(onnx.helper.make_node("Cast", [src], [up], name=f"{node.name}_to_fp32", to=onnx.TensorProto.FLOAT))
        node.input[0], node.output[0] = up, down
        nodes.append(node)
        nodes.append(onnx.helper.make_node("Cast", [down], [dst], name=f"{node.name}_from_fp32", to=dtype))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)  # value_info stays right: src and dst keep their low-precision types


def _set_int_attr(node: onnx.NodeProto, name: str, value: int) -> None:
    for attr in node.attribute:
        if attr.name == name:
            attr.i = value
            return
    node.attribute.append(onnx.helper.make_attribute(name, value))


def _metadata(model: nn.Module, precision: str, opset: int, dynamo: bool, batch: BatchSpec, extra: dict | None) -> dict[str, str]:
    meta: dict[str, Any] = {
        "version": __version__,
        "precision": precision,
        "opset": opset,
        "exporter": "dynamo" if dynamo else "legacy",
        "batch": {"min": batch.min, "opt": batch.opt, "max": batch.max},
    }
    arch = getattr(model, "arch", None)
    if arch is not None and hasattr(arch, "to_dict"):
        meta["arch"] = arch.to_dict()
    meta.update(extra or {})
    return {META_PREFIX + k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in meta.items()}


def _set_metadata(proto: onnx.ModelProto, meta: dict[str, str]) -> None:
    kept = [p for p in proto.metadata_props if p.key not in meta]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in kept}, **meta})


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The `deployvit.*` metadata of an exported file, JSON values decoded, prefix removed."""
    proto = load_graph(path)
    out: dict[str, Any] = {}
    for prop in proto.metadata_props:
        if prop.key.startswith(META_PREFIX):
            try:
                out[prop.key[len(META_PREFIX):]] = json.loads(prop.value)
            except json.JSONDecodeError:
                out[prop.key[len(META_PREFIX):]] = prop.value
    return out


def load_graph(path: str | os.PathLike) -> onnx.ModelProto:
    """The graph of an ONNX file without its weights (cheap, any size); one-line error if unreadable."""
    try:
        return onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise DeployvitError(f"ONNX file not found: {path}") from None
    except Exception as exc:  # protobuf DecodeError and friends
        raise DeployvitError(f"cannot read ONNX file {path}: {exc}") from None


def _install(proto: onnx.ModelProto, raw: Path, path: Path) -> None:
    """Check the graph and move it (and its external data, if any) onto `path`, the .onnx file last."""
    data_files = _external_files(proto)
    if not data_files and proto.ByteSize() < PROTOBUF_LIMIT:
        _check(proto)
        with io.atomic_path(path) as tmp:
            onnx.save(proto, str(tmp))
        return
    onnx.save(proto, str(raw))  # weights stay in raw's `.data` file, referenced by relative name
    _check(str(raw), full=False)  # by path: the checker streams > 2 GB models; shape inference cannot
    for data in data_files:
        os.replace(raw.parent / data, path.parent / data)
    os.replace(raw, path)


def _check(model: onnx.ModelProto | str, full: bool = True) -> None:
    """onnx.checker; `full` adds strict shape inference (needs the weights in memory)."""
    try:
        onnx.checker.check_model(model, full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ExportFailed(f"exported ONNX graph failed onnx.checker: {first}") from None


def file_size(path: str | os.PathLike) -> int:
    """Bytes of an ONNX file plus its external data files (what a user has to ship)."""
    path = Path(path)
    return path.stat().st_size + sum((path.parent / d).stat().st_size for d in _external_files(load_graph(path)))


def _external_files(proto: onnx.ModelProto) -> set[str]:
    """Names (relative to the model) of the files holding external weights."""
    return {
        entry.value
        for t in proto.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for entry in t.external_data
        if entry.key == "location"
    }
