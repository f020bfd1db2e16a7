"""Vectorised params / FLOPs / latency of whole populations, and the exact range of each over a space.

Every metric deployvit searches under is additive over the parts of `deployvit.parts` (latency after
an affine calibration), so one array lookup per part choice replaces building `Part` objects per
arch: a population is encoded once as choice indices, then each metric is a few numpy gathers and
sums. The per-part numbers come from `counting.part_counts` and `LatencyTable.part_us`, so the fast
path and the per-arch functions cannot disagree.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from deployvit.arch import Arch
from deployvit.counting import part_counts
from deployvit.parts import Part, StemPart, block_part, head_part, reduction_part
from deployvit.spaces import SearchSpace

if TYPE_CHECKING:
    from deployvit.latency.table import LatencyTable


@dataclass
class Encoded:
    """A population as choice indices: embed [n, S], depth (values) [n, S], heads/ratio [n, S, max
    depth] (0 past a stage's depth), gathered from `codes`, the space's own encoding
    (`SearchSpace.encode`: [n, decisions], -1 for missing layers), which the surrogate reads."""

    embed: np.ndarray
    depth: np.ndarray
    heads: np.ndarray
    ratio: np.ndarray
    codes: np.ndarray

    def __len__(self) -> int:
        return len(self.embed)


@dataclass
class _StageTables:
    block: np.ndarray       # [metric, embed, heads, ratio]
    reduction: np.ndarray   # [metric, prev embed, embed]; zeros for stage 0


class MetricModel:
    """Params, FLOPs and (with a table) calibrated latency in microseconds for encoded archs."""

    def __init__(self, space: SearchSpace, table: "LatencyTable | None" = None):
        self.space, self.table = space, table
        self.metrics = ["params", "flops"] + (["latency"] if table is not None else [])
        self._max_depth = max(s.max_depth for s in space.stages)
        self._gather = _columns(space, self._max_depth)
        first, last = space.stages[0], space.stages[-1]
        self._stem = np.stack([self._values(StemPart(space.img_size, space.patch_size, space.in_chans, e)) for e in first.embed_dims], 1)
        last_tokens = space.tokens(len(space.stages) - 1)
        self._head = np.stack([self._values(head_part(space.features, last_tokens, e, space.num_classes)) for e in last.embed_dims], 1)
        self._stages = []
        for si, s in enumerate(space.stages):
            block = np.zeros((len(self.metrics), len(s.embed_dims), len(s.num_heads), len(s.mlp_ratios)))
            for (ei, e), (hi, h), (ri, r) in itertools.product(enumerate(s.embed_dims), enumerate(s.num_heads), enumerate(s.mlp_ratios)):
                block[:, ei, hi, ri] = self._values(block_part(space.features, space.tokens(si), e, h, s.head_dim, r))
            prev = space.stages[si - 1].embed_dims if si else (0,)
            reduction = np.zeros((len(self.metrics), len(prev), len(s.embed_dims)))
            if si:
                for (pi, p), (ei, e) in itertools.product(enumerate(prev), enumerate(s.embed_dims)):
                    reduction[:, pi, ei] = self._values(reduction_part(space.features, space.grid(si - 1), p, e))
            self._stages.append(_StageTables(block, reduction))

    def _values(self, part: Part) -> np.ndarray:
        params, flops = part_counts(part)
        values = [params, flops] + ([self.table.part_us(part)] if self.table is not None else [])
        return np.array(values, dtype=np.float64)

    # --- encoding ---------------------------------------------------------------------------------

    def encode(self, archs: Sequence[Arch]) -> Encoded:
        codes = self.space.encode(archs)
        padded = np.concatenate([np.maximum(codes, 0), np.zeros((len(codes), 1), dtype=np.int64)], 1)  # last column: padding
        g = self._gather
        depth = g["depths"][np.arange(len(g["depth"])), padded[:, g["depth"]]]  # the values, not their indices
        return Encoded(padded[:, g["embed_dim"]], depth, padded[:, g["num_heads"]], padded[:, g["mlp_ratio"]], codes)

    # --- prediction -------------------------------------------------------------------------------

    def predict(self, enc: Encoded) -> dict[str, np.ndarray]:
        """{metric: values [n]}; latency is calibrated (microseconds)."""
        total = self._stem[:, enc.embed[:, 0]] + self._head[:, enc.embed[:, -1]]
        layer_pos = np.arange(self._max_depth)
        for si, tables in enumerate(self._stages):
            e = enc.embed[:, si]
            per_layer = tables.block[:, e[:, None], enc.heads[:, si], enc.ratio[:, si]]  # [metric, n, D]
            mask = layer_pos[None, :] < enc.depth[:, si, None]
            total = total + (per_layer * mask).sum(-1)
            if si:
                total = total + tables.reduction[:, enc.embed[:, si - 1], e]
        out = dict(zip(self.metrics, total))
        if self.table is not None:
            out["latency"] = self.table.scale * out["latency"] + self.table.bias
        return out

    def metrics_of(self, arch: Arch) -> dict[str, float]:
        return {k: float(v[0]) for k, v in self.predict(self.encode([arch])).items()}

    def range(self, metric: str) -> tuple[float, float]:
        """Exact smallest and largest value of `metric` over the whole space.

        Parts are additive and per-layer choices independent once the embed dims and depths are
        fixed, so it suffices to enumerate embed-dim combinations (at most a few hundred) and take,
        per stage, the fewest layers of the cheapest block or the most of the dearest."""
        m = self.metrics.index(metric)
        best = [np.inf, -np.inf]
        combos = itertools.product(*(range(len(s.embed_dims)) for s in self.space.stages))
        for combo in combos:
            lo = hi = self._stem[m, combo[0]] + self._head[m, combo[-1]]
            for si, (tables, s) in enumerate(zip(self._stages, self.space.stages)):
                block = tables.block[m, combo[si]]
                fixed = tables.reduction[m, combo[si - 1], combo[si]] if si else 0.0
                lo += fixed + min(s.depths) * block.min()
                hi += fixed + max(s.depths) * block.max()
            best = [min(best[0], lo), max(best[1], hi)]
        if metric == "latency":
            assert self.table is not None
            best = [self.table.scale * v + self.table.bias for v in best]
        return float(best[0]), float(best[1])


def _columns(space: SearchSpace, max_depth: int) -> dict[str, np.ndarray]:
    """Where `Encoded`'s arrays come from in the space's encoding: the columns of the embed dim and
    depth per stage [S], of heads and MLP ratio per stage and layer position [S, max depth] (a
    position past a stage's largest depth reads the padding column), and each stage's depth values."""
    column = {(d.stage, d.kind, d.layer): i for i, d in enumerate(space.decisions())}
    pad, stages = len(column), range(len(space.stages))
    out = {kind: np.array([column[(si, kind, -1)] for si in stages]) for kind in ("embed_dim", "depth")}
    for kind in ("num_heads", "mlp_ratio"):
        out[kind] = np.array([[column.get((si, kind, li), pad) for li in range(max_depth)] for si in stages])
    width = max(len(s.depths) for s in space.stages)
    out["depths"] = np.array([list(s.depths) + [0] * (width - len(s.depths)) for s in space.stages])  # [S, choice]
    return out
