"""Weights as MLflow artifacts: what a site sends and the coordinator publishes, by URI.

XCom carries only the URI (``runs:/<run id>/federated/weights.npz``); the arrays stay in the
tracking server's artifact store, readable by whoever the MLflow connection lets in.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from dlagent.errors import ConfigError
from dlagent.ml import mlflow_names as names
from dlagent.ml.federated.aggregate import load_weights, save_weights


def log_weights(client, run_id: str, weights) -> str:
    """Upload ``weights`` to run ``run_id``; return their URI."""
    folder, file_name = names.FEDERATED_WEIGHTS_FILE.rsplit("/", 1)
    with tempfile.TemporaryDirectory(prefix="dlagent-weights-") as tmp:
        client.log_artifact(run_id, str(save_weights(weights, Path(tmp) / file_name)), folder)
    return f"runs:/{run_id}/{names.FEDERATED_WEIGHTS_FILE}"


def read_weights(client, uri: str) -> list:
    """The arrays at a URI written by :func:`log_weights`."""
    if not isinstance(uri, str) or not uri.startswith("runs:/") or uri.count("/") < 3:
        raise ConfigError("global_uri", f"must be runs:/<run id>/{names.FEDERATED_WEIGHTS_FILE}, got {uri!r}.",
                          "pass the URI an earlier round's task returned.")
    run_id, path = uri[len("runs:/"):].split("/", 1)
    with tempfile.TemporaryDirectory(prefix="dlagent-weights-") as tmp:
        return load_weights(client.download_artifacts(run_id, path, tmp))
