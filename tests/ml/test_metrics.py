"""The task and its primary metric: scores against scikit-learn, directions, points, refusals; a
regression data set through training, compression, evaluation and the gate on rmse."""

from __future__ import annotations

import numpy as np
import pytest
from dlagent.errors import ConfigError
from dlagent.ml.metrics import METRICS, get_metric, resolve_metric

# Its module-scoped fixtures train models: all its tests on one pytest-xdist worker, so they train once.
pytestmark = pytest.mark.xdist_group("ml_metrics")

# --------------------------------------------------------------------------- the metrics


def test_scores_agree_with_scikit_learn():
    from sklearn.metrics import f1_score, mean_absolute_error, mean_squared_error, r2_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    probs = rng.dirichlet([1, 1], 200)
    assert METRICS["accuracy"].score(y, probs) == pytest.approx(np.mean(probs.argmax(1) == y))
    assert METRICS["auc"].score(y, probs) == pytest.approx(roc_auc_score(y, probs[:, 1]))
    assert METRICS["f1_macro"].score(y, probs) == pytest.approx(f1_score(y, probs.argmax(1), average="macro"))
    targets, predictions = rng.normal(size=(200, 2)), rng.normal(size=(200, 2))
    assert METRICS["rmse"].score(targets, predictions) == pytest.approx(np.sqrt(mean_squared_error(targets, predictions)))
    assert METRICS["mae"].score(targets, predictions) == pytest.approx(mean_absolute_error(targets, predictions))
    assert METRICS["r2"].score(targets, predictions) == pytest.approx(r2_score(targets, predictions))
    assert METRICS["rmse"].score(targets[:, 0], predictions[:, :1]) == pytest.approx(np.sqrt(np.mean((targets[:, 0] - predictions[:, 0]) ** 2)))


def test_direction_and_points_follow_the_metric():
    accuracy, rmse = get_metric("accuracy"), get_metric("rmse")
    assert accuracy.gain_points(0.95, 0.94) == pytest.approx(1.0)  # one accuracy point
    assert rmse.gain_points(9.0, 10.0) == pytest.approx(10.0)  # 10 % smaller error: 10 points better
    assert rmse.gain_points(11.0, 10.0) == pytest.approx(-10.0)
    assert rmse.gain_points(0.5, 0.0) == -100.0 and rmse.gain_points(0.0, 0.0) == 0.0  # a perfect reference
    assert rmse.best([3.0, 1.0, float("nan"), 2.0]) == 1.0 and accuracy.best([0.3, 0.9, 0.5]) == 0.9
    assert rmse.best_index([3.0, 1.0, 2.0]) == 1 and (rmse.direction, rmse.mode) == ("minimize", "min")


@pytest.mark.parametrize(("task", "metric", "classes", "field", "words"), [
    ("classification", "rmse", 10, "metric", "is a regression metric"),
    ("regression", "f1_macro", None, "metric", "is a classification metric"),
    ("classification", "auc", 3, "metric", "needs a binary task"),
    ("classification", "precision", 2, "metric", "unknown metric"),
    ("ranking", None, 2, "task", "must be one of"),
])
def test_a_metric_that_does_not_fit_the_task_is_refused(task, metric, classes, field, words):
    with pytest.raises(ConfigError, match=words) as error:
        resolve_metric(task, metric, classes)
    assert error.value.field == field


def test_each_task_has_its_default_metric():
    assert resolve_metric("classification", None).name == "accuracy"
    assert resolve_metric("regression", "").name == "rmse"
    assert resolve_metric("classification", "auc", 2).name == "auc"


# --------------------------------------------------------------------------- regression data


