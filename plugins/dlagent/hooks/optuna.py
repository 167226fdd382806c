"""OptunaHook: where the tuning study lives (an RDB URL for optuna.storages.RDBStorage).

Resolution order:

1. the Airflow Connection ``optuna_default`` (or the ``optuna_conn_id`` given): its extra
   ``storage_url`` if set, otherwise the Connection itself as a database URL — a
   ``postgres`` Connection becomes ``postgresql+psycopg2://user:password@host:port/schema``;
2. the ``DLAGENT_OPTUNA_STORAGE`` environment variable (any SQLAlchemy URL);
3. the embedded file ``sqlite:///$DLAGENT_HOME/optuna/optuna.db``.

Parallel workers on several machines need a shared server (PostgreSQL); SQLite is for one
machine.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook

from dlagent import settings

_DRIVERS = {"postgres": "postgresql+psycopg2", "postgresql": "postgresql+psycopg2", "mysql": "mysql+pymysql"}


class OptunaHook(BaseHook):
    conn_name_attr = "optuna_conn_id"
    default_conn_name = "optuna_default"
    conn_type = "postgres"
    hook_name = "Optuna study storage"

    def __init__(self, optuna_conn_id: str = default_conn_name, **kwargs):
        super().__init__(**kwargs)
        self.optuna_conn_id = optuna_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {"relabeling": {"schema": "Database"}, "placeholders": {"extra": '{"storage_url": "postgresql+psycopg2://..."}'}}

    @cached_property
    def storage_url(self) -> str:
        url = self._storage_url()
        settings.mask_url_password(url)
        return url

    def _storage_url(self) -> str:
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = self.get_connection(self.optuna_conn_id)
        except AirflowNotFoundException:
            conn = None
        if conn is not None:
            extra = conn.extra_dejson or {}
            if extra.get("storage_url"):
                return str(extra["storage_url"])
            return _sqlalchemy_url(conn)
        if os.environ.get("DLAGENT_OPTUNA_STORAGE"):
            return os.environ["DLAGENT_OPTUNA_STORAGE"]
        folder = settings.local_optuna_dir()
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder / 'optuna.db'}"

    def get_conn(self) -> str:
        return self.storage_url

    def test_connection(self) -> tuple[bool, str]:
        import sqlalchemy

        try:
            engine = sqlalchemy.create_engine(self.storage_url)
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT 1"))
            engine.dispose()
        except Exception as exc:  # noqa: BLE001 - reported to the person testing the Connection
            return False, f"study storage is not reachable: {type(exc).__name__}"
        return True, "study storage answered."


def _sqlalchemy_url(conn) -> str:
    from urllib.parse import quote

    scheme = _DRIVERS.get(conn.conn_type, conn.conn_type)
    auth = ""
    if conn.login:
        auth = quote(conn.login, safe="") + (f":{quote(conn.password, safe='')}" if conn.password else "") + "@"
    port = f":{conn.port}" if conn.port else ""
    return f"{scheme}://{auth}{conn.host or ''}{port}/{conn.schema or ''}"
