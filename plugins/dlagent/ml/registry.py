"""MLflow Model Registry with aliases (never stages), idempotent promotion, serving bundles.

* :func:`log_deployable_model` logs a Keras model with its signature and an input example,
  and puts the TFLite file (``tflite/model.tflite``) and the class labels
  (``tflite/labels.json``) inside the same logged model, so one model URI carries both.
* :func:`register_champion` registers a logged model as a new version, moves alias
  ``champion`` to it and keeps the former champion under ``previous``. It is idempotent: the
  ``idempotency_key`` (e.g. ``dag_id/run_id``) is stored as a version tag, and a second call
  with the same key returns the version the first call made (and finishes its promotion if
  the first call died half-way) instead of registering another one.
* :func:`rollback` moves ``champion`` back to ``previous`` (and ``previous`` one further back).
* :func:`get_champion` reads the champion version, or ``None``.
* :func:`deploy_if_blessed` runs the gate (:mod:`dlagent.ml.gate`) and registers only a
  blessed candidate; a rejected one leaves the registry exactly as it was.
* :func:`write_serving_bundle` writes model files, labels and metadata into a fresh folder
  and swaps it in by renames, so a reader never sees a half-written bundle.

Every input is checked before the first write: a model URI that does not exist, a missing
TFLite file or a reused idempotency key with another model raise before the registry changes.

MLflow 3.17 caveats worked around here:

* its SQL registry store resolves a ``models:/m-...`` version source through the
  *process-global* tracking URI (``MlflowClient()`` inside the store), not the client's; so
  versions are created from the logged model's resolved artifact location (with its
  ``model_id`` and source run), and the ``models:/m-...`` URI is kept as the version tag
  ``dlagent.source_model_uri``. Every call here uses ``MlflowClient(tracking_uri,
  registry_uri=tracking_uri)``; nothing changes the global registry URI.
* ``mlflow.keras.log_model(input_example=...)`` fails (the example is written before the
  model folder exists), so :func:`log_deployable_model` attaches the example afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from dlagent.errors import ConfigError

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous"
IDEMPOTENCY_TAG = "dlagent.idempotency_key"
PREVIOUS_VERSION_TAG = "dlagent.previous_version"
PROMOTED_TAG = "dlagent.promoted_at"
ROLLED_BACK_TAG = "dlagent.rolled_back_at"
SOURCE_MODEL_TAG = "dlagent.source_model_uri"
TFLITE_TAG = "dlagent.tflite_artifact"
TFLITE_SHA_TAG = "dlagent.tflite_sha256"
METRIC_TAG_PREFIX = "dlagent.metric."
TFLITE_DIR = "tflite"
TFLITE_FILE = "model.tflite"
LABELS_FILE = "labels.json"
METADATA_FILE = "metadata.json"
CURRENT_LINK = "current"


class RegistryError(RuntimeError):
    """The registry is not in a state that allows the operation (e.g. nothing to roll back to)."""


def _client(tracking_uri: str | None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def check_model_name(name) -> str:
    """A registered-model name, stripped; :class:`ConfigError` (field ``model_name``) otherwise."""
    return _check_name(name)


def _check_name(name) -> str:
    if not isinstance(name, str) or not name.strip() or "/" in name or "@" in name or ":" in name:
        raise ConfigError("model_name", f"must be a non-empty name without '/', '@' or ':', got {name!r}.", "use e.g. 'dlagent-digits'.")
    return name.strip()


def _is_missing(exc) -> bool:
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")


# --------------------------------------------------------------------------- logging a model


def log_deployable_model(model, splits, *, tracking_uri: str | None, run_id: str, tflite_bytes: bytes | None = None,
                         name: str = "model", labels: list[str] | None = None) -> str:
    """Log ``model`` (Keras) with signature and input example, plus the TFLite file and labels.

    Returns the model URI (``models:/m-...``). The TFLite file lands at
    ``tflite/model.tflite`` inside the logged model, the labels at ``tflite/labels.json``.
    """
    import mlflow
    from mlflow.models import infer_signature

    from dlagent.ml.tracking import MODEL_PIP_REQUIREMENTS

    example = splits.x_test[:2]
    signature = infer_signature(example, model.predict(example, verbose=0))
    labels = list(labels if labels is not None else splits.class_names)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)  # the fluent log_model API logs to the global URI
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        context = contextlib.nullcontext()
    else:
        context = mlflow.start_run(run_id=run_id, log_system_metrics=False)
    with context:
        # input_example is attached afterwards: mlflow.keras.save_model (3.17.2) writes the
        # example before it creates the model folder and fails with FileNotFoundError.
        info = mlflow.keras.log_model(model, name=name, signature=signature,
                                      pip_requirements=MODEL_PIP_REQUIREMENTS,
                                      metadata={"dlagent": {"labels": labels, "tflite": tflite_bytes is not None}})
    if not isinstance(context, contextlib.nullcontext):
        # start_run's exit marks the run FINISHED; the caller decides when the step is done.
        _client(tracking_uri).update_run(run_id, status="RUNNING")
    _attach_input_example(tracking_uri, info.model_id, example)
    _upload_to_logged_model(tracking_uri, info.model_id, tflite_bytes=tflite_bytes, labels=labels)
    return info.model_uri


def _attach_input_example(tracking_uri, model_id: str, example) -> None:
    """Add ``input_example.json``/``serving_input_example.json`` to a logged model and record
    them in its MLmodel file, as ``log_model(input_example=...)`` would have."""
    import mlflow
    from mlflow.models import Model
    from mlflow.models.utils import _Example

    client = _client(tracking_uri)
    location = client.get_logged_model(model_id).artifact_location.rstrip("/")
    with tempfile.TemporaryDirectory() as tmp:
        mlmodel_path = mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/MLmodel", dst_path=tmp, tracking_uri=tracking_uri)
        mlmodel = Model.load(mlmodel_path)
        upload = Path(tmp) / "upload"
        upload.mkdir()
        saved = _Example(example)
        saved.save(str(upload))
        mlmodel.saved_input_example_info = saved.info
        mlmodel.save(str(upload / "MLmodel"))
        client.log_model_artifacts(model_id, str(upload))


def _upload_to_logged_model(tracking_uri, model_id: str, *, tflite_bytes: bytes | None = None, labels: list | None = None) -> None:
    if tflite_bytes is None and labels is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        if tflite_bytes is not None:
            (Path(tmp) / TFLITE_FILE).write_bytes(tflite_bytes)
        if labels is not None:
            (Path(tmp) / LABELS_FILE).write_text(json.dumps([str(label) for label in labels]))
        _client(tracking_uri).log_model_artifacts(model_id, tmp, artifact_path=TFLITE_DIR)


# --------------------------------------------------------------------------- resolving a model URI


def resolve_logged_model(tracking_uri: str | None, model_uri: str):
    """The MLflow ``LoggedModel`` behind ``models:/m-<id>`` or ``runs:/<run_id>/<name>``.

    Raises :class:`ConfigError` (field ``model_uri``) when it does not exist or has no
    ``MLmodel`` file; nothing is written.
    """
    from mlflow.exceptions import MlflowException

    if not isinstance(model_uri, str) or not model_uri.strip():
        raise ConfigError("model_uri", f"must be a non-empty model URI, got {model_uri!r}.", "pass the URI a training or compression step returned (models:/m-...).")
    client = _client(tracking_uri)
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
        raise ConfigError("model_uri", f"{uri!r} does not exist in the tracking store {tracking_uri!r}: {exc.message}", fix) from exc
    try:
        names = {Path(f.path).name for f in client.list_logged_model_artifacts(logged.model_id)}
    except MlflowException as exc:
        raise ConfigError("model_uri", f"cannot list the files of {uri!r}: {exc.message}", fix) from exc
    if "MLmodel" not in names:
        raise ConfigError("model_uri", f"{uri!r} has no MLmodel file (the model was never fully logged).", "log the model again.")
    return logged


def _read_mlmodel(tracking_uri, logged) -> dict:
    import mlflow
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"{logged.artifact_location.rstrip('/')}/MLmodel",
                                                    dst_path=tmp, tracking_uri=tracking_uri)
        return yaml.safe_load(Path(local).read_text()) or {}


# --------------------------------------------------------------------------- versions and aliases


def _version_info(client, version, *, created: bool | None = None) -> dict:
    aliases = list(getattr(version, "aliases", []) or [])
    if not aliases:
        try:
            rm = client.get_registered_model(version.name)
            aliases = sorted(a for a, v in (rm.aliases or {}).items() if str(v) == str(version.version))
        except Exception:  # noqa: BLE001 - aliases are informative here
            aliases = []
    tags = dict(version.tags or {})
    info = {
        "name": version.name,
        "version": str(version.version),
        "model_uri": f"models:/{version.name}/{version.version}",
        "source": version.source,
        "run_id": version.run_id,
        "model_id": _model_id_of(version),
        "aliases": sorted(aliases),
        "tags": tags,
        "idempotency_key": tags.get(IDEMPOTENCY_TAG),
        "previous_version": tags.get(PREVIOUS_VERSION_TAG),
        "tflite_artifact": tags.get(TFLITE_TAG),
        "metrics": {k[len(METRIC_TAG_PREFIX):]: float(v) for k, v in tags.items() if k.startswith(METRIC_TAG_PREFIX)},
    }
    if created is not None:
        info["created"] = created
    return info


def _model_id_of(version) -> str | None:
    """The logged-model id behind a version (the SQL store does not keep ``model_id``)."""
    if getattr(version, "model_id", None):
        return version.model_id
    for uri in (version.source, (version.tags or {}).get(SOURCE_MODEL_TAG)):
        if isinstance(uri, str) and uri.startswith("models:/m-"):
            return uri[len("models:/"):].strip("/")
    return None


def _find_by_key(client, name: str, key: str):
    from mlflow.exceptions import MlflowException

    quoted = key.replace("\\", "\\\\").replace("'", "\\'")
    try:
        found = client.search_model_versions(f"name = '{name}' and tags.`{IDEMPOTENCY_TAG}` = '{quoted}'")
    except MlflowException as exc:
        if _is_missing(exc):
            return []
        raise
    return sorted(found, key=lambda v: int(v.version))


def _aliases(client, name: str) -> dict[str, str] | None:
    from mlflow.exceptions import MlflowException

    try:
        return {alias: str(version) for alias, version in (client.get_registered_model(name).aliases or {}).items()}
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def get_champion(tracking_uri: str | None, name: str) -> dict | None:
    """The version under alias ``champion`` (a dict, see :func:`register_champion`), or ``None``."""
    name = _check_name(name)
    client = _client(tracking_uri)
    aliases = _aliases(client, name)
    if not aliases or CHAMPION not in aliases:
        return None
    return _version_info(client, client.get_model_version(name, aliases[CHAMPION]))


def champion_metrics(tracking_uri: str | None, name: str) -> dict | None:
    """The metrics recorded on the champion version when it was registered, or ``None``."""
    return _stored_champion_metrics(tracking_uri, name)


def _stored_champion_metrics(tracking_uri: str | None, name: str) -> dict | None:
    champion = get_champion(tracking_uri, name)
    return champion["metrics"] if champion and champion["metrics"] else None


def register_champion(tracking_uri: str | None, model_uri: str, name: str, *, lock=None, **kwargs) -> dict:
    """Register ``model_uri`` as the champion of ``name`` (see :func:`_register_champion`).

    ``lock``: a context manager held from reading the current champion to moving the aliases
    (e.g. :func:`dlagent.ml.locks.named_lock`), so two deployments at once cannot both take
    the same champion as their ``previous`` and lose one from the rollback chain.
    """
    with lock if lock is not None else contextlib.nullcontext():
        return _register_champion(tracking_uri, model_uri, name, **kwargs)


def _register_champion(
    tracking_uri: str | None,
    model_uri: str,
    name: str,
    *,
    idempotency_key: str,
    run_id: str | None = None,
    tflite_path=None,
    metrics: dict | None = None,
    tags: dict | None = None,
    description: str | None = None,
) -> dict:
    """Register ``model_uri`` as a new version of ``name`` and make it the champion.

    The former champion keeps alias ``previous`` (and is recorded on the new version as tag
    ``dlagent.previous_version``, so :func:`rollback` can walk further back). ``tflite_path``,
    when given, is copied into the logged model as ``tflite/model.tflite`` first; ``metrics``
    are stored as version tags ``dlagent.metric.<name>`` (what the next gate compares with).

    Idempotent: a second call with the same ``idempotency_key`` returns the first call's
    version (``created: False``) without registering another; if the first call stopped
    before moving the aliases, this call finishes that. The same key with a *different*
    model raises :class:`ConfigError`. Returns a dict: ``name``, ``version``, ``model_uri``
    (``models:/<name>/<version>``), ``source``, ``run_id``, ``model_id``, ``aliases``,
    ``tags``, ``previous_version``, ``tflite_artifact``, ``metrics``, ``created``.
    """
    from mlflow.exceptions import MlflowException

    name = _check_name(name)
    if not isinstance(idempotency_key, str) or not idempotency_key.strip() or len(idempotency_key) > 5000:
        raise ConfigError("idempotency_key", f"must be a non-empty string of at most 5000 characters, got {idempotency_key!r}.",
                          "derive it from where the call comes from, e.g. f'{dag_id}/{run_id}'.")
    client = _client(tracking_uri)
    tflite = None
    if tflite_path is not None:
        tflite = Path(tflite_path)
        if not tflite.is_file():
            raise ConfigError("tflite_path", f"{str(tflite)!r} is not a file.", "pass the .tflite file the compression step wrote.")
    metric_tags = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"metrics.{key}", f"must be a number, got {value!r}.", "pass measured metrics only.")
        metric_tags[f"{METRIC_TAG_PREFIX}{key}"] = repr(float(value))

    existing = _find_by_key(client, name, idempotency_key)
    logged = resolve_logged_model(tracking_uri, model_uri)
    if existing:
        version = existing[0]
        registered_id = _model_id_of(version)
        if registered_id is not None and registered_id != logged.model_id:
            raise ConfigError(
                "idempotency_key",
                f"{idempotency_key!r} already registered version {version.version} of {name!r} from "
                f"{version.tags.get(SOURCE_MODEL_TAG)!r}, not from {model_uri!r}.",
                "reuse a key only to retry the same deployment; a new deployment needs a new key.",
            )
        if PROMOTED_TAG not in version.tags:
            _promote(client, name, version)
        log.info("idempotency key %r already registered %s version %s: nothing new registered",
                 idempotency_key, name, version.version)
        return _version_info(client, client.get_model_version(name, version.version), created=False)

    mlmodel = _read_mlmodel(tracking_uri, logged)
    if not mlmodel.get("signature"):
        raise ConfigError("model_uri", f"{model_uri!r} was logged without a signature; serving could not check its input.",
                          "log it with dlagent.ml.registry.log_deployable_model or training.log_keras_model.")
    # Every check passed: from here on the registry changes.
    try:
        client.create_registered_model(name, description=description)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    if tflite is not None:
        _upload_tflite_file(client, logged.model_id, tflite)
    has_tflite = tflite is not None or _has_tflite(client, logged.model_id)
    aliases = _aliases(client, name) or {}
    version_tags = {
        IDEMPOTENCY_TAG: idempotency_key,
        SOURCE_MODEL_TAG: model_uri,
        **({PREVIOUS_VERSION_TAG: aliases[CHAMPION]} if CHAMPION in aliases else {}),
        **({TFLITE_TAG: f"{TFLITE_DIR}/{TFLITE_FILE}"} if has_tflite else {}),
        **({TFLITE_SHA_TAG: hashlib.sha256(tflite.read_bytes()).hexdigest()} if tflite is not None else {}),
        **metric_tags,
        **{str(k): str(v) for k, v in (tags or {}).items()},
    }
    source_run = run_id or logged.source_run_id
    version = client.create_model_version(
        name, source=logged.artifact_location, run_id=source_run, tags=version_tags, description=description,
        model_id=logged.model_id if source_run else None,  # without a run the store asks the global URI
    )
    version = _resolve_race(client, name, idempotency_key, version)
    _link_logged_model(client, logged.model_id, name, version.version)
    _promote(client, name, version)
    log.info("registered %s version %s from %s and moved alias %r to it (former champion: %s)",
             name, version.version, model_uri, CHAMPION, aliases.get(CHAMPION))
    return _version_info(client, client.get_model_version(name, version.version), created=True)


def _upload_tflite_file(client, model_id: str, path: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(path, Path(tmp) / TFLITE_FILE)
        client.log_model_artifacts(model_id, tmp, artifact_path=TFLITE_DIR)


def _has_tflite(client, model_id: str) -> bool:
    try:
        return any(Path(f.path).name == TFLITE_FILE for f in client.list_logged_model_artifacts(model_id, TFLITE_DIR))
    except Exception:  # noqa: BLE001 - no tflite folder
        return False


def _resolve_race(client, name: str, key: str, version):
    """Two tasks racing with one key may both create a version: keep the lowest, drop ours."""
    same_key = _find_by_key(client, name, key)
    if same_key and str(same_key[0].version) != str(version.version):
        log.warning("another call registered %s version %s with key %r first: dropping version %s",
                    name, same_key[0].version, key, version.version)
        client.delete_model_version(name, version.version)
        return same_key[0]
    return version


def _link_logged_model(client, model_id: str, name: str, version: str) -> None:
    """Record the version on the logged model (what ``mlflow.register_model`` does; UI link)."""
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    try:
        logged = client.get_logged_model(model_id)
        entries = json.loads(logged.tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
        entries.append({"name": name, "version": str(version)})
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(entries)})
    except Exception as exc:  # noqa: BLE001 - a UI link is not worth failing a deployment
        log.warning("could not link logged model %s to %s version %s: %s", model_id, name, version, exc)


def _promote(client, name: str, version) -> None:
    """``previous`` -> the champion this version replaces; ``champion`` -> this version."""
    former = (version.tags or {}).get(PREVIOUS_VERSION_TAG)
    if former and str(former) != str(version.version):
        client.set_registered_model_alias(name, PREVIOUS, str(former))
    client.set_registered_model_alias(name, CHAMPION, str(version.version))
    client.set_model_version_tag(name, str(version.version), PROMOTED_TAG, _now())


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def rollback(tracking_uri: str | None, name: str) -> dict:
    """Move ``champion`` back to ``previous``; ``previous`` moves one step further back.

    The version rolled back from is tagged ``dlagent.rolled_back_at``. Raises
    :class:`RegistryError` (and changes nothing) when there is no ``previous`` alias.
    Returns ``{"name", "champion", "previous", "rolled_back_from"}`` (versions as strings,
    ``previous`` ``None`` when history runs out).
    """
    from mlflow.exceptions import MlflowException

    name = _check_name(name)
    client = _client(tracking_uri)
    aliases = _aliases(client, name)
    if aliases is None:
        raise RegistryError(f"no registered model named {name!r}: nothing to roll back.")
    if PREVIOUS not in aliases:
        raise RegistryError(f"{name!r} has no {PREVIOUS!r} alias (champion: {aliases.get(CHAMPION)}): nothing to roll back to.")
    target = aliases[PREVIOUS]
    current = aliases.get(CHAMPION)
    target_version = client.get_model_version(name, target)
    further = (target_version.tags or {}).get(PREVIOUS_VERSION_TAG)
    if further:
        try:
            client.get_model_version(name, further)
        except MlflowException:
            further = None
    client.set_registered_model_alias(name, CHAMPION, target)
    if further and further != target:
        client.set_registered_model_alias(name, PREVIOUS, further)
    else:
        client.delete_registered_model_alias(name, PREVIOUS)
        further = None
    if current and current != target:
        client.set_model_version_tag(name, current, ROLLED_BACK_TAG, _now())
    log.info("rolled %s back from version %s to version %s (previous now %s)", name, current, target, further)
    return {"name": name, "champion": target, "previous": further, "rolled_back_from": current}


_UNSET = object()


def deploy_if_blessed(
    tracking_uri: str | None,
    name: str,
    model_uri: str,
    *,
    candidate_metrics: dict,
    reference_metrics: dict | None,
    thresholds=None,
    idempotency_key: str,
    champion_metrics: dict | None = None,
    run_id: str | None = None,
    tflite_path=None,
    tags: dict | None = None,
    lock=None,
    evaluated_champion=_UNSET,
) -> dict:
    """Gate the candidate and register it only when blessed.

    ``lock`` (see :func:`register_champion`) is held over the gate and the promotion, so a
    deployment racing another is gated against the champion the other one just made.

    ``champion_metrics`` defaults to the metrics stored on the current champion version
    (pass metrics re-measured on the current test split when the data changed). Returns
    ``{"decision": <gate.decide result>, "version": <register_champion result> | None}``.
    A retry after a successful deployment (same ``idempotency_key``) returns the registered
    version without gating again, since the champion is then the candidate itself.
    ``evaluated_champion``: the champion version ``champion_metrics`` were measured on; when
    another deployment has moved the alias since, the new champion's stored metrics are used.
    """
    with lock if lock is not None else contextlib.nullcontext():
        return _deploy_if_blessed(tracking_uri, name, model_uri, candidate_metrics=candidate_metrics,
                                  reference_metrics=reference_metrics, thresholds=thresholds, idempotency_key=idempotency_key,
                                  champion_metrics=champion_metrics, run_id=run_id, tflite_path=tflite_path, tags=tags,
                                  evaluated_champion=evaluated_champion)


def _deploy_if_blessed(tracking_uri, name, model_uri, *, candidate_metrics, reference_metrics, thresholds, idempotency_key,
                       champion_metrics, run_id, tflite_path, tags, evaluated_champion) -> dict:
    from dlagent.ml.gate import decide

    name = _check_name(name)
    client = _client(tracking_uri)
    if evaluated_champion is not _UNSET:
        current = get_champion(tracking_uri, name)
        if (current or {}).get("version") != (None if evaluated_champion is None else str(evaluated_champion)):
            log.warning("the champion of %s moved from %s to %s since the evaluation: gating against the new one's stored metrics",
                        name, evaluated_champion, (current or {}).get("version"))
            champion_metrics = (current or {}).get("metrics") or None
    if isinstance(idempotency_key, str) and idempotency_key.strip():
        done = _find_by_key(client, name, idempotency_key)
        if done:
            version = register_champion(tracking_uri, model_uri, name, idempotency_key=idempotency_key, run_id=run_id)
            return {"decision": {"blessed": True, "reasons": [f"already deployed as version {version['version']} by this key"],
                                 "checks": []}, "version": version}
    if champion_metrics is None:
        champion_metrics = _stored_champion_metrics(tracking_uri, name)
    decision = decide(candidate_metrics, reference_metrics, champion_metrics, thresholds)
    if not decision["blessed"]:
        log.info("candidate %s not blessed: %s", model_uri, "; ".join(decision["reasons"]))
        return {"decision": decision, "version": None}
    version = register_champion(tracking_uri, model_uri, name, idempotency_key=idempotency_key, run_id=run_id,
                                tflite_path=tflite_path, metrics=candidate_metrics, tags=tags)
    return {"decision": decision, "version": version}


# --------------------------------------------------------------------------- serving bundles


def write_serving_bundle(deploy_dir, model_files: dict, labels: list, metadata: dict, *, bundle_name: str | None = None,
                         keep: int = 3) -> Path:
    """Write a serving bundle and make it current, never exposing a half-written one.

    ``model_files`` maps file names (``model.tflite``) to bytes or to a path to copy. The
    files, ``labels.json`` and ``metadata.json`` (with each file's sha256 added) are written
    to a temporary folder *in* ``deploy_dir``, fsync'ed, renamed to ``bundle-<bundle_name>``,
    and the symbolic link ``deploy_dir/current`` is swapped to it with ``os.replace`` (atomic
    on POSIX). A bundle name that already exists is complete (it appears only by rename), so a
    retry just re-points ``current``. Older bundles beyond ``keep`` are removed. Returns the
    path of ``deploy_dir/current``.
    """
    if not isinstance(model_files, dict) or not model_files:
        raise ConfigError("model_files", "must map at least one file name to bytes or a path.", "pass e.g. {'model.tflite': tflite_bytes}.")
    for file_name in model_files:
        if not isinstance(file_name, str) or not file_name or "/" in file_name or file_name.startswith(".") or file_name in (LABELS_FILE, METADATA_FILE):
            raise ConfigError("model_files", f"bad file name {file_name!r}.", "use plain names such as 'model.tflite'.")
    if not isinstance(labels, (list, tuple)):
        raise ConfigError("labels", f"must be a list of class names, got {type(labels).__name__}.", "pass splits.class_names.")
    if not isinstance(metadata, dict):
        raise ConfigError("metadata", f"must be a JSON object, got {type(metadata).__name__}.", "pass a dict.")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ConfigError("keep", f"must be an integer >= 1, got {keep!r}.", "keep at least the current bundle.")
    deploy = Path(deploy_dir)
    deploy.mkdir(parents=True, exist_ok=True)
    current = deploy / CURRENT_LINK
    if current.exists() and not current.is_symlink():
        raise ConfigError("deploy_dir", f"{str(current)!r} exists and is not a symbolic link made by dlagent.", "move it away or use another deploy_dir.")
    bundle_name = bundle_name or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    if "/" in bundle_name or bundle_name.startswith("."):
        raise ConfigError("bundle_name", f"bad bundle name {bundle_name!r}.", "use e.g. the registered version, 'v3'.")
    final = deploy / f"bundle-{bundle_name}"
    if not final.exists():
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=deploy))
        try:
            digests = {}
            for file_name, content in model_files.items():
                data = content if isinstance(content, (bytes, bytearray)) else Path(content).read_bytes()
                _write_synced(staging / file_name, bytes(data))
                digests[file_name] = hashlib.sha256(data).hexdigest()
            _write_synced(staging / LABELS_FILE, json.dumps([str(label) for label in labels], indent=2).encode())
            full_metadata = {**metadata, "files": digests, "labels_file": LABELS_FILE, "bundle": final.name, "written_at": _now()}
            _write_synced(staging / METADATA_FILE, json.dumps(full_metadata, indent=2, sort_keys=True, default=str).encode())
            _fsync_dir(staging)
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    link = deploy / f".current-{uuid.uuid4().hex[:8]}"
    os.symlink(final.name, link)
    os.replace(link, current)
    _fsync_dir(deploy)
    _prune_bundles(deploy, keep=keep, current=final.name)
    return current


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _prune_bundles(deploy: Path, *, keep: int, current: str) -> None:
    """Keep the current bundle and the ``keep - 1`` newest others."""
    others = sorted((p for p in deploy.glob("bundle-*") if p.is_dir() and p.name != current),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for bundle in others[max(keep - 1, 0):]:
        shutil.rmtree(bundle, ignore_errors=True)
    for stale in deploy.glob(".staging-*"):  # left by a writer that was killed
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)


def deploy_champion_bundle(tracking_uri: str | None, name: str, deploy_dir, *, extra_metadata: dict | None = None) -> Path:
    """Download the champion's TFLite file and labels and write them as the current bundle."""
    import mlflow

    champion = get_champion(tracking_uri, name)
    if champion is None:
        raise RegistryError(f"{name!r} has no {CHAMPION!r}: nothing to deploy.")
    if not champion["tflite_artifact"]:
        raise RegistryError(f"{name!r} version {champion['version']} has no TFLite artifact to deploy.")
    location = _client(tracking_uri).get_model_version_download_uri(name, champion["version"])
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{location.rstrip('/')}/{TFLITE_DIR}",
                                                         dst_path=tmp, tracking_uri=tracking_uri))
        labels = json.loads((local / LABELS_FILE).read_text()) if (local / LABELS_FILE).exists() else []
        metadata = {"model_name": name, "version": champion["version"], "model_uri": champion["model_uri"],
                    "source": champion["source"], "run_id": champion["run_id"], "metrics": champion["metrics"],
                    **(extra_metadata or {})}
        return write_serving_bundle(deploy_dir, {TFLITE_FILE: (local / TFLITE_FILE).read_bytes()}, labels, metadata,
                                    bundle_name=f"{name}-v{champion['version']}")


