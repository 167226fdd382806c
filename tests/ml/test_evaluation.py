"""Full evaluation of a Keras model and its TFLite conversion on the same held-out split."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from dlagent.ml.config import TrainConfig
from dlagent.ml.data import DatasetSplits
from dlagent.ml.evaluation import evaluate_keras, evaluate_tflite, log_evaluation
from dlagent.ml.explain import integrated_gradients, permutation_importance
from dlagent.ml.tflite import TFLiteModel

# Its module-scoped fixtures train models: all its tests on one pytest-xdist worker, so they train once.
pytestmark = pytest.mark.xdist_group("ml_evaluation")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cnn(digits_small):
    from dlagent.ml.training import fit

    return fit(digits_small, TrainConfig(model="cnn", epochs=8, filters=8, units=32, early_stopping_patience=0)).model


@pytest.fixture(scope="module")
def tabular(digits_small) -> DatasetSplits:
    """The digits as 64 tabular features (not images): explanations switch to permutation importance."""
    flat = {name: getattr(digits_small, name).reshape(len(getattr(digits_small, name)), -1) for name in ("x_train", "x_val", "x_test")}
    return dataclasses.replace(digits_small, name="digits-tabular", **flat)


@pytest.fixture(scope="module")
def mlp(tabular):
    from dlagent.ml.training import fit

    return fit(tabular, TrainConfig(model="mlp", epochs=15, units=32, early_stopping_patience=0)).model


def _is_png(path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(8) == PNG_MAGIC


def test_keras_evaluation_measures_everything_and_writes_artifacts(cnn, digits_small, tmp_path):
    from dlagent.ml.training import evaluate

    report = evaluate_keras(cnn, digits_small, out_dir=tmp_path, latency_runs=30, predict_runs=5)
    metrics = report.metrics
    reference = evaluate(cnn, digits_small)  # Keras' own model.evaluate on the same split
    assert metrics["test_accuracy"] == pytest.approx(reference["test_accuracy"], abs=1e-6)
    assert metrics["test_loss"] == pytest.approx(reference["test_loss"], rel=1e-3)
    supports = [metrics[f"class_{c}_support"] for c in digits_small.class_names]
    assert sum(supports) == len(digits_small.y_test)
    assert sum(map(sum, report.confusion)) == len(digits_small.y_test)
    assert np.trace(np.array(report.confusion)) == round(metrics["test_accuracy"] * len(digits_small.y_test))
    for c in digits_small.class_names:
        assert 0.0 <= metrics[f"class_{c}_f1"] <= 1.0
    assert 0 < metrics["latency_ms_p50"] <= metrics["latency_ms_p95"]
    assert 0 < metrics["predict_latency_ms_p50"] <= metrics["predict_latency_ms_p95"]
    assert metrics["latency_ms_p50"] < metrics["predict_latency_ms_p50"]  # model(x) beats model.predict(x)
    assert metrics["throughput_samples_per_s"] > 0
    assert metrics["size_bytes"] >= 4 * cnn.count_params()
    assert metrics["size_bytes"] < 3 * 4 * cnn.count_params() + 50_000, "optimizer state must not count as model size"
    names = {p.name for p in report.artifacts}
    assert {"confusion_matrix.png", "classification_report.json", "integrated_gradients.png", "metrics.json"} <= names
    assert all(p.exists() for p in report.artifacts)
    assert _is_png(tmp_path / "confusion_matrix.png") and _is_png(tmp_path / "integrated_gradients.png")
    saved = json.loads((tmp_path / "classification_report.json").read_text())
    assert len(saved["per_class"]) == digits_small.num_classes


def test_tflite_evaluation_on_the_same_split(cnn, digits_small, tmp_path):
    from dlagent.ml.quantization import quantize

    keras_report = evaluate_keras(cnn, digits_small, explain=False, latency_runs=30, predict_runs=3)
    for mode in ("none", "int8"):
        content = quantize(cnn, mode, digits_small.x_train[:100])
        report = evaluate_tflite(content, digits_small, out_dir=tmp_path / mode, keras_model=cnn, latency_runs=50)
        metrics = report.metrics
        runner = TFLiteModel(content)
        one_by_one = np.array([np.argmax(runner.predict_one(x[None])) for x in digits_small.x_test])
        assert metrics["test_accuracy"] == pytest.approx(float(np.mean(one_by_one == digits_small.y_test)))
        if mode == "none":  # the float32 conversion predicts exactly like Keras
            assert metrics["test_accuracy"] == pytest.approx(keras_report.metrics["test_accuracy"])
        assert metrics["size_bytes"] == len(content)
        assert metrics["latency_ms_p95"] > 0 and metrics["throughput_samples_per_s"] > 0
        assert _is_png(tmp_path / mode / "confusion_matrix.png")
        assert _is_png(tmp_path / mode / "integrated_gradients.png")
    # the int8 TFLite model answers one sample faster than the Keras model call
    assert metrics["latency_ms_p50"] < keras_report.metrics["latency_ms_p50"]


def test_batched_and_single_sample_tflite_predictions_agree(cnn, digits_small):
    from dlagent.ml.quantization import quantize

    runner = TFLiteModel(quantize(cnn, "int8", digits_small.x_train[:100], int8_io=True))
    batched = runner.predict(digits_small.x_test, batch_size=32)  # the last batch is padded
    single = np.concatenate([runner.predict_one(x[None]) for x in digits_small.x_test])
    assert batched.shape == (len(digits_small.x_test), digits_small.num_classes)
    assert np.allclose(batched, single, atol=1e-6)


def test_integrated_gradients_are_complete(cnn, digits_small):
    """Attributions sum to F(x) - F(baseline): the axiom that makes integrated gradients honest."""
    images = digits_small.x_test[:4]
    targets = np.argmax(cnn.predict(images, verbose=0), axis=1)
    attributions = integrated_gradients(cnn, images, targets, steps=128)
    assert attributions.shape == images.shape
    at_image = cnn.predict(images, verbose=0)[np.arange(4), targets]
    at_baseline = cnn.predict(np.zeros_like(images), verbose=0)[0, targets]
    sums = attributions.reshape(4, -1).sum(axis=1)
    assert np.allclose(sums, at_image - at_baseline, atol=0.05)


def test_tabular_data_gets_permutation_importance(mlp, tabular, tmp_path):
    report = evaluate_keras(mlp, tabular, out_dir=tmp_path, latency_runs=20, predict_runs=3)
    names = {p.name for p in report.artifacts}
    assert {"permutation_importance.png", "permutation_importance.json", "confusion_matrix.png"} <= names
    assert "integrated_gradients.png" not in names
    assert _is_png(tmp_path / "permutation_importance.png")
    importance = json.loads((tmp_path / "permutation_importance.json").read_text())
    assert len(importance) == 64
    by_feature = {row["feature"]: row["importance_mean"] for row in importance}
    constant = [j for j in range(64) if np.ptp(tabular.x_test[:, j]) == 0]
    assert constant, "the digits have blank border pixels"
    assert all(by_feature[j] == 0.0 for j in constant)  # shuffling a constant column changes nothing
    assert max(by_feature.values()) > 0.0


def test_permutation_importance_finds_the_informative_feature():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(200, 3)).astype(np.float32)
    y = (x[:, 1] > 0.5).astype(np.int64)

    def predict(batch):
        p = (batch[:, 1] > 0.5).astype(np.float32)
        return np.stack([1 - p, p], axis=1)

    rows = permutation_importance(predict, x, y, repeats=4)
    assert rows[0]["feature"] == 1 and rows[0]["importance_mean"] > 0.3
    assert {r["feature"]: r["importance_mean"] for r in rows}[0] == 0.0


def test_log_evaluation_to_an_mlflow_run(cnn, digits_small, mlflow_uri, tmp_path):
    from dlagent.ml.quantization import quantize
    from dlagent.ml.tracking import ensure_experiment
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = ensure_experiment(client, "evaluation", artifact_location=os.environ["DLAGENT_ARTIFACT_ROOT"])
    run_id = client.create_run(experiment).info.run_id
    keras_report = evaluate_keras(cnn, digits_small, out_dir=tmp_path / "keras", latency_runs=20, predict_runs=3, samples_per_class=1)
    tflite_report = evaluate_tflite(quantize(cnn, "dynamic"), digits_small, out_dir=tmp_path / "tflite", keras_model=cnn,
                                    latency_runs=20, samples_per_class=1)
    log_evaluation(client, run_id, keras_report)
    log_evaluation(client, run_id, tflite_report, prefix="tflite_")
    logged = client.get_run(run_id).data.metrics
    assert logged["test_accuracy"] == pytest.approx(keras_report.metrics["test_accuracy"])
    assert logged["tflite_test_accuracy"] == pytest.approx(tflite_report.metrics["test_accuracy"])
    assert logged["tflite_size_bytes"] == tflite_report.metrics["size_bytes"]
    assert "class_3_f1" in logged and "predict_latency_ms_p95" in logged
    keras_files = {os.path.basename(f.path) for f in client.list_artifacts(run_id, "evaluation/keras")}
    tflite_files = {os.path.basename(f.path) for f in client.list_artifacts(run_id, "evaluation/tflite")}
    assert {"confusion_matrix.png", "integrated_gradients.png", "metrics.json"} <= keras_files
    assert {"confusion_matrix.png", "integrated_gradients.png"} <= tflite_files


@pytest.mark.parametrize(("metric", "reference", "values"), [("accuracy", 0.95, [0.951, 0.946, 0.93]), ("rmse", 10.0, [10.02, 10.08, 10.6])])
def test_the_candidates_plot_draws_each_candidate_the_reference_and_the_budget(tmp_path, metric, reference, values):
    from dlagent.ml.metrics import get_metric
    from dlagent.ml.plotting import plot_candidates
    from PIL import Image

    primary = get_metric(metric)
    candidates = [{"candidate": name, "metrics": {"gzip_size_bytes": size, primary.val_key: value}}
                  for name, size, value in zip(["int8", "pruned50+int8", "pruned80+int8"], [40_000, 25_000, 12_000], values, strict=True)]
    candidates.append({"candidate": "unmeasured", "metrics": {"size_bytes": 5_000}})  # no validation score: left out, no crash
    candidates.append({"candidate": "nan size", "metrics": {"gzip_size_bytes": float("nan"), primary.val_key: reference}})
    path = plot_candidates(candidates, reference, 1.0, primary, "pruned50+int8", tmp_path / "c.png")
    with Image.open(path) as image:
        assert image.size[0] > 300 and image.size[1] > 200
    assert plot_candidates([], reference, None, primary, None, tmp_path / "empty.png").is_file()
    assert plot_candidates(candidates, float("nan"), 1.0, primary, "gone", tmp_path / "nan.png").is_file()
