"""Training and evaluation on real data, logged to a real MLflow store."""

from __future__ import annotations

from dlagent.ml import tracking
from dlagent.ml.config import TrainConfig
from dlagent.ml.model_store import load_keras_model
from dlagent.ml.training import evaluate, fit, train
from mlflow import MlflowClient


def test_cnn_reaches_high_accuracy_on_digits_and_logs_everything(mlflow_uri, tmp_path):
    from dlagent.ml.data import load_dataset

    splits = load_dataset("digits", seed=42)
    client = MlflowClient(mlflow_uri)
    experiment = tracking.ensure_experiment(client, "t", str(tmp_path / "artifacts"))
    run_id, created = tracking.find_or_create_run(client, experiment, "k", run_name="train")
    assert created
    config = TrainConfig(model="cnn", epochs=15, early_stopping_patience=3)
    result, model_uri = train(splits, config, client=client, run_id=run_id)

    run = client.get_run(run_id)
    assert run.data.params["learning_rate"] == "0.001" and run.data.params["dataset"] == "digits"
    history = client.get_metric_history(run_id, "val_accuracy")
    assert [m.step for m in history] == list(range(result.epochs_run))
    assert run.data.metrics["epochs_run"] == result.epochs_run
    model = load_keras_model(client, model_uri)
    metrics = evaluate(model, splits)
    assert metrics["test_accuracy"] >= 0.95
    assert metrics == evaluate(result.model, splits)  # the logged model is the trained one


def test_same_seed_gives_the_same_model(digits_small):
    config = TrainConfig(model="mlp", epochs=3, early_stopping_patience=0, seed=7)
    first, second = fit(digits_small, config), fit(digits_small, config)
    assert first.history["val_loss"] == second.history["val_loss"]


def test_early_stopping_ends_before_the_epoch_limit(digits_small):
    # a learning rate far too high never improves validation loss for long
    result = fit(digits_small, TrainConfig(model="mlp", epochs=40, learning_rate=5.0, optimizer="sgd", early_stopping_patience=2))
    assert result.epochs_run < 40


def test_find_or_create_run_continues_the_same_run(mlflow_uri, tmp_path):
    client = MlflowClient(mlflow_uri)
    experiment = tracking.ensure_experiment(client, "t", str(tmp_path / "a"))
    first, created = tracking.find_or_create_run(client, experiment, "dag/run/task/-1", run_name="x")
    client.set_terminated(first, status="FAILED")
    second, created_again = tracking.find_or_create_run(client, experiment, "dag/run/task/-1", run_name="x")
    assert created and not created_again and first == second
    assert client.get_run(second).info.status == "RUNNING"
    assert len(client.search_runs([experiment])) == 1


def test_balanced_class_weights_make_a_rare_class_found():
    """3s against a dozen 8s: unweighted, the MLP never predicts the rare 8; balanced, it finds most
    of the 8s it never saw (the remaining ~160 of the digits set)."""
    import numpy as np
    from dlagent.ml.data import DatasetSplits, split_dataset
    from dlagent.ml.training import class_weights
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.images.astype("float32") / 16, digits.target
    rare = np.where(y == 8)[0]
    keep = np.concatenate([np.where(y == 3)[0], rare[:12]])
    parts = split_dataset(x[keep], (y[keep] == 8).astype(np.int64), seed=0, val_fraction=0.15, test_fraction=0.15)
    splits = DatasetSplits("threes-and-few-eights", *parts, num_classes=2)
    weights = class_weights(splits.y_train, 2, "balanced")
    assert weights[1] / weights[0] == np.bincount(splits.y_train)[0] / np.bincount(splits.y_train)[1]
    assert class_weights(splits.y_train, 2, "none") is None
    recall = {}
    for mode in ("none", "balanced"):
        model = fit(splits, TrainConfig(model="mlp", epochs=10, units=16, class_weight=mode, seed=0, early_stopping_patience=0)).model
        recall[mode] = float((model.predict(x[rare[12:]], verbose=0).argmax(1) == 1).mean())
    assert recall["none"] < 0.2 and recall["balanced"] > 0.5, recall
