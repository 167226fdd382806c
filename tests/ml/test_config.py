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
        ({"model": "vgg"}, "model"),
        ({"model": "include.models.example"}, "model"),
        ({"model": "include/models/example.py:build"}, "model"),
        ({"model": "os:system; rm"}, "model"),
        ({"model_args": {"width": {"nested": 1}}}, "model_args.width"),
        ({"model_args": {"not a name": 1}}, "model_args"),
        ({"model_args": [1, 2]}, "model_args"),
        ({"augment": "yes"}, "augment"),
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


def test_model_args_fold_dotted_keys_and_round_trip_through_mlflow_params():
    from dlagent.agent.run_views import train_params

    config = TrainConfig.from_dict({"model": "include.models.example:build", "model_args": {"width": 32, "act": "relu"},
                                    "model_args.width": 64, "model_args.gated": True})
    assert config.model_args == {"width": 64, "act": "relu", "gated": True}
    params = config.to_params()
    assert params["model_args.width"] == "64" and params["model_args.act"] == '"relu"' and params["model_args.gated"] == "true"
    assert "model_args" not in params
    assert TrainConfig.from_dict(train_params({k: str(v) for k, v in params.items()})) == config
    as_text = config.replace(model_args={"width": "64", "flag": "true"})  # strings that read as JSON stay strings
    assert TrainConfig.from_dict(train_params({k: str(v) for k, v in as_text.to_params().items()})).model_args == {"width": "64", "flag": "true"}
    given = {"width": 8}
    frozen = TrainConfig(model_args=given)
    given["width"] = 9  # the caller's dict changes; the config does not
    assert frozen.model_args == {"width": 8} and hash(frozen) == hash(TrainConfig(model_args={"width": 8}))


@pytest.mark.parametrize(("shape", "model"), [
    ((13,), "mlp"),  # a table's rows
    ((8, 8), "cnn"),  # grayscale images (the digits)
    ((28, 28, 1), "cnn"), ((32, 32, 3), "cnn"),
    ((1, 40), "mlp"), ((40, 1, 3), "mlp"),  # a strip one pixel high or wide: the cnn pools by 2 and refuses it
    ((4, 4, 3, 2), "mlp"),  # no image layout: flattened
])
def test_model_auto_is_the_cnn_for_images_and_the_mlp_for_anything_else(shape, model):
    from dlagent.ml.config import resolve_model
    from dlagent.ml.models import check_model_input

    assert TrainConfig().model == "auto" and TrainConfig().is_builtin
    assert resolve_model("auto", shape) == model
    assert TrainConfig(epochs=3).for_input(shape) == TrainConfig(model=model, epochs=3)
    check_model_input("auto", shape)  # what auto chooses always takes the samples
    for named in ("mlp", "resnet", "include.models.example:build"):  # a model given by name is never replaced
        assert resolve_model(named, shape) == named and TrainConfig(model=named).for_input(shape).model == named


def test_model_auto_refuses_colour_images_stored_channels_first():
    """``(3, 32, 32)``, PyTorch's layout: the cnn would take 3-pixel-high images of 32 channels. Refused
    naming the transpose; a model given by name takes the shape as it is, and one channel first
    (``(1, 28, 28)``) is flattened by the mlp, which reads it whole."""
    from dlagent.errors import ConfigError
    from dlagent.ml.config import resolve_model

    for shape in ((3, 32, 32), (4, 64, 48)):
        with pytest.raises(ConfigError, match=r"channels first.*x\.transpose\(0, 2, 3, 1\)"):
            resolve_model("auto", shape)
        assert resolve_model("cnn", shape) == "cnn"
    assert resolve_model("auto", (32, 32, 3)) == "cnn" and resolve_model("auto", (1, 28, 28)) == "mlp"
    assert resolve_model("auto", (3, 4, 5)) == "cnn"  # too small to be a picture: taken as it is
