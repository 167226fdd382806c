"""Transfer learning: a registered champion fine-tuned on data with another number of classes,
in two phases visible in MLflow; input adaptation and its refusals; batch normalisation frozen."""

from __future__ import annotations

import numpy as np
import pytest
from dlagent.errors import ConfigError
from dlagent.ml.config import TrainConfig
from dlagent.ml.data import DatasetSplits


def _three_classes(splits: DatasetSplits) -> DatasetSplits:
    """The digits 0, 1 and 2 only: a target task with 3 classes instead of the source's 10."""
    parts = []
    for x, y in ((splits.x_train, splits.y_train), (splits.x_val, splits.y_val), (splits.x_test, splits.y_test)):
        keep = y < 3
        parts += [x[keep], y[keep]]
    return DatasetSplits("digits-0-1-2", *parts, num_classes=3, class_names=["0", "1", "2"])


def test_a_registered_champion_is_fine_tuned_in_two_phases_with_a_new_head(client, run_id, digits_small):
    from dlagent.ml.model_store import load_keras_model, log_keras_model
    from dlagent.ml.registry import register_champion
    from dlagent.ml.training import fit, train

    source = fit(digits_small, TrainConfig(model="cnn", filters=8, units=32, epochs=8, seed=0)).model
    register_champion(client, log_keras_model(client, run_id, source, digits_small.x_test[:2]), "digits-source", idempotency_key="source")
    target = _three_classes(digits_small)
    config = TrainConfig(init_from="models:/digits-source@champion", epochs=6, freeze=0.5, learning_rate=0.01,
                         fine_tune_learning_rate=0.001, early_stopping_patience=0, seed=1)
    experiment = client.get_run(run_id).info.experiment_id
    target_run = client.create_run(experiment).info.run_id
    result, uri = train(target, config, client=client, run_id=target_run)

    assert result.model.output_shape == (None, 3) and result.transfer["transfer.new_head"] is True
    assert result.transfer["head_epochs"] == 3 and result.transfer["fine_tune_epochs"] == 3 and result.transfer["unfrozen_layers"] >= 1
    run = client.get_run(target_run)
    assert run.data.params["init_from"] == "models:/digits-source@champion" and run.data.params["freeze"] == "0.5"
    assert run.data.params["transfer.new_head"] == "True" and run.data.params["transfer.input_adapter"].startswith("new head: 10 -> 3")
    assert run.data.params["transfer.source_model_uri"].startswith("models:/m-")  # what the alias pointed at: it can move
    assert run.data.metrics["transfer_head_epochs"] == 3 and run.data.metrics["transfer_fine_tune_epochs"] == 3
    phases = [m.value for m in sorted(client.get_metric_history(target_run, "transfer_phase"), key=lambda m: m.step)]
    rates = [m.value for m in sorted(client.get_metric_history(target_run, "learning_rate"), key=lambda m: m.step)]
    assert phases == [1, 1, 1, 2, 2, 2] and rates == pytest.approx([0.01] * 3 + [0.001] * 3)
    # the bottom of the base stayed frozen (freeze 0.5): the first convolution kept the source's weights
    first_source = next(layer for layer in source.layers if type(layer).__name__ == "Conv2D")
    base = result.model.get_layer("transfer_base")
    first_tuned = next(layer for layer in base.layers if type(layer).__name__ == "Conv2D")
    np.testing.assert_array_equal(first_tuned.get_weights()[0], first_source.get_weights()[0])
    assert result.metrics()["best_val_accuracy"] > 0.6  # three easy classes; a broken transfer stays near 1/3
    assert load_keras_model(client, uri).output_shape == (None, 3)


