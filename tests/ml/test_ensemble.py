"""Deep ensembles (``ensemble``; a regression ``mlp``'s default): several networks in one model, each trained
on its own loss, averaged."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from dlagent.errors import ConfigError
from dlagent.ml.config import MLP_ENSEMBLE, TrainConfig
from dlagent.ml.data import DatasetSplits
from dlagent.ml.ensemble import member_loss, members_of, training_view
from dlagent.ml.models import build_model
from dlagent.ml.training import evaluate, fit


def noisy_table(task: str, n: int = 300, seed: int = 0) -> DatasetSplits:
    """Columns on scales 0.1 .. 100, a noisy linear target (or its sign as a class)."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, 5)) * [1.0, 10.0, 100.0, 0.1, 1.0]).astype("float32")
    y = x @ np.array([1.0, 0.1, 0.01, 10.0, 0.0]) + rng.normal(size=n)
    if task == "classification":
        y, outputs, metric = (y > 0).astype("int64"), 2, "accuracy"
    else:
        y, outputs, metric = (y[:, None] * 100 + 50).astype("float32"), 1, "rmse"
    cut, val = int(n * 0.6), int(n * 0.8)
    return DatasetSplits("noisy", x[:cut], y[:cut], x[cut:val], y[cut:val], x[val:], y[val:], outputs, task=task, metric=metric)


def test_a_regression_mlp_averages_networks_that_share_only_the_preprocessing_and_the_others_train_one():
    rows = np.random.default_rng(0).normal(size=(40, 5)) * 100
    model = build_model(TrainConfig(model="mlp", units=8, ensemble=5), (5,), 3, adapt_data=rows)
    assert members_of(model) == 5 and members_of(build_model(TrainConfig(model="mlp", units=8), (5,), 3, adapt_data=rows)) == 1
    assert [layer.name for layer in model.layers].count("standardize") == 1  # no weights to learn: one copy serves all
    assert sum(isinstance(layer, keras.layers.Dense) for layer in model.layers) == 2 * MLP_ENSEMBLE
    stacked = training_view(model).predict(rows, verbose=0)
    assert stacked.shape == (40, 5, 3) and np.allclose(stacked.mean(axis=1), model.predict(rows, verbose=0), atol=1e-6)
    assert not np.allclose(stacked[:, 0], stacked[:, 1])  # each member its own random start

    targets = np.random.default_rng(1).normal(1000.0, 50.0, size=40)  # a regressor's target scaling follows the average
    regressor = build_model(TrainConfig(model="mlp", units=8), (5,), 1, adapt_data=rows, task="regression", targets=targets)
    assert TrainConfig(model="mlp").members("regression") == MLP_ENSEMBLE == members_of(regressor) == 5  # the default
    members = training_view(regressor).predict(rows, verbose=0)
    assert members.shape == (40, 5, 1) and np.allclose(members.mean(axis=1), regressor.predict(rows, verbose=0), rtol=1e-5)
    assert abs(float(members.mean()) - 1000.0) < 200  # each member in the target's units, not standardised ones

    assert TrainConfig(model="mlp").members() == 1  # a classifier: on the dev tables an ensemble gained no accuracy
    assert TrainConfig(model="cnn").members("regression") == 1
    assert members_of(build_model(TrainConfig(model="cnn", filters=4, units=16), (8, 8), 10)) == 1
    cnns = build_model(TrainConfig(model="cnn", filters=4, units=16, ensemble=2), (8, 8), 10)
    assert members_of(cnns) == 2 and sum(isinstance(layer, keras.layers.Conv2D) for layer in cnns.layers) == 4  # own convolutions
    assert TrainConfig(model="mlp", ensemble=1).members("regression") == 1
    assert TrainConfig(model="mlp", init_from="models:/m@champion").members("regression") == 1  # a fine-tuned source is one model


