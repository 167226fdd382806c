"""Full evaluation of a Keras model and of a TFLite model on the same held-out test split.

:func:`evaluate_keras` and :func:`evaluate_tflite` return an :class:`EvaluationReport`:

* metrics: the task's ``test_<metric>`` (:mod:`dlagent.ml.metrics`; the primary one among them)
  and ``test_loss``; for classification ``macro_precision``/``macro_recall``/``macro_f1``, per
  class ``class_<name>_precision``/``_recall``/``_f1``/``_support``; for regression with several
  targets each target's ``target_<name>_rmse``/``_mae``/``_r2``; ``size_bytes``,
  ``gzip_size_bytes``, ``latency_ms_p50``/``latency_ms_p95`` (one sample per call: the
  Keras model call ``model(x)``, or one interpreter ``invoke``), for Keras also
  ``predict_latency_ms_p50``/``_p95`` (``model.predict`` on one sample), and
  ``throughput_samples_per_s`` (the whole test split in batches);
* artifacts written to ``out_dir``: ``confusion_matrix.png`` and ``classification_report.json``
  (regression: ``residuals.png`` and ``regression_report.json``),
  ``metrics.json`` and an explanation: ``integrated_gradients.png`` (a few test images per
  class with their attribution maps) for image data, ``permutation_importance.png`` (+ JSON)
  for tabular data.

:func:`log_evaluation` logs a report to an MLflow run (metrics and artifacts) through
``MlflowClient(tracking_uri)``. Plots use matplotlib's Agg canvas directly (no pyplot, no
global backend switch), so they work in a worker without a display.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlagent.ml.data import DatasetSplits
from dlagent.ml.explain import permutation_importance, plot_integrated_gradients, plot_permutation_importance
from dlagent.ml.models import keras_predict
from dlagent.ml.plotting import new_figure
from dlagent.ml.tflite import TFLiteModel, gzip_size, latency_stats

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- running models


def keras_score(model, splits: DatasetSplits, split: str = "test") -> float:
    """The primary metric of a Keras model on the ``"test"`` or ``"val"`` split."""
    x, y = (splits.x_test, splits.y_test) if split == "test" else (splits.x_val, splits.y_val)
    return splits.primary.score(y, keras_predict(model, x))


def keras_call_latency(model, x: np.ndarray, *, runs: int = 100, warmup: int = 10) -> dict:
    """Single-sample latency of the Keras model call ``model(x, training=False)`` (eager)."""
    from keras import ops

    samples = [np.asarray(x[i % len(x)][None], dtype=np.float32) for i in range(min(len(x), 64))]
    return latency_stats(lambda s: ops.convert_to_numpy(model(s, training=False)), samples, runs=runs, warmup=warmup)


def keras_predict_latency(model, x: np.ndarray, *, runs: int = 20, warmup: int = 3) -> dict:
    """Single-sample latency of ``model.predict`` (what naive serving code calls)."""
    samples = [np.asarray(x[i % len(x)][None], dtype=np.float32) for i in range(min(len(x), 16))]
    return latency_stats(lambda s: model.predict(s, verbose=0), samples, runs=runs, warmup=warmup, prefix="predict_")


def keras_throughput(model, x: np.ndarray, *, batch_size: int = 256, repeats: int = 3) -> float:
    keras_predict(model, x[:batch_size], batch_size)
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        keras_predict(model, x, batch_size)
        best = min(best, time.perf_counter() - started)
    return float(len(x) / best) if best > 0 else float("inf")


def keras_model_size(model) -> int:
    """Bytes of the model saved as a ``.keras`` file without optimizer state (what is deployed)."""
    from dlagent.ml.models import copy_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        copy_model(model).save(path)
        return path.stat().st_size


def keras_model_bytes(model) -> bytes:
    """The ``.keras`` file of ``model`` without optimizer state, as bytes."""
    from dlagent.ml.models import copy_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        copy_model(model).save(path)
        return path.read_bytes()


# --------------------------------------------------------------------------- reports


@dataclass
class EvaluationReport:
    """What one evaluation measured and the files it wrote."""

    kind: str  # "keras" or "tflite"
    metrics: dict = field(default_factory=dict)
    per_class: list = field(default_factory=list)
    confusion: list = field(default_factory=list)
    artifacts: list = field(default_factory=list)  # Paths
    out_dir: Path | None = None
    outputs: np.ndarray | None = field(default=None, repr=False)  # the test split's predictions (plots; never logged)

    def summary(self) -> dict:
        return {"kind": self.kind, "metrics": dict(self.metrics), "artifacts": [p.name for p in self.artifacts]}


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> tuple[dict, list, list]:
    """Accuracy, loss, macro and per-class precision/recall/F1, and the confusion matrix."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(class_names)))
    predictions = np.argmax(probs, axis=1)
    eps = 1e-7
    picked = np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, predictions, labels=labels, zero_division=0)
    metrics = {
        "test_accuracy": float(np.mean(predictions == y_true)),
        "test_loss": float(-np.mean(np.log(picked))),
        "macro_precision": float(np.mean(precision)),
        "macro_recall": float(np.mean(recall)),
        "macro_f1": float(np.mean(f1)),
    }
    per_class = []
    for i, name in enumerate(class_names):
        key = _metric_safe(name)
        row = {"class": name, "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        per_class.append(row)
        for stat in ("precision", "recall", "f1", "support"):
            metrics[f"class_{key}_{stat}"] = row[stat]
    confusion = confusion_matrix(y_true, predictions, labels=labels).tolist()
    return metrics, per_class, confusion


def task_metrics(splits: DatasetSplits, outputs: np.ndarray) -> tuple[dict, list, list]:
    """The task's metrics of ``outputs`` on the test split, the primary one ``test_<metric>``
    included: for classification :func:`classification_metrics`; for regression
    :func:`regression_metrics`. Returns ``(metrics, per_class_or_target, confusion)``."""
    from dlagent.ml.metrics import report_scores

    if splits.is_regression:
        metrics, per_target = regression_metrics(splits.y_test, outputs, splits.class_names)
        return {**metrics, **report_scores(splits.task, splits.y_test, outputs, splits.primary)}, per_target, []
    metrics, per_class, confusion = classification_metrics(splits.y_test, outputs, splits.class_names)
    return {**metrics, **report_scores(splits.task, splits.y_test, outputs, splits.primary)}, per_class, confusion


def regression_metrics(y_true: np.ndarray, predictions: np.ndarray, target_names: list[str]) -> tuple[dict, list]:
    """RMSE, MAE, R² and the loss (mean squared error) over all targets, and each target's own."""
    from dlagent.ml.metrics import METRICS

    predictions = np.asarray(predictions, np.float64)
    y = np.asarray(y_true, np.float64).reshape(predictions.shape)
    metrics = {"test_loss": float(np.mean((y - predictions) ** 2))}
    per_target = []
    for i, name in enumerate(target_names):
        row = {"target": name, **{m: METRICS[m].score(y[:, i], predictions[:, i:i + 1]) for m in ("rmse", "mae", "r2")}}
        per_target.append(row)
        if len(target_names) > 1:
            metrics.update({f"target_{_metric_safe(name)}_{m}": row[m] for m in ("rmse", "mae", "r2")})
    return metrics, per_target


def _metric_safe(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", str(name)).strip("_") or "class"


def evaluate_keras(
    model,
    splits: DatasetSplits,
    *,
    out_dir=None,
    explain: bool = True,
    latency_runs: int = 100,
    predict_runs: int = 20,
    samples_per_class: int = 2,
) -> EvaluationReport:
    """Evaluate a Keras model on the test split; write plots and JSON to ``out_dir``."""
    outputs = keras_predict(model, splits.x_test)
    metrics, per_class, confusion = task_metrics(splits, outputs)
    content = keras_model_bytes(model)
    metrics.update({
        "size_bytes": len(content),
        "gzip_size_bytes": gzip_size(content),
        "num_params": int(model.count_params()),
        **keras_call_latency(model, splits.x_test, runs=latency_runs),
        **keras_predict_latency(model, splits.x_test, runs=predict_runs),
        "throughput_samples_per_s": keras_throughput(model, splits.x_test),
    })
    report = EvaluationReport("keras", metrics, per_class, confusion, outputs=outputs)
    _write_artifacts(report, splits, out_dir, explain=explain, keras_model=model,
                     predict_fn=lambda x: keras_predict(model, x), samples_per_class=samples_per_class)
    return report


def evaluate_tflite(
    model_content: bytes,
    splits: DatasetSplits,
    *,
    out_dir=None,
    explain: bool = True,
    keras_model=None,
    latency_runs: int = 200,
    num_threads: int | None = 1,
    samples_per_class: int = 2,
) -> EvaluationReport:
    """Evaluate a TFLite flatbuffer on the test split through the interpreter.

    Image explanations need gradients, so they are computed on ``keras_model`` when given
    (the Keras model the TFLite file was converted from); permutation importance for tabular
    data runs on the TFLite model itself.
    """
    runner = TFLiteModel(model_content, num_threads=num_threads)
    outputs = runner.predict(splits.x_test)
    metrics, per_class, confusion = task_metrics(splits, outputs)
    metrics.update({
        "size_bytes": len(model_content),
        "gzip_size_bytes": gzip_size(model_content),
        **runner.latency(splits.x_test, runs=latency_runs),
        "throughput_samples_per_s": runner.throughput(splits.x_test),
    })
    report = EvaluationReport("tflite", metrics, per_class, confusion, outputs=outputs)
    _write_artifacts(report, splits, out_dir, explain=explain, keras_model=keras_model,
                     predict_fn=runner.predict, samples_per_class=samples_per_class)
    return report


def _write_artifacts(report: EvaluationReport, splits: DatasetSplits, out_dir, *, explain: bool, keras_model, predict_fn,
                     samples_per_class: int) -> None:
    if out_dir is None:
        return
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report.out_dir = out
    primary = splits.primary
    title = f"{report.kind}: test {primary.name} {report.metrics[primary.test_key]:.4f}"
    if splits.is_regression:
        report.artifacts.append(plot_residuals(splits.y_test, report.outputs, splits.class_names, out / "residuals.png", title=title))
        report_path = out / "regression_report.json"
        report_path.write_text(json.dumps({"kind": report.kind, "per_target": report.per_class}, indent=2))
    else:
        report.artifacts.append(plot_confusion_matrix(report.confusion, splits.class_names, out / "confusion_matrix.png", title=title))
        report_path = out / "classification_report.json"
        report_path.write_text(json.dumps({"kind": report.kind, "per_class": report.per_class, "confusion_matrix": report.confusion}, indent=2))
    report.artifacts.append(report_path)
    if explain:
        if splits.is_image:
            if keras_model is not None:
                report.artifacts.append(
                    plot_integrated_gradients(keras_model, splits, out / "integrated_gradients.png", samples_per_class=samples_per_class)
                )
            else:
                log.info("no Keras model given: image explanation skipped for the TFLite model")
        else:
            groups = splits.encoding.column_groups() if splits.encoding is not None else None  # a raw column at a time
            x, y = held_rows(splits.x_test, splits.y_test)
            importance = permutation_importance(predict_fn, x, y, metric=primary, groups=groups)
            json_path = out / "permutation_importance.json"
            json_path.write_text(json.dumps(importance, indent=2))
            report.artifacts.extend([plot_permutation_importance(importance, out / "permutation_importance.png"), json_path])
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(report.metrics, indent=2, sort_keys=True))
    report.artifacts.append(metrics_path)


def held_rows(x, y, limit: int = 20_000, seed: int = 0):
    """``(x, y)`` as arrays: a streamed test split (shuffled copies of it are predicted) is
    sampled down to ``limit`` rows, seeded, in file order; arrays are returned as they are."""
    from dlagent.ml.streaming import is_streamed

    if not is_streamed(x):
        return x, y
    picks = np.arange(len(x)) if len(x) <= limit else np.sort(np.random.default_rng(seed).choice(len(x), limit, replace=False))
    return x[picks], y[picks]


# --------------------------------------------------------------------------- plots and explanations


def plot_confusion_matrix(confusion, class_names: list[str], path, *, title: str = "") -> Path:
    matrix = np.asarray(confusion)
    n = len(class_names)
    size = max(4.0, 0.5 * n + 2)
    figure = new_figure(size, size)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xticks(range(n), labels=class_names, rotation=45 if n > 10 else 0)
    axes.set_yticks(range(n), labels=class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title or "confusion matrix")
    if n <= 20:
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                axes.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                          color="white" if matrix[i, j] > threshold else "black")
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)


def plot_residuals(y_true, predictions, target_names: list[str], path, *, title: str = "") -> Path:
    """Per target: predicted against true values (with the identity line) and residuals against
    predictions, where a trend or a funnel shows what the model misses."""
    predictions = np.asarray(predictions, np.float64)
    y = np.asarray(y_true, np.float64).reshape(predictions.shape)
    shown = min(len(target_names), 4)
    figure = new_figure(9.0, 3.6 * shown)
    for i in range(shown):
        left, right = figure.add_subplot(shown, 2, 2 * i + 1), figure.add_subplot(shown, 2, 2 * i + 2)
        low, high = float(min(y[:, i].min(), predictions[:, i].min())), float(max(y[:, i].max(), predictions[:, i].max()))
        left.scatter(y[:, i], predictions[:, i], s=8, alpha=0.6)
        left.plot([low, high], [low, high], color="tab:red", linewidth=1)
        left.set_xlabel(f"true {target_names[i]}")
        left.set_ylabel("predicted")
        residuals = y[:, i] - predictions[:, i]
        right.scatter(predictions[:, i], residuals, s=8, alpha=0.6)
        right.axhline(0.0, color="tab:red", linewidth=1)
        right.set_xlabel("predicted")
        right.set_ylabel("residual (true - predicted)")
        if i == 0:
            left.set_title(title or "predicted vs true")
            right.set_title("residuals")
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)


# --------------------------------------------------------------------------- MLflow


def log_evaluation(client, run_id: str, report: EvaluationReport, *, prefix: str = "",
                   artifact_path: str | None = None) -> None:
    """Log a report's metrics (``prefix`` + name) and artifacts (under ``artifact_path``,
    default ``evaluation/<kind>``) to ``run_id``.

    Metrics are logged in one batch; a failure to log them is reported, not raised (like the
    training loggers). A failure to upload an artifact is raised: an evaluation step whose
    report is not stored has not succeeded.
    """
    from dlagent.ml.tracking import log_metrics

    items = [(f"{prefix}{name}", value) for name, value in report.metrics.items()]
    for start in range(0, len(items), 900):  # MLflow takes at most 1,000 metrics per batch
        log_metrics(client, run_id, dict(items[start : start + 900]))
    destination = artifact_path or f"evaluation/{report.kind}"
    for artifact in report.artifacts:
        client.log_artifact(run_id, str(artifact), destination)