def test_images_are_adapted_and_what_cannot_be_is_refused():
    from dlagent.ml.models import build_model
    from dlagent.ml.transfer import adapt_source

    mnist_like = build_model(TrainConfig(model="cnn", filters=4, units=8), (28, 28), 10)
    adapted = adapt_source(mnist_like, (8, 8), 10)
    assert adapted.model.input_shape == (None, 8, 8) and not adapted.new_head
    assert adapted.notes == ["images resized 8x8 -> 28x28"]
    assert adapted.model(np.zeros((2, 8, 8), np.float32)).shape == (2, 10)
    colour = build_model(TrainConfig(model="cnn", filters=4, units=8), (16, 16, 3), 4)
    grey_to_colour = adapt_source(colour, (16, 16), 4)
    assert grey_to_colour.notes == ["grey repeated to RGB"] and grey_to_colour.model(np.ones((1, 16, 16), np.float32)).shape == (1, 4)
    assert adapt_source(mnist_like, (28, 28, 3), 10).notes == ["RGB averaged to grey"]
    table = build_model(TrainConfig(model="mlp", units=8, ensemble=5), (20,), 3)
    with pytest.raises(ConfigError, match=r"takes samples of shape \(20,\), this data has \(12,\); only images"):
        adapt_source(table, (12,), 3)
    from dlagent.ml.ensemble import training_view

    rows = np.random.default_rng(0).normal(size=(4, 20)).astype(np.float32)  # an ensemble of 5 (a regression mlp's default)
    from_ensemble = adapt_source(table, (20,), 3)
    assert from_ensemble.notes == ["the source averages 5 networks (ensemble): its first is fine-tuned"] and not from_ensemble.new_head
    np.testing.assert_allclose(from_ensemble.model(rows), training_view(table)(rows)[:, 0], rtol=1e-5)
    with pytest.raises(ConfigError, match="4 channels cannot be mapped to 3"):
        adapt_source(colour, (16, 16, 4), 4)


def test_batch_normalisation_stays_in_inference_mode_while_fine_tuning(digits_small):
    from dlagent.ml.models import build_model
    from dlagent.ml.training import fit

    source = build_model(TrainConfig(model="resnet", filters=4, units=8), digits_small.input_shape, 10)
    statistics = [w.copy() for layer in source.layers if type(layer).__name__ == "BatchNormalization" for w in layer.get_weights()]
    result = fit(digits_small, TrainConfig(init_from="x.keras", epochs=2, freeze=0.0, early_stopping_patience=0), source_model=source)
    tuned = [w for layer in result.model.get_layer("transfer_base").layers if type(layer).__name__ == "BatchNormalization"
             for w in layer.get_weights()]
    assert len(tuned) == len(statistics) > 0
    for before, after in zip(statistics, tuned, strict=True):
        np.testing.assert_array_equal(before, after)  # gamma, beta and the moving statistics: untouched
    assert result.transfer["unfrozen_layers"] > 0  # the convolutions were unfrozen; batch normalisation was not


@pytest.mark.parametrize(
    ("init_from", "words"),
    [
        ("models:/no-such-model@champion", "does not exist in the model registry"),
        ("models:/no-such-model/abc", "names neither an alias (@) nor a version number"),
        ("models:/m-0123456789abcdef", "cannot load 'models:/m-0123456789abcdef'"),
        ("/etc/passwd.keras", "outside the allowed data roots"),
    ],
)
def test_a_source_that_cannot_be_loaded_is_refused_naming_init_from(client, init_from, words, tmp_path):
    from dlagent.ml.transfer import load_source_model

    with pytest.raises(ConfigError) as error:
        load_source_model(client, init_from, allowed_roots=[str(tmp_path)])
    assert error.value.field == "init_from" and words in error.value.problem


def test_init_from_must_name_a_model_or_a_keras_file(tmp_path):
    from dlagent.ml.transfer import load_source_model

    with pytest.raises(ConfigError) as error:
        TrainConfig(init_from="my-model")
    assert error.value.field == "init_from"
    (tmp_path / "notes.keras").write_text("not a model")
    with pytest.raises(ConfigError, match="not a Keras model file, or refused by Keras safe mode"):
        load_source_model(None, str(tmp_path / "notes.keras"), allowed_roots=[str(tmp_path)])
    with pytest.raises(ConfigError, match="was not loaded"):
        from dlagent.ml.training import fit

        fit(None, TrainConfig(init_from=str(tmp_path / "notes.keras")))


