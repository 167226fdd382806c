"""The in-training controller on tiny digits models: plateau, divergence, reset, arguments."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dlagent.agent.controller import AdaptiveController, ControllerSettings, controller_from_plan
from dlagent.errors import ConfigError
from dlagent.ml.config import TrainConfig
from dlagent.ml.training import fit

TINY = {"model": "mlp", "units": 32, "batch_size": 32, "early_stopping_patience": 0}


def test_plateau_lowers_the_learning_rate_and_resets_on_train_begin(digits_small):
    # min_delta=10: after the first epoch no epoch counts as an improvement, so with patience 1
    # the learning rate halves at every epoch from the second on.
    controller = AdaptiveController(patience=1, factor=0.5, min_delta=10.0, min_learning_rate=0.0)
    result = fit(digits_small, TrainConfig(**TINY, epochs=3, learning_rate=0.01), callbacks=[controller])
    lr_changes = [c for c in controller.changes if c["setting"] == "learning_rate"]
    assert [(c["epoch"], c["old"], c["new"]) for c in lr_changes] == [(2, 0.01, 0.005), (3, 0.005, 0.0025)]
    assert all("plateau" in c["because"] for c in lr_changes)
    # Like Keras' ReduceLROnPlateau, each epoch logs the rate it ran with.
    assert result.history["learning_rate"] == pytest.approx([0.01, 0.01, 0.005])
    assert float(result.model.optimizer.learning_rate) == pytest.approx(0.0025)
    # The same instance on a second fit starts from scratch (state reset in on_train_begin).
    model = result.model
    model.optimizer.learning_rate = 0.01
    model.fit(digits_small.x_train, digits_small.y_train, validation_data=(digits_small.x_val, digits_small.y_val),
              epochs=2, batch_size=32, verbose=0, callbacks=[controller])
    assert [(c["epoch"], c["new"]) for c in controller.changes] == [(2, 0.005)]
    assert controller.recoveries == 0


def test_divergence_is_recovered(digits_small):
    config = TrainConfig(**TINY, epochs=5, optimizer="sgd", learning_rate=5.0, momentum=0.9)
    baseline = fit(digits_small, config)
    assert max(baseline.history["val_accuracy"]) < 0.3  # lr=5 wrecks the model
    controller = controller_from_plan({"patience": 2})[0]
    result = fit(digits_small, config, callbacks=[controller])
    settings = {c["setting"]: c for c in controller.changes}
    assert settings["learning_rate"]["old"] == 5.0 and settings["learning_rate"]["new"] == 0.5
    assert settings["clipnorm"]["new"] == 1.0 and settings["momentum"]["new"] == 0.45
    assert "weights" in settings and controller.recoveries >= 1
    assert result.model.optimizer.clipnorm == 1.0
    assert all(math.isfinite(v) for v in result.history["loss"])
    assert result.history["val_accuracy"][-1] > 0.6


def test_nan_loss_restores_weights_and_stops_after_max_recoveries(digits_small):
    import keras
    from dlagent.ml.models import build_model, build_optimizer

    config = TrainConfig(**TINY, optimizer="adam")
    model = build_model(config, digits_small.input_shape, digits_small.num_classes)
    model.compile(optimizer=build_optimizer(config), loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    controller = AdaptiveController(max_recoveries=1)
    controller.set_model(model)
    controller.on_train_begin()
    initial = [w.copy() for w in model.get_weights()]
    for variable in model.trainable_variables:
        variable.assign(np.full(variable.shape, np.nan, dtype="float32"))
    logs = {"loss": float("nan"), "val_loss": float("nan")}
    controller.on_epoch_end(0, logs)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), initial, strict=True))
    assert logs["learning_rate"] == pytest.approx(1e-3)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-4)
    assert "not finite" in controller.changes[0]["because"]
    assert not model.stop_training
    controller.on_epoch_end(1, {"loss": float("inf")})
    assert model.stop_training and controller.changes[-1]["setting"] == "stop_training"
    assert isinstance(controller, keras.callbacks.ReduceLROnPlateau)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="factor"):
        AdaptiveController(factor=1.5)
    with pytest.raises(ValueError, match="divergence_threshold"):
        AdaptiveController(divergence_threshold=0.5)
    with pytest.raises(ValueError, match="patience"):
        AdaptiveController(patience=-1)
    with pytest.raises(ConfigError, match="^controller.speed"):
        controller_from_plan({"speed": 2})
    assert controller_from_plan(None) == [] and controller_from_plan({}) == []
    assert ControllerSettings.from_dict({"clipnorm": None}).clipnorm is None
