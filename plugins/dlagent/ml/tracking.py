"""MLflow bookkeeping shared by every step: experiments, idempotent runs, safe metric logging.

Runs are found again by a ``dlagent.key`` tag derived from where they come from (DAG id, run
id, task id, map index; :func:`dlagent.ml.mlflow_names.find_run`), so a retried or cleared
task continues its own MLflow run instead of leaving a second one behind.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from dlagent.ml.mlflow_names import PARENT_TAG, RUN_KEY_TAG, find_run

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """Return the id of experiment ``name``, creating it (with an artifact root) if absent.

    A deleted experiment of the same name is restored, because MLflow refuses to create a
    second one and a person who deleted it in the UI still expects the pipeline to run.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except Exception:  # created concurrently by a parallel task: read it back
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def run_key(*parts) -> str:
    return "/".join(str(p) for p in parts)


def find_or_create_run(
    client: MlflowClient,
    experiment_id: str,
    key: str,
    *,
    run_name: str,
    tags: dict | None = None,
    parent_run_id: str | None = None,
) -> tuple[str, bool]:
    """Return ``(run_id, created)`` for the run tagged ``key``, creating it when absent.

    A run found again is set back to RUNNING (a retry continues it).
    """
    existing = find_run(client, experiment_id, key)
    all_tags = {RUN_KEY_TAG: key, **(tags or {})}
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    if existing is not None:
        run_id = existing.info.run_id
        if existing.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        for tag, value in all_tags.items():
            if existing.data.tags.get(tag) != str(value):
                client.set_tag(run_id, tag, value)
        return run_id, False
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    return run.info.run_id, True


def log_params_safely(client: MlflowClient, run_id: str, params: dict) -> None:
    """Log params once; a retry that logs the same values again is fine, a changed value is
    recorded as a tag (MLflow params are immutable) so nothing fails on a re-run."""
    existing = client.get_run(run_id).data.params
    for name, value in params.items():
        text = str(value)[:6000]
        if name not in existing:
            client.log_param(run_id, name, text)
        elif existing[name] != text:
            client.set_tag(run_id, f"param_override.{name}", text)


def log_metrics(client: MlflowClient, run_id: str, metrics: dict, step: int | None = None) -> None:
    """Log finite numeric metrics; report, never raise (logging never kills training)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [
        Metric(name, float(value), now, step or 0)
        for name, value in metrics.items()
        if isinstance(value, (int, float)) and math.isfinite(float(value))
    ]
    if not batch:
        return
    try:
        client.log_batch(run_id, metrics=batch)
    except Exception as exc:  # noqa: BLE001 - a lost metric must not stop training
        log.warning("could not log metrics %s to MLflow run %s: %s", sorted(metrics), run_id, exc)
