"""`deployvit import --from timm:MODEL`: timm's own models with random weights (pretrained=False, never a
download), imported, extracted and exported to ONNX, against timm's logits; the default space;
importance ordering; search and distilled retraining on an imported parent; and every bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from deployvit.arch import load_arch
from deployvit.importers import ordering
from deployvit.importers.common import default_stage
from deployvit.spaces import load_space
from deployvit.train.checkpoint import load_model, load_supernet, read_checkpoint
from tests.conftest import assert_one_line_error, run_cli

@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    """Tiny models run faster on one thread, and a resumed run must sum in the order of the killed one."""
    torch.set_num_threads(1)
    yield


SMALL = {"embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 10}
SMALL_ARGS = [x for k in ("embed_dim", "depth", "num_heads") for x in ("--model-arg", f"{k}={SMALL[k]}")]


def _timm_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """timm's model with random weights, the norms and biases perturbed too (so a swapped or dropped
    one changes the logits)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _save(state: dict, path: Path, layout: str) -> Path:
    if layout == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path.with_suffix(".safetensors")))
        return path.with_suffix(".safetensors")
    if layout == "wrapped":  # DeiT's release files: {"model": state dict}, here with DDP's prefix too
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 300}, path)
    else:
        torch.save(state, path)
    return path


def _onnx_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _import(tmp_path: Path, name: str, weights: Path, *extra: str):
    return run_cli("import", "--from", f"timm:{name}", "--weights", str(weights), "--out", str(tmp_path / "imp"), *extra)


@pytest.mark.parametrize("name, img, layout, extra", [
    ("vit_base_patch16_224", 32, "pth", {}),
    ("vit_small_patch32_224", 64, "safetensors", {}),
    ("deit_small_patch16_224", 48, "wrapped", {}),
    ("vit_tiny_patch16_224", 32, "pth", {"qkv_bias": False, "global_pool": "avg", "fc_norm": False}),  # zero bias, mean pooling
])
def test_imported_parent_exported_to_onnx_gives_timms_logits(tmp_path, name, img, layout, extra):
    from exporters.onnx import export_onnx

    model = _timm_model(name, img_size=img, **SMALL, **extra)
    weights = _save(model.state_dict(), tmp_path / "parent.pth", layout)
    result = _import(tmp_path, name, weights, *SMALL_ARGS, *(x for k, v in extra.items() for x in ("--model-arg", f"{k}={json.dumps(v)}")))
    assert result.code == 0, result.err
    imp = tmp_path / "imp"
    assert sorted(p.name for p in imp.iterdir()) == ["import.json", "parent.arch.json", "space.yaml", "supernet.pt"]
    record = json.loads((imp / "import.json").read_text())
    assert record["self_check"]["converted_vs_source"] <= 1e-5 and record["self_check"]["ordered_vs_unordered"] <= 1e-5
    parent = load_arch(imp / "parent.arch.json")
    assert (parent.img_size, parent.embed_dim, parent.depth, parent.num_classes) == (img, 32, 2, 10)
    supernet, _ = load_supernet(imp / "supernet.pt")
    # the TorchScript exporter: 5x faster here than dynamo (the default, which the AutoFormer and CLI tests use)
    path = export_onnx(supernet.extract(parent).eval(), tmp_path / "parent.onnx", img_size=img, dynamic_batch=(1, 2, 4), dynamo=False)
    x = torch.randn(3, 3, img, img)
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(_onnx_logits(path, x), want, rtol=0, atol=1e-4)


def test_full_size_deit_tiny_at_224(tmp_path):
    from exporters.onnx import export_onnx

    model = _timm_model("deit_tiny_patch16_224")
    weights = _save(model.state_dict(), tmp_path / "deit_tiny.pth", "wrapped")
    result = _import(tmp_path, "deit_tiny_patch16_224", weights)
    assert result.code == 0, result.err
    imp = tmp_path / "imp"
    parent = load_arch(imp / "parent.arch.json")
    assert (parent.embed_dim, parent.depth, parent.layers[0].num_heads, parent.layers[0].mlp_ratio) == (192, 12, 3, 4.0)
    supernet, _ = load_supernet(imp / "supernet.pt")
    path = export_onnx(supernet.extract(parent).eval(), tmp_path / "parent.onnx", img_size=224, dynamic_batch=(1, 2, 4), dynamo=False)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(_onnx_logits(path, x), want, rtol=0, atol=1e-4)


