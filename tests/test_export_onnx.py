"""ONNX export: every preset space round-trips through onnxruntime, fp16/bf16 graphs are built the
numerically safe way, metadata is in the file, and bad requests fail before anything is written."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from deployvit.errors import CheckFailed, DeployvitError
from deployvit.models import build_model
from deployvit.spaces import PRESETS, get_space
from exporters import onnx as onnx_export
from deployvit.runtimes.onnxruntime import OnnxRunner
from exporters.onnx import batch_spec, export_onnx, file_size, read_metadata
from exporters.verify import synthetic_samples, verify
from tests.conftest import shallow

# Full-size presets would take minutes per export on two CPU cores, and what can break in an export
# (ops, shapes, dynamic batch, weight copying) does not depend on the image size. The AutoFormer
# spaces therefore run at 32x32 (2x2 patches of 16); resnas-small needs
# a grid divisible by 4 for its three stages (patch 14), so it runs at 56x56 (4x4, 2x2, 1x1 tokens).
# `test` and `test-resnas` are 32x32 already.
# The ViT families run at 32 (28 for vit-huge's patch 14). Every preset runs at two layers per stage
# (`shallow`: ViT-H/14-sized stacks would not even fit ONNX's 2 GB protobuf limit, and an export's time
# grows with depth); every width, head and ratio choice is kept.
PRESET_SIZES = {"autoformer-tiny": 32, "autoformer-small": 32, "autoformer-base": 32, "resnas-small": 56,
                "test": 32, "test-resnas": 32, "vit-tiny": 32, "vit-small": 32, "vit-base": 32, "vit-large": 32, "vit-huge": 28}


def test_every_preset_is_covered():
    assert set(PRESET_SIZES) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESET_SIZES))
def test_random_arch_of_each_preset_exports_and_verifies_fp32(name, tmp_path):
    """Dynamic batch exercised at 1 and 8 against PyTorch fp32: max |diff| < 1e-4 on CPU."""
    img = PRESET_SIZES[name]
    space = get_space(name)
    # every preset at two layers per stage (`shallow`): export time grows with depth, and every op
    # type, width, head count and ratio of the preset already appears in two layers
    arch = shallow(space).with_overrides(img_size=img).sample(np.random.default_rng(7))
    model = build_model(arch).eval()
    path = export_onnx(model, tmp_path / "m.onnx", img_size=img, dynamic_batch=(1, 8, 16))
    result = verify(model, OnnxRunner(path), synthetic_samples(16, img), batch_sizes=(1, 8), precision="fp32",
                    thresholds=None)
    assert result.passed, result.failed
    assert [m.batch_size for m in result.checks] == [1, 8]
    assert all(m.max_abs_diff < 1e-4 for m in result.checks)
    graph = onnx.load(str(path))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # batch dim is symbolic
    assert read_metadata(path)["arch"] == arch.to_dict()


@pytest.fixture(scope="module")
def tiny():
    arch = get_space("test").sample(np.random.default_rng(3))
    torch.manual_seed(0)
    return arch, build_model(arch).eval()


@pytest.fixture(scope="module")
def fp16_graph(tiny, tmp_path_factory):
    _, model = tiny
    return export_onnx(model, tmp_path_factory.mktemp("fp16") / "m.onnx", img_size=32, precision="fp16")


def _value_types(proto: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(proto)
    vis = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in vis}


def test_fp16_graph_keeps_layernorm_and_softmax_in_fp32(tiny, fp16_graph):
    arch, _ = tiny
    proto = onnx.load(str(fp16_graph))
    ops = [n.op_type for n in proto.graph.node]
    # one LayerNormalization node per norm (2 per block + the final one), never decomposed
    assert ops.count("LayerNormalization") == 2 * arch.depth + 1
    assert "ReduceMean" not in ops and "Pow" not in ops
    for node in proto.graph.node:
        if node.op_type == "LayerNormalization":
            assert {a.name: a.i for a in node.attribute}["stash_type"] == 1
    types = _value_types(proto)
    softmaxes = [n for n in proto.graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == arch.depth
    for node in softmaxes:
        assert types[node.input[0]] == onnx.TensorProto.FLOAT and types[node.output[0]] == onnx.TensorProto.FLOAT
    # float32 in and out, float16 weights inside
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    big = [t for t in proto.graph.initializer if len(t.dims) == 2]
    assert big and all(t.data_type == onnx.TensorProto.FLOAT16 for t in big)
    assert read_metadata(fp16_graph)["precision"] == "fp16"
    assert min(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17


def test_fp16_graph_runs_on_onnxruntime_cpu_close_to_fp32(tiny, fp16_graph):
    """Random weights make near-tied logits, so agreement is checked on a trained model in
    test_export_verify; here the numeric closeness of the fp16 graph."""
    _, model = tiny
    result = verify(model, OnnxRunner(fp16_graph), synthetic_samples(16, 32), batch_sizes=(1, 8), precision="fp16")
    assert all(m.cosine >= 0.999 for m in result.checks)
    assert all(m.max_abs_diff < 1e-2 for m in result.checks)


def test_bf16_graph_needs_opset_22_and_is_reported_unrunnable_on_cpu(tiny, tmp_path):
    _, model = tiny
    with pytest.raises(DeployvitError, match="need >= 22"):
        export_onnx(model, tmp_path / "b.onnx", img_size=32, precision="bf16", opset=20)
    path = export_onnx(model, tmp_path / "b.onnx", img_size=32, precision="bf16")
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version >= 22
    assert any(t.data_type == onnx.TensorProto.BFLOAT16 for t in proto.graph.initializer)
    with pytest.raises(CheckFailed, match="cannot run the bf16 graph"):
        OnnxRunner(path, "cpu")


def test_legacy_exporter_and_static_batch(tiny, tmp_path):
    _, model = tiny
    path = export_onnx(model, tmp_path / "l.onnx", img_size=32, dynamo=False, batch_size=4, opset=17)
    meta = read_metadata(path)
    assert meta["exporter"] == "legacy" and meta["opset"] == 17 and meta["batch"] == {"min": 4, "opt": 4, "max": 4}
    runner = OnnxRunner(path)
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(runner(x), model(x), atol=1e-4)
    with pytest.raises(Exception):
        runner(torch.randn(2, 3, 32, 32))  # a static batch accepts nothing else


def test_metadata_holds_version_and_user_entries(tiny, tmp_path):
    arch, model = tiny
    path = export_onnx(model, tmp_path / "m.onnx", img_size=32, metadata={"source": {"checkpoint": "c.safetensors"}})
    meta = read_metadata(path)
    from deployvit import __version__

    assert meta["version"] == __version__
    assert meta["source"] == {"checkpoint": "c.safetensors"}
    assert meta["arch"] == arch.to_dict()
    assert file_size(path) == path.stat().st_size  # self-contained: no external data file


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"opset": 16}, "need >= 17"),
        ({"precision": "int4"}, "unknown precision"),
        ({"precision": "int8"}, "an int8 graph is quantised from the fp32 one"),  # exporters.quantize does that
        ({"dynamic_batch": (8, 4, 2)}, "need 1 <= min <= opt <= max"),
        ({"dynamic_batch": (0, 1, 2)}, "need 1 <= min <= opt <= max"),
        ({"batch_size": 0}, "batch size must be >= 1"),
        ({"batch_size": 2, "dynamic_batch": (1, 2, 4)}, "not both"),
        ({"input_shape": (1, 3, 32, 32)}, "either img_size or input_shape"),
        ({"img_size": None}, "either img_size or input_shape"),
        ({"img_size": None, "input_shape": (1, 3, 32, 32), "batch_size": 2}, "input_shape fixes the batch"),
    ],
)
def test_bad_requests_fail_before_writing(tiny, tmp_path, kwargs, message):
    _, model = tiny
    with pytest.raises(DeployvitError, match=message):
        export_onnx(model, tmp_path / "m.onnx", **{"img_size": 32, **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destination_is_one_clear_error(tiny, tmp_path):
    _, model = tiny
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DeployvitError, match="cannot"):
        export_onnx(model, blocker / "m.onnx", img_size=32)


def test_failed_export_leaves_nothing(tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.eig(x[:, 0])[0].real  # complex eigenvalues: no ONNX op

    with pytest.raises(onnx_export.ExportFailed, match="ONNX export failed"):
        export_onnx(Broken(), tmp_path / "m.onnx", img_size=4)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_external_data_branch_moves_weights_beside_the_model(tiny, tmp_path):
    """The > 2 GB branch, exercised on a small graph saved with external data."""
    _, model = tiny
    small = export_onnx(model, tmp_path / "small.onnx", img_size=32)
    work = tmp_path / "work"
    work.mkdir()
    proto = onnx.load(str(small))
    onnx.save(proto, str(work / "big.onnx"), save_as_external_data=True, location="big.onnx.data", size_threshold=1024)
    proto = onnx.load(str(work / "big.onnx"), load_external_data=False)
    onnx_export._install(proto, work / "big.onnx", tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").is_file() and not (work / "big.onnx").exists()
    assert file_size(tmp_path / "big.onnx") > (tmp_path / "big.onnx").stat().st_size
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(OnnxRunner(tmp_path / "big.onnx")(x), model(x), atol=1e-4)


def test_batch_spec_example_batch_is_at_least_two():
    assert batch_spec(None, (1, 1, 8)).example == 2  # batch 1 would specialise the dynamic dim
    assert batch_spec(None, (1, 4, 8)).example == 4
    assert batch_spec(1, None).example == 1 and not batch_spec(1, None).dynamic
    assert str(batch_spec()) == "1,8,32"


def test_one_runner_binds_each_batch_size_once(tiny, tmp_path):
    """A dynamic-batch artifact: `runner(x)` binds one input/output buffer pair per batch size and
    reuses it; `bind` gives timing the same call on a fixed input."""
    _, model = tiny
    path = export_onnx(model, tmp_path / "d.onnx", img_size=32, dynamic_batch=(1, 4, 8))
    runner = OnnxRunner(path, "cpu", threads=1)
    images = synthetic_samples(8, 32).images
    with torch.no_grad():
        want = model(images)
    for _ in range(2):
        assert (runner(images[:1]) - want[:1]).abs().max() < 1e-4
        assert (runner(images) - want).abs().max() < 1e-4
    assert sorted(runner._bound) == [(1, 3, 32, 32), (8, 3, 32, 32)]
    run = runner.bind(images[:4])
    assert run().shape == (4, want.shape[1]) and (run() - want[:4]).abs().max() < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnxruntime_cuda_artifact_passes_the_gate_or_refuses(tiny, tmp_path, precision):
    """With onnxruntime-gpu: the artifact on the CUDA provider (TF32 off) passes the default gate of
    its precision. With the CPU package: the one-line install refusal, never a CPU fallback."""
    import onnxruntime as ort

    from deployvit.errors import MissingDependency

    _, model = tiny
    path = export_onnx(model, tmp_path / "g.onnx", img_size=32, precision=precision, dynamic_batch=(1, 4, 8))
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(MissingDependency, match="pip install onnxruntime-gpu"):
            OnnxRunner(path, "cuda")
        pytest.skip("onnxruntime-gpu is not installed: refusal checked, the CUDA run is not")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    runner = OnnxRunner(path, "cuda")
    assert runner.session.get_providers()[0] == "CUDAExecutionProvider"
    ref = model.cuda()
    result = verify(lambda x: ref(x.cuda()), runner, synthetic_samples(32, 32), batch_sizes=(1, 8), precision=precision)
    model.cpu()
    if precision == "fp32":
        assert result.passed, result.failed
    else:  # random weights give near-tied logits: agreement is checked on trained models (test_export_verify)
        assert all(m.cosine >= 0.999 for m in result.checks), result.failed


def test_the_timing_export_computes_what_the_dynamo_export_computes(tmp_path):
    """`export_for_timing` (what the onnxruntime runtime times table parts and whole models on) uses
    the cheap legacy exporter at fp32 and gives the dynamo graph's outputs; low precision stays dynamo."""
    import onnxruntime as ort

    from deployvit.models import build_part
    from deployvit.parts import space_parts
    from exporters.onnx import export_for_timing

    space = get_space("test")
    torch.manual_seed(0)
    cases = [(build_part(p).eval(), p.input_shape(2)) for p in space_parts(space)[:2]]
    cases.append((build_model(space.max_arch()).eval(), (2, 3, 32, 32)))
    for i, (module, shape) in enumerate(cases):
        fast = export_for_timing(module, tmp_path / f"fast{i}.onnx", shape)
        slow = export_onnx(module, tmp_path / f"slow{i}.onnx", input_shape=shape)
        assert read_metadata(fast)["exporter"] == "legacy" and read_metadata(slow)["exporter"] == "dynamo"
        x = torch.randn(shape).numpy()
        got, want = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0] for p in (fast, slow))
        assert got.shape == want.shape and abs(got - want).max() < 1e-5
    low = export_for_timing(cases[0][0], tmp_path / "fp16.onnx", cases[0][1], precision="fp16")
    assert read_metadata(low)["exporter"] == "dynamo" and read_metadata(low)["precision"] == "fp16"
