"""Keras models in MLflow through a client: one logging function (signature, input example, TFLite
inside), loading in safe mode, and nothing set process-wide."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dlagent.errors import ConfigError


def test_logged_model_carries_signature_input_example_and_tflite(logged, models, mlflow_uri):
    import mlflow
    from mlflow.models import Model

    local = Path(mlflow.artifacts.download_artifacts(logged[0], tracking_uri=mlflow_uri))
    meta = Model.load(str(local / "MLmodel"))
    assert meta.signature is not None and list(meta.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 8, 8]
    assert meta.saved_input_example_info["artifact_path"] == "input_example.json"
    assert np.asarray(json.loads((local / "input_example.json").read_text())).shape == (2, 8, 8)
    assert np.asarray(json.loads((local / "serving_input_example.json").read_text())["inputs"]).shape == (2, 8, 8)
    assert (local / "tflite" / "model.tflite").read_bytes() == models[0][1]
    assert json.loads((local / "tflite" / "labels.json").read_text()) == [str(i) for i in range(10)]


def test_models_go_through_the_given_client_and_nothing_is_set_process_wide(models, digits_small, tmp_path, monkeypatch):
    """Two stores in one process: each call reaches the store of its own client; MLflow's global URI never moves."""
    import mlflow
    from dlagent.ml.model_store import load_keras_model, log_keras_model, read_tflite
    from dlagent.ml.tracking import ensure_experiment
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = mlflow.get_tracking_uri()
    clients = [MlflowClient(f"sqlite:///{tmp_path / name}.db") for name in ("a", "b")]
    uris = []
    for index, client in enumerate(clients):
        experiment = ensure_experiment(client, "store", str(tmp_path / f"artifacts-{index}"))
        run_id = client.create_run(experiment).info.run_id
        model, tflite = models[index]
        uris.append(log_keras_model(client, run_id, model, digits_small.x_test[:2], tflite_bytes=tflite))
        assert client.get_logged_model(uris[-1].removeprefix("models:/")).status.name == "READY"
        assert [o.model_id for o in client.get_run(run_id).outputs.model_outputs] == [uris[-1].removeprefix("models:/")]
    assert mlflow.get_tracking_uri() == before
    for index, client in enumerate(clients):
        assert read_tflite(client, uris[index]) == models[index][1]
        loaded = load_keras_model(client, uris[index])
        assert np.allclose(loaded.predict(digits_small.x_test[:4], verbose=0), models[index][0].predict(digits_small.x_test[:4], verbose=0))
    with pytest.raises(ConfigError) as error:  # a model of store a is not in store b
        load_keras_model(clients[1], uris[0])
    assert error.value.field == "model_uri"
    assert mlflow.get_tracking_uri() == before