def test_export_command_takes_an_imports_parent_and_checkpoint(tmp_path):
    model = _timm_model("vit_tiny_patch16_224", img_size=32, **SMALL)
    weights = _save(model.state_dict(), tmp_path / "parent.pth", "pth")
    assert _import(tmp_path, "vit_tiny_patch16_224", weights, *SMALL_ARGS).code == 0
    imp = tmp_path / "imp"
    exported = run_cli("export", "--arch", str(imp / "parent.arch.json"), "--checkpoint", str(imp / "supernet.pt"),
                       "--format", "onnx", "--out", str(tmp_path / "export"), "--samples", "4", "--dynamic-batch", "1,2,4",
                       "--repeats", "1", "--warmup", "0", "--legacy-exporter")  # dynamo: the AutoFormer test
    assert exported.code == 0, exported.err
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(_onnx_logits(tmp_path / "export" / "model.onnx", x), want, rtol=0, atol=1e-4)
    report = json.loads((tmp_path / "export" / "report.json").read_text())
    assert "supernet" in json.dumps(report)
    assert_one_line_error(run_cli("export", "--checkpoint", str(imp / "supernet.pt"), "--format", "onnx", "--out", str(tmp_path / "x")),
                          "supernet checkpoint", "--arch")
    # imported without --data: nothing to score by inherited accuracy on, and the error says how to get it
    assert_one_line_error(run_cli("search", "--space", str(imp / "space.yaml"), "--score", "supernet", "--supernet", str(imp / "supernet.pt"),
                                  "--data", "digits", "--flops", "1M", "--out", str(tmp_path / "s")), "import it with --data")


def test_default_space_is_the_documented_grid_below_the_parent():
    stage = default_stage(192, 12, 3, 64, 4.0)
    assert stage.embed_dims == (96, 120, 144, 168, 192) and stage.mlp_ratios == (2.0, 2.5, 3.0, 3.5, 4.0)
    assert stage.num_heads == (2, 3) and stage.depths == tuple(range(6, 13)) and stage.head_dim == 64
    stage = default_stage(768, 12, 12, 64, 4.0)
    assert stage.embed_dims == (384, 480, 576, 672, 768) and stage.num_heads == tuple(range(6, 13))


