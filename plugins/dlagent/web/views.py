"""What the pages show, read from MLflow as small JSON (no Airflow, no FastAPI here).

One DAG run is one MLflow parent run tagged ``dlagent.kind = pipeline``, ``airflow.dag_id`` and
``airflow.run_id``; its children are the task runs (``dlagent.step``), among them the ``agent``
runs (``dlagent.phase``, ``dlagent.action``, ``dlagent.policy``; artifact ``decisions.json``),
and the tuning trials (``optuna.trial_number``, ``optuna.state``, metric ``objective``). The
study itself is logged on the parent run (tag ``optuna.study``, params ``best_*``, metrics
``best_value`` / ``trials_*``, artifacts ``optuna/*.png``).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from datetime import UTC, datetime

from dlagent.links import decisions_path, experiment_url, run_url
from dlagent.ml import mlflow_names as names

MAX_CHILDREN = 2000
PLOT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}\.png$")


def _time(ms) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def experiment_ids(client) -> list[str]:
    from mlflow.entities import ViewType

    return [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000)]


def _run_summary(run, ui_url: str) -> dict:
    tags = run.data.tags
    return {
        "mlflow_run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "status": run.info.status,
        "start_time": _time(run.info.start_time),
        "end_time": _time(run.info.end_time),
        "mlflow_url": run_url(ui_url, run.info.experiment_id, run.info.run_id),
        "task_id": tags.get(names.AIRFLOW_TASK_ID_TAG),
        "map_index": tags.get(names.AIRFLOW_MAP_INDEX_TAG),
        "step": tags.get(names.STEP_TAG),
    }


def _agent_summary(run, ui_url: str) -> dict:
    tags = run.data.tags
    return {
        **_run_summary(run, ui_url),
        "phase": tags.get(names.PHASE_TAG),
        "action": tags.get(names.ACTION_TAG) if tags.get(names.PHASE_TAG) != "budget" else None,  # budget: tuning only
        "policy": tags.get(names.POLICY_TAG),
        "arm": tags.get(names.ARM_TAG),
        "observed_run_id": tags.get(names.OBSERVED_TAG),
        "reward": run.data.metrics.get("reward"),
    }


def pipeline_runs(client, ui_url: str, *, dag_id: str | None = None, max_results: int = 50) -> list[dict]:
    """The latest DAG runs (newest first), each with the actions its agent runs decided."""
    ids = experiment_ids(client)
    if not ids:
        return []
    where = names.tag_equals(names.KIND_TAG, names.KIND_PIPELINE)
    if dag_id:
        where += " and " + names.tag_equals(names.AIRFLOW_DAG_ID_TAG, dag_id)
    parents = client.search_runs(ids, where, order_by=["attributes.start_time DESC"], max_results=max_results)
    if not parents:
        return []
    agents_by_parent = defaultdict(list)
    oldest = min(p.info.start_time or 0 for p in parents)
    agents = client.search_runs(ids, f"{names.tag_equals(names.STEP_TAG, names.STEP_AGENT)} and attributes.start_time >= {int(oldest)}",
                                order_by=["attributes.start_time ASC"], max_results=MAX_CHILDREN)
    for run in agents:
        agents_by_parent[run.data.tags.get(names.PARENT_TAG)].append(_agent_summary(run, ui_url))
    rows = []
    for parent in parents:
        tags = parent.data.tags
        rows.append({
            **_run_summary(parent, ui_url),
            "dag_id": tags.get(names.AIRFLOW_DAG_ID_TAG),
            "run_id": tags.get(names.AIRFLOW_RUN_ID_TAG),
            "page": decisions_path(tags.get(names.AIRFLOW_DAG_ID_TAG) or "", tags.get(names.AIRFLOW_RUN_ID_TAG) or ""),
            "deploy": tags.get(names.DEPLOY_TAG),
            "metric": tags.get(names.SUMMARY_TAG_PREFIX + "metric") or "accuracy",
            "test_metric": parent.data.metrics.get("test_metric", parent.data.metrics.get("test_accuracy")),
            "study": tags.get(names.STUDY_TAG),
            "decisions": agents_by_parent.get(parent.info.run_id, []),
        })
    return rows


def find_parent(client, dag_id: str, run_id: str):
    """The MLflow parent run of one DAG run, or ``None``."""
    ids = experiment_ids(client)
    if not ids:
        return None
    where = " and ".join((names.tag_equals(names.KIND_TAG, names.KIND_PIPELINE), names.tag_equals(names.AIRFLOW_DAG_ID_TAG, dag_id),
                          names.tag_equals(names.AIRFLOW_RUN_ID_TAG, run_id)))
    runs = client.search_runs(ids, where, order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0] if runs else None


def read_json_artifact(client, run_id: str, path: str):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="dlagent-web-") as folder:
        local = Path(client.download_artifacts(run_id, path, folder))
        return json.loads(local.read_text())


def read_plot(client, parent_run_id: str, name: str) -> bytes:
    """A tuning plot (``optuna/<name>.png``) of a parent run."""
    import tempfile
    from pathlib import Path

    if not PLOT_NAME.match(name):
        raise ValueError(f"not a plot name: {name!r}")
    with tempfile.TemporaryDirectory(prefix="dlagent-web-") as folder:
        return Path(client.download_artifacts(parent_run_id, f"{names.OPTUNA_ARTIFACT_DIR}/{name}", folder)).read_bytes()


def _decision(client, run, ui_url: str) -> dict:
    decision = _agent_summary(run, ui_url)
    decision["artifacts_url"] = run_url(ui_url, run.info.experiment_id, run.info.run_id, tab="artifacts")
    try:
        plan = read_json_artifact(client, run.info.run_id, names.DECISIONS_FILE)
    except Exception as exc:  # noqa: BLE001 - a decision that failed before it was logged has none
        decision["plan"], decision["error"] = None, f"no readable decisions.json ({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''})"
    else:
        decision["plan"], decision["error"] = plan if isinstance(plan, dict) else None, None
        if isinstance(plan, dict) and plan.get("action") and decision["phase"] != "budget":
            decision["action"] = plan["action"]
    return decision


def _tuning(client, parent, trials: list, ui_url: str) -> dict | None:
    tags, metrics, params = parent.data.tags, parent.data.metrics, parent.data.params
    study = tags.get(names.STUDY_TAG) or next((t.data.tags.get(names.STUDY_TAG) for t in trials if t.data.tags.get(names.STUDY_TAG)), None)
    if study is None and not trials:
        return None
    best_params = {k[len("best_"):]: v for k, v in sorted(params.items()) if k.startswith("best_")}
    plots = []
    if tags.get(names.STUDY_TAG):
        try:
            plots = sorted(a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(parent.info.run_id, names.OPTUNA_ARTIFACT_DIR)
                           if a.path.endswith(".png"))
        except Exception:  # noqa: BLE001 - the page shows the study without its plots
            plots = []
    shown = list(best_params)
    rows = []
    for trial in sorted(trials, key=lambda r: int(r.data.tags.get(names.TRIAL_NUMBER_TAG, "0") or 0)):
        rows.append({
            "number": int(trial.data.tags.get(names.TRIAL_NUMBER_TAG, "0") or 0),
            "state": trial.data.tags.get(names.TRIAL_STATE_TAG),
            "value": trial.data.metrics.get("objective"),
            "epochs_run": trial.data.metrics.get("epochs_run"),
            "params": {k: trial.data.params.get(k) for k in shown},
            "task_id": trial.data.tags.get(names.AIRFLOW_TASK_ID_TAG),
            "map_index": trial.data.tags.get(names.AIRFLOW_MAP_INDEX_TAG),
            "mlflow_url": run_url(ui_url, trial.info.experiment_id, trial.info.run_id),
        })
    return {
        "study": study,
        "best_value": metrics.get("best_value"),
        "best_trial_number": metrics.get("best_trial_number"),
        "best_params": best_params,
        "trials_by_state": {k[len("trials_"):].upper(): int(v) for k, v in sorted(metrics.items()) if k.startswith("trials_")},
        "plots": plots,
        "plots_skipped": {k.rsplit(".", 1)[-1]: v for k, v in tags.items() if k.startswith(names.PLOT_SKIPPED_TAG_PREFIX)},
        "trials": rows,
        "mlflow_url": run_url(ui_url, parent.info.experiment_id, parent.info.run_id, tab="artifacts"),
    }


def run_details(client, ui_url: str, dag_id: str, run_id: str) -> dict | None:
    """Everything the page of one DAG run shows, or ``None`` when MLflow has no such run."""
    parent = find_parent(client, dag_id, run_id)
    if parent is None:
        return None
    children = client.search_runs([parent.info.experiment_id], names.tag_equals(names.PARENT_TAG, parent.info.run_id),
                                  order_by=["attributes.start_time ASC"], max_results=MAX_CHILDREN)
    trials = [r for r in children if names.TRIAL_NUMBER_TAG in r.data.tags]
    steps = [r for r in children if names.TRIAL_NUMBER_TAG not in r.data.tags]
    agents = [r for r in steps if r.data.tags.get(names.STEP_TAG) == names.STEP_AGENT]
    tags = parent.data.tags
    return {
        "dag_id": dag_id,
        "run_id": run_id,
        **_run_summary(parent, ui_url),
        "experiment_url": experiment_url(ui_url, parent.info.experiment_id),
        "deploy": tags.get(names.DEPLOY_TAG),
        "metrics": dict(sorted(parent.data.metrics.items())),
        "decisions": [_decision(client, run, ui_url) for run in agents],
        "tuning": _tuning(client, parent, trials, ui_url),
        "tasks": [{**_run_summary(run, ui_url), "candidate": run.data.tags.get(names.CANDIDATE_TAG)} for run in steps],
    }
