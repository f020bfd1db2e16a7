"""Constrained architecture search: budgets, vectorised metrics, scores, evolution, Pareto outputs."""

SCORES = ("dss", "supernet", "sampler")  # --score choices: training-free, inherited accuracy, FocusFormer sampler
