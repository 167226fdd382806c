from __future__ import annotations

import pytest
from dlagent.errors import ConfigError
from dlagent.ml.config import TrainConfig


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": -3}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"learning_rate": -0.01}, "learning_rate"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"batch_size": True}, "batch_size"),
        ({"model": "resnet"}, "model"),
        ({"optimizer": "adamw"}, "optimizer"),
        ({"dropout": 1.0}, "dropout"),
        ({"lr": 0.1}, "lr"),
    ],
)
def test_bad_training_settings_are_refused_naming_the_field(changes, field):
    with pytest.raises(ConfigError) as error:
        TrainConfig.from_dict(changes)
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}:")


def test_replace_validates_and_round_trips():
    config = TrainConfig().replace(epochs=3, learning_rate=0.01)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError):
        config.replace(units=0)
