"""Which MLflow runs the agent reads besides the observation: the pipeline run a run belongs to,
and the plan the agent made earlier in the same pipeline run (what a reward is credited to)."""

from __future__ import annotations

from dlagent.errors import ConfigError
from dlagent.ml import mlflow_names as names
from dlagent.settings import client_location

MAX_PARENT_HOPS = 3


def pipeline_run_of(client, run_id: str, *, own_parent: str | None = None) -> tuple[str, str]:
    """``(experiment_id, run_id)`` of the pipeline run ``run_id`` belongs to.

    ``run_id`` itself when it is a pipeline's parent run (or ``own_parent``), else the first
    ancestor that is (at most :data:`MAX_PARENT_HOPS` up): e.g. the run of a champion a sensor
    watched. A run that does not exist is a :class:`ConfigError` (field ``observe_run_id``).
    """
    from mlflow.exceptions import MlflowException

    if not isinstance(run_id, str) or not run_id:
        raise ConfigError("observe_run_id", f"must be an MLflow run id, got {run_id!r}.", "pass a run id, or leave it empty.")
    for _ in range(MAX_PARENT_HOPS + 1):
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            if names.is_missing(exc):
                raise ConfigError("observe_run_id", f"no MLflow run {run_id!r} at {client_location(client)}.",
                                  "pass the id of a pipeline run (or of a run under one), or leave it empty.") from exc
            raise
        parent = run.data.tags.get(names.PARENT_TAG)
        if run_id == own_parent or run.data.tags.get(names.KIND_TAG) == names.KIND_PIPELINE or not parent:
            return run.info.experiment_id, run.info.run_id
        run_id = parent
    return run.info.experiment_id, run.info.run_id


def read_planned(client, experiment_id: str, pipeline_run_id: str):
    """The plan the agent made in phase ``plan`` of a pipeline run (the latest finished one: a
    failed decision has no ``decisions.json``), as a :class:`~dlagent.agent.plan.Plan`, or ``None``."""
    import tempfile
    from pathlib import Path

    from dlagent.agent.plan import Plan

    where = " and ".join((names.tag_equals(names.PARENT_TAG, pipeline_run_id), names.tag_equals(names.STEP_TAG, names.STEP_AGENT),
                          names.tag_equals(names.PHASE_TAG, "plan"), "attributes.status = 'FINISHED'"))
    runs = client.search_runs([experiment_id], filter_string=where, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    with tempfile.TemporaryDirectory(prefix="dlagent-agent-") as folder:
        path = Path(client.download_artifacts(runs[0].info.run_id, names.DECISIONS_FILE, folder))
        try:
            return Plan.from_dict(path.read_text())
        except ConfigError as exc:
            raise ConfigError(f"{names.DECISIONS_FILE} of run {runs[0].info.run_id}: {exc.field}", exc.problem, exc.fix) from exc
