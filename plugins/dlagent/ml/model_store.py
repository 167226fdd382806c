"""Keras models in MLflow, through an ``MlflowClient``: log one, resolve its URI, load it back.

:func:`log_keras_model` is the one way dlagent logs a model (a training run's, a compression
candidate's): the Keras model with its signature and input example, and optionally the TFLite
file and class labels inside the same logged model (``tflite/model.tflite``,
``tflite/labels.json``), so one model URI carries both. Everything goes through the given
client: nothing sets MLflow's process-wide tracking URI, so two tasks (or two threads) talking
to two servers never cross.

Loading is always in Keras safe mode: a model file that carries Python code is refused. The
modules of registered custom layers (a user's builder, :mod:`dlagent.ml.builders`) are imported
first, when the model allow-list permits them.

MLflow 3.17 caveats worked around here: ``mlflow.keras.log_model`` logs through the process-wide
tracking URI and its ``input_example`` fails (the example is written before the model folder
exists), so the model is saved locally with ``mlflow.keras.save_model``, the example and the
TFLite files are added to that folder, and the folder is uploaded once to a logged model
created with the client (``create_logged_model``), linked to the run as its output.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from dlagent.errors import ConfigError
from dlagent.ml import mlflow_names as names

# MLflow's own pip requirements inference imports the model in a subprocess (slow, and it
# can pick up the whole Airflow environment): state what serving the model needs instead.
MODEL_PIP_REQUIREMENTS = ["tensorflow-cpu==2.21.0", "keras==3.15.1", "numpy"]


def tracking_uri_of(client) -> str:
    """The tracking URI a client talks to (for download calls that take a URI)."""
    return str(getattr(client, "tracking_uri", None) or client._tracking_client.tracking_uri)


def log_keras_model(client, run_id: str, model, example, *, labels: list | None = None, tflite_bytes: bytes | None = None,
                    encoding=None, name: str = "model") -> str:
    """Log ``model`` as an output of run ``run_id``; return its model URI (``models:/m-...``).

    ``example`` (a few input rows) gives the signature and the input example; ``labels`` and
    ``tflite_bytes`` go under ``tflite/``; ``encoding`` (a table's
    :class:`~dlagent.ml.tabular.TableEncoding`: the model takes encoded rows) is written as
    ``encoding.json`` beside ``MLmodel``. A failure here is raised: a step whose model is not
    stored has not succeeded.
    """
    import mlflow
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model, infer_signature
    from mlflow.models.utils import _Example

    signature = infer_signature(example, model.predict(example, verbose=0))
    run = client.get_run(run_id)
    logged = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id,
                                        params={k: str(v) for k, v in run.data.params.items()}, model_type="keras")
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    metadata = {"dlagent": {"labels": [str(label) for label in labels], "tflite": tflite_bytes is not None}} if labels is not None else None
    mlflow_model = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id,
                         metadata=metadata, model_id=logged.model_id)
    try:
        with tempfile.TemporaryDirectory(prefix="dlagent-model-") as tmp:
            local = Path(tmp) / "model"
            mlflow.keras.save_model(model, str(local), mlflow_model=mlflow_model, signature=signature,
                                    pip_requirements=MODEL_PIP_REQUIREMENTS)
            saved = _Example(example)
            saved.save(str(local))
            mlflow_model.saved_input_example_info = saved.info
            mlflow_model.save(str(local / "MLmodel"))
            if encoding is not None:
                (local / names.ENCODING_FILE).write_text(encoding.dumps())
            if tflite_bytes is not None or labels is not None:
                folder = local / names.TFLITE_DIR
                folder.mkdir()
                if tflite_bytes is not None:
                    (folder / names.TFLITE_FILE).write_bytes(tflite_bytes)
                if labels is not None:
                    (folder / names.LABELS_FILE).write_text(json.dumps([str(label) for label in labels]))
            client.log_model_artifacts(logged.model_id, str(local))
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")  # as MLflow's own log_model does
        raise
    client.finalize_logged_model(logged.model_id, "READY")
    return f"models:/{logged.model_id}"


def resolve_logged_model(client, model_uri: str):
    """The MLflow ``LoggedModel`` behind ``models:/m-<id>`` or ``runs:/<run_id>/<name>``.

    Raises :class:`ConfigError` (field ``model_uri``) when it does not exist or has no
    ``MLmodel`` file; nothing is written.
    """
    from mlflow.exceptions import MlflowException

    if not isinstance(model_uri, str) or not model_uri.strip():
        raise ConfigError("model_uri", f"must be a non-empty model URI, got {model_uri!r}.", "pass the URI a training or compression step returned (models:/m-...).")
    uri = model_uri.strip()
    fix = "pass the models:/m-... URI returned when the model was logged; check that it was logged to this tracking server."
    try:
        if uri.startswith("models:/m-"):
            model_id = uri[len("models:/"):].strip("/")
            if "/" in model_id:
                raise ConfigError("model_uri", f"{uri!r} is not a logged-model URI of the form models:/m-<id>.", fix)
            logged = client.get_logged_model(model_id)
        elif uri.startswith("runs:/"):
            run_id, _, artifact_name = uri[len("runs:/"):].partition("/")
            run = client.get_run(run_id)
            ids = [output.model_id for output in (run.outputs.model_outputs if run.outputs else [])]
            matches = [m for m in (client.get_logged_model(i) for i in ids) if m.name == artifact_name.strip("/")]
            if not matches:
                raise ConfigError("model_uri", f"run {run_id} has no logged model named {artifact_name!r}.", fix)
            logged = matches[-1]
        else:
            raise ConfigError("model_uri", f"{uri!r} is not a logged-model URI (models:/m-<id> or runs:/<run_id>/<name>).", fix)
    except MlflowException as exc:
        raise ConfigError("model_uri", f"{uri!r} does not exist in the tracking store {_redacted(client)}: {exc.message}", fix) from exc
    try:
        files = {Path(f.path).name for f in client.list_logged_model_artifacts(logged.model_id)}
    except MlflowException as exc:
        raise ConfigError("model_uri", f"cannot list the files of {uri!r}: {exc.message}", fix) from exc
    if "MLmodel" not in files:
        raise ConfigError("model_uri", f"{uri!r} has no MLmodel file (the model was never fully logged).", "log the model again.")
    return logged


def download(client, artifact_uri: str, dst_path: str) -> str:
    """Download an artifact URI (a logged model's location or a file under it) through ``client``'s server."""
    import mlflow

    return mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=dst_path, tracking_uri=tracking_uri_of(client))


def read_mlmodel(client, logged) -> dict:
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        local = download(client, f"{logged.artifact_location.rstrip('/')}/MLmodel", tmp)
        return yaml.safe_load(Path(local).read_text()) or {}


def load_keras_model(client, model_uri: str):
    """Load a logged Keras model (``models:/m-...`` or ``runs:/...``) in Keras safe mode.

    A model whose file carries code (a ``Lambda`` layer with a Python function) is refused
    with :class:`ConfigError` (field ``model_uri``): a retry cannot make it safe.
    """
    import mlflow

    from dlagent.ml.builders import import_custom_modules

    logged = resolve_logged_model(client, model_uri)
    with tempfile.TemporaryDirectory(prefix="dlagent-load-") as tmp:
        local = download(client, logged.artifact_location, tmp)
        import_custom_modules(local)  # registered custom layers of a user's builder
        try:
            return mlflow.keras.load_model(local, load_model_kwargs={"safe_mode": True})
        except ValueError as exc:
            if "safe_mode" not in str(exc):
                raise
            # Described, not quoted: the model file's own text never reaches a message.
            raise ConfigError("model_uri", f"{model_uri!r} carries Python code (e.g. a Lambda layer); Keras safe mode refuses to "
                              "load it.",
                              "rebuild the model from built-in Keras layers (or registered serializable custom layers) and log it again.") from exc


def load_checkpoint(client, checkpoint_uri: str):
    """Load a trial checkpoint (``runs:/<run>/checkpoint/model.keras``, a plain ``.keras`` file
    artifact) in Keras safe mode; a missing or unreadable one raises :class:`ConfigError`."""
    import keras

    from dlagent.ml.builders import import_custom_modules

    try:
        with tempfile.TemporaryDirectory(prefix="dlagent-checkpoint-") as tmp:
            path = download(client, checkpoint_uri, tmp)
            import_custom_modules(path, field="warm_start")
            return keras.saving.load_model(path, compile=False, safe_mode=True)
    except ConfigError:
        raise
    except Exception as exc:
        # the kind of failure, never the file's text (a model file's config could be anything)
        raise ConfigError("warm_start", f"cannot load the checkpoint {checkpoint_uri!r} ({type(exc).__name__}: missing, not a "
                          ".keras file, or refused by Keras safe mode).",
                          "give the checkpoint URI of a trial run (runs:/<run id>/checkpoint/model.keras), or null to train from scratch.") from exc


def read_tflite(client, model_uri: str) -> bytes:
    """The TFLite file stored inside a logged model (``models:/m-...``), as bytes.

    Raises :class:`ConfigError` (field ``model_uri``) when the model or its TFLite file does not exist.
    """
    logged = resolve_logged_model(client, model_uri)
    return download_tflite(client, logged.artifact_location, what=model_uri)


def download_tflite(client, location: str, *, what: str) -> bytes:
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = download(client, f"{location.rstrip('/')}/{names.TFLITE_DIR}/{names.TFLITE_FILE}", tmp)
        except (MlflowException, OSError) as exc:
            raise ConfigError("model_uri", f"{what} has no {names.TFLITE_DIR}/{names.TFLITE_FILE}: {exc}",
                              "pass a model logged by the compress step (it stores the TFLite file with the Keras model).") from exc
        return Path(local).read_bytes()


def download_encoding(client, location: str) -> dict | None:
    """The ``encoding.json`` of the logged model at ``location``, or ``None`` when it has none
    (a model of numeric features)."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = download(client, f"{location.rstrip('/')}/{names.ENCODING_FILE}", tmp)
        except (MlflowException, OSError):
            return None
        return json.loads(Path(local).read_text())


def _redacted(client) -> str:
    from dlagent.settings import client_location

    return client_location(client)
