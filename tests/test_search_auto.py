"""`search --space auto` (the default): a ViT family per latency budget on the target, from tables
built on demand; several families in one run folder; what a costly search says before it spends.

The must-be-true budgets of issue 26 land in the big families (vit-large, vit-huge), whose DSS costs
minutes per arch on a CPU, so they are checked here independently of the search: the family chosen
for each budget, and that the budget binds there (archs of the family reach every latency between
85% of the budget and the budget, and some are over it). `benchmarks/search_binds.py` runs the
searches; the README records an end-to-end run of each."""

from __future__ import annotations

import json
import numpy as np
import pytest
import torch

from deployvit.errors import DeployvitError
from deployvit.latency.resolve import Machine, TableQuery, resolve_table
from deployvit.search.auto import DEFAULT_SPACE, plan_spaces
from deployvit.search.budgets import Constraints
from deployvit.search.families import BIND_SHARE, Span, choose_family, reachable_latencies
from deployvit.search.run import SearchRequest
from deployvit.spaces import FAMILIES, get_space
from tests.conftest import run_cli

CPU = Machine("cpu", "test CPU")


def plan(latency: str, **kw):
    return plan_spaces(SearchRequest(constraints=Constraints(max_latency=latency), **kw), scores_on_cpu=True)


def table_of(family: str, **kw):
    space = get_space(family)
    return resolve_table(TableQuery(family, space.hash(), **kw), machine=CPU, space=space).table


def assert_binds(family: str, budget_us: float, **target) -> None:
    """The budget binds in the family: reachable latencies fill [0.85 b, b] and some arch is over b."""
    reach = reachable_latencies(get_space(family), table_of(family, **target))
    inside = reach[(reach >= BIND_SHARE * budget_us) & (reach <= budget_us)]
    assert len(inside) > 0 and reach.max() > budget_us, (family, budget_us, reach.min(), reach.max())


@pytest.mark.parametrize("device, family", [(None, "vit-tiny"), ("a100", "vit-huge"), ("l4", "vit-huge"), ("orin", "vit-large")])
def test_5ms_binds_on_every_named_target_without_a_profile_step(device, family):
    if device is None and torch.cuda.is_available():
        pytest.skip("the default target of a machine without a GPU")
    spaces = plan("5ms", device=device)
    assert spaces.groups == [(family, [5000.0])]
    assert_binds(family, 5000.0, device=device)
    assert "does not bind" not in " ".join(spaces.lines) and spaces.lines[0].startswith(f"space: {family} for 5 ms: {family} spans")


def test_2_3_5ms_on_an_a100_are_three_different_winners_each_within_15_percent():
    spaces = plan("2ms,3ms,5ms", device="a100")
    assert spaces.groups == [("vit-large", [2000.0]), ("vit-huge", [3000.0, 5000.0])]
    windows = []
    for family, budgets in spaces.groups:
        for b in budgets:
            assert_binds(family, b, device="a100")
            windows.append((BIND_SHARE * b, b))
    # each winner lies in its own window [0.85 b, b]; the windows do not meet, so the winners differ
    assert all(hi < lo for (_, hi), (lo, _) in zip(windows, windows[1:]))


def test_the_cpu_rule_takes_the_smaller_family_only_with_room_around_the_budget():
    spans = [Span("vit-base", 950.0, 3560.0), Span("vit-large", 2370.0, 11820.0)]  # Orin, TensorRT b1
    assert choose_family(3000.0, spans) == "vit-large"  # the more central
    assert choose_family(3000.0, spans, prefer_cheap=True) == "vit-base"  # 3.56/3 = 1.19 >= 1/0.85 on both sides
    assert choose_family(3200.0, spans, prefer_cheap=True) == "vit-large"  # 3.56/3.2 = 1.11: no room above in vit-base
    with pytest.raises(DeployvitError, match="below every family's span .* the nearest: vit-base spans 0.95 ms"):
        choose_family(500.0, spans)


def test_without_a_latency_budget_auto_is_the_default_space():
    assert plan_spaces(SearchRequest(constraints=Constraints(max_flops="1.5G")), scores_on_cpu=True).groups == [(DEFAULT_SPACE, [])]


def test_a_named_space_is_used_as_given():
    assert plan("5ms", space="vit-base").groups == [("vit-base", [5000.0])]


def test_a_budget_that_does_not_bind_in_a_named_space_says_so_with_a_runnable_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("search", "--space", "test", "--latency", "5ms", "--population", "2", "--generations", "0", "--no-progress")
    assert result.code == 0, result.err
    note = next(line for line in result.out.splitlines() if "does not bind" in line)
    assert "--latency 5 ms admits every arch" in note and "(try `deployvit search --space vit-tiny --latency 5ms`, or a tighter" in note
    result = run_cli("search", "--space", "test", "--latency", "1s", "--population", "2", "--generations", "0", "--no-progress")
    note = next(line for line in result.out.splitlines() if "does not bind" in line)
    assert note.endswith("the budget does not bind (or a tighter budget)")  # 1 s lies in no family's span: no space helps


