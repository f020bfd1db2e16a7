"""Bounded option types: every count, size and rate a command takes has a range, shown in --help.

A bound is where a value stops being a choice and becomes a hang or an out-of-memory kill (a
`--sample` of 10^12, a `--batch-size` of 10^9) or an error deep inside numpy (a negative seed). The
ranges are generous on purpose: each is far beyond what any run here needs, and the point is only
that click refuses the absurd value with one line before anything runs or is written.
"""

from __future__ import annotations

import math

import click


class FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses nan and inf (click's range lets nan through every comparison)."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{rv} is not a finite number.", param, ctx)
        return rv


def ints(lo: int, hi: int) -> click.IntRange:
    return click.IntRange(lo, hi)


def floats(lo: float | None, hi: float | None, min_open: bool = False, max_open: bool = False) -> FiniteFloat:
    return FiniteFloat(lo, hi, min_open=min_open, max_open=max_open)


SEED = ints(0, 2**32 - 1)  # what numpy's default_rng and torch.manual_seed both take
BATCH = ints(1, 4096)  # images per step / per timed call
SAMPLES = ints(1, 100_000)  # archs drawn for one command
IMAGES = ints(1, 10_000)  # images held in memory at once (10,000 at 224 x 224 fp32: 6 GB)
COUNT = ints(0, 100_000)  # evolution sizes, candidates to time
EPOCHS = ints(1, 100_000)
STEPS = ints(0, 10**9)  # step intervals (0: off)
REPEATS = ints(1, 100_000)  # timed repeats
WARMUP_S = floats(0, 600)  # warm-up seconds before a timing
THREADS = ints(1, 1024)
WORKERS = ints(0, 64)  # each DataLoader worker is a process with its own copy of in-memory data
FRACTION = floats(0, 1)
RATE = floats(0, 1, max_open=True)  # decays and drop rates: 1 would freeze or drop everything
LR = floats(0, None, min_open=True)  # no upper bound: a huge rate is a legitimate way to test divergence
NON_NEGATIVE = floats(0, None)
IMG_SIZE = ints(1, 4096)  # deployvit.arch.LIMITS["img_size"]
