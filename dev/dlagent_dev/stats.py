"""Figures the benchmarks report: a mean with its spread and a 95 % interval, never one lucky mean."""

from __future__ import annotations


def interval(values) -> dict:
    """``{"mean", "std", "ci95": [low, high]}`` of ``values``: the sample standard deviation and a
    95 % Student-t interval of the mean (NaN bounds for a single value)."""
    import numpy as np
    from scipy import stats

    values = np.asarray(values, dtype=float)
    mean, std = float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
    half = float(stats.t.ppf(0.975, len(values) - 1) * std / np.sqrt(len(values))) if len(values) > 1 else float("nan")
    return {"mean": round(mean, 4), "std": round(std, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)]}
