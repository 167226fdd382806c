"""The study's plots as PNG files, drawn with matplotlib's object API (no pyplot, no backend switch).

* ``optimization_history``: every complete trial's value and the best so far;
* ``param_importances``: Optuna's parameter importances (fANOVA) as bars;
* ``intermediate_values``: each trial's per-epoch metric (pruned trials dashed).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from dlagent.ml.plotting import new_figure

PLOTS = ("optimization_history", "param_importances", "intermediate_values")


def plot_study(study, folder: Path) -> dict:
    """Draw the plots into ``folder``; return ``{name: None}`` when drawn, else the reason it was not."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    drawers = {"optimization_history": _optimization_history, "param_importances": _param_importances,
               "intermediate_values": _intermediate_values}
    outcome: dict[str, str | None] = {}
    for name in PLOTS:
        if name == "optimization_history" and not complete:
            outcome[name] = "no complete trial."
            continue
        if name == "param_importances" and len(complete) < 2:
            outcome[name] = f"needs at least 2 complete trials, the study has {len(complete)}."
            continue
        if name == "intermediate_values" and not any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
            outcome[name] = "no trial reported per-epoch values."
            continue
        try:
            figure = drawers[name](study)
            figure.savefig(Path(folder) / f"{name}.png", dpi=100, bbox_inches="tight")
            outcome[name] = None
        except Exception as exc:  # noqa: BLE001 - e.g. importances of parameters that never varied
            outcome[name] = f"{type(exc).__name__}: {exc}"
    return outcome


def _optimization_history(study):
    from optuna.trial import TrialState

    trials = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    maximize = study.direction.name.lower() == "maximize"
    best, bests = None, []
    for trial in trials:
        best = trial.value if best is None else (max(best, trial.value) if maximize else min(best, trial.value))
        bests.append(best)
    figure = new_figure(7.0, 4.0)
    axes = figure.add_subplot(1, 1, 1)
    axes.scatter([t.number for t in trials], [t.value for t in trials], s=18, label="objective value")
    axes.step([t.number for t in trials], bests, where="post", color="tab:red", label="best value")
    axes.set_xlabel("trial")
    axes.set_ylabel("objective value")
    axes.set_title(f"optimization history ({study.direction.name.lower()})")
    axes.legend(loc="best")
    figure.tight_layout()
    return figure


def _param_importances(study):
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        importances = optuna.importance.get_param_importances(study)
    if not importances:
        raise ValueError("no parameter varied between the complete trials")
    names = list(reversed(list(importances)))
    figure = new_figure(6.0, max(2.5, 0.4 * len(names) + 1))
    axes = figure.add_subplot(1, 1, 1)
    axes.barh(names, [importances[n] for n in names])
    axes.set_xlabel("importance (fANOVA)")
    axes.set_title("hyper-parameter importances")
    figure.tight_layout()
    return figure


def _intermediate_values(study):
    figure = new_figure(7.0, 4.0)
    axes = figure.add_subplot(1, 1, 1)
    for trial in study.get_trials(deepcopy=False):
        if not trial.intermediate_values:
            continue
        steps = sorted(trial.intermediate_values)
        style = "--" if trial.state.name == "PRUNED" else "-"
        axes.plot(steps, [trial.intermediate_values[s] for s in steps], style, marker=".", alpha=0.8,
                  label=f"trial {trial.number} ({trial.state.name.lower()})")
    axes.set_xlabel("epoch")
    axes.set_ylabel("intermediate value")
    axes.set_title("per-epoch values (dashed: pruned)")
    if len(axes.get_lines()) <= 12:
        axes.legend(loc="best", fontsize=7)
    figure.tight_layout()
    return figure
