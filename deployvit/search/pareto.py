"""The Pareto front of a search and its files: pareto.json, pareto.csv, pareto.png."""

from __future__ import annotations

import csv
import io as _io
from pathlib import Path
from typing import Sequence

from deployvit import io
from deployvit.arch import Arch
from deployvit.search.searcher import Candidate


def pareto_front(candidates: Sequence[Candidate], cost: str) -> list[Candidate]:
    """Candidates no other beats on both score (higher) and `cost` (lower), cheapest first."""
    front: list[Candidate] = []
    for cand in sorted(candidates, key=lambda c: (c.metrics[cost], -c.score, c.arch.key)):
        if not front or cand.score > front[-1].score:
            front.append(cand)
    return front


def _row(cand: Candidate) -> dict:
    arch = cand.arch
    return {
        "score": cand.score,
        **{k: cand.metrics[k] for k in ("latency", "flops", "params") if k in cand.metrics},
        "depth": arch.depth,
        "embed_dim": "/".join(str(s.embed_dim) for s in arch.stages),
        "summary": arch.summary(),
    }


def write_pareto(run_dir: Path, front: Sequence[Candidate], provenance: dict | None = None) -> None:
    """pareto.json and pareto.csv; with a latency table, every row says where its latency came from
    (`measured on <device>` or `estimated for <GPU model>`), so a copied CSV cannot pass an
    estimate off as a measurement."""
    source = None
    if provenance is not None:
        how = "estimated for" if provenance["latency_source"] == "estimated" else "measured on"
        source = f"{how} {provenance['device_name']} ({provenance['runtime']} {provenance['precision']} b{provenance['batch_size']})"
    rows = [{**_row(c), **({"latency_source": source} if source else {})} for c in front]
    io.write_json(run_dir / "pareto.json", [{**row, "arch": c.arch.to_dict()} for row, c in zip(rows, front)])
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["score"])
    writer.writeheader()
    writer.writerows(rows)
    io.write_text(run_dir / "pareto.csv", buf.getvalue())


def plot_pareto(
    path: Path,
    evaluated: Sequence[Candidate],
    front: Sequence[Candidate],
    cost: str,
    score_name: str,
    budgets: Sequence[float | None],
    baselines: dict[str, tuple[Arch, float, dict]],
    title: str,
) -> None:
    """Score vs predicted cost, FLOPs as colour, budget lines and same-space baselines marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale, unit = (1e3, "predicted latency (ms)") if cost == "latency" else (1e9, "FLOPs (GMACs)")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    xs = [c.metrics[cost] / scale for c in evaluated]
    points = ax.scatter(xs, [c.score for c in evaluated], c=[c.metrics["flops"] / 1e9 for c in evaluated],
                        s=10, cmap="viridis", alpha=0.7, label="evaluated")
    fig.colorbar(points, ax=ax, label="FLOPs (GMACs)")
    ax.plot([c.metrics[cost] / scale for c in front], [c.score for c in front], "-o", color="crimson",
            markersize=3, linewidth=1.2, label="Pareto front")
    for budget in budgets:
        if budget is not None and cost == "latency":
            ax.axvline(budget / scale, color="grey", linestyle="--", linewidth=1)
            ax.annotate(f"budget {budget / scale:g} ms", (budget / scale, ax.get_ylim()[0]), rotation=90,
                        fontsize=7, color="grey", va="bottom", ha="right")
    for name, (_, score, metrics) in baselines.items():
        ax.scatter([metrics[cost] / scale], [score], marker="*", s=120, color="black", zorder=5)
        ax.annotate(name, (metrics[cost] / scale, score), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(unit)
    ax.set_ylabel(f"score ({score_name})")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
