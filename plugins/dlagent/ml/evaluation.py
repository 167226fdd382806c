"""Full evaluation of a Keras model and of a TFLite model on the same held-out test split.

:func:`evaluate_keras` and :func:`evaluate_tflite` return an :class:`EvaluationReport`:

* metrics: ``test_accuracy``, ``test_loss``, ``macro_precision``/``macro_recall``/``macro_f1``,
  per class ``class_<name>_precision``/``_recall``/``_f1``/``_support``, ``size_bytes``,
  ``gzip_size_bytes``, ``latency_ms_p50``/``latency_ms_p95`` (one sample per call: the
  Keras model call ``model(x)``, or one interpreter ``invoke``), for Keras also
  ``predict_latency_ms_p50``/``_p95`` (``model.predict`` on one sample), and
  ``throughput_samples_per_s`` (the whole test split in batches);
* artifacts written to ``out_dir``: ``confusion_matrix.png``, ``classification_report.json``,
  ``metrics.json`` and an explanation: ``integrated_gradients.png`` (a few test images per
  class with their attribution maps) for image data, ``permutation_importance.png`` (+ JSON)
  for tabular data.

:func:`log_evaluation` logs a report to an MLflow run (metrics and artifacts) through
``MlflowClient(tracking_uri)``. Plots use matplotlib's Agg canvas directly (no pyplot, no
global backend switch), so they work in a worker without a display.
"""

from __future__ import annotations

import gzip
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
from dlagent.ml.plotting import new_figure

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- running models


class TFLiteModel:
    """A ``tf.lite.Interpreter`` with float in, probabilities out, whatever the model's I/O type.

    Int8 (or uint8) input/output tensors are quantized/dequantized with the tensors' own scale
    and zero point, so accuracy is computed the same way for every quantization mode. One
    interpreter serves single samples (the model's batch-1 shape); a second one, resized to
    ``batch_size``, serves batches.
    """

    def __init__(self, model_content: bytes, *, num_threads: int | None = 1):
        import tensorflow as tf

        self.model_content = bytes(model_content)
        self.num_threads = num_threads
        self._tf = tf
        self.interpreter = self._new_interpreter()
        self.input_detail = self.interpreter.get_input_details()[0]
        self.output_detail = self.interpreter.get_output_details()[0]
        self._batch_interpreters: dict[int, object] = {}

    def _new_interpreter(self):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "tf.lite.Interpreter is deprecated" (LiteRT is not installed)
            interpreter = self._tf.lite.Interpreter(model_content=self.model_content, num_threads=self.num_threads)
        interpreter.allocate_tensors()
        return interpreter

    def _to_input(self, x: np.ndarray) -> np.ndarray:
        dtype = self.input_detail["dtype"]
        if dtype in (np.int8, np.uint8):
            scale, zero_point = self.input_detail["quantization"]
            info = np.iinfo(dtype)
            return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)
        return np.asarray(x, dtype=dtype)

    def _from_output(self, y: np.ndarray) -> np.ndarray:
        if self.output_detail["dtype"] in (np.int8, np.uint8):
            scale, zero_point = self.output_detail["quantization"]
            return (y.astype(np.float32) - zero_point) * scale
        return y.astype(np.float32)

    def predict_one(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for one sample of shape ``(1, ...)``."""
        interpreter = self.interpreter
        interpreter.set_tensor(self.input_detail["index"], self._to_input(x))
        interpreter.invoke()
        return self._from_output(interpreter.get_tensor(self.output_detail["index"]))

    def _batch_interpreter(self, size: int):
        if size not in self._batch_interpreters:
            interpreter = self._new_interpreter()
            detail = interpreter.get_input_details()[0]
            interpreter.resize_tensor_input(detail["index"], [size, *detail["shape"][1:]], strict=False)
            interpreter.allocate_tensors()
            self._batch_interpreters[size] = interpreter
        return self._batch_interpreters[size]

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Probabilities for every sample in ``x`` (batched; the last batch is padded)."""
        x = np.asarray(x, dtype=np.float32)
        if len(x) == 0:
            return np.zeros((0, *self.output_detail["shape"][1:]), np.float32)
        batch_size = max(1, min(batch_size, len(x)))
        interpreter = self._batch_interpreter(batch_size)
        in_index = interpreter.get_input_details()[0]["index"]
        out_index = interpreter.get_output_details()[0]["index"]
        outputs = []
        for chunk, n in padded_batches(x, batch_size):
            interpreter.set_tensor(in_index, self._to_input(chunk))
            interpreter.invoke()
            outputs.append(self._from_output(interpreter.get_tensor(out_index))[:n])
        return np.concatenate(outputs)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(np.argmax(self.predict(x), axis=1) == y))

    def latency(self, x: np.ndarray, *, runs: int = 200, warmup: int = 10) -> dict:
        """Single-sample latency (ms) over ``runs`` calls, cycling through samples of ``x``."""
        samples = [np.asarray(x[i % len(x)][None], dtype=np.float32) for i in range(min(len(x), 64))]
        return latency_stats(self.predict_one, samples, runs=runs, warmup=warmup)

    def throughput(self, x: np.ndarray, *, batch_size: int = 256, repeats: int = 3) -> float:
        """Samples per second for ``x`` in batches (best of ``repeats`` passes)."""
        self.predict(x[:batch_size], batch_size=batch_size)  # warm-up
        best = math.inf
        for _ in range(repeats):
            started = time.perf_counter()
            self.predict(x, batch_size=batch_size)
            best = min(best, time.perf_counter() - started)
        return float(len(x) / best) if best > 0 else float("inf")


