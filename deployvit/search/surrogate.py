"""A cheap model of the score, fit on the archs a search has scored, to choose which children to score.

Scoring is what a search pays for (a DSS evaluation is ~0.1 s on two cores; the whole rest of a
generation is milliseconds), so the evolution draws several candidate children per slot and scores
only the one this model ranks highest (predictor-guided evolution, as in BRP-NAS and NPENAS). The
model never stands in for a score: parents, winners and everything written are real scores; a poor
fit only wastes evaluations, it cannot put a wrong number in a result.

The model is ridge regression on one-hot arch choices (`SearchSpace.decisions()`): per stage its own
choices (embed width, depth), per layer position whether it is active and its choices (head count,
MLP ratio), each layer feature also crossed with its stage's choices other than depth (the width).
On autoformer-tiny DSS this ranks held-out archs with Kendall tau ~0.9 from 200 scored archs (layer
terms are nearly additive once the width is fixed). It is deterministic:
the same scored archs in the same order give the same ranking on every rank and after a resume.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from deployvit.arch import Arch
from deployvit.search.predictor import Encoded, MetricModel

RIDGE = 1.0  # on standardised scores


def features(model: MetricModel, enc: Encoded) -> np.ndarray:
    """[n, f] design matrix of encoded archs (see the module docstring); column 0 is the intercept.
    Each choice is one-hot without its first value (the intercept and the active flag stand for it)."""
    n, codes = len(enc), enc.codes
    columns = [np.ones((n, 1))]
    decisions = model.space.decisions()

    def one_hot(col: int) -> np.ndarray:  # [n, choices - 1]; a missing layer's -1 reads as the first value
        return np.eye(len(decisions[col].choices))[np.maximum(codes[:, col], 0)][:, 1:]

    for si in range(len(model.space.stages)):
        own = [i for i, d in enumerate(decisions) if d.stage == si and d.layer < 0]
        columns += [one_hot(i) for i in own]
        cross = np.concatenate([np.zeros((n, 0))] + [one_hot(i) for i in own if decisions[i].kind != "depth"], 1)
        positions = sorted({d.layer for d in decisions if d.stage == si and d.layer >= 0})
        for li in positions:
            active = (enc.depth[:, si] > li).astype(float)[:, None]
            choices = [one_hot(i) for i, d in enumerate(decisions) if d.stage == si and d.layer == li]
            layer = active * np.concatenate([np.ones((n, 1)), *choices], 1)
            columns += [layer, (layer[:, :, None] * cross[:, None, :]).reshape(n, -1)]
    return np.concatenate(columns, 1)


class Surrogate:
    """Ridge regression of scores on `features`, refit from scratch on every `fit`."""

    def __init__(self, model: MetricModel):
        self.model = model
        self._weights: np.ndarray | None = None

    def fit(self, archs: Sequence[Arch], scores: Sequence[float]) -> None:
        x = features(self.model, self.model.encode(archs))
        y = np.asarray(scores, dtype=np.float64)
        spread = y.std()
        if len(y) < 2 or not np.isfinite(spread) or spread == 0:  # nothing to learn a ranking from
            self._weights = None
            return
        z = (y - y.mean()) / spread
        penalty = RIDGE * np.eye(x.shape[1])
        penalty[0, 0] = 0.0  # the intercept is not shrunk
        self._weights = np.linalg.solve(x.T @ x + penalty, x.T @ z)

    @property
    def fitted(self) -> bool:
        return self._weights is not None

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        """Predicted standardised scores (only their order means anything)."""
        if self._weights is None:
            raise RuntimeError("fit the surrogate on scored archs first")
        return features(self.model, self.model.encode(archs)) @ self._weights
