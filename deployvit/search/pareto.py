"""The Pareto front of a search and its files: pareto.json, pareto.csv, pareto.png."""

from __future__ import annotations

import csv
import io as _io
from pathlib import Path
from typing import Mapping, Sequence

from deployvit import io
from deployvit.arch import Arch
from deployvit.search.budgets import FILE_KEYS
from deployvit.search.searcher import Candidate


def pareto_front(candidates: Sequence[Candidate], cost: str) -> list[Candidate]:
    """Candidates no other beats on both score (higher) and `cost` (lower), cheapest first."""
    front: list[Candidate] = []
    for cand in sorted(candidates, key=lambda c: (c.metrics[cost], -c.score, c.arch.key)):
        if not front or cand.score > front[-1].score:
            front.append(cand)
    return front


#: pareto.json / pareto.csv column per metric, unit in the name (`budgets.FILE_KEYS`, the one table of
#: file keys). Files keep the library's units (microseconds, as in latency tables and budgets; MACs;
#: parameters); the screen and the plot show ms.
COLUMNS = FILE_KEYS


def _row(cand: Candidate) -> dict:
    arch = cand.arch
    return {
        "score": cand.score,
        **{COLUMNS[k]: cand.metrics[k] for k in COLUMNS if k in cand.metrics},
        "depth": arch.depth,
        "embed_dim": "/".join(str(s.embed_dim) for s in arch.stages),
        "summary": arch.summary(),
    }


def _source_text(provenance: dict) -> str:
    how = "estimated for" if provenance["latency_source"] == "estimated" else "measured on"
    return f"{how} {provenance['device_name']} ({provenance['runtime']} {provenance['precision']} b{provenance['batch_size']})"


def write_pareto(run_dir: Path, front: Sequence[Candidate], provenance: dict | None = None) -> None:
    """pareto.json and pareto.csv (units in the column names: `COLUMNS`); with a latency table,
    every row says where its latency came from (`measured on <device>` or `estimated for <GPU
    model>`), so a copied CSV cannot pass an estimate off as a measurement."""
    source = _source_text(provenance) if provenance is not None else None
    rows = [{**_row(c), **({"latency_source": source} if source else {})} for c in front]
    io.write_json(run_dir / "pareto.json", [{**row, "arch": c.arch.to_dict()} for row, c in zip(rows, front)])
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["score"])
    writer.writeheader()
    writer.writerows(rows)
    io.write_text(run_dir / "pareto.csv", buf.getvalue())


def plot_title(title: str, provenance: dict | None) -> str:
    """The plot's title: the run's line, then where the latencies come from in capitals when they are
    an estimate (ESTIMATE for <GPU>, runtime, precision, batch) or MEASURED on <device>."""
    if provenance is None:
        return title
    how = "ESTIMATE for" if provenance["latency_source"] == "estimated" else "MEASURED on"
    return (f"{title}\nlatency: {how} {provenance['device_name']}, {provenance['runtime']} {provenance['precision']}, "
            f"batch {provenance['batch_size']}")


def x_range(values: Sequence[float], pad: float = 0.06) -> tuple[float, float]:
    """An axis range fitted to `values` with a margin: a budget far beyond the data does not squeeze
    the points into a sliver (it is drawn at the edge instead, `_draw_budgets`)."""
    lo, hi = min(values), max(values)
    margin = (hi - lo) * pad if hi > lo else max(abs(hi) * pad, 1e-9)
    return lo - margin, hi + margin


