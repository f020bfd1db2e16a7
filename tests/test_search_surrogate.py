"""Screened evolution (issue 13): the surrogate ranks archs it has not seen, screening spends an
equal number of evaluations better than AutoFormer's loop, and it changes nothing it should not
(no surrogate when nothing can be learnt)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kendalltau

from deployvit.search.budgets import Constraints
from deployvit.search.evolution import Evolution, EvolutionConfig
from deployvit.search.predictor import MetricModel
from deployvit.search.surrogate import Surrogate, features
from deployvit.spaces import get_space


def layered(arch) -> float:
    """A score shaped like DSS on random weights: per-layer terms that grow with the layer's width and
    its position, scaled by the embed width, plus a depth interaction it cannot express exactly."""
    stage = arch.stages[0]
    total = 0.0
    for position, layer in enumerate(stage.layers):
        total += (layer.num_heads * 64) ** 1.3 * layer.mlp_ratio ** 0.7 * (1 + 0.05 * position)
    return total * (stage.embed_dim / 192) ** 1.5 + 3.0 * stage.depth ** 2


class Synthetic:
    name = "dss"

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, arch) -> float:
        self.calls += 1
        return self.fn(arch)


def test_surrogate_ranks_held_out_archs():
    space = get_space("autoformer-tiny")
    model = MetricModel(space)
    rng = np.random.default_rng(0)
    train, test = [space.sample(rng) for _ in range(150)], [space.sample(rng) for _ in range(300)]
    surrogate = Surrogate(model)
    surrogate.fit(train, [layered(a) for a in train])
    tau = kendalltau(surrogate.predict(test), [layered(a) for a in test]).statistic
    assert tau > 0.85
    assert features(model, model.encode(test[:1])).shape[0] == 1


def test_constant_scores_leave_the_children_unscreened():
    """Nothing to learn: screening draws exactly what AutoFormer's loop draws (same rng use)."""
    space = get_space("test")
    runs = []
    for screen in (1, 8):
        config = EvolutionConfig(population=6, generations=3, parents=3, mutations=3, crossovers=3, screen=screen, patience=None)
        evo = Evolution(space, MetricModel(space), Constraints(), Synthetic(lambda a: 1.0), config)
        evo.run()
        runs.append(list(evo.state.evaluated))
    assert runs[0] == runs[1]


def _best(space, constraints, screen: int, seed: int) -> float:
    config = EvolutionConfig(population=20, generations=6, parents=5, mutations=5, crossovers=5, screen=screen,
                             seed=seed, patience=None)
    score = Synthetic(layered)
    evo = Evolution(space, MetricModel(space), constraints, score, config)
    winner = evo.run()[None]
    assert score.calls == len(evo.state.evaluated) == config.evaluations  # equal evaluations, none twice
    return winner.score


def test_screening_finds_better_archs_at_equal_evaluations():
    space = get_space("autoformer-tiny")
    lo, hi = MetricModel(space).range("flops")
    constraints = Constraints(max_flops=lo + 0.5 * (hi - lo))
    plain = [_best(space, constraints, 1, seed) for seed in range(3)]
    screened = [_best(space, constraints, 16, seed) for seed in range(3)]
    assert sum(s > p for s, p in zip(screened, plain)) >= 2
    assert np.median(screened) > np.median(plain)


@pytest.mark.parametrize("field", ["screen"])
def test_bad_screening_settings_are_refused(field):
    from deployvit.errors import DeployvitError

    with pytest.raises(DeployvitError, match=field):
        EvolutionConfig(**{field: -1})
