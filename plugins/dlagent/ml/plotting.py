"""Figures drawn with matplotlib's object API: no pyplot, no global backend switch, safe in any thread."""

from __future__ import annotations


def new_figure(width: float, height: float):
    """A :class:`matplotlib.figure.Figure` with its own Agg canvas (``savefig`` writes PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure
