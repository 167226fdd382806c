"""MLflow Model Registry with aliases (never stages): idempotent promotion, rollback, gated deploys.

Every function takes an ``MlflowClient`` whose registry URI is its tracking URI
(``MlflowClient(uri, registry_uri=uri)``, what ``MLflowHook.client`` is); nothing here changes
MLflow's process-wide settings.

* :func:`register_champion` registers a logged model as a new version, moves alias
  ``champion`` to it and keeps the former champion under ``previous``. It is idempotent: the
  ``idempotency_key`` (e.g. ``dag_id/run_id``) is stored as a version tag, and a second call
  with the same key returns the version the first call made (and finishes its promotion if
  the first call died half-way) instead of registering another one.
* :func:`rollback` moves ``champion`` back to ``previous`` (and ``previous`` one further back).
* :func:`get_champion` reads the champion version, or ``None``.
* :func:`deploy_if_blessed` runs the gate (:mod:`dlagent.ml.gate`) and registers only a
  blessed candidate; a rejected one leaves the registry exactly as it was.

Every input is checked before the first write: a model URI that does not exist, a missing
TFLite file or a reused idempotency key with another model raise before the registry changes.
Serving bundles (the files a server reads) are :mod:`dlagent.ml.serving`.

MLflow 3.17 caveat worked around here: its SQL registry store resolves a ``models:/m-...``
version source through the *process-global* tracking URI, not the client's; so versions are
created from the logged model's resolved artifact location (with its ``model_id`` and source
run), and the ``models:/m-...`` URI is kept as the version tag ``dlagent.source_model_uri``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from dlagent.errors import ConfigError
from dlagent.ml import mlflow_names as names
from dlagent.ml.mlflow_names import CHAMPION, PREVIOUS, TFLITE_DIR, TFLITE_FILE
from dlagent.ml.model_store import read_mlmodel, resolve_logged_model

log = logging.getLogger(__name__)


class RegistryError(RuntimeError):
    """The registry is not in a state that allows the operation (e.g. nothing to roll back to)."""


def check_model_name(name) -> str:
    """A registered-model name, stripped; :class:`ConfigError` (field ``model_name``) otherwise."""
    if not isinstance(name, str) or not name.strip() or "/" in name or "@" in name or ":" in name:
        raise ConfigError("model_name", f"must be a non-empty name without '/', '@' or ':', got {name!r}.", "use e.g. 'dlagent-digits'.")
    return name.strip()


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _version_info(client, version, *, created: bool | None = None) -> dict:
    aliases = list(getattr(version, "aliases", []) or [])
    if not aliases:
        try:
            rm = client.get_registered_model(version.name)
            aliases = sorted(a for a, v in (rm.aliases or {}).items() if str(v) == str(version.version))
        except Exception:  # noqa: BLE001 - aliases are informative here
            aliases = []
    return names.version_info(version, aliases=aliases, created=created)


def _find_by_key(client, name: str, key: str):
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{names.quote(name)}' and {names.tag_equals(names.IDEMPOTENCY_TAG, key)}")
    except MlflowException as exc:
        if names.is_missing(exc):
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


def get_champion(client, name: str) -> dict | None:
    """The version under alias ``champion`` (a dict, see :func:`dlagent.ml.mlflow_names.read_champion`), or ``None``."""
    return names.read_champion(client, check_model_name(name))


def register_champion(client, model_uri: str, name: str, *, lock=None, **kwargs) -> dict:
    """Register ``model_uri`` as the champion of ``name`` (see :func:`_register_champion`).

    ``lock``: a context manager held from reading the current champion to moving the aliases
    (e.g. :func:`dlagent.ml.locks.named_lock`), so two deployments at once cannot both take
    the same champion as their ``previous`` and lose one from the rollback chain.
    """
    with lock if lock is not None else contextlib.nullcontext():
        return _register_champion(client, model_uri, name, **kwargs)


def _register_champion(
    client,
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
    model raises :class:`ConfigError`. Returns the version as a dict (``name``, ``version``,
    ``model_uri``, ``source``, ``run_id``, ``model_id``, ``aliases``, ``tags``,
    ``previous_version``, ``tflite_artifact``, ``metrics``, ``created``).
    """
    from mlflow.exceptions import MlflowException

    name = check_model_name(name)
    if not isinstance(idempotency_key, str) or not idempotency_key.strip() or len(idempotency_key) > 5000:
        raise ConfigError("idempotency_key", f"must be a non-empty string of at most 5000 characters, got {idempotency_key!r}.",
                          "derive it from where the call comes from, e.g. f'{dag_id}/{run_id}'.")
    tflite = None
    if tflite_path is not None:
        tflite = Path(tflite_path)
        if not tflite.is_file():
            raise ConfigError("tflite_path", f"{str(tflite)!r} is not a file.", "pass the .tflite file the compression step wrote.")
    metric_tags = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"metrics.{key}", f"must be a number, got {value!r}.", "pass measured metrics only.")
        metric_tags[names.metric_tag(key)] = repr(float(value))

    existing = _find_by_key(client, name, idempotency_key)
    logged = resolve_logged_model(client, model_uri)
    if existing:
        version = existing[0]
        registered_id = names.model_id_of(version)
        if registered_id is not None and registered_id != logged.model_id:
            raise ConfigError(
                "idempotency_key",
                f"{idempotency_key!r} already registered version {version.version} of {name!r} from "
                f"{version.tags.get(names.SOURCE_MODEL_TAG)!r}, not from {model_uri!r}.",
                "reuse a key only to retry the same deployment; a new deployment needs a new key.",
            )
        if names.PROMOTED_TAG not in version.tags:
            _promote(client, name, version)
        log.info("idempotency key %r already registered %s version %s: nothing new registered",
                 idempotency_key, name, version.version)
        return _version_info(client, client.get_model_version(name, version.version), created=False)

    if not read_mlmodel(client, logged).get("signature"):
        raise ConfigError("model_uri", f"{model_uri!r} was logged without a signature; serving could not check its input.",
                          "log it with dlagent.ml.model_store.log_keras_model.")
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
        names.IDEMPOTENCY_TAG: idempotency_key,
        names.SOURCE_MODEL_TAG: model_uri,
        **({names.PREVIOUS_VERSION_TAG: aliases[CHAMPION]} if CHAMPION in aliases else {}),
        **({names.TFLITE_TAG: f"{TFLITE_DIR}/{TFLITE_FILE}"} if has_tflite else {}),
        **({names.TFLITE_SHA_TAG: hashlib.sha256(tflite.read_bytes()).hexdigest()} if tflite is not None else {}),
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
    former = (version.tags or {}).get(names.PREVIOUS_VERSION_TAG)
    if former and str(former) != str(version.version):
        client.set_registered_model_alias(name, PREVIOUS, str(former))
    client.set_registered_model_alias(name, CHAMPION, str(version.version))
    client.set_model_version_tag(name, str(version.version), names.PROMOTED_TAG, now())


