"""MLflow Model Registry with aliases: idempotent promotion, rollback, clear errors that leave
the registry untouched, atomic serving bundles, and the champion answering over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from dlagent.errors import ConfigError
from dlagent.ml.config import TrainConfig
from dlagent.ml.registry import (
    CHAMPION,
    PREVIOUS,
    RegistryError,
    deploy_champion_bundle,
    get_champion,
    log_deployable_model,
    register_champion,
    rollback,
    write_serving_bundle,
)
from dlagent_dev.procs import start, stop_group
from dlagent_dev.stack import free_port

NAME = "dlagent-digits"


@pytest.fixture(scope="module")
def models(digits_small):
    """Two different small models and their int8 TFLite files."""
    from dlagent.ml.compression import quantize, representative_sample
    from dlagent.ml.training import fit

    out = []
    for units in (32, 16):
        model = fit(digits_small, TrainConfig(model="mlp", epochs=12, units=units, early_stopping_patience=0)).model
        out.append((model, quantize(model, "int8", representative_sample(digits_small, 100))))
    return out


@pytest.fixture
def run_id(mlflow_uri):
    from dlagent.ml.tracking import ensure_experiment
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    return client.create_run(ensure_experiment(client, "registry", os.environ["DLAGENT_ARTIFACT_ROOT"])).info.run_id


@pytest.fixture
def logged(models, digits_small, mlflow_uri, run_id):
    """Two logged models (Keras + TFLite inside), as a compression step would leave them."""
    return [
        log_deployable_model(model, digits_small, tracking_uri=mlflow_uri, run_id=run_id, tflite_bytes=tflite, name=f"candidate-{i}")
        for i, (model, tflite) in enumerate(models)
    ]


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


def test_logged_model_carries_signature_input_example_and_tflite(logged, models, mlflow_uri):
    import mlflow
    from mlflow.models import Model

    mlflow.set_tracking_uri(mlflow_uri)
    local = Path(mlflow.artifacts.download_artifacts(logged[0]))
    meta = Model.load(str(local / "MLmodel"))
    assert meta.signature is not None and list(meta.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 8, 8]
    assert meta.saved_input_example_info["artifact_path"] == "input_example.json"
    assert np.asarray(json.loads((local / "input_example.json").read_text())).shape == (2, 8, 8)
    assert np.asarray(json.loads((local / "serving_input_example.json").read_text())["inputs"]).shape == (2, 8, 8)
    assert (local / "tflite" / "model.tflite").read_bytes() == models[0][1]
    assert json.loads((local / "tflite" / "labels.json").read_text()) == [str(i) for i in range(10)]


def test_register_twice_with_one_key_gives_one_version(logged, mlflow_uri):
    first = register_champion(mlflow_uri, logged[0], NAME, idempotency_key="dl_agent_pipeline/run-1", metrics={"test_accuracy": 0.9})
    second = register_champion(mlflow_uri, logged[0], NAME, idempotency_key="dl_agent_pipeline/run-1", metrics={"test_accuracy": 0.9})
    assert first["created"] is True and second["created"] is False
    assert first["version"] == second["version"] == "1"
    aliases, versions = _state(mlflow_uri)
    assert aliases == {CHAMPION: "1"} and len(versions) == 1
    champion = get_champion(mlflow_uri, NAME)
    assert champion["version"] == "1" and champion["metrics"] == {"test_accuracy": 0.9}
    assert champion["idempotency_key"] == "dl_agent_pipeline/run-1" and champion["tflite_artifact"] == "tflite/model.tflite"
    assert champion["model_id"] == logged[0].removeprefix("models:/")


def test_new_champion_keeps_previous_and_rollback_restores_it(logged, mlflow_uri):
    assert get_champion(mlflow_uri, NAME) is None
    register_champion(mlflow_uri, logged[0], NAME, idempotency_key="run-1")
    v2 = register_champion(mlflow_uri, logged[1], NAME, idempotency_key="run-2")
    assert v2["version"] == "2" and v2["previous_version"] == "1"
    assert _state(mlflow_uri)[0] == {CHAMPION: "2", PREVIOUS: "1"}

    # a retry of the second deployment after the rollback must not undo the rollback
    result = rollback(mlflow_uri, NAME)
    assert result == {"name": NAME, "champion": "1", "previous": None, "rolled_back_from": "2"}
    assert get_champion(mlflow_uri, NAME)["version"] == "1"
    assert register_champion(mlflow_uri, logged[1], NAME, idempotency_key="run-2")["created"] is False
    assert _state(mlflow_uri)[0] == {CHAMPION: "1"}

    before = _state(mlflow_uri)
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        rollback(mlflow_uri, NAME)
    assert _state(mlflow_uri) == before
    with pytest.raises(RegistryError, match="no registered model"):
        rollback(mlflow_uri, "never-registered")


def test_rollback_walks_back_through_history(logged, mlflow_uri):
    register_champion(mlflow_uri, logged[0], NAME, idempotency_key="a")
    register_champion(mlflow_uri, logged[1], NAME, idempotency_key="b")
    register_champion(mlflow_uri, logged[0], NAME, idempotency_key="c")  # the first model again, as version 3
    assert _state(mlflow_uri)[0] == {CHAMPION: "3", PREVIOUS: "2"}
    assert rollback(mlflow_uri, NAME)["champion"] == "2"
    assert _state(mlflow_uri)[0] == {CHAMPION: "2", PREVIOUS: "1"}
    assert rollback(mlflow_uri, NAME)["champion"] == "1"
    assert _state(mlflow_uri)[0] == {CHAMPION: "1"}


@pytest.mark.parametrize(
    "bad_uri",
    ["models:/m-0123456789abcdef0123456789abcdef", "runs:/0123456789abcdef/model", "models:/no-such-model/1", "/tmp/not-a-model", ""],
)
def test_model_uri_that_does_not_exist_is_a_clear_error_and_changes_nothing(logged, mlflow_uri, bad_uri):
    register_champion(mlflow_uri, logged[0], NAME, idempotency_key="good")
    before = _state(mlflow_uri)
    with pytest.raises(ConfigError) as err:
        register_champion(mlflow_uri, bad_uri, NAME, idempotency_key="bad")
    assert err.value.field == "model_uri"
    assert _state(mlflow_uri) == before


def test_model_uri_error_on_an_empty_registry_creates_nothing(mlflow_uri):
    with pytest.raises(ConfigError) as err:
        register_champion(mlflow_uri, "models:/m-0123456789abcdef0123456789abcdef", "fresh-name", idempotency_key="k")
    assert "does not exist" in str(err.value)
    assert _state(mlflow_uri, "fresh-name") == (None, [])


def test_other_bad_input_changes_nothing(logged, mlflow_uri, tmp_path):
    register_champion(mlflow_uri, logged[0], NAME, idempotency_key="good")
    before = _state(mlflow_uri)
    with pytest.raises(ConfigError) as err:
        register_champion(mlflow_uri, logged[1], NAME, idempotency_key="other", tflite_path=tmp_path / "missing.tflite")
    assert err.value.field == "tflite_path"
    with pytest.raises(ConfigError) as err:  # one key, another model: a new deployment needs a new key
        register_champion(mlflow_uri, logged[1], NAME, idempotency_key="good")
    assert err.value.field == "idempotency_key"
    for key in ("", None, 42):
        with pytest.raises(ConfigError) as err:
            register_champion(mlflow_uri, logged[1], NAME, idempotency_key=key)
        assert err.value.field == "idempotency_key"
    with pytest.raises(ConfigError) as err:
        register_champion(mlflow_uri, logged[1], "bad/name", idempotency_key="x")
    assert err.value.field == "model_name"
    with pytest.raises(ConfigError) as err:
        register_champion(mlflow_uri, logged[1], NAME, idempotency_key="x", metrics={"test_accuracy": "high"})
    assert err.value.field == "metrics.test_accuracy"
    assert _state(mlflow_uri) == before


def test_model_without_signature_is_refused(models, digits_small, mlflow_uri, run_id):
    import mlflow

    mlflow.set_tracking_uri(mlflow_uri)
    with mlflow.start_run(run_id=run_id):
        uri = mlflow.keras.log_model(models[0][0], name="unsigned", pip_requirements=["keras"]).model_uri
    with pytest.raises(ConfigError, match="without a signature"):
        register_champion(mlflow_uri, uri, NAME, idempotency_key="unsigned")
    assert _state(mlflow_uri) == (None, [])


# --------------------------------------------------------------------------- serving bundles


def test_serving_bundle_is_swapped_in_atomically(tmp_path):
    deploy = tmp_path / "deploy"
    current = write_serving_bundle(deploy, {"model.tflite": b"one"}, ["a", "b"], {"version": "1"}, bundle_name="v1")
    assert current == deploy / "current" and current.is_symlink()
    assert (current / "model.tflite").read_bytes() == b"one"
    assert json.loads((current / "labels.json").read_text()) == ["a", "b"]
    meta = json.loads((current / "metadata.json").read_text())
    assert meta["version"] == "1" and meta["files"]["model.tflite"] == __import__("hashlib").sha256(b"one").hexdigest()

    source = tmp_path / "model.tflite"
    source.write_bytes(b"two")
    write_serving_bundle(deploy, {"model.tflite": source}, ["a", "b"], {"version": "2"}, bundle_name="v2")
    assert os.readlink(deploy / "current") == "bundle-v2" and (deploy / "current" / "model.tflite").read_bytes() == b"two"
    write_serving_bundle(deploy, {"model.tflite": b"ignored"}, ["a", "b"], {"version": "2"}, bundle_name="v2")  # retry
    assert (deploy / "current" / "model.tflite").read_bytes() == b"two"

    # a write that fails half-way leaves the current bundle and no debris
    with pytest.raises(FileNotFoundError):
        write_serving_bundle(deploy, {"model.tflite": b"x", "extra.bin": tmp_path / "missing"}, ["a"], {}, bundle_name="v3")
    assert os.readlink(deploy / "current") == "bundle-v2"
    assert not list(deploy.glob(".staging-*")) and not (deploy / "bundle-v3").exists()

    for version in range(4, 8):
        write_serving_bundle(deploy, {"model.tflite": b"n"}, [], {}, bundle_name=f"v{version}", keep=2)
    assert sorted(p.name for p in deploy.glob("bundle-*")) == ["bundle-v6", "bundle-v7"]
    assert not [p for p in deploy.iterdir() if p.name.startswith(".current-")]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"model_files": {}}, "model_files"), ({"model_files": {"../x": b""}}, "model_files"),
     ({"model_files": {"metadata.json": b""}}, "model_files"), ({"labels": "a,b"}, "labels"), ({"metadata": []}, "metadata"),
     ({"keep": 0}, "keep")],
)
def test_serving_bundle_input_is_validated(tmp_path, kwargs, field):
    arguments = {"model_files": {"model.tflite": b"x"}, "labels": ["a"], "metadata": {}, **kwargs}
    with pytest.raises(ConfigError) as err:
        write_serving_bundle(tmp_path / "deploy", **arguments)
    assert err.value.field == field
    assert not (tmp_path / "deploy" / "current").exists()


def test_champion_bundle_runs_in_the_interpreter(logged, models, digits_small, mlflow_uri, tmp_path):
    from dlagent.ml.evaluation import TFLiteModel

    register_champion(mlflow_uri, logged[1], NAME, idempotency_key="run-1", metrics={"test_accuracy": 0.8})
    current = deploy_champion_bundle(mlflow_uri, NAME, tmp_path / "deploy")
    meta = json.loads((current / "metadata.json").read_text())
    assert meta["version"] == "1" and meta["model_name"] == NAME and meta["metrics"] == {"test_accuracy": 0.8}
    content = (current / "model.tflite").read_bytes()
    assert content == models[1][1]
    expected = TFLiteModel(models[1][1]).predict(digits_small.x_test)
    assert np.array_equal(TFLiteModel(content).predict(digits_small.x_test), expected)
    with pytest.raises(RegistryError):
        deploy_champion_bundle(mlflow_uri, "nothing-here", tmp_path / "deploy2")


# --------------------------------------------------------------------------- serving over HTTP


def _post(url: str, payload: dict, timeout: float = 30):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read())


def test_champion_answers_predictions_over_http(logged, models, digits_small, mlflow_uri, tmp_path):
    register_champion(mlflow_uri, logged[0], NAME, idempotency_key="serve-1")
    register_champion(mlflow_uri, logged[1], NAME, idempotency_key="serve-2")
    rollback(mlflow_uri, NAME)  # the champion is version 1 again: serving must follow the alias
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        server = start(  # in a process group of its own
            [str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager", "local",
             "-p", str(port), "-h", "127.0.0.1"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"mlflow models serve exited: {log_path.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, f"no /ping answer in 120 s: {log_path.read_text()[-3000:]}"
            time.sleep(0.5)
        samples = digits_small.x_test[:8]
        status, body = _post(f"http://127.0.0.1:{port}/invocations", {"inputs": samples.tolist()})
        assert status == 200
        served = np.asarray(body["predictions"])
        expected = models[0][0].predict(samples, verbose=0)  # version 1's model, not version 2's
        assert served.shape == (8, 10)
        assert np.allclose(served, expected, atol=1e-5)
        with pytest.raises(urllib.error.HTTPError) as err:  # a wrong shape is refused by the signature
            _post(f"http://127.0.0.1:{port}/invocations", {"inputs": [[1.0, 2.0]]})
        assert err.value.code == 400
    finally:
        stop_group(server, grace=20)  # the CLI and the uvicorn worker it started, until none is left
