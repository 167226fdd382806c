"""Hyper-parameter tuning with Optuna: one study in a database, trials run by parallel workers.

The flow the operators follow (nothing here imports Airflow; Optuna and Keras are imported
inside the functions that need them):

1. :func:`~dlagent.ml.tuning.space.validate_search_space` checks the person's JSON space once,
   before any trial (:mod:`.space`: validate, default, suggest, narrow).
2. :func:`~dlagent.ml.tuning.study.create_study` creates the study and its tables **once**,
   recording its :class:`~dlagent.ml.tuning.settings.StudySettings` (:mod:`.study`: create,
   seed from earlier rounds, load, summarise).
3. :func:`~dlagent.ml.tuning.worker.run_worker` is what each parallel worker runs, from one
   :class:`~dlagent.ml.tuning.settings.WorkerSettings` (:mod:`.worker`: the loop and its heartbeat).
4. :func:`~dlagent.ml.tuning.study.study_summary` (small JSON for XCom) and
   :func:`~dlagent.ml.tuning.trials.log_study_to_mlflow` report the result (:mod:`.trials`:
   trial runs in MLflow; :mod:`.plots`: the study's plots).

Sampler, pruner and storage are built by name in :mod:`.factories`; every setting and its
limits are declared once in :mod:`.settings`.
"""

from __future__ import annotations

import importlib

#: public name -> the submodule that defines it. Loaded on first use (PEP 562), so importing
#: one submodule (e.g. ``settings`` for the trigger form's limits) does not import the others.
_EXPORTS = {
    "make_pruner": "factories", "make_sampler": "factories", "make_storage": "factories",
    "DEFAULT_PRUNER": "settings", "DIRECTIONS": "settings", "METRICS": "settings", "PRUNERS": "settings", "SAMPLERS": "settings", "StudySettings": "settings",
    "TuneConfig": "settings", "WorkerSettings": "settings", "direction_for": "settings", "resolve_direction": "settings",
    "default_search_space": "space", "narrow_search_space": "space", "suggest_params": "space", "validate_search_space": "space",
    "COPIED_ATTR": "study", "EPOCHS_ATTR": "study", "SETTINGS_ATTR": "study", "create_study": "study", "load_study": "study",
    "seed_study": "study", "study_summary": "study", "summary_of": "study", "trial_epochs": "study",
    "TrialTracker": "trials", "log_study_to_mlflow": "trials",
    "run_worker": "worker",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "COPIED_ATTR", "DEFAULT_PRUNER", "DIRECTIONS", "EPOCHS_ATTR", "METRICS", "PRUNERS", "SAMPLERS", "SETTINGS_ATTR", "StudySettings",
    "TrialTracker", "TuneConfig", "WorkerSettings", "create_study", "default_search_space", "direction_for",
    "load_study", "log_study_to_mlflow", "make_pruner", "make_sampler", "make_storage", "narrow_search_space",
    "resolve_direction", "run_worker", "seed_study", "study_summary", "suggest_params", "summary_of", "trial_epochs",
    "validate_search_space",
]
