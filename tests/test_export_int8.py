"""INT8 post-training quantisation on a briefly trained digits model (CPU, onnxruntime): the Q/DQ graph
and its placement, the accuracy gate, the sensitivity pass, calibration on real images only, and
determinism. Plus the natural photographs that stand in for a data set when there is none."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from deployvit.commands.export import data_samples
from deployvit.errors import DeployvitError
from deployvit.train.calibration import calibration_indices, calibration_samples
from exporters.images import MIN_NEIGHBOUR_CORRELATION, natural_samples, neighbour_correlation
from exporters.onnx import export_onnx, read_metadata
from exporters.quant_gate import DEFAULT_MAX_ACCURACY_DROP, GateThresholds, check_accuracy, sensitivity
from exporters.quantize import QUANTIZED_OPS, keep_float, quantizable_layers, quantize_onnx, select_layers
from exporters.verify import synthetic_samples
from tests.test_export_verify import train_briefly

from deployvit.runtimes.onnxruntime import OnnxRunner

CALIBRATION = 128  # of digits' 1438 train images: enough for stable ranges on a 32x32 model, quick here


def ort(path) -> OnnxRunner:
    return OnnxRunner(path, "cpu", threads=1)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """The briefly trained test-resnas model as fp32 ONNX, its INT8 graph, calibration and val images."""
    arch, model = train_briefly()
    work = tmp_path_factory.mktemp("int8")
    fp32 = export_onnx(model, work / "fp32.onnx", img_size=arch.img_size)
    calib = calibration_samples("digits", arch.img_size, n=CALIBRATION)
    val = data_samples("digits", arch.img_size, limit=359)
    result = quantize_onnx(fp32, work / "int8.onnx", calib)
    return {"work": work, "fp32": fp32, "int8": work / "int8.onnx", "calib": calib, "val": val, "result": result}


def _producers(proto: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in proto.graph.node for o in n.output}


def test_int8_graph_has_qdq_in_front_of_matmul_conv_and_keeps_the_rest_float(model_files):
    proto = onnx.load(str(model_files["int8"]))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    made, inits = _producers(proto), {t.name: t for t in proto.graph.initializer}
    result = model_files["result"]
    assert result.kept == [l.name for l in result.layers if l.group == "head"] and result.kept  # the classifier head
    kept_nodes = {n for l in result.layers if l.name in result.kept for n in l.nodes}
    for node in proto.graph.node:
        fed_by_dq = [i for i in node.input if i in made and made[i].op_type == "DequantizeLinear"]
        if node.op_type in QUANTIZED_OPS and node.name not in kept_nodes:
            assert len(fed_by_dq) == 2, node.name  # activation and weight (or both activations) quantised
        else:  # LayerNorm, Softmax, GELU, residual Adds, pooling, Shape, the head: float inputs
            assert not fed_by_dq, (node.op_type, node.name)
        if node.op_type == "QuantizeLinear":
            assert made.get(node.input[0]) is None or made[node.input[0]].op_type not in QUANTIZED_OPS  # no output quantisation
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear":
            scale, zero = inits[node.input[1]], numpy_helper.to_array(inits[node.input[2]])
            assert zero.dtype == np.int8 and not zero.any()  # symmetric int8 everywhere (TensorRT's requirement)
            if node.input[0] in inits:  # a weight: int8 initializer, one scale per output channel
                assert inits[node.input[0]].data_type == onnx.TensorProto.INT8
                assert len(scale.dims) == 1 and scale.dims[0] > 1
            else:
                assert len(scale.dims) == 0  # an activation: one scale per tensor
    meta = read_metadata(model_files["int8"])
    assert meta["precision"] == "int8" and meta["quantization"]["calibration_count"] == CALIBRATION
    assert meta["quantization"]["kept"] == result.kept and meta["arch"]["space"] == "test-resnas"


def test_int8_graph_runs_in_onnxruntime_and_passes_the_default_gate(model_files):
    val = model_files["val"]
    gate = check_accuracy(ort(model_files["fp32"]), ort(model_files["int8"]), val)
    drop = gate.overall.top1_drop
    print(f"\nINT8 vs fp32 on {len(val)} digits val images: top-1 {gate.overall.top1_reference:.2f} -> {gate.overall.top1:.2f} "
          f"(drop {drop:.2f}), agreement {gate.overall.agreement:.2%}, lowest batch cosine {min(gate.batch_cosines):.5f}")
    assert gate.overall.top1_reference > 60  # the model learned something: the gate means something
    assert gate.passed, gate.failed
    assert drop is not None and drop <= DEFAULT_MAX_ACCURACY_DROP
    assert gate.overall.max_abs_diff > 0  # really quantised: the logits moved
    assert len(gate.batch_cosines) == -(-len(val) // 32) and all(0.99 <= c <= 1 + 1e-9 for c in gate.batch_cosines)
    assert json.dumps(gate.to_dict())


def test_a_gate_below_the_measured_drop_fails_and_sensitivity_names_the_layers_that_fix_it(model_files):
    val, fp32 = model_files["val"], model_files["fp32"]
    ref = torch.cat([ort(fp32)(val.images[i : i + 32]) for i in range(0, len(val), 32)])
    measured = check_accuracy(ref, ort(model_files["int8"]), val)
    # tighter than what int8 achieved, loose enough for an all-float graph: on the top-1 drop when
    # int8 lost accuracy here, on the batch cosine otherwise (both are part of the gate)
    if measured.overall.top1_drop > 0:
        strict = GateThresholds(max_accuracy_drop=measured.overall.top1_drop / 2)
    else:
        strict = GateThresholds(min_batch_cosine=1 - (1 - min(measured.batch_cosines)) / 4)
    gate = check_accuracy(ref, ort(model_files["int8"]), val, thresholds=strict)
    assert not gate.passed and gate.failed[0].startswith("int8 gate, batch ")
    sens = sensitivity(model_files["result"], fp32, val, runner_for=ort, reference=ref, thresholds=strict, budget_s=120, subset=64)
    assert sens.complete and sens.passed, sens.advice()
    advised = [name for name in sens.keep_fp if name not in model_files["result"].kept]
    assert advised and "keep in higher precision: " in sens.advice() and advised[0] in sens.advice()
    assert {u.kind for u in sens.units} <= {"group", "layer"} and sens.units[0].cosine_distance >= sens.units[-1].cosine_distance
    again = quantize_onnx(fp32, model_files["work"] / "advised.onnx", model_files["calib"], keep_fp=sens.keep_fp)
    assert all(l.name in again.kept for l in select_layers(again.layers, advised))
    assert check_accuracy(ref, ort(again.path), val, thresholds=strict).passed  # the advice holds when quantising for real


def test_gate_thresholds_are_checked():
    with pytest.raises(DeployvitError, match="min_agreement is a fraction"):
        GateThresholds(min_agreement=95)
    with pytest.raises(DeployvitError, match="max_accuracy_drop must be a finite number"):
        GateThresholds(max_accuracy_drop=float("nan"))
    assert GateThresholds(min_batch_cosine=None).verify.min_cosine is None


def test_a_sensitivity_pass_with_no_time_says_it_is_incomplete(model_files):
    sens = sensitivity(model_files["result"], model_files["fp32"], model_files["val"], runner_for=ort, budget_s=1e-9)
    assert not sens.complete and "time budget" in sens.advice()


def test_noise_and_synthetic_calibration_are_refused_in_one_line(model_files):
    fp32, out = model_files["fp32"], model_files["work"] / "noise.onnx"
    with pytest.raises(DeployvitError, match="real images") as err:
        quantize_onnx(fp32, out, synthetic_samples(64, 32))
    assert "\n" not in str(err.value)
    for noise in (torch.randn(64, 3, 32, 32), torch.rand(64, 3, 32, 32) * 4 - 2):
        with pytest.raises(DeployvitError, match="look like noise"):
            quantize_onnx(fp32, out, noise)
    with pytest.raises(DeployvitError, match="at least 32 images"):
        quantize_onnx(fp32, out, model_files["calib"].images[:8])
    with pytest.raises(DeployvitError, match="the model takes Nx3x32x32"):
        quantize_onnx(fp32, out, natural_samples(32, 64).images)
    with pytest.raises(DeployvitError, match="keep-fp pattern 'nosuch' matches no quantisable layer"):
        quantize_onnx(fp32, out, model_files["calib"], keep_fp=["nosuch"])
    with pytest.raises(DeployvitError, match="unknown calibration method"):
        quantize_onnx(fp32, out, model_files["calib"], method="entropy")
    with pytest.raises(DeployvitError, match="already quantised"):
        quantize_onnx(model_files["int8"], out, model_files["calib"])
    assert not out.exists() and not list(model_files["work"].glob(".noise.onnx*"))


def test_an_fp16_graph_is_refused(model_files, tmp_path):
    """A float16 graph (any exporter's: no deployvit metadata) is refused by its weights' type."""
    from onnx import TensorProto, helper

    weight = numpy_helper.from_array(np.ones((3 * 32 * 32, 10), np.float16), "w")
    graph = helper.make_graph([helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
                              "fp16", [helper.make_tensor_value_info("input", TensorProto.FLOAT16, ["batch", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, ["batch", 10])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(tmp_path / "fp16.onnx"))
    with pytest.raises(DeployvitError, match="starts from an fp32 graph"):
        quantize_onnx(tmp_path / "fp16.onnx", tmp_path / "x.onnx", model_files["calib"])
    assert not (tmp_path / "x.onnx").exists()


def test_quantisation_is_deterministic(model_files, tmp_path):
    again = quantize_onnx(model_files["fp32"], tmp_path / "again.onnx", calibration_samples("digits", 32, n=CALIBRATION))
    assert again.path.read_bytes() == model_files["int8"].read_bytes()
    assert again.calibration_sha256 == model_files["result"].calibration_sha256


def test_keep_fp_patterns_and_keep_float(model_files, tmp_path):
    result = model_files["result"]
    group = next(l.group for l in result.layers if l.group not in ("head", "stem"))
    chosen = quantize_onnx(model_files["fp32"], tmp_path / "g.onnx", model_files["calib"], keep_fp=[group])
    assert chosen.kept == [l.name for l in result.layers if l.group == group]  # the head is quantised: keep_fp replaces the default
    everything = quantize_onnx(model_files["fp32"], tmp_path / "all.onnx", model_files["calib"], keep_fp=())
    assert everything.kept == [] and everything.quantized == [l.name for l in result.layers]
    # keeping every layer float gives back the fp32 graph's computation, exactly
    fp32 = onnx.load(str(model_files["fp32"]))
    plain = keep_float(result.full_model, fp32, [n for l in result.layers for n in l.nodes])
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in plain.graph.node}
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    x = model_files["val"].images[:32]
    assert torch.equal(ort(tmp_path / "plain.onnx")(x), ort(model_files["fp32"])(x))


def test_layers_are_named_by_module_and_grouped_by_block(model_files):
    layers = quantizable_layers(onnx.load(str(model_files["fp32"])))
    names = [l.name for l in layers]
    assert names[-1].startswith("head.") and any(n.endswith(".attn.qkv") for n in names)
    assert any(l.op == "MatMul+MatMul" and l.name.endswith("scaled_dot_product_attention") for l in layers)
    assert all(l.group == l.name.split(".")[0] or l.name.startswith(l.group + ".") for l in layers)
    assert select_layers(layers, ["*.mlp.fc2"]) and select_layers(layers, ["head"])[0].name == names[-1]


def test_calibration_images_come_from_the_training_split_deterministically():
    a = calibration_samples("digits", 32, n=64)
    b = calibration_samples("digits", 32, n=64)
    assert torch.equal(a.images, b.images) and "train images drawn with seed 0" in a.source
    assert calibration_indices(1438, 64) != calibration_indices(1438, 64, seed=1)
    val = data_samples("digits", 32, limit=359).images
    assert not any(torch.equal(img, v) for img in a.images[:16] for v in val)  # none of them is a verification image
    assert neighbour_correlation(a.images) > MIN_NEIGHBOUR_CORRELATION


def test_natural_samples_are_deterministic_photographs():
    s = natural_samples(6, 48)
    assert s.images.shape == (6, 3, 48, 48) and s.labels is None and s.source.startswith("natural:")
    assert torch.equal(s.images, natural_samples(6, 48).images)
    assert not torch.equal(s.images, natural_samples(6, 48, seed=1).images)
    assert not torch.equal(s.images[2], s.images[4])  # every image is its own crop
    assert neighbour_correlation(s.images) > 0.8 > 0.05 > abs(neighbour_correlation(synthetic_samples(6, 48).images))
    grey = natural_samples(3, 32, in_chans=1, mean=(0.5,), std=(0.25,))
    assert grey.images.shape == (3, 1, 32, 32)
    raw = natural_samples(4, 32, mean=(0, 0, 0), std=(1, 1, 1)).images
    assert raw.min() >= 0 and raw.max() <= 1 and raw.std() > 0.1
    with pytest.raises(DeployvitError, match="4 input channels"):
        natural_samples(2, 32, in_chans=4)


def test_natural_photographs_are_accepted_for_calibration(model_files, tmp_path):
    result = quantize_onnx(model_files["fp32"], tmp_path / "nat.onnx", natural_samples(32, 32, mean=(0.3,) * 3, std=(0.37,) * 3))
    assert result.calibration.startswith("natural:") and result.calibration_count == 32
    assert ort(result.path)(model_files["val"].images[:4]).shape == (4, 10)


def test_calibration_reads_an_image_folder_and_refuses_one_too_small(tmp_path):
    from PIL import Image

    photos = natural_samples(44, 40, mean=(0, 0, 0), std=(1, 1, 1)).images  # photographs as [0, 1] pixels
    pixels = (photos.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    for i, arr in enumerate(pixels):
        split = "val" if i >= 40 else "train"
        (tmp_path / "big" / split / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(tmp_path / "big" / split / f"c{i % 2}" / f"{i}.png")
    calib = calibration_samples(str(tmp_path / "big"), 32, n=32)
    assert calib.images.shape == (32, 3, 32, 32) and calib.source.startswith("imagefolder ") and "32 of 40 train images" in calib.source
    assert neighbour_correlation(calib.images) > MIN_NEIGHBOUR_CORRELATION
    for i in range(4):
        for split in ("train", "val"):
            (tmp_path / "small" / split / "c0").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[i]).save(tmp_path / "small" / split / "c0" / f"{i}.png")
    with pytest.raises(DeployvitError, match="needs at least 32 training images, the train split has 4"):
        calibration_samples(str(tmp_path / "small"), 32)


# --- phase B: fp8, fp16 float parts (TensorRT's graph), legacy names, table parts ----------------------


def _initializers(proto: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in proto.graph.initializer}


def test_fp8_graph_has_e4m3_qdq_from_the_calibration_amax_and_passes_the_gate_simulated(model_files, tmp_path):
    """FP8 (E4M3FN) Q/DQ at int8's places: activation scales = 127/448 x int8's (the same calibration
    amax), weights per channel from the fp32 weights (scale = channel amax / 448); onnxruntime's CPU
    provider simulates FP8 by rounding, so the accuracy of the graph TensorRT would build is checked here."""
    fp8 = quantize_onnx(model_files["fp32"], tmp_path / "fp8.onnx", model_files["calib"], qtype="fp8")
    int8 = onnx.load(str(model_files["int8"]))
    proto = onnx.load(str(fp8.path))
    assert fp8.quantized == model_files["result"].quantized and fp8.qtype == "fp8"
    assert read_metadata(fp8.path)["precision"] == "fp8" and read_metadata(fp8.path)["quantization"]["qtype"] == "fp8"
    inits, int8_inits = _initializers(proto), _initializers(int8)
    fp32_weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(model_files["fp32"])).graph.initializer}
    fp32_nodes = {n.name: n for n in onnx.load(str(model_files["fp32"])).graph.node}
    readers = {i: n for n in proto.graph.node for i in n.input}
    checked_weight = checked_act = 0
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        assert inits[node.input[2]].data_type == onnx.TensorProto.FLOAT8E4M3FN
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        if node.input[0] in inits:
            assert inits[node.input[0]].data_type == onnx.TensorProto.FLOAT8E4M3FN
            reader = readers[node.output[0]]
            idx = list(reader.input).index(node.output[0])
            weight = fp32_weights[fp32_nodes[reader.name].input[idx]]
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            amax = np.abs(weight).max(axis=tuple(d for d in range(weight.ndim) if d != axis % weight.ndim))
            np.testing.assert_allclose(scale, amax / 448, rtol=1e-6)
            checked_weight += 1
        elif node.input[1] in int8_inits:
            np.testing.assert_allclose(scale, numpy_helper.to_array(int8_inits[node.input[1]]) * 127 / 448, rtol=1e-6)
            checked_act += 1
    assert checked_weight > 5 and checked_act > 5
    gate = check_accuracy(ort(model_files["fp32"]), ort(fp8.path), model_files["val"])
    print(f"\nFP8 (simulated) top-1 drop {gate.overall.top1_drop:.2f}, agreement {gate.overall.agreement:.2%}")
    assert gate.passed, gate.failed


def test_fp16_float_parts_for_tensorrt_keep_the_placement_and_io(model_files, tmp_path):
    """TensorRT's graph: the same Q/DQ, fp16 scales (a DequantizeLinear hands its layer fp16), float32
    input and logits, LayerNorm statistics and Softmax in fp32; it runs (onnxruntime CPU) close to the
    fp32-float graph."""
    half = quantize_onnx(model_files["fp32"], tmp_path / "half.onnx", model_files["calib"], float_precision="fp16")
    proto = onnx.load(str(half.path))
    assert read_metadata(half.path)["float_precision"] == "fp16" and half.quantized == model_files["result"].quantized
    inits = _initializers(proto)
    assert not [t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    assert all(inits[n.input[1]].data_type == onnx.TensorProto.FLOAT16 for n in proto.graph.node if n.op_type == "DequantizeLinear")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    made = _producers(proto)
    for node in proto.graph.node:
        if node.op_type == "Softmax":
            assert made[node.input[0]].op_type == "Cast" and made[node.input[0]].attribute[0].i == onnx.TensorProto.FLOAT
        if node.op_type == "LayerNormalization":
            assert next(a.i for a in node.attribute if a.name == "stash_type") == 1
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") == [n.op_type for n in onnx.load(str(model_files["int8"])).graph.node].count("QuantizeLinear")
    x = model_files["val"].images[:64]
    got, want = ort(half.path)(x), ort(model_files["int8"])(x)
    assert torch.nn.functional.cosine_similarity(got, want, dim=1).min() > 0.99


def test_legacy_exporter_graphs_name_layers_like_dynamo(model_files, tmp_path):
    """The TorchScript exporter's node names (`/stages.0/stages.0.0/attn/qkv/MatMul`) give the module
    paths dynamo's metadata gives, so `--legacy-exporter` and table parts keep the head float too."""
    arch, model = train_briefly()
    legacy = export_onnx(model, tmp_path / "legacy.onnx", img_size=arch.img_size, dynamo=False)
    dynamo_names = {l.name for l in quantizable_layers(onnx.load(str(model_files["fp32"])))}
    legacy_layers = quantizable_layers(onnx.load(str(legacy)))
    weights = {l.name for l in legacy_layers if "scaled_dot_product_attention" not in l.name and not l.name.endswith(".MatMul")}
    assert weights == {n for n in dynamo_names if "scaled_dot_product_attention" not in n}
    result = quantize_onnx(legacy, tmp_path / "legacy8.onnx", model_files["calib"])
    assert result.kept == ["head.fc"]


def test_keep_fp_is_checked_against_the_model_before_export(model_files):
    from exporters.quantize import check_keep_fp

    _, model = train_briefly()
    check_keep_fp(model, ["head", "*.mlp.fc2", model_files["result"].quantized[1]])
    with pytest.raises(DeployvitError, match="keep-fp pattern 'stages.9' matches no quantisable layer"):
        check_keep_fp(model, ["stages.9"])


def test_quantize_options_are_checked(model_files, tmp_path):
    with pytest.raises(DeployvitError, match="unknown quantised type 'int4'"):
        quantize_onnx(model_files["fp32"], tmp_path / "x.onnx", model_files["calib"], qtype="int4")
    with pytest.raises(DeployvitError, match="fp32 or fp16, not 'bf16'"):
        quantize_onnx(model_files["fp32"], tmp_path / "x.onnx", model_files["calib"], float_precision="bf16")
    with pytest.raises(DeployvitError, match="an int8 graph is quantised from the fp32 one"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx", input_shape=(1, 2), precision="int8")
    assert not (tmp_path / "x.onnx").exists()


def test_table_parts_are_quantised_like_an_export_from_real_image_inputs(tmp_path):
    """A latency-table part's int8 graph: a block from the tokens a patch stem makes of photographs,
    the stem and whole models from photographs, the head a float part (it stays float in every export)."""
    from deployvit.models import build_model, build_part
    from deployvit.parts import BlockPart, HeadPart
    from deployvit.spaces import get_space
    from exporters.quantize import quantize_part, timing_inputs

    tokens, source = timing_inputs((4, 17, 32))
    assert tokens.shape == (32, 17, 32) and "patch stem (width 32)" in source and "natural photographs of 64 px" in source
    images, source = timing_inputs((64, 3, 32, 32))
    assert images.shape == (64, 3, 32, 32) and source.startswith("natural:")
    torch.manual_seed(0)
    block = build_part(BlockPart(17, 32, 2, 16, 64)).eval()
    (tmp_path / "b").mkdir()
    path = quantize_part(block, tmp_path / "b", (2, 17, 32), "int8")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("DequantizeLinear") == 12 and read_metadata(path)["quantization"]["calibration"] == timing_inputs((2, 17, 32))[1]
    x = torch.randn(2, 17, 32)
    assert torch.nn.functional.cosine_similarity(ort(path)(x).flatten(1), block(x).detach().flatten(1)).min() > 0.99
    (tmp_path / "h").mkdir()
    head = quantize_part(build_part(HeadPart(17, 32, 10)).eval(), tmp_path / "h", (2, 17, 32), "int8")
    assert read_metadata(head)["precision"] == "fp32" and "QuantizeLinear" not in {n.op_type for n in onnx.load(str(head)).graph.node}
    (tmp_path / "m").mkdir()
    whole = quantize_part(build_model(get_space("test").min_arch()).eval(), tmp_path / "m", (1, 3, 32, 32), "int8", "fp16")
    meta = read_metadata(whole)
    assert meta["precision"] == "int8" and meta["float_precision"] == "fp16" and meta["quantization"]["kept"] == ["head.fc"]


def test_table_parts_are_quantised_deterministically(tmp_path):
    """Two profiles of one part write the same int8 graph: seeded photographs and stem, the same
    calibration, the same scales (a table's entries must not depend on the run)."""
    from deployvit.models import build_part
    from deployvit.parts import BlockPart
    from exporters.quantize import quantize_part

    graphs = []
    for run in ("a", "b"):
        torch.manual_seed(0)
        block = build_part(BlockPart(17, 32, 2, 16, 64)).eval()
        (tmp_path / run).mkdir()
        graphs.append(onnx.load(str(quantize_part(block, tmp_path / run, (2, 17, 32), "int8"))))
    first, second = ({t.name: numpy_helper.to_array(t) for t in g.graph.initializer} for g in graphs)
    assert first.keys() == second.keys() and any(k.endswith("_scale") for k in first)
    for name, value in first.items():
        np.testing.assert_array_equal(value, second[name], err_msg=name)


def test_openvino_table_parts_run_int8_kernels(tmp_path):
    """`profile --runtime openvino --precision int8` times this: the Q/DQ graph converted to an IR
    whose FakeQuantize nodes the CPU plugin fuses into int8 FullyConnected and MatMul kernels (the
    four linears of a block and attention's two matmuls), close to the float module."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino)")
    from deployvit.models import build_part
    from deployvit.parts import BlockPart
    from deployvit.runtimes import get_runtime
    from deployvit.runtimes.openvino import OvRunner

    torch.manual_seed(0)
    block = build_part(BlockPart(17, 32, 2, 16, 64)).eval()
    runtime = get_runtime("openvino")
    runtime.check("cpu", "int8")
    runner = OvRunner(runtime.write_part(block, tmp_path, (2, 17, 32), "int8", False))
    kernels = [(op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str))
               for op in runner.compiled.get_runtime_model().get_ops()]
    assert kernels.count(("FullyConnected", "i8")) == 4 and kernels.count(("MatMul", "i8")) == 2
    assert ("FullyConnected", "f32") not in kernels and runner.precision == "int8"
    x = torch.randn(2, 17, 32)
    assert torch.nn.functional.cosine_similarity(runner(x).flatten(1), block(x).detach().flatten(1)).min() > 0.99
