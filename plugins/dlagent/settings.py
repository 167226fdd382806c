"""Where the embedded local stack lives (Airflow home, MLflow store, Optuna study, deploys).

``DLAGENT_HOME`` moves everything; by default it is ``.dlagent/`` in the current working
directory (the project root when started through ``make``). Only paths are decided here:
URIs and credentials come from the hooks.
"""

from __future__ import annotations

import os
from pathlib import Path


def dlagent_home() -> Path:
    return Path(os.environ.get("DLAGENT_HOME") or Path.cwd() / ".dlagent").resolve()


def local_mlflow_dir() -> Path:
    return dlagent_home() / "mlflow"


def local_optuna_dir() -> Path:
    return dlagent_home() / "optuna"


def deploy_dir() -> Path:
    return Path(os.environ.get("DLAGENT_DEPLOY_DIR") or dlagent_home() / "deploy").resolve()


def data_roots() -> list[str] | None:
    """Folders data sets may be read from (``DLAGENT_DATA_ROOTS``, ``os.pathsep``-separated).

    Unset means no restriction, as for a person running on their own machine; a shared
    deployment sets it so a Param cannot make a task read outside the data folders.
    """
    value = os.environ.get("DLAGENT_DATA_ROOTS", "").strip()
    return [p for p in value.split(os.pathsep) if p] or None


def redact_url(url: str) -> str:
    """``scheme://***@host/...``: a database or server URL safe to print in a log."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
