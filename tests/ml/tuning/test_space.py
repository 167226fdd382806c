"""Search spaces: a person's JSON space validated field by field, the defaults, and the narrowing
an agent's next round uses."""

from __future__ import annotations

import json

import pytest
from dlagent.errors import ConfigError
from dlagent.ml import tuning
from dlagent.ml.config import TrainConfig


@pytest.mark.parametrize(
    ("space", "field"),
    [
        ("not json {", "search_space"),
        ([{"type": "float"}], "search_space"),
        (None, "search_space"),
        ({}, "search_space"),
        ({"lr": {"type": "float", "low": 1e-4, "high": 0.1}}, "search_space.lr"),
        ({"learning_rate": {"type": "float", "low": 0.1, "high": 0.001}}, "search_space.learning_rate"),
        ({"learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "search_space.learning_rate"),
        ({"learning_rate": {"type": "float", "low": -1.0, "high": 0.1, "log": True}}, "search_space.learning_rate"),
        ({"units": {"type": "integer", "low": 16, "high": 64}}, "search_space.units"),
        ({"units": {"low": 16, "high": 64}}, "search_space.units"),
        ({"units": {"type": "int", "low": 16.5, "high": 64}}, "search_space.units"),
        ({"units": {"type": "int", "low": 16, "high": 64, "stepp": 16}}, "search_space.units"),
        ({"units": {"type": "int", "low": 16, "high": 64, "step": 0}}, "search_space.units"),
        ({"units": {"type": "int", "low": 16}}, "search_space.units"),
        ({"batch_size": {"type": "categorical", "choices": []}}, "search_space.batch_size"),
        ({"batch_size": {"type": "categorical", "choices": [32, 32]}}, "search_space.batch_size"),
        ({"batch_size": {"type": "categorical"}}, "search_space.batch_size"),
        ({"optimizer": {"type": "categorical", "choices": ["adam", "lion"]}}, "search_space.optimizer"),
        ({"dropout": {"type": "float", "low": 0.0, "high": 1.0}}, "search_space.dropout"),
        ({"dropout": {"type": "float", "low": 0.0, "high": 0.5, "log": "yes"}}, "search_space.dropout"),
        ({"dropout": "0.1-0.5"}, "search_space.dropout"),
        ({"learning_rate": {"type": "float", "low": 1e-4, "high": float("inf")}}, "search_space.learning_rate"),
        ({"epochs": {"type": "int", "low": 1, "high": TrainConfig.bounds("epochs").high + 1}}, "search_space.epochs"),
        ({"model": {"type": "categorical", "choices": ["auto", "resnet"]}}, "search_space.model"),  # trials would log 'auto'
    ],
)
def test_invalid_search_spaces_are_refused_naming_the_field(space, field):
    with pytest.raises(ConfigError) as error:
        tuning.validate_search_space(space)
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}:")


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_default_spaces_are_valid_and_json_text_is_accepted(model):
    space = tuning.default_search_space(model)
    assert tuning.validate_search_space(json.dumps(space)) == tuning.validate_search_space(space)
    assert set(space) <= set(TrainConfig().to_dict())
    with pytest.raises(ConfigError, match="'auto' names no architecture"):  # the operators resolve it on the data first
        tuning.default_search_space("auto")


def test_an_architecture_switch_is_a_categorical_of_booleans_and_a_draw_is_a_valid_setting():
    """``linear_path`` tuned as ``{"type": "categorical", "choices": [false, true]}`` (JSON from the
    form): each draw is a bool the training settings accept; a word instead of a bool is refused."""
    import optuna

    space = tuning.validate_search_space('{"linear_path": {"type": "categorical", "choices": [false, true]}}')
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = {tuning.suggest_params(study.ask(), space)["linear_path"] for _ in range(12)}
    assert drawn == {False, True} and all(TrainConfig.from_dict({"linear_path": v}).linear_path is v for v in drawn)
    with pytest.raises(ConfigError) as error:
        tuning.validate_search_space({"linear_path": {"type": "categorical", "choices": ["yes", "no"]}})
    assert error.value.field == "search_space.linear_path"


def test_space_is_normalised():
    space = tuning.validate_search_space({"learning_rate": {"type": "float", "low": 1, "high": 2}, "units": {"type": "int", "low": 8, "high": 64, "step": 8}})
    assert space == {
        "learning_rate": {"type": "float", "low": 1.0, "high": 2.0, "log": False},
        "units": {"type": "int", "low": 8, "high": 64, "log": False, "step": 8},
    }


def test_narrowing_stays_inside_the_declared_limits_and_is_always_a_valid_space():
    space, notes = tuning.narrow_search_space({"learning_rate": 5.0, "dropout": 0.85, "units": 60_000, "optimizer": "sgd",
                                               "batch_size": 64, "model": "mlp", "epochs": 7, "hidden_layers": 0,
                                               "linear_path": True, "l2": 0.003}, width=3.0)
    assert tuning.validate_search_space(space) == space
    assert space["learning_rate"] == {"type": "float", "low": 1.667, "high": TrainConfig.bounds("learning_rate").high, "log": True}
    assert space["dropout"] == {"type": "float", "low": 0.75, "high": 0.9, "log": False}
    assert space["units"]["high"] == TrainConfig.bounds("units").high and space["units"]["low"] == 30_000
    assert space["batch_size"] == {"type": "int", "low": 32, "high": 128, "log": True}
    assert space["optimizer"] == {"type": "categorical", "choices": ["sgd"]} and space["model"]["choices"] == ["mlp"]
    assert space["hidden_layers"] == {"type": "categorical", "choices": [0]}  # a depth is kept, never halved to 0 or doubled
    assert space["linear_path"] == {"type": "categorical", "choices": [True]}
    assert space["l2"] == {"type": "float", "low": 0.001, "high": 0.009, "log": True}  # a penalty narrows on a log scale
    assert "epochs" not in space  # not a setting the rounds narrow
    assert len(notes) == len(space)
    narrow, _ = tuning.narrow_search_space({"learning_rate": 0.01, "optimizer": "lbfgs"})
    assert "optimizer" not in narrow  # an invalid best choice is not fixed


def test_inside_checks_every_parameter_of_the_space():
    from dlagent.ml.tuning.space import inside

    space = tuning.validate_search_space({"units": {"type": "int", "low": 16, "high": 64, "step": 16},
                                          "optimizer": {"type": "categorical", "choices": ["adam"]}})
    assert inside({"units": 32, "optimizer": "adam"}, space)
    assert not inside({"units": 40, "optimizer": "adam"}, space)  # off the step
    assert not inside({"units": 32, "optimizer": "sgd"}, space)
    assert not inside({"units": 32}, space)
