"""Bring your own model: user builders (allow-list, contract checks), custom layers in safe mode,
the built-in resnet and its augmentation, model arguments in search spaces."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from dlagent.errors import ConfigError
from dlagent.ml.builders import check_model_on_data, import_custom_modules, load_builder, module_allowed
from dlagent.ml.config import TrainConfig

from tests.conftest import PROJECT_DIR

EXAMPLE = "include.models.example:build"
ALLOWED = ["include.", "tests.ml.builders_for_tests", "tests.ml.builder_missing_dependency"]
X = np.random.default_rng(0).random((6, 8, 8), dtype=np.float32)


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ("this:build", "is not on the model allow-list"),
        ("include.models.nope:build", "cannot be found"),
        ("include.models.example:DEFAULTS", "is a dict, not a function"),
        ("include.models.example:nothing", "has no 'nothing'"),
        ("tests.ml.builder_missing_dependency:build", "'not_an_installed_package_dlagent', which is not installed"),
        ("tests.ml.builders_for_tests:returns_dict", "returned a dict, not a keras.Model"),
        ("tests.ml.builders_for_tests:three_outputs", "outputs shape (None, 3); the data needs (None, 10)"),
        ("tests.ml.builders_for_tests:logits", "does not output class probabilities"),
        ("tests.ml.builders_for_tests:raises", "raised ValueError: width must be even, got 3"),
    ],
)
def test_a_broken_builder_is_refused_naming_the_model_field(model, words):
    config = TrainConfig(model=model, model_args={"width": 3})
    with pytest.raises(ConfigError) as error:
        check_model_on_data(config, X, 10, allowed_modules=ALLOWED)
    assert error.value.field == "model" and words in error.value.problem and error.value.fix


def test_a_module_off_the_allow_list_is_never_imported():
    assert "this" not in sys.modules  # `import this` prints; nothing here may import it
    with pytest.raises(ConfigError, match="DLAGENT_MODEL_MODULES"):
        load_builder("this:build", allowed_modules=["include."])
    assert "this" not in sys.modules
    assert module_allowed("include.models.example", ["include."]) and module_allowed("acme.models.x", ["acme.models"])
    assert not module_allowed("acme.modelsx", ["acme.models"]) and not module_allowed("includex.m", ["include."])


def test_the_allow_list_comes_from_the_environment(monkeypatch):
    from dlagent.settings import model_modules

    monkeypatch.delenv("DLAGENT_MODEL_MODULES", raising=False)
    assert model_modules() == ["include."]
    monkeypatch.setenv("DLAGENT_MODEL_MODULES", "acme.models., include.")
    assert model_modules() == ["acme.models.", "include."]
    with pytest.raises(ConfigError, match="not on the model allow-list"):
        check_model_on_data(TrainConfig(model="tests.ml.builders_for_tests:sequential"), X, 10)


def test_the_example_builder_takes_its_model_args():
    from dlagent.ml.models import build_model

    model = build_model(TrainConfig(model=EXAMPLE, model_args={"width": 24, "depth": 1}), (8, 8), 10)
    assert [layer.units for layer in model.layers if type(layer).__name__ == "GatedDense"] == [24]
    assert check_model_on_data(TrainConfig(model=EXAMPLE), X, 10)["parameters"] > model.count_params()  # defaults: 64 wide, 2 deep
    with pytest.raises(ConfigError, match="unknown model_args"):
        build_model(TrainConfig(model=EXAMPLE, model_args={"widht": 24}), (8, 8), 10)


def test_include_is_found_from_the_project_root_beside_the_dags_folder(tmp_path):
    """Airflow puts the DAGs folder on sys.path, not its parent: include.<module> is found anyway."""
    (tmp_path / "project" / "dags").mkdir(parents=True)
    (tmp_path / "project" / "include").mkdir()
    (tmp_path / "project" / "include" / "mine.py").write_text("def build(hp, input_shape, n_outputs, task):\n    return 'built'\n")
    (tmp_path / "elsewhere").mkdir()
    code = "from dlagent.ml.builders import load_builder; print(load_builder('include.mine:build')(None, None, None, None))"
    env = {"PATH": "/usr/bin:/bin", "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path / "project" / "dags")}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "elsewhere", env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "built", out.stderr[-2000:]


def test_a_custom_layer_round_trips_through_mlflow_in_safe_mode(client, run_id, digits_small, monkeypatch):
    """The logged model names include.models.example>GatedDense; loading imports that module (allow-listed)
    before Keras safe mode rebuilds it, even in a process that never imported it."""
    import keras
    from dlagent.ml.model_store import load_keras_model, log_keras_model
    from dlagent.ml.training import fit

    trained = fit(digits_small, TrainConfig(model=EXAMPLE, model_args={"width": 16, "depth": 1}, epochs=2)).model
    uri = log_keras_model(client, run_id, trained, digits_small.x_test[:2])
    expected = trained.predict(digits_small.x_test, verbose=0)

    def forget_the_module():
        keras.saving.get_custom_objects().pop("include.models.example>GatedDense", None)
        sys.modules.pop("include.models.example", None)

    forget_the_module()
    loaded = load_keras_model(client, uri)
    assert "include.models.example" in sys.modules and type(loaded.get_layer("gated_0")).__name__ == "GatedDense"
    np.testing.assert_allclose(loaded.predict(digits_small.x_test, verbose=0), expected, atol=1e-6)

    forget_the_module()
    monkeypatch.setenv("DLAGENT_MODEL_MODULES", "acme.")
    with pytest.raises(ConfigError) as error:
        load_keras_model(client, uri)
    assert error.value.field == "model_uri" and "include.models.example" in error.value.problem
    assert "include.models.example" not in sys.modules
    monkeypatch.delenv("DLAGENT_MODEL_MODULES")
    import_custom_modules(PROJECT_DIR / "include")  # no .keras file there: nothing to import, no error


def test_pruning_reaches_the_dense_layers_inside_a_custom_layer(digits_small):
    from dlagent.ml.compression import measure_sparsity, prunable_kernels, prune
    from dlagent.ml.models import build_model

    model = build_model(TrainConfig(model=EXAMPLE, model_args={"width": 16, "depth": 2}), digits_small.input_shape, 10)
    assert len(prunable_kernels(model)) == 5  # 2 gated layers x (value, gate) + the output layer
    pruned = prune(model, digits_small, 0.5, fine_tune_epochs=0)
    assert measure_sparsity(pruned) == pytest.approx(0.5, abs=0.01)


def test_resnet_augments_only_while_training():
    from dlagent.ml.models import build_model

    images = np.random.default_rng(1).random((4, 32, 32, 3), dtype=np.float32)
    model = build_model(TrainConfig(model="resnet", filters=8, units=16, augment=True), (32, 32, 3), 5)
    names = [layer.name for layer in model.layers]
    assert {"augment_flip", "augment_crop", "augment_rotation", "augment_contrast"} <= set(names)
    assert sum(type(layer).__name__ == "BatchNormalization" for layer in model.layers) >= 7
    assert sum(type(layer).__name__ == "Add" for layer in model.layers) == 3
    inference = [np.asarray(model(images, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    plain = build_model(TrainConfig(model="resnet", filters=8, units=16), (32, 32, 3), 5)
    plain.set_weights(model.get_weights())
    np.testing.assert_allclose(np.asarray(plain(images, training=False)), inference[0], atol=1e-6)
    augment_only = model.get_layer("augment_contrast").output
    import keras

    front = keras.Model(model.input, augment_only)
    assert not np.allclose(np.asarray(front(images, training=True)), images)  # training: the images change
    with pytest.raises(ConfigError, match="'resnet' needs image data"):
        build_model(TrainConfig(model="resnet"), (20,), 3)


def test_model_args_are_tuned_as_model_args_keys():
    from dlagent.ml import tuning

    space = tuning.validate_search_space({"model_args.width": {"type": "int", "low": 16, "high": 64},
                                          "model_args.activation": {"type": "categorical", "choices": ["relu", "gelu"]}})
    assert set(space) == {"model_args.width", "model_args.activation"}
    with pytest.raises(ConfigError) as error:
        tuning.validate_search_space({"model_args.not a name": {"type": "int", "low": 1, "high": 2}})
    assert error.value.field == "search_space.model_args.not a name"
    config = TrainConfig(model=EXAMPLE, model_args={"depth": 1}).replace(**{"model_args.width": 32})
    assert config.model_args == {"depth": 1, "width": 32}
    assert set(tuning.default_search_space(EXAMPLE)) == {"learning_rate", "batch_size"}
    assert set(tuning.default_search_space("resnet")) >= {"filters", "learning_rate"}
    narrowed, _ = tuning.narrow_search_space({"learning_rate": 0.01, "model_args": {"width": 48}})
    assert set(narrowed) == {"learning_rate"}  # a model argument's limits are the builder's: not re-searched