def test_transfer_tunes_its_own_settings():
    from dlagent.ml import tuning

    space = tuning.validate_search_space(tuning.default_search_space("cnn", transfer=True))
    assert set(space) == {"learning_rate", "fine_tune_learning_rate", "freeze", "batch_size"}
    narrowed, _ = tuning.narrow_search_space({"freeze": 0.95, "fine_tune_learning_rate": 1e-4})
    assert narrowed["freeze"] == {"type": "float", "low": 0.85, "high": 1.0, "log": False}
    assert narrowed["fine_tune_learning_rate"]["low"] < 1e-4 < narrowed["fine_tune_learning_rate"]["high"]


def test_a_fine_tuned_champion_fine_tunes_again_with_its_nested_batch_normalisation_frozen(digits_small):
    """The source is itself a transfer model (its base a nested model holding batch normalisation):
    the leaves are unfrozen, never a nested model whole, and batch normalisation keeps its statistics."""
    from dlagent.ml.models import build_model
    from dlagent.ml.training import fit

    resnet = build_model(TrainConfig(model="resnet", filters=4, units=8), digits_small.input_shape, 10)
    once = fit(digits_small, TrainConfig(init_from="x.keras", epochs=2, early_stopping_patience=0), source_model=resnet).model
    norms = [layer for layer in once._flatten_layers(include_self=False) if type(layer).__name__ == "BatchNormalization"]
    before = [w.copy() for layer in norms for w in layer.get_weights()]
    twice = fit(digits_small, TrainConfig(init_from="x.keras", epochs=2, freeze=0.5, early_stopping_patience=0), source_model=once)
    after = [w for layer in twice.model._flatten_layers(include_self=False) if type(layer).__name__ == "BatchNormalization"
             for w in layer.get_weights()]
    assert len(after) == len(before) > 0
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(old, new)
    weighted = 1 + 2 + 3 + 3 + 1  # the stem, 2 + 3 + 3 convolutions in the blocks (two with a projection), the units dense
    assert twice.transfer["unfrozen_layers"] == int(np.ceil(0.5 * weighted))


def test_a_diverging_phase_never_wins_and_nothing_crashes():
    from dlagent.ml.transfer import kept_epoch

    assert kept_epoch([0.9, float("nan"), 0.5, 0.7], patience=3) == (0.5, 2)
    assert kept_epoch([0.9, 0.5, float("nan")], patience=0) == (float("inf"), 2)
    assert kept_epoch([float("nan")] * 3, patience=3) == (float("inf"), 2)
    assert kept_epoch([], patience=0) == (float("inf"), -1)


def _val_loss(model, splits) -> float:
    import keras

    probabilities = np.asarray(model.predict(splits.x_val, verbose=0))
    return float(np.mean(keras.losses.sparse_categorical_crossentropy(splits.y_val, probabilities)))