def test_a_search_over_two_families_is_one_run_folder_and_resumes(tmp_path, monkeypatch):
    """H100, batch 64: 0.6 ms lies in vit-tiny only, 1.5 ms above it (cheap families: DSS in seconds)."""
    monkeypatch.chdir(tmp_path)
    args = ["search", "--device", "h100", "--batch-size", "64", "--latency", "0.6ms,1.5ms", "--population", "3", "--generations", "0",
            "--no-progress", "--out", "run"]
    result = run_cli(*args)
    assert result.code == 0, result.err
    assert "space: vit-tiny for 0.6 ms: vit-tiny spans" in result.out and "space: vit-small for 1.5 ms: vit-small spans" in result.out
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["best-0.6ms.arch.json", "best-1.5ms.arch.json", "best.arch.json",
                                                     "search_plan.json", "vit-small", "vit-tiny"]
    for family in ("vit-tiny", "vit-small"):
        assert (run / family / "best.arch.json").is_file() and (run / family / "pareto.png").is_file()
    tops = {label: json.loads((run / f"best-{label}.arch.json").read_text()) for label in ("0.6ms", "1.5ms")}
    assert [tops[k]["space"] for k in tops] == ["vit-tiny", "vit-small"]
    assert tops["1.5ms"]["metadata"]["run"] == "vit-small" and tops["1.5ms"]["metadata"]["metrics"]["latency_us"] <= 1500
    assert json.loads((run / "best.arch.json").read_text()) == tops["1.5ms"]
    assert "next: `deployvit export --arch run`" in result.out and "0.6ms  vit-tiny" in result.out
    again = run_cli(*args, "--resume")
    assert again.code == 0, again.err
    assert json.loads((run / "best.arch.json").read_text()) == tops["1.5ms"]
    refused = run_cli(*[a if a != "0.6ms,1.5ms" else "0.7ms,1.5ms" for a in args], "--resume")
    assert refused.code == 2 and "cannot resume" in refused.err


def test_the_first_archs_time_the_rest_and_a_costly_space_says_so_first():
    from types import SimpleNamespace

    from deployvit.search.progress import ScoringProgress

    lines = []
    score = SimpleNamespace(name="dss", device=torch.device("cpu"))
    tracker = ScoringProgress(get_space("vit-huge"), score, lines.append, bar=False)
    tracker.start(SimpleNamespace(max_evaluations=20, state=SimpleNamespace(evaluated={})), "search vit-huge", extra=1)
    assert "vit-huge's archs cost" in lines[0] and "minutes per arch on a CPU" in lines[0]
    tracker.scored(2, 120.0)  # two archs side by side in two minutes
    assert lines[1].startswith("vit-huge: 60.0 s per arch scored here (measured on 2); at most 19 more: about 19 min")
    tracker.scored(2, 120.0)
    assert len(lines) == 2  # said once
    quiet = []
    small = ScoringProgress(get_space("vit-tiny"), score, quiet.append, bar=False)
    small.start(SimpleNamespace(max_evaluations=350, state=SimpleNamespace(evaluated={})), "search vit-tiny")
    small.scored(2, 0.5)
    assert quiet == []  # 87 s in all: no line


def test_dss_runs_as_many_evaluations_side_by_side_as_memory_allows(monkeypatch):
    from deployvit.search import scores

    layer = torch.nn.Linear(1000, 1000)  # 4 MB of weights
    monkeypatch.setattr(scores, "available_memory", lambda: 40 * 1000 * 1000)
    assert scores.evaluations_that_fit(layer) == 2  # 4 x 4 MB per evaluation
    monkeypatch.setattr(scores, "available_memory", lambda: 1000)
    assert scores.evaluations_that_fit(layer) == 1


def test_families_are_planned_smallest_first_from_tables_built_once_and_cached():
    """The spans come from the resolver (the estimate built on demand and cached under
    $DEPLOYVIT_HOME): the same tables the searches in those families then use."""
    from deployvit.latency.resolve import deployvit_home

    spans = plan("5ms", device="t4").spans
    assert [s.family for s in spans] == list(FAMILIES) and all(np.diff([s.min_us for s in spans]) > 0)
    cached = sorted(p.name for p in (deployvit_home() / "cache" / "estimates" / "t4").glob("*.json"))
    assert [name.split("-tensorrt-fp16-b1-")[0] for name in cached] == sorted(FAMILIES)
