"""Each default is written once: the command-line defaults of profile, export and search are the
config dataclasses' (the Python API and the CLI give the same run)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from deployvit.cli import cli
from deployvit.settings import MeasureSettings, ProfileConfig
from deployvit.search.evolution import EvolutionConfig


def _defaults(command: str) -> dict:
    cmd = cli.get_command(None, command)
    return {p.name: p.default for p in cmd.params}


@pytest.mark.parametrize("command", ["profile", "export", "benchmark"])
def test_timing_defaults_are_measure_settings(command):
    d = _defaults(command)
    warmup = d.get("warmup_s", d.get("warmup"))
    clock = d["clock"]
    if command == "profile":  # `--clock auto`: process CPU time for a one-thread CPU profile, else the settings' default
        from deployvit.commands.profile import default_clock

        assert clock == "auto" and default_clock("cpu", 1) == "cpu"
        clock = default_clock("h100", None)
    assert (warmup, d["repeats"], clock) == (MeasureSettings.warmup_s, MeasureSettings.repeats, MeasureSettings.clock)


def test_profile_sampling_defaults_are_profile_config():
    d = _defaults("profile")
    flags = [f for f in fields(ProfileConfig) if f.name != "calibrate_val_archs"]
    assert {f.name: d[f.name] for f in flags} == {f.name: f.default for f in flags}
    calibrate = next(p for p in cli.get_command(None, "profile").params if p.name == "calibrate_k")
    assert f"(default {ProfileConfig.calibrate_val_archs})" in calibrate.help  # --val-archs under --calibrate


def test_search_evolution_defaults_are_evolution_config():
    d = _defaults("search")
    cfg = EvolutionConfig()
    names = {"mutation_prob": "layer_prob", "stage_mutation_prob": "stage_prob"}
    for flag in ("population", "generations", "parents", "mutations", "crossovers", "mutation_prob", "stage_mutation_prob",
                 "patience", "seed", "method", "screen"):
        assert d[flag] == getattr(cfg, names.get(flag, flag)), flag


def test_sampler_defaults_are_the_sampler_options():
    from deployvit.train.focus import FocusOptions
    from deployvit.train.samplers import SamplerOptions

    d = _defaults("train-supernet")
    assert {f.name: d[f.name] for f in fields(SamplerOptions)} == {f.name: f.default for f in fields(SamplerOptions)}
    helps = {p.name: p.help for p in cli.get_command(None, "train-supernet").params}
    assert f"({FocusOptions.epsilon})" in helps["focus_epsilon"] and f"({FocusOptions.update_every})" in helps["focus_update_every"]
