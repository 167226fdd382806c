"""MLflow Model Registry with aliases: idempotent promotion, rollback, and clear errors that leave
the registry untouched (the models: tests/ml/conftest.py)."""

from __future__ import annotations

import pytest
from dlagent.errors import ConfigError
from dlagent.ml.mlflow_names import CHAMPION, PREVIOUS
from dlagent.ml.registry import RegistryError, get_champion, register_champion, rollback

NAME = "dlagent-digits"


def _state(mlflow_uri, name=NAME):
    """Everything about a registered model that a deployment could change."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(mlflow_uri)
    try:
        aliases = {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}
    except MlflowException:
        aliases = None
    versions = sorted((v.version, tuple(sorted(v.tags.items()))) for v in client.search_model_versions(f"name = '{name}'"))
    return aliases, versions


def test_register_twice_with_one_key_gives_one_version(logged, mlflow_uri, client):
    first = register_champion(client, logged[0], NAME, idempotency_key="dl_agent_pipeline/run-1", metrics={"test_accuracy": 0.9})
    second = register_champion(client, logged[0], NAME, idempotency_key="dl_agent_pipeline/run-1", metrics={"test_accuracy": 0.9})
    assert first["created"] is True and second["created"] is False
    assert first["version"] == second["version"] == "1"
    aliases, versions = _state(mlflow_uri)
    assert aliases == {CHAMPION: "1"} and len(versions) == 1
    champion = get_champion(client, NAME)
    assert champion["version"] == "1" and champion["metrics"] == {"test_accuracy": 0.9}
    assert champion["idempotency_key"] == "dl_agent_pipeline/run-1" and champion["tflite_artifact"] == "tflite/model.tflite"
    assert champion["model_id"] == logged[0].removeprefix("models:/")


def test_new_champion_keeps_previous_and_rollback_restores_it(logged, mlflow_uri, client):
    assert get_champion(client, NAME) is None
    register_champion(client, logged[0], NAME, idempotency_key="run-1")
    v2 = register_champion(client, logged[1], NAME, idempotency_key="run-2")
    assert v2["version"] == "2" and v2["previous_version"] == "1"
    assert _state(mlflow_uri)[0] == {CHAMPION: "2", PREVIOUS: "1"}

    # a retry of the second deployment after the rollback must not undo the rollback
    result = rollback(client, NAME)
    assert result == {"name": NAME, "champion": "1", "previous": None, "rolled_back_from": "2"}
    assert get_champion(client, NAME)["version"] == "1"
    assert register_champion(client, logged[1], NAME, idempotency_key="run-2")["created"] is False
    assert _state(mlflow_uri)[0] == {CHAMPION: "1"}

    before = _state(mlflow_uri)
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        rollback(client, NAME)
    assert _state(mlflow_uri) == before
    with pytest.raises(RegistryError, match="no registered model"):
        rollback(client, "never-registered")


def test_rollback_walks_back_through_history(logged, mlflow_uri, client):
    register_champion(client, logged[0], NAME, idempotency_key="a")
    register_champion(client, logged[1], NAME, idempotency_key="b")
    register_champion(client, logged[0], NAME, idempotency_key="c")  # the first model again, as version 3
    assert _state(mlflow_uri)[0] == {CHAMPION: "3", PREVIOUS: "2"}
    assert rollback(client, NAME)["champion"] == "2"
    assert _state(mlflow_uri)[0] == {CHAMPION: "2", PREVIOUS: "1"}
    assert rollback(client, NAME)["champion"] == "1"
    assert _state(mlflow_uri)[0] == {CHAMPION: "1"}


@pytest.mark.parametrize(
    "bad_uri",
    ["models:/m-0123456789abcdef0123456789abcdef", "runs:/0123456789abcdef/model", "models:/no-such-model/1", "/tmp/not-a-model", ""],
)
def test_model_uri_that_does_not_exist_is_a_clear_error_and_changes_nothing(logged, mlflow_uri, bad_uri, client):
    register_champion(client, logged[0], NAME, idempotency_key="good")
    before = _state(mlflow_uri)
    with pytest.raises(ConfigError) as err:
        register_champion(client, bad_uri, NAME, idempotency_key="bad")
    assert err.value.field == "model_uri"
    assert _state(mlflow_uri) == before


def test_model_uri_error_on_an_empty_registry_creates_nothing(mlflow_uri, client):
    with pytest.raises(ConfigError) as err:
        register_champion(client, "models:/m-0123456789abcdef0123456789abcdef", "fresh-name", idempotency_key="k")
    assert "does not exist" in str(err.value)
    assert _state(mlflow_uri, "fresh-name") == (None, [])


def test_other_bad_input_changes_nothing(logged, mlflow_uri, tmp_path, client):
    register_champion(client, logged[0], NAME, idempotency_key="good")
    before = _state(mlflow_uri)
    with pytest.raises(ConfigError) as err:
        register_champion(client, logged[1], NAME, idempotency_key="other", tflite_path=tmp_path / "missing.tflite")
    assert err.value.field == "tflite_path"
    with pytest.raises(ConfigError) as err:  # one key, another model: a new deployment needs a new key
        register_champion(client, logged[1], NAME, idempotency_key="good")
    assert err.value.field == "idempotency_key"
    for key in ("", None, 42):
        with pytest.raises(ConfigError) as err:
            register_champion(client, logged[1], NAME, idempotency_key=key)
        assert err.value.field == "idempotency_key"
    with pytest.raises(ConfigError) as err:
        register_champion(client, logged[1], "bad/name", idempotency_key="x")
    assert err.value.field == "model_name"
    with pytest.raises(ConfigError) as err:
        register_champion(client, logged[1], NAME, idempotency_key="x", metrics={"test_accuracy": "high"})
    assert err.value.field == "metrics.test_accuracy"
    assert _state(mlflow_uri) == before


def test_model_without_signature_is_refused(models, digits_small, mlflow_uri, run_id, client):
    import mlflow

    with mlflow.start_run(run_id=run_id):  # the fluent API, through MLFLOW_TRACKING_URI (the mlflow_uri fixture)
        uri = mlflow.keras.log_model(models[0][0], name="unsigned", pip_requirements=["keras"]).model_uri
    with pytest.raises(ConfigError, match="without a signature"):
        register_champion(client, uri, NAME, idempotency_key="unsigned")
    assert _state(mlflow_uri) == (None, [])
