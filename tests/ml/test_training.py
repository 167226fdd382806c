"""Training and evaluation on real data, logged to a real MLflow store."""

from __future__ import annotations

from pathlib import Path

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


def test_model_auto_trains_the_mlp_on_a_table_and_the_cnn_on_images_and_logs_which(tmp_path, mlflow_uri):
    """The default ``model`` (``auto``) trains on a CSV table and on images alike; the run's params
    and the model name the built-in it became, never ``auto``."""
    from dlagent.ml.data import load_dataset
    from sklearn.datasets import load_iris

    iris = load_iris()
    rows = [",".join([*map(str, features), str(label)]) for features, label in zip(iris.data, iris.target, strict=True)]
    (tmp_path / "iris.csv").write_text("a,b,c,d,label\n" + "\n".join(rows) + "\n")
    client = MlflowClient(mlflow_uri)
    experiment = tracking.ensure_experiment(client, "auto", str(tmp_path / "artifacts"))
    for dataset, built in ((f"csv:{tmp_path / 'iris.csv'}", "mlp"), ("digits", "cnn")):
        splits = load_dataset(dataset, seed=0, max_samples=300, allowed_roots=[str(tmp_path)])
        run_id = client.create_run(experiment).info.run_id
        result, _ = train(splits, TrainConfig(epochs=2, seed=0), client=client, run_id=run_id)
        assert result.model.name == f"dlagent_{built}"
        assert client.get_run(run_id).data.params["model"] == built


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


