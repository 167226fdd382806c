"""Figures the benchmarks report: a mean with its spread and a 95 % interval, never one lucky mean."""

from __future__ import annotations


def interval(values) -> dict:
    """``{"mean", "std", "ci95": [low, high]}`` of ``values``: the sample standard deviation and a
    95 % Student-t interval of the mean (NaN bounds for a single value)."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    mean, std = float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return _summary(mean, std, len(values))


def _summary(mean: float, std: float, n: int) -> dict:
    from scipy import stats

    half = float(stats.t.ppf(0.975, n - 1)) * std / n ** 0.5 if n > 1 else float("nan")
    return {"mean": round(mean, 4), "std": round(std, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)]}


def std_from_interval(ci95, n: int) -> float:
    """The sample standard deviation behind a 95 % Student-t interval ``ci95`` of ``n`` values
    (for a figure whose values were not kept, only its printed interval)."""
    from scipy import stats

    return (ci95[1] - ci95[0]) / 2 * n ** 0.5 / float(stats.t.ppf(0.975, n - 1))


def pooled(groups) -> dict:
    """:func:`interval` (plus ``n``) of the union of value sets given only as ``(mean, std, n)``
    each: the exact mean and sample standard deviation of all the values together (within-set
    spread plus the spread of the set means), so two runs on different seeds report as one."""
    groups = [(float(m), float(s), int(n)) for m, s, n in groups]
    total = sum(n for _, _, n in groups)
    mean = sum(m * n for m, _, n in groups) / total
    spread = sum((n - 1) * s * s + n * (m - mean) ** 2 for m, s, n in groups)
    return {**_summary(mean, (spread / (total - 1)) ** 0.5 if total > 1 else 0.0, total), "n": total}