@pytest.fixture(scope="module")
def parent_file(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("parent")
    model = _timm_model("vit_tiny_patch16_224", img_size=32, patch_size=8, **SMALL)
    return _save(model.state_dict(), folder / "parent.pth", "pth"), model


@pytest.mark.parametrize("order", ["magnitude", "activation"])
def test_importance_ordering_keeps_the_parent_and_puts_important_units_first(parent_file, order):
    from deployvit.importers.timm_vit import timm_parent
    from deployvit.supernet import Supernet

    weights, _ = parent_file
    parent = timm_parent("vit_tiny_patch16_224", {k: SMALL[k] for k in ("embed_dim", "depth", "num_heads")},
                         torch.load(weights, weights_only=True), str(weights))
    supernet = Supernet(parent.space)
    supernet.load_extracted(parent.space.max_arch(), parent.model)
    supernet.eval()
    x = torch.randn(4, 3, 32, 32)
    supernet.set_arch(parent.space.max_arch())
    with torch.no_grad():
        before = supernet(x)
    fixed = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    batches = lambda: iter(fixed)  # noqa: E731
    score = (lambda: ordering.magnitude_importance(supernet)) if order == "magnitude" else (lambda: ordering.activation_importance(supernet, batches()))
    importance = score()
    changed = ordering.reorder(supernet, importance)
    with torch.no_grad():
        supernet.set_arch(parent.space.max_arch())
        torch.testing.assert_close(supernet(x), before, rtol=0, atol=1e-5)
    after = score()  # scored again on the reordered weights: now sorted, most important first
    for scores in [after.channels, *after.heads, *after.hidden]:
        assert torch.all(scores[:-1] >= scores[1:] - 1e-4 * scores.abs().max()), scores
    assert changed["leading_half_share_after"]["channels"] >= changed["leading_half_share_before"]["channels"]


def test_space_file_overrides_the_default_and_is_checked_against_the_weights(parent_file, tmp_path):
    weights, _ = parent_file
    (tmp_path / "small.yaml").write_text("name: mine\nimg_size: 32\npatch_size: 8\nnum_classes: 10\nembed_dim: [16, 32]\n"
                                         "depth: [1, 2]\nnum_heads: [1, 2]\nmlp_ratio: [2.0, 4.0]\nhead_dim: 16\n")
    result = _import(tmp_path, "vit_tiny_patch16_224", weights, *SMALL_ARGS, "--space", str(tmp_path / "small.yaml"))
    assert result.code == 0, result.err
    assert load_space(tmp_path / "imp" / "space.yaml").name == "mine"
    (tmp_path / "wide.yaml").write_text((tmp_path / "small.yaml").read_text().replace("[16, 32]", "[16, 48]"))
    out = tmp_path / "imp2"
    bad = run_cli("import", "--from", "timm:vit_tiny_patch16_224", "--weights", str(weights), *SMALL_ARGS,
                  "--space", str(tmp_path / "wide.yaml"), "--out", str(out))
    assert_one_line_error(bad, "embed_dim 48 is beyond the parent's weights")
    assert not out.exists()


@pytest.fixture(scope="module")
def imported(parent_file, tmp_path_factory) -> Path:
    weights, _ = parent_file
    out = tmp_path_factory.mktemp("imported") / "imp"
    result = run_cli("import", "--from", "timm:vit_tiny_patch16_224", "--weights", str(weights), *SMALL_ARGS, "--out", str(out),
                     "--data", "digits", "--held-out-per-class", "10")
    assert result.code == 0, result.err
    return out


def test_search_by_inherited_accuracy_then_distilled_retrain_on_digits(imported, tmp_path):
    run = tmp_path / "search"
    result = run_cli("search", "--space", str(imported / "space.yaml"), "--score", "supernet", "--supernet", str(imported / "supernet.pt"),
                     "--data", "digits", "--flops", "0.5M", "--population", "6", "--generations", "1", "--parents", "2",
                     "--mutations", "2", "--crossovers", "2", "--out", str(run), "--no-progress")
    assert result.code == 0, result.err
    _, meta = load_supernet(imported / "supernet.pt")
    assert len(meta["held_out"]["ids"]) == 100 and meta["imported"]["source"]["from"] == "timm:vit_tiny_patch16_224"
    out = tmp_path / "retrain"
    result = run_cli("retrain", "--arch", str(run / "best.arch.json"), "--init", str(imported / "supernet.pt"), "--distill", "hard",
                     "--data", "digits", "--epochs", "1", "--batch-size", "128", "--aug", "light", "--log-every", "0", "--out", str(out))
    assert result.code == 0, result.err
    assert "distilling (hard" in result.err
    state = read_checkpoint(out / "checkpoint.pt")
    assert state["meta"]["distill"]["mode"] == "hard" and state["meta"]["distill"]["teacher"] == load_arch(imported / "parent.arch.json").to_dict()
    model, arch = load_model(out / "checkpoint.safetensors")
    assert arch == load_arch(run / "best.arch.json")
    # --distill needs a supernet to take the teacher from
    assert_one_line_error(run_cli("retrain", "--arch", str(run / "best.arch.json"), "--distill", "--data", "digits",
                                  "--out", str(tmp_path / "x")), "--distill needs --init")


def test_distilled_retrain_killed_mid_epoch_resumes_exactly(imported, tmp_path):
    arch = tmp_path / "arch.json"
    load_space(imported / "space.yaml").min_arch().save(arch)
    args = ["retrain", "--arch", str(arch), "--init", str(imported / "supernet.pt"), "--distill", "soft", "--distill-tau", "2",
            "--data", "digits", "--epochs", "2", "--batch-size", "128", "--aug", "light", "--log-every", "0", "--deterministic",
            "--ckpt-every", "2", "--mixup", "0.5", "--warmup-epochs", "0"]
    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "deployvit", *args, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoint.safetensors").exists(), "the run finished before it could be killed"
    resumed = run_cli(*args, "--out", str(killed), "--resume")
    assert resumed.code == 0, resumed.err
    reference = run_cli(*args, "--out", str(tmp_path / "ref"))
    assert reference.code == 0, reference.err
    a, b = (read_checkpoint(p / "checkpoint.pt") for p in (killed, tmp_path / "ref"))
    for name, tensor in a["model"].items():
        torch.testing.assert_close(tensor, b["model"][name], rtol=1e-5, atol=1e-6, msg=name)
    # resuming without --distill (or with another mode) is refused: the teacher is part of the run
    other = [x if x != "soft" else "hard" for x in args]
    assert_one_line_error(run_cli(*other, "--out", str(killed), "--resume"), "distill")


# --- bad input: one line, exit 2, nothing written ---------------------------------------------------------


class _Payload:
    """Unpickling this opens (creates) a file: what a planted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _bad_files(tmp_path: Path, parent_file) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    weights, model = parent_file
    state = model.state_dict()
    good = weights.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(good[: len(good) // 2])
    torch.save({"model": state, "x": _Payload(tmp_path / "pwned")}, tmp_path / "payload.pth")
    torch.save({k: v for k, v in state.items() if k != "blocks.1.attn.proj.bias"}, tmp_path / "missing.pth")
    torch.save({**state, "blocks.0.mlp.fc1.weight": state["blocks.0.mlp.fc1.weight"][:-1]}, tmp_path / "shape.pth")
    timm_src = ["--from", "timm:vit_tiny_patch16_224", *SMALL_ARGS]
    af_state = {"patch_embed_super.proj.weight": torch.zeros(64, 3, 8, 8), "pos_embed": torch.zeros(1, 17, 64)}
    torch.save({"model": af_state}, tmp_path / "autoformer.pth")
    return {
        "another family (AutoFormer's) as timm": (timm_src + ["--weights", str(tmp_path / "autoformer.pth")], ("missing", "blocks.0")),
        "another family (timm's) as autoformer": (["--from", "autoformer", "--weights", str(weights)],
                                                  ("not an AutoFormer supernet", "patch_embed_super.proj.weight")),
        "truncated": (timm_src + ["--weights", str(tmp_path / "truncated.pth")], ("truncated or corrupt",)),
        "pickle payload": (timm_src + ["--weights", str(tmp_path / "payload.pth")], ("pickled object", "open", "refused")),
        "pickle payload as autoformer": (["--from", "autoformer", "--weights", str(tmp_path / "payload.pth")], ("pickled object", "refused")),
        "missing key": (timm_src + ["--weights", str(tmp_path / "missing.pth")], ("missing blocks.1.attn.proj.bias",)),
        "wrong shape": (timm_src + ["--weights", str(tmp_path / "shape.pth")], ("blocks.0.mlp.fc1.weight has shape (127, 32)", "needs (128, 32)")),
        "unknown timm model": (["--from", "timm:vit_nonexistent_patch16_224", "--weights", str(weights)], ("no model of that name",)),
        "distillation token": (["--from", "timm:deit_tiny_distilled_patch16_224", "--weights", str(weights)], ("distillation token",)),
        "bad source": (["--from", "torchvision:vit_b_16", "--weights", str(weights)], ("expected timm:MODEL",)),
        "a --model-arg the weights contradict": (timm_src + ["--weights", str(weights), "--model-arg", "num_classes=7"],
                                                 ("head.weight has shape (10, 32)",)),
    }


def test_bad_inputs_are_one_line_exit_2_and_write_nothing(parent_file, tmp_path):
    for case, (args, needles) in _bad_files(tmp_path, parent_file).items():
        out = tmp_path / "out"
        result = run_cli("import", *args, "--out", str(out))
        assert_one_line_error(result, *needles)
        assert not out.exists(), case
        assert not list(tmp_path.glob(".out.*")), case  # no temp folder left either
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kwargs, needle", [
    ({"init_values": 1e-5}, "LayerScale"),
    ({"reg_tokens": 4}, "register tokens"),
    ({"class_token": False, "global_pool": "avg"}, "no class token"),
    ({"qk_norm": True}, "QK-norm"),
    ({"act_layer": "quick_gelu"}, "activation"),
    ({"global_pool": "avg"}, "norm after pooling"),
])
def test_unsupported_timm_features_are_refused_by_name(tmp_path, kwargs, needle):
    model = _timm_model("vit_tiny_patch16_224", img_size=32, patch_size=8, **SMALL, **kwargs)
    weights = _save(model.state_dict(), tmp_path / "parent.pth", "pth")
    args = [x for k, v in kwargs.items() for x in ("--model-arg", f"{k}={json.dumps(v) if not isinstance(v, str) else v}")]
    assert_one_line_error(_import(tmp_path, "vit_tiny_patch16_224", weights, *SMALL_ARGS, *args), "unsupported", needle)
    assert not (tmp_path / "imp").exists()


def test_data_with_another_class_count_and_an_existing_out_are_refused(parent_file, tmp_path):
    weights, _ = parent_file
    model = _timm_model("vit_tiny_patch16_224", img_size=32, patch_size=8, **{**SMALL, "num_classes": 7})
    other = _save(model.state_dict(), tmp_path / "seven.pth", "pth")
    assert_one_line_error(_import(tmp_path, "vit_tiny_patch16_224", other, *SMALL_ARGS, "--data", "digits"), "10 classes", "the parent 7")
    assert not (tmp_path / "imp").exists()
    (tmp_path / "imp").mkdir()
    (tmp_path / "imp" / "keep.txt").write_text("mine")
    assert_one_line_error(_import(tmp_path, "vit_tiny_patch16_224", weights, *SMALL_ARGS), "not empty")
    assert [p.name for p in (tmp_path / "imp").iterdir()] == ["keep.txt"]