def plot_pareto(
    path: Path,
    evaluated: Sequence[Candidate],
    front: Sequence[Candidate],
    cost: str,
    score_name: str,
    budgets: Sequence[float | None],
    baselines: dict[str, tuple[Arch, float, dict]],
    title: str,
    winners: Mapping[str, Candidate] | None = None,
    provenance: dict | None = None,
) -> None:
    """pareto.png (`pareto_figure`), written atomically."""
    import matplotlib.pyplot as plt

    fig = pareto_figure(evaluated, front, cost, score_name, budgets, baselines, title, winners, provenance)
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def pareto_figure(evaluated: Sequence[Candidate], front: Sequence[Candidate], cost: str, score_name: str,
                  budgets: Sequence[float | None], baselines: dict[str, tuple[Arch, float, dict]], title: str,
                  winners: Mapping[str, Candidate] | None = None, provenance: dict | None = None):
    """Score vs predicted cost (ms or GMACs), FLOPs as colour: the Pareto front, the winners (one per
    budget), same-space baselines, labelled budget lines, the x-range fitted to what is drawn
    (`x_range`), and a title with the latency's source (`plot_title`). The legend sits below the
    axes, so it covers neither points nor budget labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale, unit = (1e3, "predicted latency (ms)") if cost == "latency" else (1e9, "FLOPs (GMACs)")
    fig, ax = plt.subplots(figsize=(7.5, 5.2), dpi=120)
    xs = [c.metrics[cost] / scale for c in evaluated]
    points = ax.scatter(xs, [c.score for c in evaluated], c=[c.metrics["flops"] / 1e9 for c in evaluated],
                        s=10, cmap="viridis", alpha=0.7, label="evaluated")
    fig.colorbar(points, ax=ax, label="FLOPs (GMACs)")
    ax.plot([c.metrics[cost] / scale for c in front], [c.score for c in front], "-o", color="crimson",
            markersize=3, linewidth=1.2, label="Pareto front")
    shown = list(xs)
    for i, (name, (_, score, metrics)) in enumerate(baselines.items()):
        ax.scatter([metrics[cost] / scale], [score], marker="*", s=120, color="black", zorder=5, label="published model" if i == 0 else None)
        ax.annotate(name, (metrics[cost] / scale, score), fontsize=7, xytext=(4, 4), textcoords="offset points")
        shown.append(metrics[cost] / scale)
    for i, (label, cand) in enumerate((winners or {}).items()):
        x = cand.metrics[cost] / scale
        ax.scatter([x], [cand.score], marker="D", s=70, facecolors="none", edgecolors="red", linewidths=1.6, zorder=6,
                   label="winner" if i == 0 else None)
        shown.append(x)
    if shown:
        ax.set_xlim(*x_range(shown))
    _label_winners(ax, winners or {}, cost, scale)
    notes = _draw_budgets(ax, [b / scale for b in budgets if b is not None]) if cost == "latency" else []
    ax.set_xlabel(unit)
    ax.set_ylabel(f"score ({score_name})")
    ax.set_title("\n".join([plot_title(title, provenance), *notes]), fontsize=9, pad=22 if cost == "latency" else 6)  # room for budget labels
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=len(labels) or 1, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def _label_winners(ax, winners: Mapping[str, Candidate], cost: str, scale: float) -> None:
    """"winner (budget)" beside each winner, on the side that faces the middle of the axis, below and
    above in turn (winners of neighbouring budgets are often close)."""
    lo, hi = ax.get_xlim()
    for i, (label, cand) in enumerate(winners.items()):
        x = cand.metrics[cost] / scale
        right = x > (lo + hi) / 2
        ax.annotate(f"winner ({label})" if label != "no-latency" else "winner", (x, cand.score), fontsize=7, color="red",
                    xytext=(-6 if right else 6, -12 if i % 2 == 0 else 6), textcoords="offset points", ha="right" if right else "left", zorder=7)


def _draw_budgets(ax, budgets_ms: Sequence[float]) -> list[str]:
    """A dashed line per budget inside the x-range, labelled just above the axes' top edge, where no
    point, winner or legend can cover it (labels closer than a tenth of the axis alternate between
    two rows). Budgets beyond the range are returned as notes for the title (such a budget admits
    every arch shown, or none)."""
    lo, hi = ax.get_xlim()
    style = {"fontsize": 7, "color": "dimgrey", "va": "bottom", "clip_on": False}
    last, row = None, 0
    for budget in sorted(b for b in budgets_ms if lo <= b <= hi):
        ax.axvline(budget, color="grey", linestyle="--", linewidth=1, zorder=1)
        row = 1 - row if last is not None and budget - last < (hi - lo) / 10 else 0
        ax.text(budget, 1.01 + 0.045 * row, f"budget {budget:.3g} ms", transform=ax.get_xaxis_transform(), ha="center", **style)
        last = budget
    notes = []
    for side, outside in (("above", [b for b in budgets_ms if b > hi]), ("below", [b for b in budgets_ms if b < lo])):
        if outside:
            what = "admits every arch shown" if side == "above" else "admits no arch shown"
            notes.append(f"budget {', '.join(f'{b:.3g}' for b in outside)} ms: off the axis, {what}")
    return notes
