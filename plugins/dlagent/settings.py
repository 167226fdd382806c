"""Where the embedded local stack lives (Airflow home, MLflow store, Optuna study, deploys).

``DLAGENT_HOME`` moves everything; by default it is ``.dlagent/`` in the current working
directory (the project root when started through ``make``). Only paths are decided here:
URIs and credentials come from the hooks.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def dlagent_home() -> Path:
    return Path(os.environ.get("DLAGENT_HOME") or Path.cwd() / ".dlagent").resolve()


def local_mlflow_dir() -> Path:
    return dlagent_home() / "mlflow"


def local_optuna_dir() -> Path:
    return dlagent_home() / "optuna"


def deploy_dir() -> Path:
    return Path(os.environ.get("DLAGENT_DEPLOY_DIR") or dlagent_home() / "deploy").resolve()


def data_roots() -> list[str]:
    """Folders that data sets and model files named in a trigger form may be read from.

    ``DLAGENT_DATA_ROOTS`` (``os.pathsep``-separated) when set. Unset, the project's own data
    folders only (:func:`default_data_roots`): a person who may trigger a DAG must not be able to
    make a worker open any file it can read (a credentials file, another team's data). Secure by
    default, widened by configuration, as Airflow's secrets masking and MLflow's artifact-path
    checks are.
    """
    value = os.environ.get("DLAGENT_DATA_ROOTS", "").strip()
    return [p for p in value.split(os.pathsep) if p] or default_data_roots()


def default_data_roots() -> list[str]:
    """``$DLAGENT_HOME/data`` and the project's ``include/`` folder (beside the DAGs folder, as on an
    Astro-style image)."""
    return [str(dlagent_home() / "data"), str(project_root() / "include")]


def project_root() -> Path:
    """The folder holding ``dags/`` and ``include/``: the parent of Airflow's ``[core] dags_folder``
    (from its environment variable, else ``$AIRFLOW_HOME/dags``). ``include.<module>`` model
    builders are imported from here."""
    dags = os.environ.get("AIRFLOW__CORE__DAGS_FOLDER") or str(Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow") / "dags")
    return Path(dags).expanduser().resolve().parent


DEFAULT_MODEL_MODULES = ("include.",)


def model_modules() -> list[str]:
    """Module prefixes a ``model`` setting of the form ``module:function`` may import a builder from.

    ``DLAGENT_MODEL_MODULES`` (comma-separated; ``pkg.`` allows every module under ``pkg``,
    ``pkg.mod`` that module and its sub-modules). Unset: ``include.`` only, the project's own
    folder. The built-in models (``mlp``, ``cnn``, ``resnet``) are always allowed. A trigger form is
    not a code-upload form: naming a module runs its top-level code in the worker, so only modules
    the deployment chose may be named.
    """
    value = os.environ.get("DLAGENT_MODEL_MODULES", "").strip()
    return [p.strip() for p in value.split(",") if p.strip()] or list(DEFAULT_MODEL_MODULES)


DEFAULT_RETRAIN_CRON = "0 3 * * 1"
_NO_RETRAIN_CRON = ("off", "none")


def retrain_cron() -> str | None:
    """When ``dl_agent_retrain`` retrains on the clock: a cron expression in UTC, or ``None`` (only new data does).

    ``DLAGENT_RETRAIN_CRON`` when set (``off`` or ``none``: no time schedule, the training-data Asset's
    events alone start a retrain); unset, Mondays 03:00 UTC. Read where the DAG file is parsed (the
    dag-processor's environment), so a deployment picks its cadence without editing the packaged DAG.
    """
    value = os.environ.get("DLAGENT_RETRAIN_CRON", "").strip()
    if not value:
        return DEFAULT_RETRAIN_CRON
    if value.lower() in _NO_RETRAIN_CRON:
        return None
    from croniter import croniter

    if not croniter.is_valid(value) or (len(value.split()) != 5 and not value.startswith("@")):  # Airflow takes five fields
        from dlagent.errors import ConfigError

        raise ConfigError("DLAGENT_RETRAIN_CRON", f"{value!r} is not a cron expression.",
                          f'give five fields in UTC, e.g. "{DEFAULT_RETRAIN_CRON}" (Mondays 03:00), or "off" to retrain on new data only.')
    return value


def redact_url(url: str) -> str:
    """``scheme://***@host/...``: a database or server URL safe to print in a log."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def client_location(client) -> str:
    """Where an ``MlflowClient`` points, for a message: its tracking URI without credentials."""
    tracking = getattr(client, "_tracking_client", None)
    uri = getattr(tracking, "tracking_uri", None) or getattr(client, "tracking_uri", None) or "<unknown>"
    return redact_url(str(uri))


_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/@'\"<>]+@")


def redact_text(text: str) -> str:
    """``text`` with every ``scheme://user:password@`` in it turned into ``scheme://***@``.

    For messages we did not write (an MLflow or database error quoting the URL it failed on)
    before they go into a log, an exception or a Connection test result.
    """
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}***@", str(text))


def mask_url_password(url: str | None) -> None:
    """Register the password inside ``url`` with Airflow's secrets masker (task logs hide it).

    Airflow masks a Connection's password field by itself, but not a password inside a URL
    held in ``extra`` or an environment variable. Outside Airflow this does nothing.
    """
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url or "").password
    except ValueError:
        return
    if not password:
        return
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # the ML core without Airflow
        return
    for value in {password, unquote(password)}:
        mask_secret(value)


DEFAULT_MLFLOW_UI_URL = "http://127.0.0.1:5000"


def mlflow_ui_url(tracking_uri: str | None = None) -> str:
    """Base URL of the MLflow UI that links in Airflow point a person's browser to.

    ``DLAGENT_MLFLOW_UI_URL`` when set (for a tracking server a browser reaches at another
    address, e.g. ``http://mlflow:5000`` inside docker compose); else the tracking URI itself
    when it is an http(s) server (the UI is served there), without any credentials in it;
    else ``http://127.0.0.1:5000``, where ``make mlflow-ui`` serves the embedded SQLite store.
    """
    from urllib.parse import urlsplit, urlunsplit

    value = os.environ.get("DLAGENT_MLFLOW_UI_URL", "").strip()
    if value:
        return value.rstrip("/")
    if tracking_uri and tracking_uri.startswith(("http://", "https://")):
        parts = urlsplit(tracking_uri)
        host = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit((parts.scheme, host, parts.path, "", "")).rstrip("/")
    return DEFAULT_MLFLOW_UI_URL
