"""Search speed work (issue 13): the threaded DSS equals the sequential one, no arch is scored twice,
--patience stops and resumes exactly, torchrun ranks give one process's result, the summary says how
much the score tracks size, and the scoring device is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import kendalltau
import torch

from deployvit.errors import DeployvitError
from deployvit.search.budgets import Constraints
from deployvit.search.evolution import Evolution, EvolutionConfig
from deployvit.search.predictor import MetricModel
from deployvit.search.scores import DSSScore
from deployvit.spaces import get_space
from tests.conftest import assert_one_line_error, run_cli

SMALL = dict(population=8, generations=3, parents=3, mutations=4, crossovers=4)
TINY = ["--space", "test", "--flops", "2M", "--population", "8", "--generations", "3", "--parents", "3",
        "--mutations", "4", "--crossovers", "4", "--no-progress"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["test", "autoformer-tiny"])
def test_threaded_dss_equals_the_sequential_reference(name):
    space = get_space(name)
    score = DSSScore(space, seed=0, threads=2)
    rng = np.random.default_rng(3)
    archs = [space.sample(rng) for _ in range(4 if name == "test" else 2)]
    torch.set_num_threads(1)  # the old path with 2 OpenMP threads takes minutes when the cores are shared
    reference = [score.reference(a) for a in archs]
    torch.set_num_threads(2)
    for got, want in zip(score.score_many(archs), reference):
        assert got == pytest.approx(want, rel=1e-6)
    assert DSSScore(space, seed=0, threads=1)(archs[0]) == pytest.approx(reference[0], rel=1e-6)


class Killed(Exception):
    pass


def _kill_after(generation):
    def hook(g, evo):
        if g == generation:
            raise Killed
    return hook


class Counting:
    """A DSS that counts how often each arch is scored."""

    name = "dss"

    def __init__(self, space):
        self.inner, self.calls = DSSScore(space), {}

    def __call__(self, arch):
        self.calls[arch.key] = self.calls.get(arch.key, 0) + 1
        return self.inner(arch)


def test_no_arch_is_scored_twice_in_a_run_or_across_a_resume(tmp_path):
    space = get_space("test")
    score = Counting(space)
    state = tmp_path / "s.json"
    config = EvolutionConfig(**{**SMALL, "parents": 1, "patience": None})  # one parent: crossovers repeat it
    evo = Evolution(space, MetricModel(space), Constraints(), score, config, state)
    evo.on_generation = _kill_after(1)
    with pytest.raises(Killed):
        evo.run()
    resumed = Evolution(space, MetricModel(space), Constraints(), score, config, state)
    resumed.resume()
    resumed.run()
    for arch in list(c.arch for c in resumed.state.evaluated.values())[:3]:
        resumed.score_of(arch)  # the summary's reference archs come from the record too
    assert max(score.calls.values()) == 1
    assert len(score.calls) == len(resumed.state.evaluated) == config.evaluations


def _stalling_evolution(space, state=None, **overrides):
    """Patience 1 on the test space: the search stops before its last generation."""
    config = EvolutionConfig(**{**SMALL, "generations": 8, "patience": 1, **overrides})
    return Evolution(space, MetricModel(space), Constraints(), DSSScore(space), config, state)


def test_patience_stops_a_converged_search_and_resume_stops_at_the_same_generation(tmp_path):
    space = get_space("test")
    whole = _stalling_evolution(space)
    winner = whole.run()[None]
    assert whole.converged and whole.state.generation < 8
    assert len(whole.state.evaluated) < whole.config.evaluations
    assert winner.score == max(c.score for c in whole.state.evaluated.values())
    longer = _stalling_evolution(space, patience=None)
    longer.run()
    assert list(longer.state.evaluated)[: len(whole.state.evaluated)] == list(whole.state.evaluated)  # a prefix

    state = tmp_path / "s.json"
    killed = _stalling_evolution(space, state)
    stop_at = whole.state.generation - 1
    killed.on_generation = _kill_after(stop_at)
    with pytest.raises(Killed):
        killed.run()
    resumed = _stalling_evolution(space, state)
    resumed.resume()
    assert resumed.run()[None].arch == winner.arch
    assert resumed.state.generation == whole.state.generation
    assert list(resumed.state.evaluated) == list(whole.state.evaluated)


@pytest.mark.parametrize("value", ["0", "-3"])
def test_patience_below_one_is_one_line_exit_2(tmp_path, value):
    result = run_cli("search", *TINY, "--patience", value, "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "--patience", "is not in the range 1<=x<=100000")
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_scoring_without_a_gpu_is_one_line():
    from deployvit.search.run import make_score

    space = get_space("test")
    with pytest.raises(DeployvitError, match="no CUDA GPU") as err:
        make_score(space, 0, "cuda")
    assert "\n" not in str(err.value)
    assert isinstance(make_score(space, 0, "cpu"), DSSScore)


@pytest.mark.gpu
def test_dss_on_the_gpu_agrees_with_the_cpu():
    space = get_space("test")
    arch = space.sample(np.random.default_rng(0))
    cpu = DSSScore(space).reference(arch)
    assert DSSScore(space, device=torch.device("cuda"))(arch) == pytest.approx(cpu, rel=1e-3)


def test_summary_prints_kendall_tau_and_warns_when_size_decides(tmp_path):
    result = run_cli("search", *TINY, "--out", str(tmp_path / "r"))
    assert result.code == 0, result.err
    line = next(l for l in result.out.splitlines() if l.startswith("score vs size"))
    log = [json.loads(l) for l in (tmp_path / "r/log.jsonl").read_text().splitlines()][-1]
    tau = log["kendall_tau_dss_vs_params"]
    assert f"Kendall tau {tau:.2f} with params" in line and "the 8 archs of the random initial population" in line
    assert log["kendall_tau_over"] == "the 8 archs of the random initial population"
    state = json.loads((tmp_path / "r/search_state.json").read_text())
    first = [c["score"] for c in state["evaluated"][:state["initial"]]]  # the tau is over those, not over all 32
    assert state["initial"] == 8 and len(state["evaluated"]) == 32
    assert tau == pytest.approx(kendalltau(first, [c["metrics"]["params"] for c in state["evaluated"][:8]]).statistic)
    assert ("--min-params/--min-flops" in result.err) == (max(tau, log["kendall_tau_dss_vs_flops"]) > 0.7)


def test_two_torchrun_ranks_give_the_single_process_result(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    single = run_cli("search", *TINY, "--out", str(tmp_path / "one"))
    assert single.code == 0, single.err
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "deployvit", "search", *TINY, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "one/best.arch.json").read_text() == (tmp_path / "two/best.arch.json").read_text()
    one, two = (json.loads((tmp_path / d / "search_state.json").read_text())["evaluated"] for d in ("one", "two"))
    assert one == two  # every arch, in order, with the same score
    assert proc.stdout.count("score vs size") == 1  # rank 0 speaks for both


class SizeScore:
    """A score that is any function of the arch (here its parameter count) and remembers what it scored."""

    name = "size"

    def __init__(self):
        self.scored = []

    def __call__(self, arch):
        from deployvit.counting import count_params

        self.scored.append(arch.key)
        return float(count_params(arch))


def _sharded_worker(rank, world, init_file, archs, results):
    import torch.distributed as dist

    from deployvit.search.distributed import Ranks, ShardedScore

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    inner = SizeScore()
    values = ShardedScore(inner, Ranks(rank, world)).score_many(archs)
    results[rank] = (values, inner.scored)
    dist.destroy_process_group()


def test_sharded_score_splits_any_score_over_gloo_ranks_and_gathers_in_order(tmp_path):
    import torch.multiprocessing as mp

    space = get_space("test")
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(7)]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_sharded_worker, args=(2, str(tmp_path / "init"), archs, results), nprocs=2)
        results = dict(results)
    expected = [SizeScore()(a) for a in archs]
    for rank in (0, 1):
        values, scored = results[rank]
        assert values == expected  # every rank holds every score, in the batch's order
        assert scored == [a.key for a in archs[rank::2]]  # and scored only its share


def test_an_empty_batch_scores_nothing():
    """A generation whose draws were all rejected or scored already hands the score an empty batch."""
    score = DSSScore(get_space("test"), seed=0, threads=2)
    assert score.score_many([]) == []


def test_a_budget_that_few_archs_meet_runs_out_of_children_cleanly(tmp_path):
    """Under 0.45 MFLOPs the test space has a handful of archs: once they are scored, generations draw
    nothing new, and the search still finishes with the best of them (it used to crash there)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two scoring threads, as on a 2-core machine
    try:
        result = run_cli("search", "--space", "test", "--flops", "0.45M", "--no-progress", "--out", str(tmp_path / "run"))
    finally:
        torch.set_num_threads(threads)
    assert result.code == 0, result.err
    assert (tmp_path / "run" / "best.arch.json").exists()