@pytest.mark.parametrize(
    ("head_lr", "fine_tune_lr", "phase_kept"),
    [(1e-6, 3e-3, "fine-tune"),  # the head barely moves; fine-tuning the whole under-trained source lowers the loss
     (3e-3, 10.0, "head")],  # fine-tuning at a learning rate of 10 diverges: the head phase's weights stay
)
def test_the_phase_with_the_lower_validation_loss_is_kept(digits_small, head_lr, fine_tune_lr, phase_kept):
    """The phases are compared on the monitored value (the validation loss for accuracy). A bug
    compared the head phase's loss with whichever history key a loop left behind (set order: the
    hash seed), so a fine-tuning that won was often thrown away."""
    from dlagent.ml.training import fit

    source = fit(digits_small, TrainConfig(model="mlp", units=32, epochs=2, seed=0)).model
    config = TrainConfig(init_from="x.keras", epochs=8, freeze=0.0, learning_rate=head_lr, fine_tune_learning_rate=fine_tune_lr,
                         early_stopping_patience=4, seed=0)
    result = fit(digits_small, config, source_model=source)
    head = result.transfer["head_epochs"]
    losses = [v if np.isfinite(v) else np.inf for v in result.history["val_loss"]]
    best_head, best_tune = min(losses[:head]), min(losses[head:])
    assert (best_tune < best_head) == (phase_kept == "fine-tune"), (losses, head)
    assert result.transfer["kept_head_weights"] == int(phase_kept == "head")
    assert (result.best_epoch >= head) == (phase_kept == "fine-tune")
    assert _val_loss(result.model, digits_small) == pytest.approx(min(best_head, best_tune), rel=1e-3, abs=1e-4)


def test_a_source_ending_in_logits_gets_a_new_softmax_head():
    import keras
    from dlagent.ml.transfer import adapt_source

    inputs = keras.Input((6,))
    logits = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(4)(inputs)))
    adapted = adapt_source(logits, (6,), 3)
    assert adapted.new_head and "not probabilities" in adapted.notes[0]
    assert np.allclose(np.asarray(adapted.model(np.ones((2, 6), np.float32))).sum(axis=1), 1.0)


def test_tuning_a_transfer_run_fine_tunes_a_fresh_copy_of_the_source_in_every_trial(tmp_path, client, digits_small):
    """Every trial fine-tunes its own copy of the one loaded source (which stays untouched) and its run
    records the sampled transfer settings; a worker loads a .keras source only inside its allowed roots."""
    from dlagent.ml import tuning
    from dlagent.ml.models import build_model
    from dlagent.ml.tracking import ensure_experiment
    from dlagent.ml.tuning import StudySettings, WorkerSettings

    from tests.ml.tuning.workers import GRACE, HEARTBEAT

    source = build_model(TrainConfig(model="mlp", units=8), digits_small.input_shape, 10)
    weights = [w.copy() for w in source.get_weights()]
    source.save(tmp_path / "source.keras")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    tuning.create_study(url, "transfer", StudySettings(space=tuning.default_search_space("mlp", transfer=True), sampler="random", seed=0,
                                                     pruner="none"))  # both trials complete, whatever their scores
    base = TrainConfig(init_from=str(tmp_path / "source.keras"), epochs=2, early_stopping_patience=0)
    experiment = ensure_experiment(client, "tune-transfer", str(tmp_path / "artifacts"))

    def settings(n_trials, roots):
        return WorkerSettings(storage_url=url, study_name="transfer", base_config=base, n_trials=n_trials, experiment_id=experiment,
                              allowed_roots=roots, heartbeat_interval=HEARTBEAT, grace_period=GRACE)

    result = tuning.run_worker(settings(2, [str(tmp_path)]), digits_small, client=client, source_model=source)
    assert result["states"] == {"COMPLETE": 2}
    for before, after in zip(weights, source.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)  # the trials trained copies
    trials = client.search_runs([experiment], "tags.`optuna.trial_number` != ''")
    assert len(trials) == 2 and {r.data.params["init_from"] for r in trials} == {str(tmp_path / "source.keras")}
    assert len({r.data.params["freeze"] for r in trials}) == 2 and len({r.data.params["learning_rate"] for r in trials}) == 2
    loaded = tuning.run_worker(settings(3, [str(tmp_path)]), digits_small, client=client)  # no source given: loaded from the file
    assert sum(loaded["states"].values()) == 1  # one more trial ran (complete or pruned)
    with pytest.raises(ConfigError, match="outside the allowed data roots"):
        tuning.run_worker(settings(4, [str(tmp_path / "elsewhere")]), digits_small, client=client)