def rollback(client, name: str) -> dict:
    """Move ``champion`` back to ``previous``; ``previous`` moves one step further back.

    The version rolled back from is tagged ``dlagent.rolled_back_at``. Raises
    :class:`RegistryError` (and changes nothing) when there is no ``previous`` alias.
    Returns ``{"name", "champion", "previous", "rolled_back_from"}`` (versions as strings,
    ``previous`` ``None`` when history runs out).
    """
    from mlflow.exceptions import MlflowException

    name = check_model_name(name)
    aliases = _aliases(client, name)
    if aliases is None:
        raise RegistryError(f"no registered model named {name!r}: nothing to roll back.")
    if PREVIOUS not in aliases:
        raise RegistryError(f"{name!r} has no {PREVIOUS!r} alias (champion: {aliases.get(CHAMPION)}): nothing to roll back to.")
    target = aliases[PREVIOUS]
    current = aliases.get(CHAMPION)
    target_version = client.get_model_version(name, target)
    further = (target_version.tags or {}).get(names.PREVIOUS_VERSION_TAG)
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
        client.set_model_version_tag(name, current, names.ROLLED_BACK_TAG, now())
    log.info("rolled %s back from version %s to version %s (previous now %s)", name, current, target, further)
    return {"name": name, "champion": target, "previous": further, "rolled_back_from": current}


_UNSET = object()


def deploy_if_blessed(client, name: str, model_uri: str, *, candidate_metrics: dict, reference_metrics: dict | None,
                      idempotency_key: str, thresholds=None, champion_metrics: dict | None = None, run_id: str | None = None,
                      tags: dict | None = None, lock=None, evaluated_champion=_UNSET, metric: str | None = None,
                      candidate_vs_champion: float | None = None) -> dict:
    """Gate the candidate on the primary ``metric`` (accuracy when empty) and register it only when blessed.

    ``lock`` (see :func:`register_champion`) is held over the gate and the promotion, so a
    deployment racing another is gated against the champion the other one just made.

    ``champion_metrics`` defaults to the metrics stored on the current champion version
    (pass metrics re-measured on the current test split when the data changed). Returns
    ``{"decision": <gate.decide result>, "version": <register_champion result> | None}``.
    A retry after a successful deployment (same ``idempotency_key``) returns the registered
    version without gating again, since the champion is then the candidate itself.
    ``evaluated_champion``: the champion version ``champion_metrics`` were measured on; when
    another deployment has moved the alias since, the new champion's stored metrics are used.
    ``candidate_vs_champion``: the candidate's score on the rows ``champion_metrics`` were measured
    on when not the whole test split (:func:`dlagent.ml.gate.decide`); dropped with them.
    """
    from dlagent.ml.gate import decide

    name = check_model_name(name)
    with lock if lock is not None else contextlib.nullcontext():
        if evaluated_champion is not _UNSET:
            current = get_champion(client, name)
            if (current or {}).get("version") != (None if evaluated_champion is None else str(evaluated_champion)):
                log.warning("the champion of %s moved from %s to %s since the evaluation: gating against the new one's stored metrics",
                            name, evaluated_champion, (current or {}).get("version"))
                champion_metrics = (current or {}).get("metrics") or None
                candidate_vs_champion = None
        if isinstance(idempotency_key, str) and idempotency_key.strip() and _find_by_key(client, name, idempotency_key):
            version = register_champion(client, model_uri, name, idempotency_key=idempotency_key, run_id=run_id)
            return {"decision": {"blessed": True, "reasons": [f"already deployed as version {version['version']} by this key"],
                                 "checks": []}, "version": version}
        if champion_metrics is None:
            champion = get_champion(client, name)
            champion_metrics = champion["metrics"] if champion and champion["metrics"] else None
            candidate_vs_champion = None
        decision = decide(candidate_metrics, reference_metrics, champion_metrics, thresholds, metric,
                          candidate_vs_champion=candidate_vs_champion)
        if not decision["blessed"]:
            log.info("candidate %s not blessed: %s", model_uri, "; ".join(decision["reasons"]))
            return {"decision": decision, "version": None}
        version = register_champion(client, model_uri, name, idempotency_key=idempotency_key, run_id=run_id,
                                    metrics=candidate_metrics, tags=tags)
        return {"decision": decision, "version": version}
