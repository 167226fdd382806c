"""The task and its primary metric: one definition for every step that compares models.

A run solves one **task**, ``classification`` (binary or multi-class) or ``regression`` (one or
more numeric targets), and is judged by one **primary metric**: ``accuracy`` (the default),
``auc`` (binary only) or ``f1_macro`` for classification; ``rmse`` (the default), ``mae`` or
``r2`` for regression. Training (early stopping), tuning (the objective ``val_<metric>``),
compression (the budget), evaluation (``test_<metric>``), the gate, candidate selection and
the agent all ask :class:`Metric` which value is better and by how much, so none of them
knows a metric's name or direction.

Differences are measured in **points**: 1 point is 0.01 for the metrics that live in [0, 1]
(accuracy, auc, f1_macro, r2) and 1 % of the reference value for the error metrics (rmse,
mae), whose scale is the target's. So the gate's "at most 1 point lost to compression" means
one accuracy point for a classifier and a 1 % larger RMSE for a regressor, with no setting to
re-scale per data set.

Scores are computed with NumPy from the model's outputs (class probabilities or predicted
values), the same function on the validation split every epoch and on the test split for
Keras and TFLite models alike. Nothing here imports TensorFlow or Airflow, and NumPy only when
a score is computed (the trigger form's Params read the names at DAG parse time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dlagent.errors import ConfigError

CLASSIFICATION, REGRESSION = "classification", "regression"
TASKS = (CLASSIFICATION, REGRESSION)


def _accuracy(y_true, outputs) -> float:
    import numpy as np

    return float(np.mean(np.argmax(outputs, axis=1) == np.asarray(y_true)))


def _auc(y_true, outputs) -> float:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:  # undefined with one class present
        return math.nan
    return float(roc_auc_score(y_true, np.asarray(outputs)[:, 1]))


def _f1_macro(y_true, outputs) -> float:
    import numpy as np
    from sklearn.metrics import f1_score

    outputs = np.asarray(outputs)
    return float(f1_score(np.asarray(y_true), np.argmax(outputs, axis=1), labels=list(range(outputs.shape[1])), average="macro",
                          zero_division=0))


def _errors(y_true, outputs):
    import numpy as np

    outputs = np.asarray(outputs, dtype=np.float64)
    return np.asarray(y_true, dtype=np.float64).reshape(outputs.shape) - outputs


def _rmse(y_true, outputs) -> float:
    import numpy as np

    return float(np.sqrt(np.mean(_errors(y_true, outputs) ** 2)))


def _mae(y_true, outputs) -> float:
    import numpy as np

    return float(np.mean(np.abs(_errors(y_true, outputs))))


def _r2(y_true, outputs) -> float:
    """Coefficient of determination, averaged over targets (scikit-learn's ``uniform_average``)."""
    import numpy as np

    outputs = np.asarray(outputs, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.float64).reshape(outputs.shape)
    residual = np.sum((y - outputs) ** 2, axis=0)
    total = np.sum((y - y.mean(axis=0)) ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_target = np.where(total > 0, 1.0 - residual / np.where(total > 0, total, 1.0), np.where(residual > 0, 0.0, 1.0))
    return float(np.mean(per_target))


@dataclass(frozen=True)
class Metric:
    """A primary metric: its task, its direction, how its points are counted and how it is scored."""

    name: str
    task: str
    higher_is_better: bool
    relative_points: bool  # error metrics: a point is 1 % of the reference value (their scale is the target's)
    description: str

    @property
    def test_key(self) -> str:
        return f"test_{self.name}"

    @property
    def val_key(self) -> str:
        return f"val_{self.name}"

    @property
    def direction(self) -> str:
        """Optuna's word for it."""
        return "maximize" if self.higher_is_better else "minimize"

    @property
    def mode(self) -> str:
        """Keras' word for it (``EarlyStopping(mode=...)``)."""
        return "max" if self.higher_is_better else "min"

    def score(self, y_true, outputs) -> float:
        """The metric of ``outputs`` (probabilities or predicted values) against ``y_true``."""
        return _SCORERS[self.name](y_true, outputs)

    def gain_points(self, value: float, reference: float) -> float:
        """How much better ``value`` is than ``reference``, in points (negative: worse), rounded to 6 decimals."""
        if self.relative_points:
            if abs(reference) <= 1e-12:  # a perfect reference (no error): any error counts as 100 points worse
                return 0.0 if abs(value) <= 1e-12 else -100.0
            return round((reference - value) / abs(reference) * 100.0, 6)
        difference = value - reference if self.higher_is_better else reference - value
        return round(difference * 100.0, 6)

    def sort_key(self, value: float) -> float:
        """Larger is better, whatever the direction (for ``max``/``sorted``)."""
        return value if self.higher_is_better else -value

    def best(self, values):
        """The best of ``values`` (finite ones only); ``None`` when there is none."""
        finite = [float(v) for v in values if v is not None and math.isfinite(v)]
        return max(finite, key=self.sort_key) if finite else None

    def best_index(self, values) -> int:
        """Index of the best finite value (the last index when none is finite)."""
        scored = [(self.sort_key(float(v)), i) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
        return max(scored, key=lambda s: (s[0], -s[1]))[1] if scored else max(len(values) - 1, 0)

    def point_unit(self) -> str:
        return "% of the reference value" if self.relative_points else "0.01"


METRICS = {
    m.name: m
    for m in (
        Metric("accuracy", CLASSIFICATION, True, False, "share of test samples whose most probable class is right"),
        Metric("auc", CLASSIFICATION, True, False, "area under the ROC curve of the positive class (binary tasks)"),
        Metric("f1_macro", CLASSIFICATION, True, False, "F1 score averaged over classes with equal weight (imbalanced classes)"),
        Metric("rmse", REGRESSION, False, True, "root mean squared error, in the target's units"),
        Metric("mae", REGRESSION, False, True, "mean absolute error, in the target's units"),
        Metric("r2", REGRESSION, True, False, "coefficient of determination (1 is perfect, 0 predicts the mean)"),
    )
}
_SCORERS = {"accuracy": _accuracy, "auc": _auc, "f1_macro": _f1_macro, "rmse": _rmse, "mae": _mae, "r2": _r2}
DEFAULT_METRIC = {CLASSIFICATION: "accuracy", REGRESSION: "rmse"}
#: What evaluation reports besides the primary metric (all of them are logged as ``test_<name>``).
REPORTED = {CLASSIFICATION: ("accuracy", "f1_macro"), REGRESSION: ("rmse", "mae", "r2")}


def metric_names(task: str | None = None) -> tuple[str, ...]:
    return tuple(name for name, m in METRICS.items() if task is None or m.task == task)


def get_metric(name: str | None) -> Metric:
    """The :class:`Metric` called ``name`` (``None``: accuracy, the classification default)."""
    name = name or DEFAULT_METRIC[CLASSIFICATION]
    if name not in METRICS:
        raise ConfigError("metric", f"unknown metric {name!r}.", f"use one of {list(METRICS)}.")
    return METRICS[name]


def resolve_metric(task: str, metric: str | None, n_outputs: int | None = None) -> Metric:
    """The primary metric for ``task`` (its default when ``metric`` is empty); a metric of the
    other task, or ``auc`` with more than two classes, is refused with the fix."""
    if task not in TASKS:
        raise ConfigError("task", f"must be one of {list(TASKS)}, got {task!r}.", "use 'classification' for labels, 'regression' for numeric targets.")
    chosen = get_metric(metric or DEFAULT_METRIC[task])
    if chosen.task != task:
        raise ConfigError("metric", f"{chosen.name!r} is a {chosen.task} metric, but task is {task!r}.",
                          f"use one of {list(metric_names(task))} (or set task to {chosen.task!r}).")
    if chosen.name == "auc" and n_outputs is not None and n_outputs != 2:
        raise ConfigError("metric", f"'auc' needs a binary task; the labels have {n_outputs} classes.", "use 'accuracy' or 'f1_macro'.")
    return chosen


def report_scores(task: str, y_true, outputs, primary: Metric) -> dict:
    """``{"test_<name>": value}`` for the task's reported metrics and the primary one."""
    names = dict.fromkeys([*REPORTED[task], primary.name])
    return {METRICS[name].test_key: METRICS[name].score(y_true, outputs) for name in names}


#: The metric key prefix of the trivial predictor's score (``baseline_test_accuracy``): what a
#: model that never reads the features gets on the same split.
BASELINE_PREFIX = "baseline_"


def trivial_outputs(task: str, y_train, samples: int, n_outputs: int):
    """What a model that never reads the features outputs for ``samples`` samples: the training
    split's class shares for every sample (its most frequent class wins every argmax; scikit-learn's
    ``DummyClassifier(strategy="prior")``), or the training split's mean target
    (``DummyRegressor``). A model that does no better has learned nothing the gate should ship:
    on a table whose classes are 95 % and 5 %, always answering the first scores 0.95."""
    import numpy as np

    y_train = np.asarray(y_train)
    if task == REGRESSION:
        mean = y_train.astype(np.float64).reshape(len(y_train), -1).mean(axis=0)
        return np.tile(mean, (samples, 1))
    shares = np.bincount(y_train.astype(np.int64), minlength=n_outputs)[:n_outputs] / max(1, len(y_train))
    return np.tile(shares, (samples, 1))


def baseline_scores(task: str, y_train, y_true, n_outputs: int, primary: Metric) -> dict:
    """``{"baseline_test_<name>": value}`` of :func:`trivial_outputs` on ``y_true``, for the
    primary metric and the task's reported ones (every key :func:`report_scores` gives, prefixed)."""
    outputs = trivial_outputs(task, y_train, len(y_true), n_outputs)
    return {f"{BASELINE_PREFIX}{key}": value for key, value in report_scores(task, y_true, outputs, primary).items()}
