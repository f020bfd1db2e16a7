"""The search seam: methods, scores and samplers come from one registry each (every registered one
gets the same checks, as timm's models do), `search --method` picks the searcher, the search state
records the method and the score, and a resume with another of either is one line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deployvit.cli import cli
from deployvit.counting import count_params
from deployvit.errors import DeployvitError
from deployvit.search import METHODS, SCORE_ALIASES, SCORES, ScoreEntry
from deployvit.search.budgets import Constraints
from deployvit.search.predictor import MetricModel
from deployvit.search.searcher import SearchConfig, Searcher, make_searcher
from deployvit.spaces import get_space
from deployvit.train.sampler_base import SAMPLERS, ArchSampler
from deployvit.train.samplers import make_sampler
from tests.conftest import assert_one_line_error, run_cli

SPACE = get_space("test")
TINY = ["--space", "test", "--flops", "1.5M", "--population", "6", "--generations", "2", "--parents", "3", "--mutations", "3",
        "--crossovers", "3", "--no-progress"]
SMALL = dict(population=6, generations=3, parents=3, mutations=3, crossovers=3, patience=None)


@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    torch.set_num_threads(1)
    yield


class Params:
    """A deterministic score (the arch's parameter count) under any registered score's name."""

    def __init__(self, name: str = "dss"):
        self.name, self.calls = name, 0

    def __call__(self, arch) -> float:
        self.calls += 1
        return float(count_params(arch))


def params_score(inputs) -> Params:
    """A score factory as a new score would register one (`test_a_new_score_is_one_registration`)."""
    return Params("params")


def _searcher(config: SearchConfig, state=None, score=None, **kwargs) -> Searcher:
    return make_searcher(SPACE, MetricModel(SPACE), Constraints(), score or Params(), config, state, **kwargs)


# --- every registered one ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_is_a_searcher_of_its_name(name):
    cls = METHODS[name].load()
    assert issubclass(cls, Searcher) and cls.name == name
    assert METHODS[name].score in SCORES and METHODS[name].help


@pytest.mark.parametrize("name", SCORES.names())
def test_every_score_is_a_factory_and_the_trainless_ones_score(name):
    from deployvit.search import ScoreInputs

    entry = SCORES[name]
    factory = entry.load()
    assert callable(factory) and entry.help
    if not entry.needs_supernet:
        score = factory(ScoreInputs(SPACE, torch.device("cpu")))
        assert score.name == name and np.isfinite(score(SPACE.min_arch()))


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_every_sampler_plans_archs_of_its_space(name):
    sampler = make_sampler(name, SPACE, seed=0, total_steps=10)
    assert isinstance(sampler, ArchSampler) and sampler.name == name
    plan = sampler.plan(0, 0, 64)
    assert plan.archs and all(SPACE.contains(a) for a in plan.archs)
    assert sampler.state_dict()["name"] == name


def test_the_command_line_offers_exactly_the_registered_names():
    params = {p.name: p for p in cli.get_command(None, "search").params}
    assert tuple(params["method"].type.choices) == METHODS.names()
    assert tuple(params["score"].type.choices) == (*SCORES.names(), *SCORE_ALIASES)
    for name in (*METHODS, *SCORES):
        assert name in params["method"].help + params["score"].help
    sampler = {p.name: p for p in cli.get_command(None, "train-supernet").params}["sampler"]
    assert tuple(sampler.type.choices) == ("auto", *SAMPLERS.names())


def test_unknown_names_are_one_line():
    for make, needle in [(lambda: SCORES["synflow"], "unknown score 'synflow' (choose from dss, supernet)"),
                         (lambda: SearchConfig(method="greedy"), "unknown search method 'greedy' (choose from evolution, random, focus)"),
                         (lambda: make_sampler("greedy", SPACE, 0), "unknown sampler 'greedy'")]:
        with pytest.raises(DeployvitError, match=needle.replace("(", r"\(").replace(")", r"\)")) as err:
            make()
        assert "\n" not in str(err.value)


def test_a_new_score_is_one_registration(tmp_path, monkeypatch):
    """A score registered with one record is checked, dispatched and recorded like the built-in ones."""
    from deployvit.search.run import SearchRequest, resolve_search, run_search

    monkeypatch.setitem(SCORES._entries, "params", ScoreEntry("params", "tests.test_search_methods:params_score", "parameter count"))
    request = SearchRequest(space="test", constraints=Constraints(max_flops=1.5e6), score="params",
                            config=SearchConfig(**SMALL), out=str(tmp_path / "r"))
    result = run_search(resolve_search(request, echo=lambda *_: None), echo=lambda *_: None, progress=False)
    state = json.loads((tmp_path / "r" / "search_state.json").read_text())
    assert (state["method"], state["score"]) == ("evolution", "params")
    winner = next(iter(result.winners.values()))
    assert winner.score == max(c["score"] for c in state["evaluated"])  # the most parameters within 1.5 MFLOPs


# --- search --method, the recorded method, the refused resume ----------------------------------------


def test_method_random_is_recorded_and_scores_as_many_archs_as_evolution(tmp_path):
    out = tmp_path / "r"
    result = run_cli("search", *TINY, "--method", "random", "--patience", "100", "--out", str(out))
    assert result.code == 0, result.err
    state = json.loads((out / "search_state.json").read_text())
    assert (state["method"], state["score"], state["config"]["method"]) == ("random", "dss", "random")
    assert len(state["evaluated"]) == 6 + 2 * (3 + 3)
    final = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert (final["method"], final["score"]) == ("random", "dss")


def test_resume_with_another_method_is_refused_naming_both(tmp_path):
    out = tmp_path / "r"
    assert run_cli("search", *TINY, "--out", str(out)).code == 0
    state = (out / "search_state.json").read_text()
    assert json.loads(state)["method"] == "evolution"
    result = run_cli("search", *TINY, "--method", "random", "--out", str(out), "--resume")
    assert_one_line_error(result, "cannot resume", "started with --method evolution --score dss, not --method random --score dss")
    assert (out / "search_state.json").read_text() == state  # untouched


def test_resume_with_another_score_is_refused_naming_both(tmp_path):
    state = tmp_path / "search_state.json"
    config = SearchConfig(**SMALL)
    _searcher(config, state).search()
    with pytest.raises(DeployvitError, match="started with --method evolution --score dss, not --method evolution --score supernet"):
        _searcher(config, state, score=Params("supernet")).search(resume=True)
    _searcher(config, state).search(resume=True)  # the same method and score resume


def test_a_state_from_before_methods_resumes_as_its_method_or_is_refused(tmp_path):
    """Before the method was recorded: a state with a random initial population (or a score the old
    `--score sampler` could not use) was evolution's or random search's, its config says which; a
    supernet-scored state without one may have been a sampler run, and is refused."""
    state = tmp_path / "search_state.json"
    config = SearchConfig(**{**SMALL, "method": "random"})
    whole = _searcher(config)
    whole.search()
    killed = _searcher(config, state, on_generation=_kill_after(1))
    with pytest.raises(Killed):
        killed.search()
    data = json.loads(state.read_text())
    del data["method"], data["config"]["sampler_k"]  # what a state written before them lacks
    state.write_text(json.dumps(data))
    resumed = _searcher(config, state)
    resumed.search(resume=True)
    assert resumed.state.method == "random" and list(resumed.state.evaluated) == list(whole.state.evaluated)
    state.write_text(json.dumps(data))
    with pytest.raises(DeployvitError, match="started with --method random --score dss, not --method evolution"):
        _searcher(SearchConfig(**SMALL), state).search(resume=True)
    sampler_run = {**data, "score": "supernet", "initial": 0, "config": {**data["config"], "method": "evolution"}}
    state.write_text(json.dumps(sampler_run))
    with pytest.raises(DeployvitError, match="predates recorded search methods and may be a --score sampler run") as err:
        _searcher(SearchConfig(**SMALL), state, score=Params("supernet")).search(resume=True)
    assert "\n" not in str(err.value)


class Killed(Exception):
    pass


def _kill_after(step: int):
    def on_step(done: int, searcher) -> None:
        if done == step:
            raise Killed

    return on_step


# --- focus -------------------------------------------------------------------------------------------


def _focus(state=None, score=None, on_generation=None):
    from deployvit.latency.table import LatencyTable, shipped_tables_dir
    from deployvit.train.focus import FocusPolicy

    table = LatencyTable.load(shipped_tables_dir() / "cpu" / "test-eager-fp32-b1.json", warn=False)
    model = MetricModel(SPACE, table)
    lo, hi = model.range("latency")
    constraints = Constraints(max_latency=[lo + f * (hi - lo) for f in (0.3, 0.6, 0.9)])
    torch.manual_seed(0)
    policy = FocusPolicy(SPACE)  # untrained: uniform proposals, which is all the plumbing needs
    return make_searcher(SPACE, model, constraints, score or Params("supernet"), SearchConfig(method="focus", sampler_k=5),
                         state, on_generation, policy=policy)


def test_focus_scores_k_archs_per_budget_and_resumes_per_budget(tmp_path):
    whole = _focus()
    winners = whole.search()
    assert len(whole.state.evaluated) == 3 * 5 and all(w is not None for w in winners.values())
    for budget, winner in winners.items():
        assert winner.metrics["latency"] <= budget
    state = tmp_path / "search_state.json"
    with pytest.raises(Killed):
        _focus(state, on_generation=_kill_after(0)).search()
    assert json.loads(state.read_text())["generation"] == 0
    score = Params("supernet")
    resumed = _focus(state, score)
    assert resumed.search(resume=True) == winners
    assert list(resumed.state.evaluated) == list(whole.state.evaluated) and score.calls == 2 * 5  # budgets 1 and 2 only
    again = Params("supernet")
    _focus(state, again).search(resume=True)
    assert again.calls == 0  # a finished run scores nothing more


def test_focus_needs_a_supernet_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here: no supernet run is found
    out = tmp_path / "never"
    assert_one_line_error(run_cli("search", *TINY, "--method", "focus", "--out", str(out)),
                          "--score supernet and --method focus need a supernet (--supernet CHECKPOINT): none under runs/ "
                          "(train one with `deployvit train-supernet --space test --data digits --sampler focus`)")
    assert_one_line_error(run_cli("search", *TINY, "--method", "focus", "--score", "dss", "--out", str(out)),
                          "--method focus needs a supernet (--supernet CHECKPOINT)")
    assert_one_line_error(run_cli("search", *TINY, "--score", "sampler", "--method", "random", "--out", str(out)),
                          "--score sampler means --method focus --score supernet; it cannot be combined with --method random")
    assert_one_line_error(run_cli("search", *TINY, "--score", "sampler", "--method", "evolution", "--out", str(out)),
                          "cannot be combined with --method evolution")
    assert not out.exists()
