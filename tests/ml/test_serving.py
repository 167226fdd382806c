"""Serving: atomic bundles in the deploy folder, the champion's bundle running in the TFLite
interpreter, and the champion answering predictions over HTTP (``mlflow models serve``)."""

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
from dlagent.ml.registry import RegistryError, register_champion, rollback
from dlagent.ml.serving import deploy_champion_bundle, write_serving_bundle
from dlagent_dev.procs import start, stop_group
from dlagent_dev.stack import free_port

NAME = "dlagent-digits"


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


def test_champion_bundle_runs_in_the_interpreter(logged, models, digits_small, mlflow_uri, tmp_path, client):
    from dlagent.ml.tflite import TFLiteModel

    register_champion(client, logged[1], NAME, idempotency_key="run-1", metrics={"test_accuracy": 0.8})
    current = deploy_champion_bundle(client, NAME, tmp_path / "deploy")
    meta = json.loads((current / "metadata.json").read_text())
    assert meta["version"] == "1" and meta["model_name"] == NAME and meta["metrics"] == {"test_accuracy": 0.8}
    content = (current / "model.tflite").read_bytes()
    assert content == models[1][1]
    expected = TFLiteModel(models[1][1]).predict(digits_small.x_test)
    assert np.array_equal(TFLiteModel(content).predict(digits_small.x_test), expected)
    with pytest.raises(RegistryError):
        deploy_champion_bundle(client, "nothing-here", tmp_path / "deploy2")


# --------------------------------------------------------------------------- serving over HTTP


def _post(url: str, payload: dict, timeout: float = 30):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read())


def test_champion_answers_predictions_over_http(logged, models, digits_small, mlflow_uri, tmp_path, client):
    register_champion(client, logged[0], NAME, idempotency_key="serve-1")
    register_champion(client, logged[1], NAME, idempotency_key="serve-2")
    rollback(client, NAME)  # the champion is version 1 again: serving must follow the alias
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


def test_a_bundle_scores_image_files_as_training_read_the_folder(tmp_path):
    """``predict_images`` takes photos as they come (any size, grayscale or colour, PNG or JPEG) and
    gives the model the pixels training gave it: the same outputs as the in-memory split's arrays."""
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.data import load_dataset
    from dlagent.ml.models import build_model
    from dlagent.ml.quantization import quantize
    from dlagent.ml.serving import load_bundle
    from PIL import Image

    from tests.ml.test_streaming import _folder

    uri = _folder(tmp_path / "set", per_class=6, classes=2)
    odd = tmp_path / "set" / "class1" / "999.jpg"
    Image.open(tmp_path / "set" / "class1" / "000.png").convert("L").resize((30, 20)).save(odd, quality=95)
    memory = load_dataset(uri, seed=0, cache="memory")
    streamed = load_dataset(uri, seed=0, cache="stream")
    model = build_model(TrainConfig(model="cnn", filters=4, units=8), memory.input_shape, memory.num_classes)
    bundle = write_serving_bundle(tmp_path / "deploy", {"model.tflite": quantize(model, "none")}, memory.class_names, {})
    predictor = load_bundle(tmp_path / "deploy")
    assert odd.as_posix() in streamed.x_train.paths + streamed.x_val.paths + streamed.x_test.paths
    for split in ("x_train", "x_val", "x_test"):
        np.testing.assert_allclose(predictor.predict_images(getattr(streamed, split).paths),
                                   predictor.predict(getattr(memory, split)), atol=1e-5)
    one = streamed.x_test.paths[0]
    np.testing.assert_allclose(predictor.predict_images(one), predictor.predict_images([one]))  # one path, not its letters
    assert predictor.predict_images([]).shape == (0, 2)
    with pytest.raises(ConfigError, match="no image file"):
        predictor.predict_images([tmp_path / "nothing.png"])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=r"cannot decode image '.*bad.png'.*PNG or JPEG"):
        predictor.predict_images([tmp_path / "bad.png"])
    assert bundle.is_dir()
