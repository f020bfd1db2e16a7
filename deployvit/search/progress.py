"""A search's progress in archs scored, and how long the rest will take.

DSS costs grow steeply with the ViT family on a CPU (`benchmarks/family_dss_cost.py`, in DeiT-Ti
forward+backward steps per arch: vit-tiny 0.6-3, vit-huge 150-520, i.e. about half a second to
minutes per arch), so a search says what it is about to spend:

1. before anything is scored, when the space's archs are far larger than DeiT-Ti (`COSTLY_FLOPS`)
   and the score runs on a CPU: a note that each arch will take minutes;
2. once the first archs are scored: the measured seconds per arch and the time the search will
   take at most (every evaluation its settings allow, plus the published baselines scored for the
   plot), when that is over `ETA_NOTE_S`; it stops earlier when it converges (`--patience`), and a
   killed search continues with `--resume`;
3. throughout: a progress bar counted in archs, whose ETA follows the measured rate.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from deployvit.search.scores import Score
    from deployvit.search.searcher import Searcher
    from deployvit.spaces import SearchSpace

#: print the measured cost and the time left when the whole search would take longer than this
ETA_NOTE_S = 120.0
#: "minutes per arch" warning above this many MACs per arch on a CPU (10x DeiT-Ti's 1.26 G)
COSTLY_FLOPS = 12.6e9


def duration(seconds: float) -> str:
    """'45 s', '12 min', '3.4 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class CountingScore:
    """A score that reports the archs it scores as they are done (count, wall seconds), in chunks as
    wide as the score runs side by side (DSS threads x torchrun ranks), so that the first archs of a
    population time the rest; every arch's score is the wrapped score's, whatever the chunking (each
    is computed on its own). Everything else is the wrapped score's."""

    def __init__(self, score: "Score", on_batch: Callable[[int, float], None]):
        self._score, self._on_batch = score, on_batch
        self.name = score.name

    def __call__(self, arch) -> float:
        return self.score_many([arch])[0]

    @property
    def width(self) -> int:
        """Archs the wrapped score evaluates at once."""
        threads = getattr(self._score, "threads", 1)
        ranks = getattr(getattr(self._score, "ranks", None), "world_size", 1)
        return max(1, int(threads if isinstance(threads, int) else 1)) * max(1, int(ranks if isinstance(ranks, int) else 1))

    def score_many(self, archs: list) -> list[float]:
        from deployvit.search.scores import score_batch

        values: list[float] = []
        for i in range(0, len(archs), self.width):
            chunk = archs[i:i + self.width]
            start = time.perf_counter()
            values += score_batch(self._score, chunk)
            self._on_batch(len(chunk), time.perf_counter() - start)
        return values

    def __getattr__(self, name: str):
        return getattr(self._score, name)


class ScoringProgress:
    """The progress bar and the cost lines of one search (module docstring)."""

    def __init__(self, space: "SearchSpace", score: "Score", echo: Callable[[str], None], bar: bool = True):
        self.space, self.echo, self.use_bar = space, echo, bar
        device = getattr(score, "device", None)
        self.on_cpu = getattr(device, "type", None) == "cpu"
        self.searcher: Searcher | None = None
        self.total: int | None = None
        self.done: int | None = None  # archs scored, this run and before a resume
        self.seconds = 0.0
        self.batches = 0
        self.bar = None

    def wrap(self, score: "Score") -> CountingScore:
        return CountingScore(score, self.scored)

    def start(self, searcher: "Searcher", desc: str, extra: int = 0) -> None:
        """Before the search: its most evaluations (+ `extra`, the baselines scored for the plot),
        the bar, and the costly-space note."""
        self.searcher = searcher
        most = searcher.max_evaluations
        self.total = None if most is None else most + extra
        if self.on_cpu:
            from deployvit.counting import count_flops

            lo, hi = (count_flops(a) for a in (self.space.min_arch(), self.space.max_arch()))
            if hi > COSTLY_FLOPS:
                self.echo(f"note: {self.space.name}'s archs cost {lo / 1e9:.1f}-{hi / 1e9:.1f} GMACs each "
                          f"(DeiT-Ti: 1.26 GMACs): its training-free score takes minutes per arch on a CPU; the time the search "
                          "will take follows after the first archs (on a GPU, seconds)")
        if self.use_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=desc, unit="arch", leave=False)

    def scored(self, n: int, seconds: float) -> None:
        if self.done is None:  # the first batch: a resumed search has scored some already
            self.done = len(self.searcher.state.evaluated) if self.searcher is not None else 0
            if self.bar is not None:
                self.bar.n = self.done
        self.done += n
        self.seconds += seconds
        self.batches += 1
        if self.bar is not None:
            self.bar.update(n)
        if self.batches == 1:
            self._eta(seconds / max(n, 1), n)

    def _eta(self, per_arch: float, n: int) -> None:
        """The measured cost and the time the rest will take at most, when that is long."""
        if self.total is None:
            return
        left = max(self.total - (self.done or 0), 0) * per_arch
        if left > ETA_NOTE_S:
            self.echo(f"{self.space.name}: {per_arch:.1f} s per arch scored here (measured on {n}); at most "
                      f"{self.total - self.done} more: about {duration(left)} (less if it converges: --patience); "
                      "Ctrl-C stops it, --resume continues it")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
