"""Fixtures of the ML-core tests: an MLflow client as the operators pass it, and logged models."""

from __future__ import annotations

import os

import pytest
from dlagent.ml.config import TrainConfig


@pytest.fixture(scope="session")
def models(digits_small):
    """Two different small models and their int8 TFLite files (trained once per session)."""
    from dlagent.ml.quantization import quantize, representative_sample
    from dlagent.ml.training import fit

    out = []
    for units in (32, 16):
        model = fit(digits_small, TrainConfig(model="mlp", epochs=12, units=units, early_stopping_patience=0)).model
        out.append((model, quantize(model, "int8", representative_sample(digits_small, 100))))
    return out


@pytest.fixture
def client(mlflow_uri):
    """The client the ML core is given (what ``MLflowHook.client`` is): registry URI = tracking URI."""
    from mlflow import MlflowClient

    return MlflowClient(mlflow_uri, registry_uri=mlflow_uri)


@pytest.fixture
def run_id(client):
    from dlagent.ml.tracking import ensure_experiment

    return client.create_run(ensure_experiment(client, "registry", os.environ["DLAGENT_ARTIFACT_ROOT"])).info.run_id


@pytest.fixture
def logged(models, digits_small, client, run_id):
    """Two logged models (Keras + TFLite inside), as a compression step would leave them."""
    from dlagent.ml.model_store import log_keras_model

    return [
        log_keras_model(client, run_id, model, digits_small.x_test[:2], labels=digits_small.class_names, tflite_bytes=tflite,
                        name=f"candidate-{i}")
        for i, (model, tflite) in enumerate(models)
    ]