def test_each_member_learns_from_its_own_error_not_from_the_average():
    """The loss is the mean of the members' own losses, and each member's gradient is the one it would
    have alone: it does not move when another member's prediction does (a loss on the average would
    couple them, one wide network's loss), nor shrink with the number of members."""
    import tensorflow as tf

    y = tf.constant([[1.0], [2.0], [3.0]])
    stacked = tf.Variable(np.array([[[0.5], [1.5]], [[2.5], [2.0]], [[3.0], [4.0]]], np.float32))  # (batch 3, members 2, 1)
    loss = member_loss("regression", 2)
    expected = np.mean([np.mean((stacked.numpy()[:, k] - y.numpy()) ** 2, axis=-1) for k in range(2)], axis=0)
    assert np.allclose(loss(y, stacked).numpy(), expected)

    def gradient(values):
        variable = tf.Variable(values)
        with tf.GradientTape() as tape:
            value = tf.reduce_mean(loss(y, variable))
        return tape.gradient(value, variable).numpy()

    moved = stacked.numpy().copy()
    moved[:, 1] += 10.0
    assert np.allclose(gradient(stacked.numpy())[:, 0], gradient(moved)[:, 0])
    assert np.allclose(gradient(stacked.numpy())[:, 0], 2 * (stacked.numpy()[:, 0] - y.numpy()) / 3)  # alone: the batch's mean

    labels = tf.constant([0, 1, 1])
    probabilities = np.array([[[0.9, 0.1], [0.6, 0.4]], [[0.2, 0.8], [0.5, 0.5]], [[0.3, 0.7], [0.1, 0.9]]], np.float32)
    cross_entropy = member_loss("classification", 2)(labels, tf.constant(probabilities)).numpy()
    picked = probabilities[np.arange(3), :, labels.numpy()]  # (batch, members): each member's probability of the label
    assert np.allclose(cross_entropy, -np.log(picked).mean(axis=1), rtol=1e-5)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_fit_trains_the_members_at_once_and_keeps_every_members_best_epoch(task):
    splits = noisy_table(task)
    config = TrainConfig(model="mlp", units=16, epochs=12, learning_rate=0.01, early_stopping_patience=3, seed=3, ensemble=3)
    result = fit(splits, config)
    assert result.metrics()["ensemble_members"] == 3  # logged with the training run, beside the `ensemble` param
    key = "val_rmse" if task == "regression" else "val_accuracy"
    assert set(result.history) == set(fit(splits, config.replace(ensemble=1)).history)  # the same logs as one network
    scores = evaluate(result.model, splits.__class__(**{**splits.__dict__, "x_test": splits.x_val, "y_test": splits.y_val}))
    assert np.isclose(scores[f"test_{key[4:]}"], result.history[key][result.best_epoch], rtol=1e-4)  # restored: every member
    kernels = [layer.get_weights()[0] for layer in result.model.layers if layer.name.startswith(("predictions_", "probabilities_"))]
    assert len(kernels) == 3 and not np.allclose(kernels[0], kernels[1])
    assert np.isfinite(list(evaluate(result.model, splits).values())).all()


def test_an_ensemble_compresses_and_converts_like_one_network():
    from dlagent.ml.compression import CompressionConfig, compress, prunable_kernels

    splits = noisy_table("regression")
    result = fit(splits, TrainConfig(model="mlp", units=16, epochs=8, learning_rate=0.01, seed=0, ensemble=3))
    assert len(prunable_kernels(result.model)) == 6  # every member's hidden and output kernels
    keras_rmse = evaluate(result.model, splits)["test_rmse"]
    shipped = compress(result.model, splits, CompressionConfig(quantization="dynamic"), latency_runs=3)
    assert shipped.metrics["test_rmse"] == pytest.approx(keras_rmse, rel=0.02)
    pruned = compress(result.model, splits, CompressionConfig(quantization="int8", sparsity=0.5), latency_runs=3)
    assert pruned.metrics["sparsity"] == pytest.approx(0.5, abs=0.02) and members_of(pruned.keras_model) == 3
    assert pruned.metrics["test_rmse"] < 1.25 * keras_rmse  # the members fine-tuned on their own losses, masks kept


def test_an_ensemble_is_refused_where_it_cannot_be_one():
    """(Tuning trials train one network: tests/ml/tuning/test_trials.py counts a trial checkpoint's layers.)"""
    from dlagent.operators.federated.common import federated_settings

    for bad in (0, MLP_ENSEMBLE * 4):
        with pytest.raises(ConfigError, match=r"^ensemble: must be in \[1, 16\]"):
            TrainConfig(model="mlp", ensemble=bad)
    with pytest.raises(ConfigError, match="^ensemble: .*'tests.ml.builders_for_tests:sequential' is your own builder"):
        TrainConfig(model="tests.ml.builders_for_tests:sequential", ensemble=2)
    with pytest.raises(ConfigError, match="^ensemble: .*init_from fine-tunes one source model"):
        TrainConfig(model="mlp", ensemble=2, init_from="models:/m@champion")
    with pytest.raises(ConfigError, match="^ensemble: .*federated rounds average one network"):
        federated_settings({"model": "mlp", "ensemble": 3}, {}, [])
    assert federated_settings({"model": "mlp"}, {}, [])[0].members("regression") == 1