def test_a_table_is_standardised_inside_the_model_from_the_training_split(tmp_path, mlflow_uri):
    """Wine: 13 columns from ~0.1 (hue) to ~1,000 (proline). The MLP standardises them inside the
    model with the training split's statistics (logged with the run), so raw rows go in everywhere:
    Keras, the TFLite file. Unscaled, the same MLP is much worse."""
    import dataclasses
    import json

    import keras
    import numpy as np
    from dlagent.ml.data import load_dataset
    from dlagent.ml.models import build_model, build_optimizer, scaling_statistics
    from dlagent.ml.quantization import quantize
    from dlagent.ml.tflite import TFLiteModel
    from sklearn.datasets import load_wine

    wine = load_wine()
    rows = [",".join([*map(str, features), str(label)]) for features, label in zip(wine.data, wine.target, strict=True)]
    (tmp_path / "wine.csv").write_text(",".join([*wine.feature_names, "label"]) + "\n" + "\n".join(rows) + "\n")
    splits = load_dataset(f"csv:{tmp_path / 'wine.csv'}", seed=0, allowed_roots=[str(tmp_path)])
    config = TrainConfig(model="mlp", epochs=40, units=32, seed=0, early_stopping_patience=0)
    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(tracking.ensure_experiment(client, "wine", str(tmp_path / "artifacts"))).info.run_id
    result, model_uri = train(splits, config, client=client, run_id=run_id)
    assert scaling_statistics(load_keras_model(client, model_uri)) is not None  # the layer survives logging and safe-mode loading

    statistics = scaling_statistics(result.model)
    np.testing.assert_allclose(statistics["mean"], splits.x_train.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(statistics["std"], splits.x_train.std(axis=0), rtol=1e-4)
    logged = json.loads(Path(client.download_artifacts(run_id, "preprocessing/feature_scaling.json")).read_text())
    assert logged["mean"] == statistics["mean"] and logged["rows"] == len(splits.y_train)
    other_test_rows = dataclasses.replace(splits, x_test=splits.x_test * 10 + 3)  # only the test rows change
    rebuilt = build_model(config, splits.input_shape, 3, adapt_data=other_test_rows.x_train)
    assert scaling_statistics(rebuilt) == statistics
    scaled_accuracy = evaluate(result.model, splits)["test_accuracy"]
    assert scaled_accuracy >= 0.9

    tflite = TFLiteModel(quantize(result.model, "none"))
    np.testing.assert_allclose(tflite.predict(splits.x_test), result.model.predict(splits.x_test, verbose=0), atol=1e-5)

    keras.utils.set_random_seed(0)
    unscaled = build_model(config, splits.input_shape, 3)  # no adapt_data: raw values, as before
    unscaled.compile(optimizer=build_optimizer(config), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    unscaled.fit(splits.x_train, splits.y_train, epochs=40, batch_size=32, verbose=0)
    assert unscaled.evaluate(splits.x_test, splits.y_test, verbose=0)[1] < scaled_accuracy - 0.1


def test_missing_values_are_refused_by_default_and_imputed_inside_the_model_on_request(tmp_path, mlflow_uri):
    """Wine with 15 % of two columns' cells emptied: refused by default, naming line and column;
    with missing 'impute' the mlp fills them with the training split's medians and flags them,
    inside the model, so Keras and TFLite take raw rows with NaN alike, and the model loads back."""
    import numpy as np
    import pytest
    from dlagent.errors import ConfigError
    from dlagent.ml.data import load_dataset
    from dlagent.ml.models import scaling_statistics
    from dlagent.ml.quantization import quantize
    from dlagent.ml.tflite import TFLiteModel
    from sklearn.datasets import load_wine

    wine = load_wine()
    rng = np.random.default_rng(0)
    cells = wine.data.astype(object)
    for column in (0, 12):  # alcohol, proline
        cells[rng.random(len(cells)) < 0.15, column] = ""
    lines = [",".join([*map(str, row), str(label)]) for row, label in zip(cells, wine.target, strict=True)]
    (tmp_path / "wine.csv").write_text(",".join([*wine.feature_names, "label"]) + "\n" + "\n".join(lines) + "\n")
    uri, roots = f"csv:{tmp_path / 'wine.csv'}", [str(tmp_path)]
    first_empty = next(i for i, row in enumerate(cells) if "" in list(row)) + 2
    with pytest.raises(ConfigError, match=f"line {first_empty}, column (1|13): an empty cell"):
        load_dataset(uri, allowed_roots=roots)

    splits = load_dataset(uri, seed=0, allowed_roots=roots, missing="impute")
    assert splits.impute and np.isnan(splits.x_train).any() and np.isnan(splits.x_test).any()
    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(tracking.ensure_experiment(client, "wine-missing", str(tmp_path / "artifacts"))).info.run_id
    result, model_uri = train(splits, TrainConfig(model="mlp", epochs=40, units=32, seed=0, early_stopping_patience=0),
                              client=client, run_id=run_id)
    imputed = scaling_statistics(result.model)["impute"]
    assert imputed["indicator_columns"] == [0, 12]
    assert imputed["fill_values"][12] == np.nanmedian(splits.x_train[:, 12])  # the training split's median
    assert len(scaling_statistics(result.model)["mean"]) == 13 + 2  # standardised after the two indicators
    assert evaluate(result.model, splits)["test_accuracy"] >= 0.85
    keras_probs = result.model.predict(splits.x_test, verbose=0)
    assert np.isfinite(keras_probs).all()
    np.testing.assert_allclose(TFLiteModel(quantize(result.model, "none")).predict(splits.x_test), keras_probs, atol=1e-5)
    np.testing.assert_allclose(load_keras_model(client, model_uri).predict(splits.x_test, verbose=0), keras_probs, atol=1e-6)


def test_a_linear_path_feeds_the_standardised_columns_to_the_output_layer_and_survives_tflite(tmp_path):
    """``linear_path`` (the ``mlp`` only): the output layer sees the standardised columns beside
    the hidden features (wide and deep), so its kernel has a row per column more; with no hidden
    layer, or on a ``cnn``, it changes nothing. The model learns a line through columns on very
    different scales, and its TFLite files (float and int8) score about what it scores."""
    import keras
    import numpy as np
    from dlagent.ml.compression import CompressionConfig, compress
    from dlagent.ml.models import build_model
    from dlagent.ml.quantization import quantize
    from dlagent.ml.tflite import TFLiteModel

    def dense_kernels(model):
        return [tuple(layer.kernel.shape) for layer in model.layers if isinstance(layer, keras.layers.Dense)]

    rows = np.random.default_rng(0).normal(size=(40, 5))
    wide = build_model(TrainConfig(model="mlp", units=8, linear_path=True, ensemble=1), (5,), 3, adapt_data=rows)
    assert dense_kernels(wide) == [(5, 8), (5 + 8, 3)] and wide.get_layer("linear_path") is not None
    assert dense_kernels(build_model(TrainConfig(model="mlp", hidden_layers=0, linear_path=True, ensemble=1), (5,), 3, adapt_data=rows)) == [(5, 3)]
    assert dense_kernels(build_model(TrainConfig(model="cnn", filters=4, units=16, linear_path=True), (8, 8), 10)) == [(128, 16), (16, 10)]

    rng = np.random.default_rng(1)
    columns = rng.normal(size=(400, 6))
    x = columns * np.logspace(-2, 2, 6)  # a line in the columns, on scales 0.01 .. 100
    y = columns @ np.array([3.0, -2.0, 0.5, 0.0, 1.0, 0.2]) + rng.normal(0, 0.5, 400)
    (tmp_path / "line.csv").write_text("\n".join(["a,b,c,d,e,f,label", *(",".join(f"{v:.6g}" for v in [*r, t]) for r, t in zip(x, y, strict=True))]) + "\n")
    from dlagent.ml.data import load_dataset

    splits = load_dataset(f"csv:{tmp_path / 'line.csv'}", task="regression", seed=0, allowed_roots=[str(tmp_path)])
    result = fit(splits, TrainConfig(model="mlp", linear_path=True, epochs=30, learning_rate=0.01, seed=0))
    keras_rmse = evaluate(result.model, splits)["test_rmse"]
    assert keras_rmse < 0.5 * float(np.std(splits.y_test))  # it learned the line
    predicted = result.model.predict(splits.x_test, verbose=0)
    np.testing.assert_allclose(TFLiteModel(quantize(result.model, "none")).predict(splits.x_test), predicted, rtol=1e-4, atol=1e-3)
    shipped = compress(result.model, splits, CompressionConfig(quantization="int8"), latency_runs=5)
    assert shipped.metrics["test_rmse"] <= 1.5 * keras_rmse


def test_hidden_layers_set_the_depth_and_none_is_a_linear_model(tmp_path):
    """``hidden_layers`` stacks that many hidden dense layers; 0 leaves the output layer alone on
    the standardised columns: softmax (logistic) regression, which on a table whose classes a
    line separates scores what scikit-learn's standardised logistic regression scores."""
    import keras
    import numpy as np
    from dlagent.ml.data import load_dataset
    from dlagent.ml.models import build_model
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def dense_kernels(model):
        return [tuple(layer.kernel.shape) for layer in model.layers if isinstance(layer, keras.layers.Dense)]

    rows = np.random.default_rng(0).normal(size=(40, 5))
    assert dense_kernels(build_model(TrainConfig(model="mlp", hidden_layers=0, ensemble=1), (5,), 3, adapt_data=rows)) == [(5, 3)]
    assert dense_kernels(build_model(TrainConfig(model="mlp", units=8, hidden_layers=2, ensemble=1), (5,), 3, adapt_data=rows)) == [(5, 8), (8, 8), (8, 3)]
    widths = [[k[1] for k in dense_kernels(build_model(TrainConfig(model="cnn", filters=4, units=16, hidden_layers=n), (8, 8), 10))]
              for n in (0, 1)]
    assert widths == [[10], [16, 10]]  # the convolution features straight into the output; the default, one hidden layer

    x, y = make_classification(n_samples=600, n_features=8, n_informative=5, n_redundant=0, class_sep=0.8, random_state=3)
    x = x * np.logspace(-3, 3, 8)  # columns on scales 0.001 .. 1,000
    lines = ["x0,x1,x2,x3,x4,x5,x6,x7,label", *(",".join([*(repr(float(v)) for v in row), str(label)]) for row, label in zip(x, y, strict=True))]
    (tmp_path / "table.csv").write_text("\n".join(lines) + "\n")
    splits = load_dataset(f"csv:{tmp_path / 'table.csv'}", seed=0, allowed_roots=[str(tmp_path)])
    assert splits.encoding.vocabularies == {} and splits.input_shape == (8,)  # eight numeric columns (a NumPy repr was a word)
    # Fitted to convergence, as scikit-learn fits: no early stopping (on 90 validation rows it stops
    # where the two lines still differ: 84 % agreement), no L2 penalty (C=1 on 420 rows is weak).
    linear = fit(splits, TrainConfig(model="mlp", hidden_layers=0, epochs=150, learning_rate=0.01, seed=0, l2=0.0,
                                     early_stopping_patience=0)).model
    keras_accuracy = evaluate(linear, splits)["test_accuracy"]
    logistic = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(splits.x_train, splits.y_train)
    assert keras_accuracy >= logistic.score(splits.x_test, splits.y_test) - 0.03
    agree = np.mean(linear.predict(splits.x_test, verbose=0).argmax(axis=1) == logistic.predict(splits.x_test))
    assert agree >= 0.95  # the same kind of model: the two draw nearly the same line
    from dlagent.ml.compression import CompressionConfig, compress

    shipped = compress(linear, splits, CompressionConfig(sparsity=0.5, quantization="int8"), latency_runs=5)  # its one kernel pruned
    assert shipped.metrics["sparsity"] >= 0.45 and shipped.metrics["test_accuracy"] >= keras_accuracy - 0.05


def test_an_l2_penalty_joins_the_loss_scaled_to_standardised_targets_and_shrinks_the_weights(tmp_path):
    """``l2`` adds l2 x the dense kernels' squared weights to the loss (every dense layer, hidden
    and output; none at 0; left empty, 0.01 for an ``mlp`` classifying a table only). A regressor's loss is in the target's units, so the penalty is
    multiplied by the training targets' variance: the same ``l2`` weighs the same against the
    loss whether the targets are in metres or millimetres. Trained on a noisy table, the
    penalised model's kernels are smaller than the same model's without it."""
    import keras
    import numpy as np
    from dlagent.ml.config import TABLE_MLP_L2
    from dlagent.ml.models import build_model, kernel_penalty

    rows = np.random.default_rng(0).normal(size=(40, 5))
    targets = np.random.default_rng(1).normal(size=40)
    penalised = build_model(TrainConfig(model="mlp", units=8, l2=0.01, ensemble=1), (5,), 1, adapt_data=rows, task="regression", targets=targets)
    dense = [layer for layer in penalised.layers if isinstance(layer, keras.layers.Dense)]
    assert len(dense) == 2 and all(layer.kernel_regularizer is not None for layer in dense)
    expected = sum(0.01 * float(targets.var()) * float((np.asarray(layer.kernel) ** 2).sum()) for layer in dense)
    assert np.isclose(sum(float(loss) for loss in penalised.losses), expected, rtol=1e-4)
    assert build_model(TrainConfig(model="mlp", units=8, l2=0), (5,), 3, adapt_data=rows).losses == []
    assert build_model(TrainConfig(model="cnn", filters=4, units=16, l2=0.01), (8, 8), 10).losses  # a built-in cnn's dense layers too

    config = TrainConfig(model="mlp", l2=0.01)
    in_metres, in_millimetres = (kernel_penalty(config, "regression", targets * unit).l2 for unit in (1.0, 1000.0))
    assert np.isclose(in_millimetres / in_metres, 1000.0**2, rtol=1e-4)
    assert np.isclose(kernel_penalty(config, "classification").l2, 0.01)
    # left empty: TABLE_MLP_L2 for an mlp classifying a table; off for a regressor, an mlp on images and the cnn
    assert TrainConfig().l2 is None and np.isclose(kernel_penalty(TrainConfig(model="mlp"), "classification", None, (5,)).l2, TABLE_MLP_L2)
    assert kernel_penalty(TrainConfig(model="mlp"), "regression", targets, (5,)) is None
    assert kernel_penalty(TrainConfig(model="mlp"), "classification", None, (8, 8)) is None
    assert build_model(TrainConfig(model="cnn", filters=4, units=16), (8, 8), 10).losses == []

    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 10))
    y = x[:, :3] @ np.array([2.0, -1.0, 0.5]) + rng.normal(0, 3.0, 300)
    (tmp_path / "noisy.csv").write_text("\n".join([",".join([*(f"x{i}" for i in range(10)), "label"]),
                                                   *(",".join(f"{v:.6g}" for v in [*r, t]) for r, t in zip(x, y, strict=True))]) + "\n")
    from dlagent.ml.data import load_dataset

    splits = load_dataset(f"csv:{tmp_path / 'noisy.csv'}", task="regression", seed=0, allowed_roots=[str(tmp_path)])

    def kernel_norm(l2):
        model = fit(splits, TrainConfig(model="mlp", units=32, l2=l2, epochs=15, learning_rate=0.01, early_stopping_patience=0, seed=0)).model
        return sum(float((np.asarray(layer.kernel) ** 2).sum()) for layer in model.layers if isinstance(layer, keras.layers.Dense))

    assert kernel_norm(0.05) < 0.5 * kernel_norm(0.0)
