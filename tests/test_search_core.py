"""Search internals: budgets, vectorised metrics, the DSS indicator, evolution determinism and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deployvit.counting import count_flops, count_params
from deployvit.errors import DeployvitError
from deployvit.search.budgets import Constraints
from deployvit.units import parse_amount, parse_amounts
from deployvit.search.evolution import Evolution, EvolutionConfig
from deployvit.search.pareto import pareto_front
from deployvit.search.predictor import MetricModel
from deployvit.search.scores import DSSScore
from deployvit.spaces import PRESETS, get_space

@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    """Tiny models run faster on one thread (and much faster when other jobs share the cores)."""
    torch.set_num_threads(1)
    yield


SMALL = dict(population=8, generations=3, parents=3, mutations=4, crossovers=4)


def test_parse_amounts():
    assert parse_amount("5ms", "latency") == 5000.0
    assert parse_amount("250us", "latency") == 250.0
    assert parse_amount("1.5G", "flops") == 1.5e9
    assert parse_amount("6M", "params") == 6e6
    assert parse_amounts("5ms, 2ms,3ms", "latency") == [2000.0, 3000.0, 5000.0]
    for bad, metric, needle in [("5", "latency", "no unit: a latency needs ms, us or s"), ("5 parsecs", "latency", "unknown unit"),
                                ("-1ms", "latency", "expected a number"), ("0ms", "latency", "positive"),
                                ("1.5X", "flops", "unknown unit"), ("fast", "latency", "expected a number")]:
        with pytest.raises(DeployvitError, match=needle):
            parse_amount(bad, metric)
    with pytest.raises(DeployvitError, match="is not below"):
        Constraints(max_flops=1e9, min_flops=2e9)
    with pytest.raises(DeployvitError, match="--min-latency 0.4 ms is not below --latency 0.35 ms"):
        Constraints(max_latency=[350.0, 600.0], min_latency=400.0)  # below the loosest budget, not the tightest
    with pytest.raises(DeployvitError, match="both named '2ms'"):
        Constraints(max_latency=parse_amounts("2.001ms,2.002ms", "latency"))


@pytest.mark.parametrize("name", list(PRESETS))
def test_vectorised_metrics_equal_per_arch_counts(name):
    space = get_space(name)
    model = MetricModel(space)
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(100)] + [space.min_arch(), space.max_arch()]
    out = model.predict(model.encode(archs))
    assert list(out["params"]) == [count_params(a) for a in archs]
    assert list(out["flops"]) == [count_flops(a) for a in archs]
    assert model.range("params") == (count_params(space.min_arch()), count_params(space.max_arch()))
    lo, hi = model.range("flops")
    assert lo <= out["flops"].min() and hi >= out["flops"].max()


def _independent_dss(space, arch, seed=0):
    """The TF-TAS formula written out directly: SVD nuclear norms, per-matrix q/k/v, no caching."""
    torch.manual_seed(seed)
    from deployvit.supernet import Supernet

    supernet = Supernet(space).eval()
    with torch.no_grad():
        for p in supernet.parameters():
            p.abs_()
    x = torch.randn(1, 3, space.img_size, space.img_size, generator=torch.Generator().manual_seed(seed))
    model = supernet.extract(arch).eval()
    model(x).sum().backward()
    nuc = lambda m: torch.linalg.matrix_norm(m.detach().double(), ord="nuc").item()  # noqa: E731
    total, qkv_terms = 0.0, 0.0
    for stage in model.stages:
        for block in stage:
            w, g = block.attn.qkv.weight, block.attn.qkv.weight.grad
            a = w.shape[0] // 3
            for i in range(3):
                term = nuc(g[i * a:(i + 1) * a]) * nuc(w[i * a:(i + 1) * a])
                total += term
                qkv_terms += term
            total += nuc(block.attn.proj.weight.grad) * nuc(block.attn.proj.weight)
            for fc in (block.mlp.fc1, block.mlp.fc2):
                total += (fc.weight.grad * fc.weight).abs().sum().item()
    total += (model.head.fc.weight.grad * model.head.fc.weight).abs().sum().item()
    return total, qkv_terms


@pytest.mark.parametrize("name", ["test", "test-resnas"])
def test_dss_matches_an_independent_computation(name):
    space = get_space(name)
    score = DSSScore(space, seed=0)
    rng = np.random.default_rng(5)
    for arch in [space.sample(rng) for _ in range(3)]:
        expected, qkv_terms = _independent_dss(space, arch)
        assert score(arch) == pytest.approx(expected, rel=1e-6)
        assert qkv_terms > 0  # the paper's q/k/v terms are present (the public code's vanish)
    assert score(space.max_arch()) > score(space.min_arch())


def _evolution(space, constraints, state_path=None, **overrides):
    config = EvolutionConfig(**{**SMALL, **overrides})
    return Evolution(space, MetricModel(space), constraints, DSSScore(space, seed=config.seed), config, state_path)


def test_same_seed_same_result_and_resume_is_identical(tmp_path):
    space = get_space("test")
    constraints = Constraints(max_flops=MetricModel(space).range("flops")[1] * 0.6)
    uninterrupted = _evolution(space, constraints)
    full = uninterrupted.run()
    again = _evolution(space, constraints).run()
    assert full[None].arch == again[None].arch

    class Killed(Exception):
        pass

    def kill_after_two(generation, evo):
        if generation == 2:
            raise Killed

    state = tmp_path / "search_state.json"
    interrupted = _evolution(space, constraints, state)
    interrupted.on_generation = kill_after_two
    with pytest.raises(Killed):
        interrupted.run()
    resumed = _evolution(space, constraints, state)
    resumed.resume()
    assert resumed.state.generation == 2
    result = resumed.run()
    assert result[None].arch == full[None].arch
    assert list(resumed.state.evaluated) == list(uninterrupted.state.evaluated)


def test_resume_refuses_other_settings(tmp_path):
    space = get_space("test")
    state = tmp_path / "s.json"
    _evolution(space, Constraints(), state, generations=1).run()
    other = _evolution(space, Constraints(max_params=1e9), state, generations=1)
    with pytest.raises(DeployvitError, match="another constraints"):
        other.resume()
    with pytest.raises(DeployvitError, match=r"another config \(generations 1, not 2\)"):  # what to pass to resume it
        _evolution(space, Constraints(), state, generations=2).resume()
    state.write_text("{not json")
    with pytest.raises(DeployvitError, match="malformed search state"):
        _evolution(space, Constraints(), state, generations=1).resume()


def test_resume_refuses_another_table_or_checkpoint(tmp_path):
    space = get_space("test")
    state = tmp_path / "s.json"
    config = EvolutionConfig(**{**SMALL, "generations": 1})
    Evolution(space, MetricModel(space), Constraints(), DSSScore(space), config, state, sources={"table": "aaa"}).run()
    for sources, what in [({"table": "bbb"}, "another latency table"), ({}, "another latency table"),
                          ({"table": "aaa", "supernet": "ccc"}, "another supernet checkpoint")]:
        other = Evolution(space, MetricModel(space), Constraints(), DSSScore(space), config, state, sources=sources)
        with pytest.raises(DeployvitError, match=what):
            other.resume()
    Evolution(space, MetricModel(space), Constraints(), DSSScore(space), config, state, sources={"table": "aaa"}).resume()
    import json  # a state from before sources were recorded resumes, and records them from then on

    data = json.loads(state.read_text())
    del data["sources"]
    state.write_text(json.dumps(data))
    older = Evolution(space, MetricModel(space), Constraints(), DSSScore(space), config, state, sources={"table": "bbb"})
    older.resume()
    assert older.state.sources == {"table": "bbb"}


@pytest.mark.parametrize("rng", [{}, "x", {"bit_generator": "PCG64"}])
def test_corrupt_rng_in_search_state_is_one_line(tmp_path, rng):
    import json

    space = get_space("test")
    state = tmp_path / "s.json"
    _evolution(space, Constraints(), state, generations=1).run()
    data = json.loads(state.read_text())
    data["rng"] = rng
    state.write_text(json.dumps(data))
    with pytest.raises(DeployvitError, match="corrupt search state"):
        _evolution(space, Constraints(), state, generations=1).resume()


@settings(max_examples=6, deadline=None)  # each example is a real DSS-scored search
@given(flops_frac=st.floats(0.05, 1.0), params_frac=st.floats(0.05, 1.0), seed=st.integers(0, 1000))
def test_every_returned_arch_satisfies_every_constraint(flops_frac, params_frac, seed):
    space = get_space("test")
    model = MetricModel(space)
    (f_lo, f_hi), (p_lo, p_hi) = model.range("flops"), model.range("params")
    constraints = Constraints(max_flops=f_lo + flops_frac * (f_hi - f_lo), max_params=p_lo + params_frac * (p_hi - p_lo))
    evo = _evolution(space, constraints, seed=seed, generations=2)
    try:
        winner = evo.run()[None]
    except DeployvitError as exc:
        assert "satisfies the constraints" in str(exc)
        return
    for cand in evo.state.evaluated.values():
        assert cand.metrics["flops"] <= constraints.max_flops and cand.metrics["params"] <= constraints.max_params
        assert count_flops(cand.arch) == cand.metrics["flops"]
    assert winner.score == max(c.score for c in evo.state.evaluated.values())


def test_random_search_uses_the_same_number_of_evaluations():
    space = get_space("autoformer-tiny")
    config = EvolutionConfig(**SMALL)
    assert config.evaluations == 8 + 3 * 8
    evo = _evolution(space.with_overrides(img_size=32), Constraints(), method="random")
    evo.run()
    assert len(evo.state.evaluated) == config.evaluations


def test_a_converged_population_still_spends_its_evaluation_budget():
    """With one parent every crossover reproduces it (already scored): each is replaced by a mutation."""
    space = get_space("test")
    evo = _evolution(space, Constraints(), parents=1)
    evo.run()
    assert len(evo.state.evaluated) == EvolutionConfig(**{**SMALL, "parents": 1}).evaluations


def test_pareto_front_is_non_dominated():
    space = get_space("test")
    evo = _evolution(space, Constraints())
    evo.run()
    cands = list(evo.state.evaluated.values())
    front = pareto_front(cands, "flops")
    assert front
    for f in front:
        assert not any(c.score > f.score and c.metrics["flops"] <= f.metrics["flops"] for c in cands)
    assert [f.metrics["flops"] for f in front] == sorted(f.metrics["flops"] for f in front)
    on_front = {f.arch.key for f in front}
    for c in cands:  # and it is complete: everything left out is dominated by (or ties) a front member
        if c.arch.key not in on_front:
            assert any(f.score >= c.score and f.metrics["flops"] <= c.metrics["flops"] for f in front), c.arch.summary()


def test_size_correlation_is_over_the_initial_population_and_older_states_fall_back():
    from types import SimpleNamespace

    from deployvit.search.evolution import Candidate, SearchState
    from deployvit.search.run import _size_sample

    space, rng = get_space("test"), np.random.default_rng(0)
    archs = list({a.key: a for a in (space.sample(rng) for _ in range(30))}.values())[:12]
    cands = [Candidate(a, float(i), {"params": float(count_params(a))}) for i, a in enumerate(archs)]
    state = SearchState({}, {}, "dss", "h", initial=5, evaluated={c.arch.key: c for c in cands})
    sample, over = _size_sample(SimpleNamespace(state=state), cands)
    assert sample == cands[:5] and over == "the 5 archs of the random initial population"
    older = state.to_dict()
    del older["initial"]  # a search_state.json written before the count was recorded
    loaded = SearchState.from_dict(older)
    assert loaded.initial == 0 and _size_sample(SimpleNamespace(state=loaded), cands) == (cands, "12 evaluated archs")
