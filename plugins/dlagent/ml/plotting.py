"""Figures drawn with matplotlib's object API: no pyplot, no global backend switch, safe in any thread."""

from __future__ import annotations


def new_figure(width: float, height: float):
    """A :class:`matplotlib.figure.Figure` with its own Agg canvas (``savefig`` writes PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def plot_candidates(candidates: list[dict], reference: float, max_drop_points: float | None, metric, chosen: str | None, path):
    """The compression candidates' trade-off as the evaluate task chose among them: each
    candidate's compressed size (gzip, else raw bytes; log scale) against its validation score,
    beside the uncompressed model's score and the budget ``max_metric_drop_points`` below it (the
    metric's points: 0.01 of a fraction, 1 % of an error), the chosen one ringed (the smallest
    within every limit; when none is, the best scoring). It reads the validation split and the
    sizes as the choice does (:func:`dlagent.ml.selection.size_of`, ``metric_of``): a candidate
    with no finite size or score is left out. Returns ``path``."""
    import math
    from pathlib import Path

    from dlagent.ml.gate import FRACTIONS
    from dlagent.ml.selection import metric_of, size_of

    figure = new_figure(6.4, 4.2)
    axes = figure.add_subplot()
    points = [(c["candidate"], size_of(c["metrics"]), metric_of(c["metrics"], metric)) for c in candidates]  # as the choice reads them
    points = [(name, size, value) for name, size, value in points if 0 < size < math.inf and value is not None]
    for i, (name, size, value) in enumerate(sorted(points, key=lambda p: p[1])):
        axes.scatter([size], [value], s=36, color="tab:blue", zorder=3)
        # alternately above and below: candidates of one size (dynamic, int8) would print over each other
        axes.annotate(name, (size, value), textcoords="offset points", xytext=(5, 5 if i % 2 == 0 else -12), fontsize=8)
        if name == chosen:
            axes.scatter([size], [value], s=160, facecolors="none", edgecolors="tab:green", linewidths=2, zorder=4, label="chosen")
    if not math.isfinite(reference):
        max_drop_points = None
    else:
        axes.axhline(reference, color="black", linewidth=1, label=f"uncompressed model ({reference:.4g})")
    if max_drop_points is not None:
        if metric.relative_points:
            budget = reference * (1 + max_drop_points / 100) if not metric.higher_is_better else reference * (1 - max_drop_points / 100)
        else:
            budget = reference - max_drop_points / 100 if metric.higher_is_better else reference + max_drop_points / 100
        axes.axhline(budget, color="tab:red", linestyle="--", linewidth=1, label=f"budget: {max_drop_points:g} point(s) lost")
    if points:
        axes.set_xscale("log")
        low, high = min(p[1] for p in points), max(p[1] for p in points)
        axes.set_xlim(low / 1.3, high * 1.6)  # room for the names
    if metric.name in FRACTIONS:
        axes.set_ylim(top=min(axes.get_ylim()[1], 1.005))  # a fraction: nothing above 1
    axes.set_xlabel("compressed size (bytes; gzip where measured)")
    axes.set_ylabel(f"validation {metric.name} ({'higher' if metric.higher_is_better else 'lower'} is better)")
    axes.set_title("compression candidates on the validation split (other gate limits not drawn)", fontsize=10)
    axes.legend(fontsize=8, loc="best")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    return Path(path)