def gzip_size(data: bytes) -> int:
    """Bytes after gzip at the highest level (what a download or an OTA update carries)."""
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def padded_batches(x: np.ndarray, size: int):
    """Yield ``(batch, n_real)``: batches of exactly ``size`` rows, the last padded by repeating
    its final row, so a model with a fixed batch shape never sees a new shape."""
    for start in range(0, len(x), size):
        chunk = x[start : start + size]
        n = len(chunk)
        if n < size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - n, axis=0)])
        yield chunk, n


def latency_stats(fn, samples: list, *, runs: int = 200, warmup: int = 10, prefix: str = "") -> dict:
    """``{prefix}latency_ms_p50`` / ``_p95`` of ``fn(sample)``, cycling through ``samples``."""
    for i in range(warmup):
        fn(samples[i % len(samples)])
    times = np.empty(runs)
    for i in range(runs):
        sample = samples[i % len(samples)]
        started = time.perf_counter()
        fn(sample)
        times[i] = time.perf_counter() - started
    return {
        f"{prefix}latency_ms_p50": float(np.percentile(times, 50) * 1000.0),
        f"{prefix}latency_ms_p95": float(np.percentile(times, 95) * 1000.0),
    }


def keras_predict(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Probabilities for ``x`` in fixed-size batches with ``predict_on_batch``.

    ``model.predict`` costs tens of milliseconds of set-up per call, which dominates
    explanations that predict many small arrays; the last batch is padded so the model is
    traced for one batch shape only.
    """
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        return np.zeros((0, *model.output_shape[1:]), np.float32)
    size = min(batch_size, len(x))
    outputs = []
    for chunk, n in padded_batches(x, size):
        outputs.append(np.asarray(model.predict_on_batch(chunk), dtype=np.float32)[:n])
    return np.concatenate(outputs)


def keras_accuracy(model, splits: DatasetSplits) -> float:
    return float(np.mean(np.argmax(keras_predict(model, splits.x_test), axis=1) == splits.y_test))


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
    probs = keras_predict(model, splits.x_test)
    metrics, per_class, confusion = classification_metrics(splits.y_test, probs, splits.class_names)
    content = keras_model_bytes(model)
    metrics.update({
        "size_bytes": len(content),
        "gzip_size_bytes": gzip_size(content),
        "num_params": int(model.count_params()),
        **keras_call_latency(model, splits.x_test, runs=latency_runs),
        **keras_predict_latency(model, splits.x_test, runs=predict_runs),
        "throughput_samples_per_s": keras_throughput(model, splits.x_test),
    })
    report = EvaluationReport("keras", metrics, per_class, confusion)
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
    probs = runner.predict(splits.x_test)
    metrics, per_class, confusion = classification_metrics(splits.y_test, probs, splits.class_names)
    metrics.update({
        "size_bytes": len(model_content),
        "gzip_size_bytes": gzip_size(model_content),
        **runner.latency(splits.x_test, runs=latency_runs),
        "throughput_samples_per_s": runner.throughput(splits.x_test),
    })
    report = EvaluationReport("tflite", metrics, per_class, confusion)
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
    report.artifacts.append(plot_confusion_matrix(report.confusion, splits.class_names, out / "confusion_matrix.png",
                                                  title=f"{report.kind}: test accuracy {report.metrics['test_accuracy']:.4f}"))
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
            importance = permutation_importance(predict_fn, splits.x_test, splits.y_test)
            json_path = out / "permutation_importance.json"
            json_path.write_text(json.dumps(importance, indent=2))
            report.artifacts.extend([plot_permutation_importance(importance, out / "permutation_importance.png"), json_path])
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(report.metrics, indent=2, sort_keys=True))
    report.artifacts.append(metrics_path)


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


def integrated_gradients(model, images: np.ndarray, targets: np.ndarray, *, steps: int = 32, baseline=None) -> np.ndarray:
    """Integrated-gradients attributions of ``model``'s probability for ``targets`` (one per image).

    The path runs from a black ``baseline`` (zeros) to the image in ``steps`` straight-line
    steps (trapezoidal rule). Returns an array shaped like ``images``.
    """
    import tensorflow as tf

    images = np.asarray(images, dtype=np.float32)
    targets = np.asarray(targets, dtype=np.int64)
    baseline = np.zeros_like(images[0]) if baseline is None else np.asarray(baseline, np.float32)
    alphas = np.linspace(0.0, 1.0, steps + 1, dtype=np.float32).reshape(1, -1, *([1] * images[0].ndim))
    attributions = []
    chunk = max(1, 512 // (steps + 1))  # images per gradient pass
    for start in range(0, len(images), chunk):
        batch, batch_targets = images[start : start + chunk], targets[start : start + chunk]
        k = len(batch)
        path = tf.constant((baseline + alphas * (batch[:, None] - baseline)).reshape(k * (steps + 1), *images.shape[1:]))
        picks = tf.constant(np.repeat(batch_targets, steps + 1))
        with tf.GradientTape() as tape:
            tape.watch(path)
            probs = model(path, training=False)
            scores = tf.gather(probs, picks, axis=1, batch_dims=1)
        grads = tape.gradient(scores, path).numpy().reshape(k, steps + 1, *images.shape[1:])
        average = ((grads[:, :-1] + grads[:, 1:]) / 2.0).mean(axis=1)
        attributions.append((batch - baseline) * average)
    return np.concatenate(attributions)


def plot_integrated_gradients(model, splits: DatasetSplits, path, *, samples_per_class: int = 2, steps: int = 32) -> Path:
    """For ``samples_per_class`` test images of each class: the image and its attribution map."""
    picks = []
    for label in range(splits.num_classes):
        picks.extend(np.flatnonzero(splits.y_test == label)[:samples_per_class].tolist())
    images = splits.x_test[picks]
    probs = keras_predict(model, images)
    predicted = np.argmax(probs, axis=1)
    attributions = integrated_gradients(model, images, predicted, steps=steps)
    n = len(picks)
    columns = min(n, 2 * samples_per_class) if samples_per_class else 2
    columns = max(columns, 2)
    per_row = columns // 2
    rows = math.ceil(n / per_row)
    figure = new_figure(2.0 * columns, 2.1 * rows)
    for k, index in enumerate(picks):
        image = images[k]
        heat = np.abs(attributions[k])
        if heat.ndim == 3:
            heat = heat.sum(axis=-1)
        shown = image if image.ndim == 2 or image.shape[-1] in (3, 4) else image[..., 0]
        row, slot = divmod(k, per_row)
        left = figure.add_subplot(rows, columns, row * columns + 2 * slot + 1)
        left.imshow(np.clip(shown, 0, 1), cmap="gray" if shown.ndim == 2 else None)
        left.set_title(f"true {splits.class_names[splits.y_test[index]]} / pred {splits.class_names[predicted[k]]}", fontsize=7)
        right = figure.add_subplot(rows, columns, row * columns + 2 * slot + 2)
        right.imshow(heat, cmap="inferno")
        right.set_title("integrated gradients", fontsize=7)
        for axes in (left, right):
            axes.axis("off")
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.95, wspace=0.1, hspace=0.35)  # tight_layout is slow on big grids
    figure.savefig(path)
    return Path(path)


def permutation_importance(predict_fn, x: np.ndarray, y: np.ndarray, *, repeats: int = 5, seed: int = 0,
                           max_rows: int = 20_000) -> list[dict]:
    """Drop in accuracy when one feature column is shuffled (mean and std over ``repeats``).

    Every shuffled copy is predicted in one batched call per feature, so this costs
    ``n_features`` prediction passes whatever ``repeats`` is.
    """
    rng = np.random.default_rng(seed)
    flat = x.reshape(len(x), -1)
    base = float(np.mean(np.argmax(predict_fn(x), axis=1) == y))
    rows = []
    per_pass = max(1, min(repeats, max_rows // max(len(x), 1)))
    for j in range(flat.shape[1]):
        drops = []
        remaining = repeats
        while remaining > 0:
            k = min(per_pass, remaining)
            stacked = np.repeat(flat[None], k, axis=0)
            for r in range(k):
                stacked[r, :, j] = flat[rng.permutation(len(x)), j]
            predictions = np.argmax(predict_fn(stacked.reshape(k * len(x), *x.shape[1:])), axis=1).reshape(k, len(x))
            drops.extend((base - np.mean(predictions == y[None], axis=1)).tolist())
            remaining -= k
        rows.append({"feature": j, "importance_mean": float(np.mean(drops)), "importance_std": float(np.std(drops))})
    return sorted(rows, key=lambda r: -r["importance_mean"])


def plot_permutation_importance(importance: list[dict], path, *, top: int = 20, feature_names=None) -> Path:
    shown = importance[:top][::-1]
    names = [str(feature_names[r["feature"]]) if feature_names else f"feature {r['feature']}" for r in shown]
    figure = new_figure(6.0, max(2.5, 0.3 * len(shown) + 1))
    axes = figure.add_subplot(1, 1, 1)
    axes.barh(names, [r["importance_mean"] for r in shown], xerr=[r["importance_std"] for r in shown], color="tab:blue")
    axes.set_xlabel("accuracy drop when shuffled")
    axes.set_title(f"permutation importance (top {len(shown)})")
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