def _friedman_csv(folder, n=300, seed=0, targets=1):
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=n, noise=0.5, random_state=seed)
    columns = [f"x{i}" for i in range(x.shape[1])]
    names = ["y"] if targets == 1 else [f"y{i}" for i in range(targets)]
    rows = [",".join(columns + names)]
    for features, target in zip(x, y, strict=True):
        values = [target] if targets == 1 else [target, 2 * target + features[0]]
        rows.append(",".join(f"{v:.5f}" for v in (*features, *values)))
    path = folder / "friedman.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_regression_targets_load_as_float_columns(tmp_path):
    from dlagent.ml.data import load_dataset

    path = _friedman_csv(tmp_path, targets=2)
    splits = load_dataset(f"csv:{path}", task="regression", label_column="y0,y1", allowed_roots=[str(tmp_path)])
    assert splits.y_train.dtype == np.float32 and splits.y_train.shape[1] == 2 and splits.num_classes == 2
    assert splits.class_names == ["y0", "y1"] and (splits.task, splits.metric) == ("regression", "rmse")
    assert len(splits.y_train) + len(splits.y_val) + len(splits.y_test) == 300
    x = np.random.default_rng(0).random((40, 3)).astype(np.float32)
    np.savez(tmp_path / "t.npz", x=x, y=x @ np.array([1.0, 2.0, -1.0], np.float32))
    single = load_dataset(f"npz:{tmp_path / 't.npz'}", task="regression", metric="mae", allowed_roots=[str(tmp_path)])
    assert single.y_train.shape[1] == 1 and single.primary.name == "mae"


def test_class_labels_under_regression_are_refused_with_the_real_reason(tmp_path):
    from dlagent.ml.data import load_dataset

    with pytest.raises(ConfigError, match="looks like class labels") as error:
        load_dataset("digits", task="regression")
    assert "task to 'classification'" in error.value.fix
    (tmp_path / "words.csv").write_text("a,label\n" + "".join(f"{i},{'yes' if i % 2 else 'no'}\n" for i in range(40)))
    with pytest.raises(ConfigError, match="class labels"):
        load_dataset(f"csv:{tmp_path / 'words.csv'}", task="regression", allowed_roots=[str(tmp_path)])
    prices = ["a,label"] + [f"{i},{100 + i * 1.37:.2f}" for i in range(60)]
    (tmp_path / "prices.csv").write_text("\n".join(prices) + "\n")
    with pytest.raises(ConfigError, match="looks like a regression target") as error:
        load_dataset(f"csv:{tmp_path / 'prices.csv'}", allowed_roots=[str(tmp_path)])
    assert "task to 'regression'" in error.value.fix


# --------------------------------------------------------------------------- a regression model, end to end in the core


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.data import load_dataset
    from dlagent.ml.training import fit

    folder = tmp_path_factory.mktemp("regression")
    splits = load_dataset(f"csv:{_friedman_csv(folder)}", task="regression", label_column="y", seed=1, allowed_roots=[str(folder)])
    result = fit(splits, TrainConfig(model="mlp", epochs=100, early_stopping_patience=10, units=64, learning_rate=3e-3, seed=1))
    return splits, result


def test_a_regressor_learns_in_the_targets_units_and_stops_on_val_rmse(regression):
    from dlagent.ml.training import evaluate

    splits, result = regression
    assert "val_rmse" in result.history and result.metrics()["best_val_rmse"] == min(result.history["val_rmse"])
    scores = evaluate(result.model, splits)
    baseline = float(np.sqrt(np.mean((splits.y_test - splits.y_train.mean()) ** 2)))  # predicting the mean
    assert scores["test_rmse"] < 0.6 * baseline and scores["test_r2"] > 0.6
    assert result.model.get_layer("target_scale").mean[0] == pytest.approx(float(splits.y_train.mean()), rel=1e-4)


def test_a_regressor_warm_starts_from_a_checkpoint(regression):
    """The final training continues the best trial's weights (the agent's warm start); its starting
    loss is the one its epochs log, an ensemble's (the mlp's default) the mean of its members' own."""
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.ensemble import training_view
    from dlagent.ml.models import copy_model
    from dlagent.ml.training import fit

    splits, result = regression
    start = copy_model(result.model)
    warm = fit(splits, TrainConfig(model="mlp", epochs=3, units=64, learning_rate=1e-4), initial_model=start)
    members = training_view(result.model).predict(splits.x_val, verbose=0)  # (rows, members, 1)
    assert members.shape[1] == 5
    assert warm.start_val_loss == pytest.approx(float(np.mean((splits.y_val[:, None] - members) ** 2)), rel=1e-3)
    assert warm.epochs_run >= 1 and "val_rmse" in warm.history


