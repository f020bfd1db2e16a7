"""Search outputs a person reads: units in pareto.json/csv, the plot's winner, title, budget labels
and x-range, and the one-line arch summary."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from deployvit.arch import Layer, Stage
from deployvit.search.evolution import Candidate
from deployvit.search.pareto import COLUMNS, pareto_figure, pareto_front, plot_pareto, plot_title, write_pareto, x_range
from deployvit.spaces import get_space

PROVENANCE = {"latency_source": "estimated", "device_name": "NVIDIA H100 80GB HBM3", "runtime": "tensorrt", "precision": "fp16",
              "batch_size": 1, "latency_table": "x.json", "device_label": "h100"}


@pytest.fixture(scope="module")
def cands():
    space = get_space("test")
    rng = np.random.default_rng(0)
    out = []
    for arch in {a.key: a for a in (space.sample(rng) for _ in range(30))}.values():
        size = arch.embed_dim * arch.depth
        out.append(Candidate(arch, float(size + rng.normal()), {"latency": 100.0 + size / 10, "flops": size * 1e4, "params": size * 10.0}))
    return out


def test_summary_separates_two_digit_head_counts():
    space = get_space("vit-base")
    arch = space.make_arch([Stage(768, 64, (Layer(12, 4.0), Layer(9, 3.0), Layer(10, 3.5)) * 4)])
    assert "heads [12,9,10,12,9,10" in arch.summary() and "mlp [4,3,3.5,4" in arch.summary()


def test_files_carry_units_in_every_column(cands, tmp_path):
    front = pareto_front(cands, "latency")
    write_pareto(tmp_path, front, PROVENANCE)
    rows = json.loads((tmp_path / "pareto.json").read_text())
    assert {"latency_us", "flops_macs", "params"} <= set(rows[0]) and "latency" not in rows[0]
    assert rows[0]["latency_us"] == front[0].metrics["latency"]  # microseconds, as tables and budgets
    header = next(csv.reader((tmp_path / "pareto.csv").open()))
    assert [h for h in header if h in COLUMNS.values()] == ["latency_us", "flops_macs", "params"]
    assert rows[0]["latency_source"] == "estimated for NVIDIA H100 80GB HBM3 (tensorrt fp16 b1)"


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_plot_marks_winner_and_names_the_estimate(cands):
    front = pareto_front(cands, "latency")
    winner = front[len(front) // 2]
    budget = winner.metrics["latency"] + 1.0
    fig = pareto_figure(cands, front, "latency", "dss", [budget], {}, "test: 30 archs", {"5ms": winner}, PROVENANCE)
    ax = fig.axes[0]
    assert ax.get_title() == "test: 30 archs\nlatency: ESTIMATE for NVIDIA H100 80GB HBM3, tensorrt fp16, batch 1"
    assert "winner (5ms)" in _texts(fig)
    assert f"budget {budget / 1e3:.3g} ms" in _texts(fig)
    assert "winner" in [t.get_text() for t in fig.legends[0].get_texts()]
    fig.canvas.draw()  # the legend lies below the axes: it cannot cover a point or a budget label
    assert fig.legends[0].get_window_extent().y1 <= ax.get_window_extent().y0
    measured = {**PROVENANCE, "latency_source": "measured", "device_name": "NVIDIA A100"}
    assert plot_title("t", measured).endswith("MEASURED on NVIDIA A100, tensorrt fp16, batch 1")


def test_x_range_fits_the_data_when_the_budget_does_not_bind(cands):
    front = pareto_front(cands, "latency")
    xs = [c.metrics["latency"] / 1e3 for c in cands]
    fig = pareto_figure(cands, front, "latency", "dss", [50 * max(c.metrics["latency"] for c in cands)], {}, "t", {"50ms": front[-1]})
    lo, hi = fig.axes[0].get_xlim()
    assert lo <= min(xs) and hi >= max(xs) and (hi - lo) < 1.2 * (max(xs) - min(xs))  # the points fill the axis
    assert fig.axes[0].get_title().endswith("ms: off the axis, admits every arch shown")
    assert x_range([2.0, 2.0]) == pytest.approx((1.88, 2.12))


def test_plot_keeps_the_old_call_and_writes_a_png(cands, tmp_path):
    front = pareto_front(cands, "flops")
    plot_pareto(tmp_path / "p.png", cands, front, "flops", "dss", [None], {}, "old call")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
