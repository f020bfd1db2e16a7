"""Constrained architecture search: budgets, vectorised metrics, scores, evolution, Pareto outputs."""