def test_a_regressor_is_pruned_quantized_and_evaluated_with_a_residual_plot(regression, tmp_path):
    from dlagent.ml.compression import CompressionConfig, compress
    from dlagent.ml.evaluation import evaluate_tflite
    from dlagent.ml.tflite import TFLiteModel

    splits, result = regression
    candidate = compress(result.model, splits, CompressionConfig.from_dict({"quantization": "int8", "sparsity": 0.5}), latency_runs=5)
    runner = TFLiteModel(candidate.tflite_bytes)
    assert runner.input_detail["dtype"] == np.float32 and runner.output_detail["dtype"] == np.float32
    assert candidate.metrics["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert candidate.metrics["test_rmse"] < 1.25 * candidate.metrics["keras_test_rmse"]
    report = evaluate_tflite(candidate.tflite_bytes, splits, out_dir=tmp_path, latency_runs=5)
    assert {"residuals.png", "regression_report.json", "permutation_importance.json"} <= {p.name for p in report.artifacts}
    assert report.metrics["test_rmse"] == pytest.approx(candidate.metrics["test_rmse"])
    importance = __import__("json").loads((tmp_path / "permutation_importance.json").read_text())
    # make_friedman1: features 0-4 carry the signal, 5-9 are noise; a table's features are named by its columns
    assert {row["feature"] for row in importance[:3]} <= {"x0", "x1", "x3"} and importance[0]["unit"] == "rmse points"


def test_the_gate_decides_on_rmse_lower_is_better():
    from dlagent.ml.gate import GateThresholds, decide

    champion = {"test_rmse": 10.0, "size_bytes": 1000}
    worse = decide({"test_rmse": 10.6, "size_bytes": 1000}, {"test_rmse": 10.5}, champion, GateThresholds(), "rmse")
    assert not worse["blessed"] and worse["delta_vs_champion_points"] == pytest.approx(-6.0)
    assert any("worse than the champion" in r for r in worse["reasons"])
    better = decide({"test_rmse": 9.0, "size_bytes": 1000}, {"test_rmse": 8.95}, champion, GateThresholds(), "rmse")
    assert better["blessed"] and better["metric"] == "rmse" and better["delta_vs_champion_points"] == pytest.approx(10.0)
    lossy = decide({"test_rmse": 9.5}, {"test_rmse": 9.0}, None, GateThresholds(max_metric_drop_points=1.0), "rmse")
    assert not lossy["blessed"] and lossy["metric_drop_points"] == pytest.approx(5.5555556)
    with pytest.raises(ConfigError, match="no test_rmse") as error:
        decide({"test_rmse": 9.0}, None, {"test_accuracy": 0.9}, GateThresholds(), "rmse")
    assert error.value.field == "model_name"


def test_the_trivial_predictors_scores_are_scikit_learns_dummy_estimators():
    from dlagent.ml.metrics import baseline_scores, get_metric
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error, r2_score

    rng = np.random.default_rng(0)
    y_train, y_test = rng.choice(3, 300, p=[0.2, 0.7, 0.1]), rng.choice(3, 80, p=[0.3, 0.5, 0.2])
    dummy = DummyClassifier(strategy="prior").fit(np.zeros((300, 1)), y_train).predict(np.zeros((80, 1)))
    scores = baseline_scores("classification", y_train, y_test, 3, get_metric("accuracy"))
    assert scores == pytest.approx({"baseline_test_accuracy": accuracy_score(y_test, dummy),
                                    "baseline_test_f1_macro": f1_score(y_test, dummy, average="macro", labels=[0, 1, 2])})
    binary = baseline_scores("classification", y_train % 2, y_test % 2, 2, get_metric("auc"))
    assert binary["baseline_test_auc"] == 0.5
    targets_train, targets_test = rng.normal(5, 2, (200, 2)), rng.normal(5.5, 2, (50, 2))
    mean = DummyRegressor().fit(np.zeros((200, 1)), targets_train).predict(np.zeros((50, 1)))
    regression = baseline_scores("regression", targets_train, targets_test, 2, get_metric("rmse"))
    assert regression == pytest.approx({"baseline_test_rmse": np.sqrt(mean_squared_error(targets_test, mean)),  # over both targets
                                        "baseline_test_mae": mean_absolute_error(targets_test, mean),
                                        "baseline_test_r2": r2_score(targets_test, mean)})
