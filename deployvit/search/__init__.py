"""Constrained architecture search: budgets, vectorised metrics, scores, searchers, Pareto outputs.

The two registries of a search (`deployvit.registry`), read by `deployvit search`'s choices and
help, by the resolve step's checks and by the dispatch:

- `SCORES`: how an arch is ranked. A score is a factory `(ScoreInputs) -> Score` (`search.scores`).
  A new one: its module (or a function in one) plus one `ScoreEntry` below.
- `METHODS`: how archs are chosen to score, each a `search.searcher.Searcher` subclass (ModelOpt's
  template: `search()` = reset, load checkpoint, before_search, run_search, after_search). A new one:
  its module plus one `MethodEntry` below.

The samplers of supernet training are registered the same way (`deployvit.train.sampler_base`).
"""

from __future__ import annotations

import importlib
import sys
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deployvit.registry import Entry, Registry

if TYPE_CHECKING:
    import torch

    from deployvit.spaces import SearchSpace
    from deployvit.supernet import Supernet


@dataclass(frozen=True)
class ScoreEntry(Entry):
    needs_supernet: bool = False  # ranks with a trained supernet (--supernet); the space is then the checkpoint's
    needs_data: bool = False  # reads the checkpoint's held-out images of --data


@dataclass(frozen=True)
class MethodEntry(Entry):
    score: str = "dss"  # the score when --score is not given
    needs_supernet: bool = False  # draws from something trained with the supernet (--supernet): focus, its sampler


SCORES: Registry[ScoreEntry] = Registry("score", [
    ScoreEntry("dss", "deployvit.search.scores:dss_score",
               "TF-TAS's training-free DSS indicator on seeded random supernet weights"),
    ScoreEntry("supernet", "deployvit.search.supernet_score:supernet_score",
               "top-1 of the inherited supernet weights on the held-out images its training run recorded",
               needs_supernet=True, needs_data=True),
])

METHODS: Registry[MethodEntry] = Registry("search method", [
    MethodEntry("evolution", "deployvit.search.evolution:EvolutionSearch",
                "AutoFormer's evolution (random population, then screened mutation and crossover children per generation)"),
    MethodEntry("random", "deployvit.search.evolution:RandomSearch",
                "uniform random archs, as many evaluations as evolution (the baseline)"),
    MethodEntry("focus", "deployvit.search.specialise:FocusSearch",
                "FocusFormer specialisation: --sampler-k proposals per budget from the sampler trained with the supernet "
                "(train-supernet --sampler focus), the best by the score",
                score="supernet", needs_supernet=True),
])

#: old spellings of a method and score: `--score sampler` was FocusFormer specialisation before it was a method
SCORE_ALIASES: dict[str, tuple[str, str]] = {"sampler": ("focus", "supernet")}


@dataclass
class ScoreInputs:
    """What a score factory may build from (the command layer resolves every name into these)."""

    space: "SearchSpace"
    device: "torch.device"
    seed: int = 0
    supernet: "Supernet | None" = None  # loaded from --supernet, for scores that need one
    meta: dict | None = None  # its checkpoint's metadata (held-out image ids, ...)
    checkpoint: str | None = None  # the checkpoint's path, for messages
    data: str | None = None  # the data the supernet was trained on


class _SearchPackage(types.ModuleType):
    """`deployvit.search` is this package and, called, the search command as a function:
    `deployvit.search(latency="5ms")` is `deployvit.search.api.search` (README "Python API"). The
    package object is the one `import deployvit.search` binds, so the call works however
    `deployvit.search` was reached (the top-level lazy attribute or an import of a submodule)."""

    def __call__(self, *args, **kwargs):
        # by name at call time, as the CLI's command table does: api imports this package's modules
        return importlib.import_module("deployvit.search.api").search(*args, **kwargs)


sys.modules[__name__].__class__ = _SearchPackage