# --------------------------------------------------------------------------- reading TFLite files back


def read_tflite(tracking_uri: str | None, model_uri: str) -> bytes:
    """The TFLite file stored inside a logged model (``models:/m-...``), as bytes.

    Raises :class:`ConfigError` (field ``model_uri``) when the model or its TFLite file does not exist.
    """
    logged = resolve_logged_model(tracking_uri, model_uri)
    return _download_tflite(tracking_uri, logged.artifact_location, what=model_uri)


def read_champion_tflite(tracking_uri: str | None, name: str) -> tuple[bytes, dict] | None:
    """``(tflite bytes, version info)`` of the current champion, or ``None`` when there is none."""
    champion = get_champion(tracking_uri, name)
    if champion is None:
        return None
    location = _client(tracking_uri).get_model_version_download_uri(name, champion["version"])
    return _download_tflite(tracking_uri, location, what=f"models:/{name}@{CHAMPION}"), champion


def _download_tflite(tracking_uri: str | None, location: str, *, what: str) -> bytes:
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"{location.rstrip('/')}/{TFLITE_DIR}/{TFLITE_FILE}",
                                                        dst_path=tmp, tracking_uri=tracking_uri)
        except (MlflowException, OSError) as exc:
            raise ConfigError("model_uri", f"{what} has no {TFLITE_DIR}/{TFLITE_FILE}: {exc}",
                              "pass a model logged by the compress step (it stores the TFLite file with the Keras model).") from exc
        return Path(local).read_bytes()
