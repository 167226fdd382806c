"""MLflowHook: the one place that decides which MLflow tracking server a task talks to.

Resolution order for the tracking URI:

1. the Airflow Connection ``mlflow_default`` (or the ``mlflow_conn_id`` given): its extra
   ``tracking_uri`` if set, otherwise ``<scheme>://host:port`` built from its fields
   (``AIRFLOW_CONN_MLFLOW_DEFAULT='http://127.0.0.1:5000'`` is enough);
2. the ``MLFLOW_TRACKING_URI`` environment variable;
3. the embedded store ``sqlite:///$DLAGENT_HOME/mlflow/mlflow.db``.

Artifacts of experiments this hook creates go to the Connection's extra ``artifact_location``,
else ``DLAGENT_ARTIFACT_ROOT``, else (embedded store only) ``$DLAGENT_HOME/mlflow/artifacts``;
a remote server otherwise chooses its own artifact root.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook

from dlagent import settings


class MLflowHook(BaseHook):
    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "mlflow"
    hook_name = "MLflow"

    def __init__(self, mlflow_conn_id: str = default_conn_name, **kwargs):
        super().__init__(**kwargs)
        self.mlflow_conn_id = mlflow_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema"],
            "relabeling": {"host": "Tracking server host", "login": "Username (MLflow auth)"},
            "placeholders": {"extra": '{"tracking_uri": "http://mlflow:5000", "artifact_location": "s3://bucket/mlflow"}'},
        }

    @cached_property
    def _connection(self):
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            return self.get_connection(self.mlflow_conn_id)
        except AirflowNotFoundException:
            return None

    @cached_property
    def tracking_uri(self) -> str:
        uri = self._tracking_uri()
        settings.mask_url_password(uri)
        return uri

    def _tracking_uri(self) -> str:
        conn = self._connection
        if conn is not None:
            extra = conn.extra_dejson or {}
            if extra.get("tracking_uri"):
                return str(extra["tracking_uri"])
            if conn.host:
                scheme = extra.get("scheme") or (conn.conn_type if conn.conn_type in ("http", "https") else "http")
                port = f":{conn.port}" if conn.port else ""
                return f"{scheme}://{conn.host}{port}"
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        return f"sqlite:///{settings.local_mlflow_dir() / 'mlflow.db'}"

    @cached_property
    def artifact_location(self) -> str | None:
        conn = self._connection
        if conn is not None and (conn.extra_dejson or {}).get("artifact_location"):
            return str(conn.extra_dejson["artifact_location"])
        if os.environ.get("DLAGENT_ARTIFACT_ROOT"):
            return os.environ["DLAGENT_ARTIFACT_ROOT"]
        if self.tracking_uri.startswith("sqlite:") or self.tracking_uri.startswith("postgresql"):
            return str(settings.local_mlflow_dir() / "artifacts")
        return None

    @cached_property
    def ui_url(self) -> str:
        """Base URL of the MLflow UI for links a person opens (no trailing slash).

        The Connection's extra ``ui_url`` if set, else :func:`dlagent.settings.mlflow_ui_url`:
        ``DLAGENT_MLFLOW_UI_URL``, else an http(s) tracking server itself, else
        ``http://127.0.0.1:5000`` (``make mlflow-ui`` for the embedded store).
        """
        conn = self._connection
        if conn is not None and (conn.extra_dejson or {}).get("ui_url"):
            return str(conn.extra_dejson["ui_url"]).rstrip("/")
        return settings.mlflow_ui_url(self.tracking_uri)

    def get_conn(self):
        """An ``MlflowClient`` for this server (created on first use, no I/O before)."""
        return self.client

    @cached_property
    def client(self):
        """The ``MlflowClient`` every dlagent task hands to the ML core (registry URI = tracking URI).

        Nothing process-wide changes: MLflow's global tracking URI is never set, and the
        Connection's login travels inside this client's URI only (HTTP basic auth in the URL,
        which ``requests`` sends as an ``Authorization`` header), never through ``os.environ``,
        so a subprocess or a second hook in the same worker does not inherit it. The password
        is registered with Airflow's secrets masker, and every message prints the URI redacted.
        """
        from mlflow import MlflowClient

        uri = self._authenticated_uri()
        if uri.startswith("sqlite:///"):
            os.makedirs(os.path.dirname(uri[len("sqlite:///"):]), exist_ok=True)
        return MlflowClient(uri, registry_uri=uri)

    def _authenticated_uri(self) -> str:
        """The tracking URI with the Connection's login and password in it (http(s) servers only)."""
        from urllib.parse import quote, urlsplit, urlunsplit

        conn, uri = self._connection, self.tracking_uri
        if conn is None or not conn.login or not uri.startswith(("http://", "https://")):
            return uri
        parts = urlsplit(uri)
        if "@" in parts.netloc:  # the URI names its own credentials
            return uri
        auth = quote(conn.login, safe="") + (f":{quote(conn.password, safe='')}" if conn.password else "")
        authenticated = urlunsplit((parts.scheme, f"{auth}@{parts.netloc}", parts.path, parts.query, parts.fragment))
        settings.mask_url_password(authenticated)
        return authenticated

    def get_experiment_id(self, name: str) -> str:
        from dlagent.ml.tracking import ensure_experiment

        return ensure_experiment(self.client, name, self.artifact_location)

    def test_connection(self) -> tuple[bool, str]:
        try:
            self.client.search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - reported to the person testing the Connection
            return False, f"MLflow at {settings.redact_url(self.tracking_uri)} is not reachable: {settings.redact_text(exc)}"
        return True, f"MLflow at {settings.redact_url(self.tracking_uri)} answered."
