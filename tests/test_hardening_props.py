"""Property tests of every checked reader: random and mutated JSON/YAML either load as a valid object
or are refused with one DeployvitError line; never another exception, never a traceback from the CLI.

A mutation takes a valid document (an arch, a space, a shipped latency table, a search state) and
changes one place in it: drops a key, adds one, swaps a value for random JSON (NaN, huge numbers,
strings, nesting), or edits the text itself (cut, repeat or splice bytes)."""

from __future__ import annotations

import functools
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployvit.arch import load_arch
from deployvit.errors import DeployvitError
from deployvit.latency.table import LatencyTable
from deployvit.spaces import get_space, load_space
from tests.conftest import run_cli

SHIPPED_TEST_TABLE = Path(__file__).resolve().parent.parent / "latency_tables" / "cpu" / "test-eager-fp32-b1.json"
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

scalars = (st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from([0, -1, 1, 2, 3, 16, 32, 64, 1e300, -0.0, 10**6, 2**63]) | st.text(max_size=8))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=16)


def _paths(doc, prefix=()):
    """Every (container path, key) in `doc`, to pick a mutation site from."""
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((prefix, k))
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append((prefix, i))
            out += _paths(v, prefix + (i,))
    return out


def _get(doc, path):
    for key in path:
        doc = doc[key]
    return doc


@st.composite
def mutated(draw, doc):
    """`doc` (a JSON-like value) with one structural change, then maybe one textual change."""
    doc = json.loads(json.dumps(doc))
    sites = _paths(doc)
    kind = draw(st.sampled_from(["replace", "drop", "add", "number", "nest"]))
    if sites:
        path, key = draw(st.sampled_from(sites))
        parent = _get(doc, path)
        if kind == "replace":
            parent[key] = draw(json_values)
        elif kind == "drop":
            del parent[key]
        elif kind == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
        elif kind == "number" and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
            parent[key] = draw(st.sampled_from([-parent[key], parent[key] * 1e6, 0, parent[key] + 0.5, float("nan"), float("inf"), str(parent[key])]))
        elif kind == "nest":
            parent[key] = [parent[key]]
    text = json.dumps(doc)
    edit = draw(st.sampled_from(["none", "none", "cut", "repeat", "splice"]))
    if edit != "none" and text:
        i = draw(st.integers(0, len(text) - 1))
        j = draw(st.integers(i, min(len(text), i + 40)))
        if edit == "cut":
            text = text[:i] + text[j:]
        elif edit == "repeat":
            text = text[:j] + text[i:j] + text[j:]
        else:
            text = text[:i] + draw(st.text(max_size=6)) + text[i:]
    return text


def _load(reader, text: str | bytes, name: str):
    """reader(path of `text`): the object, or None when refused with one DeployvitError line."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        try:
            return reader(path)
        except DeployvitError as exc:
            assert "\n" not in str(exc), str(exc)
            return None


ARCH = get_space("test").max_arch().to_dict()
SPACE = {"name": "mine", "img_size": 32, "patch_size": 8, "num_classes": 10,
         "stages": [{"embed_dim": [32, 48], "depth": [1, 2], "num_heads": [1, 2], "mlp_ratio": [2.0, 4.0], "head_dim": 16}]}


@FAST
@given(st.data())
def test_arch_reader_on_mutated_and_random_archs(data):
    text = data.draw(mutated(ARCH) | json_values.map(json.dumps) | st.binary(max_size=64))
    arch = _load(load_arch, text, "a.json")
    if arch is not None:
        assert type(arch).from_dict(arch.to_dict()) == arch  # a valid object: canonical and round-trips
        assert 1 <= arch.depth and all(math.isfinite(layer.mlp_ratio) for layer in arch.layers)


@FAST
@given(st.data(), st.sampled_from(["s.json", "s.yaml"]))
def test_space_reader_on_mutated_and_random_spaces(data, name):
    text = data.draw(mutated(SPACE) | json_values.map(json.dumps) | st.text(max_size=80) | st.binary(max_size=64))
    space = _load(load_space, text, name)
    if space is not None:
        arch = space.sample(np.random.default_rng(0))
        assert space.contains(arch) and space.size() >= 1


TABLE = json.loads(SHIPPED_TEST_TABLE.read_text())
TEST_ARCHS = [get_space("test").min_arch(), get_space("test").max_arch(), get_space("test").sample(np.random.default_rng(3))]


@FAST
@given(st.data())
def test_table_reader_on_mutated_tables(data):
    text = data.draw(mutated(TABLE))
    table = _load(lambda p: LatencyTable.load(p, warn=False), text, "t.json")
    if table is None:
        return
    for arch in TEST_ARCHS:  # a table that loads must give predictions that can be trusted
        try:
            us = table.predict(arch)
        except DeployvitError:
            continue  # a part it does not time (its metadata names another space): refused, one line
        assert math.isfinite(us) and us > 0


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_cli_inspect_and_latency_never_print_a_traceback(data):
    with tempfile.TemporaryDirectory() as tmp:
        arch = Path(tmp) / "a.json"
        arch.write_text(data.draw(mutated(ARCH)))
        table = Path(tmp) / "t.json"
        table.write_text(data.draw(mutated(TABLE)))
        for argv in (["inspect", str(arch)], ["latency", str(arch), "--table", str(table)],
                     ["inspect", "--space", str(arch), "--sample", "1"]):
            result = run_cli(*argv)
            assert "Traceback" not in result.err
            assert result.code in (0, 2), (argv, result.code, result.err)
            if result.code == 2:
                # one error line; a warning about the table itself (made under another torch) may precede it
                errors = [line for line in result.err.splitlines() if line.strip() and not line.startswith("deployvit: warning:")]
                assert len(errors) == 1, result.err


@functools.lru_cache(maxsize=1)
def _search_parts():
    """Space, metric model and score built once (the DSS score builds a model): only the state varies."""
    from deployvit.search.predictor import MetricModel
    from deployvit.search.scores import DSSScore

    space = get_space("test")
    return space, MetricModel(space), DSSScore(space, seed=0)


def _evolution(state_path):
    from deployvit.search.budgets import Constraints
    from deployvit.search.evolution import Evolution, EvolutionConfig

    space, model, score = _search_parts()
    config = EvolutionConfig(population=3, generations=1, parents=1, mutations=1, crossovers=1)
    return Evolution(space, model, Constraints(max_flops=1e9), score, config, state_path)


@pytest.fixture(scope="module")
def search_state(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("search") / "search_state.json"
    _evolution(path).run()
    return json.loads(path.read_text())


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_search_state_reader_on_mutated_states(search_state, data):
    def resume(path):
        evolution = _evolution(path)
        evolution.resume()
        return evolution

    evolution = _load(resume, data.draw(mutated(search_state)), "search_state.json")
    if evolution is not None:
        assert all(math.isfinite(c.score) for c in evolution.state.evaluated.values())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(1, 1e5), st.floats(1, 1e5)), min_size=2, max_size=12),
       st.floats(0.01, 10), st.floats(0, 1e4))
def test_calibration_fit_keeps_the_bias_non_negative_and_is_the_best_such_line(points, other_scale, other_bias):
    from deployvit.latency.stats import fit_affine

    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    try:
        scale, bias = fit_affine(x, y)
    except DeployvitError:
        return  # fewer than 2 distinct sums, or a slope <= 0: refused with one line
    assert bias >= 0 and scale > 0
    sse = float(((scale * x + bias - y) ** 2).sum())
    assert sse <= float(((other_scale * x + other_bias - y) ** 2).sum()) * (1 + 1e-9) + 1e-6  # no line with bias >= 0 fits better
