"""The training recipe (deployvit.train.recipe): data-driven defaults, CLI == Python API, the one
weight-decay policy of both trainers, bad input."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from deployvit.errors import DeployvitError
from deployvit.models import build_model
from deployvit.spaces import get_space
from deployvit.supernet import Supernet
from deployvit.train.checkpoint import read_checkpoint
from deployvit.train.data import DataFacts, data_facts, open_data
from deployvit.train.loop import build_optimizer, decayed_names
from deployvit.train.recipe import REGIMES, Recipe, scaled_lr
from tests.conftest import assert_one_line_error, run_cli

DIGITS = DataFacts("digits", 1438, 32, 10)
IMAGENET = DataFacts("imagefolder", 1_281_167, 400, 1000)


def test_the_data_picks_the_regime_and_explicit_flags_win():
    small = Recipe().resolve(DIGITS)
    assert (small.recipe, small.aug, small.batch_size, small.pos_embed_std) == ("small", "small", 32, 1.0)
    assert small.lr == pytest.approx(8e-3 * (32 / 512) ** 0.5) and small.warmup_epochs == 5  # 100 epochs // 10, at most 5
    big = Recipe(epochs=300).resolve(IMAGENET, world_size=8)
    assert (big.recipe, big.aug, big.lr_base_scale, big.pos_embed_std) == ("imagenet", "deit", "linear", 0.02)
    assert big.lr == pytest.approx(5e-4 * 64 * 8 / 512)  # DeiT: 5e-4 x global batch / 512
    assert Recipe(aug="deit", lr=1e-3, batch_size=16).resolve(DIGITS).lr == 1e-3
    assert Recipe(recipe="imagenet").resolve(DIGITS).aug == "deit"
    weak = Recipe(aug="vitas-weak").resolve(DIGITS)
    assert (weak.weight_decay, weak.drop_path) == (0.1, 0.2)  # ViTAS: stronger regularisation
    assert Recipe(aug="vitas-weak", weight_decay=0.0).resolve(DIGITS).weight_decay == 0.0
    assert scaled_lr(1.0, 2048, 512, "sqrt") == pytest.approx(2.0)
    assert "recipe small" in small.describe(DIGITS) and "lr 0.002" in small.describe(DIGITS)
    assert data_facts(open_data("digits")) == DIGITS
    with pytest.raises(DeployvitError, match="unknown --aug 'strong'"):
        Recipe(aug="strong").resolve(DIGITS)
    with pytest.raises(DeployvitError, match="resolved"):
        Recipe().validate()


@pytest.mark.parametrize("command", ["train-supernet", "retrain"])
def test_cli_flags_default_to_the_recipe_dataclass(command):
    from deployvit.commands import train

    cmd = {"train-supernet": train.train_supernet_cmd, "retrain": train.retrain_cmd}[command]
    params = {p.name: p for p in cmd.params}
    for f in fields(Recipe):
        assert params[f.name].default == f.default, f.name
        assert params[f.name].help == f.metadata["help"], f.name


def test_default_cli_run_is_the_python_api_default_run(tmp_path):
    torch.set_num_threads(1)
    arch = get_space("test").min_arch()
    arch.save(tmp_path / "a.json")
    r = run_cli("retrain", "--arch", str(tmp_path / "a.json"), "--data", "digits", "--epochs", "1", "--log-every", "0",
                "--out", str(tmp_path / "rt"))
    assert r.code == 0, r.err
    assert "recipe small" in r.err  # printed at the start
    saved = read_checkpoint(tmp_path / "rt" / "checkpoint.pt")
    assert saved["recipe"] == Recipe(epochs=1).resolve(data_facts(open_data("digits"))).to_dict()
    assert REGIMES[saved["recipe"]["recipe"]].sampler == "sandwich"


def test_unknown_aug_and_recipe_exit_2_with_one_line(tmp_path):
    base = ["train-supernet", "--space", "test", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "x")]
    assert_one_line_error(run_cli(*base, "--aug", "strong"), "unknown --aug 'strong'")
    assert_one_line_error(run_cli(*base, "--recipe", "huge"), "--recipe")
    assert_one_line_error(run_cli(*base, "--sampler", "focus", "--focus-budgets", "0.5,1.7"), "outside space 'test'", "FLOPs range")


# --- one regularisation policy ------------------------------------------------------------------

SUPERNET_DECAYED = ["head.fc_weight", "stem.proj_weight"] + [
    f"stages.0.{i}.{w}" for i in range(4) for w in ("fc1_weight", "fc2_weight", "proj_weight", "qkv_weight")]
VIT_DECAYED = ["head.fc.weight", "stem.patch_embed.proj.weight"] + [
    f"stages.0.{i}.{w}" for i in range(4) for w in ("attn.proj.weight", "attn.qkv.weight", "mlp.fc1.weight", "mlp.fc2.weight")]


def test_both_trainers_decay_the_same_weights_by_name():
    """Position embedding, class token, norms and biases are exempt in the supernet and in the
    standalone model alike (timm's optimizer factory reading `no_weight_decay()` and 1-D shapes)."""
    recipe = Recipe().resolve(DIGITS)
    space = get_space("test")
    supernet = Supernet(space)
    decayed, exempt = decayed_names(supernet, build_optimizer(supernet, recipe))
    assert decayed == sorted(SUPERNET_DECAYED)
    assert {"stem.pos_embed", "stem.cls_token", "stages.0.0.qkv_bias", "stages.0.0.norm1.weight", "head.fc_bias"} <= set(exempt)
    assert supernet.stages[0][0].qkv_bias.dim() == 1
    model = build_model(space.max_arch())
    decayed, exempt = decayed_names(model, build_optimizer(model, recipe))
    assert decayed == sorted(VIT_DECAYED)
    assert {"stem.pos_embed", "stem.cls_token", "stages.0.0.attn.qkv.bias", "stages.0.0.norm1.weight", "head.fc.bias"} <= set(exempt)
    # the same tensors, the same policy: every decayed supernet tensor is a decayed tensor of the extracted model
    assert len(SUPERNET_DECAYED) == len(VIT_DECAYED)
    resnas = get_space("test-resnas")
    assert Supernet(resnas).no_weight_decay() == build_model(resnas.max_arch()).no_weight_decay()


def test_old_two_dimensional_qkv_bias_checkpoints_still_load():
    space = get_space("test")
    a = Supernet(space)
    state = a.state_dict()
    state["stages.0.0.qkv_bias"] = torch.arange(state["stages.0.0.qkv_bias"].numel(), dtype=torch.float32).view(3, -1)
    b = Supernet(space)
    b.load_state_dict(state)
    assert torch.equal(b.stages[0][0].qkv_bias, torch.arange(b.stages[0][0].qkv_bias.numel(), dtype=torch.float32))


def test_one_drop_path_formula_for_supernet_and_extracted_model():
    space = get_space("test")
    supernet = Supernet(space, identity_shift=True, drop_path_rate=0.3)
    arch = space.min_arch()
    supernet.set_arch(arch, shift=1)
    rates = [rate for _, _, rate in supernet._plan if rate]
    model = supernet.extract(arch, drop_path_rate=0.3)
    want = [b.drop_path1.drop_prob for stage in model.stages for b in stage]
    assert [0.0, *rates] == pytest.approx(want)


def test_one_subnet_per_step_on_small_data_and_few_epochs_is_flagged():
    from deployvit.train.supernet_train import SINGLE_PATH_SMALL_EPOCHS, default_sampler, sampler_caveat

    short = Recipe(epochs=10).resolve(DIGITS)
    assert default_sampler(short) == "sandwich" and sampler_caveat(short, "sandwich") == ""
    assert "one subnet per step" in sampler_caveat(short, "focus") and "this run has 10" in sampler_caveat(short, "uniform")
    assert sampler_caveat(Recipe(epochs=SINGLE_PATH_SMALL_EPOCHS).resolve(DIGITS), "focus") == ""
    assert sampler_caveat(Recipe(epochs=10).resolve(IMAGENET), "uniform") == ""  # AutoFormer's own recipe: no caveat
