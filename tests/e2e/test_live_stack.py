"""The real stack, as a person uses it: Airflow's services and an MLflow server as processes.

`LocalStack` (what `make ui` starts) runs api-server, scheduler (LocalExecutor),
dag-processor, triggerer and `mlflow server`, all on PostgreSQL (the Airflow metadata DB,
the MLflow backend store and the Optuna study). A run is triggered through the Airflow REST
API with a conf, as the UI's trigger button does; the results are checked through the MLflow
server's REST API. The services are stopped at the end whatever happens.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

import pytest

from tests.conftest import PIPELINE, RETRAIN
from tests.pipeline_confs import LIVE_CONF

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def mlflow_api(stack, path: str, body: dict | None = None, **query) -> dict:
    """GET (query) or POST (JSON body) on the MLflow server's REST API."""
    url = f"{stack.mlflow_url}/api/2.0/mlflow/{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def run_tags(run: dict) -> dict:
    """A run of the MLflow REST API's answer: its tags as a dict."""
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def test_trigger_through_rest_api_runs_the_pipeline_on_the_real_services(live_stack, live_pipeline_run):
    api, run_id, state = live_stack.api, live_pipeline_run["run_id"], live_pipeline_run["state"]
    tasks = {(t["task_id"], t["map_index"]): t["state"] for t in api.task_instances(PIPELINE, run_id)}
    assert state == "success", live_pipeline_run["detail"]
    assert tasks[("deploy", -1)] == "success" and tasks[("tune", 0)] == tasks[("tune", 1)] == "success"

    # Through the MLflow server's REST API: the runs, the registered version, the alias.
    experiment = mlflow_api(live_stack, "experiments/get-by-name", experiment_name="live")["experiment"]
    runs = mlflow_api(live_stack, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 500})["runs"]
    by_task, tune_workers = {}, set()
    for run in runs:
        tags = run_tags(run)
        if tags.get("airflow.run_id") == run_id:
            by_task.setdefault(tags.get("airflow.task_id", "parent"), []).append(run["info"]["status"])
            if tags.get("airflow.task_id") == "tune":
                tune_workers.add(tags["airflow.map_index"])
    assert {"parent", "tune", "train", "compress", "evaluate", "agent_decide", "deploy"} <= set(by_task)
    assert all(status == "FINISHED" for statuses in by_task.values() for status in statuses), json.dumps(by_task)
    assert tune_workers == {"0", "1"}  # both mapped tuning workers logged their runs
    alias = mlflow_api(live_stack, "registered-models/alias", name="dlagent-classifier", alias="champion")
    version = alias["model_version"]
    assert version["version"] == "1" and version["status"] == "READY"
    assert mlflow_api(live_stack, "registered-models/get", name="dlagent-classifier")["registered_model"]["name"]
    assert (live_stack.home / "deploy").is_dir()


#: The retrain an asset event asks for: no tuning, one candidate, and a model that cannot learn (1 epoch at a
#: learning rate of 1e-5), so the gate refuses it against the champion of the session's live run.
WORSE_RETRAIN = {**LIVE_CONF, "experiment_name": "live_retrain", "n_trials": 0, "compression_candidates": LIVE_CONF["compression_candidates"][:1],
                 "epochs": 1, "learning_rate": 1e-5, "max_metric_drop_points": None, "agent_policy": "off",
                 "tune_trial_epochs": None, "tune_min_trial_epochs": None}  # LIVE_CONF's first rung (2) exceeds 1 epoch


def test_new_training_data_event_starts_a_retrain_whose_worse_model_is_refused_and_the_champion_stays(live_stack, live_pipeline_run):
    """An asset event, as a data-ingestion job posts it, makes the scheduler start dl_agent_retrain; its pipeline
    run trains a worse model than the champion (the session's live run deployed it), which the gate refuses: the
    deploy task is skipped, the run still succeeds, and the champion alias does not move. (With ``agent_policy:
    off`` the plan does not retune: the refused branch is the DAG's, on the real scheduler and PostgreSQL.)"""
    assert live_pipeline_run["state"] == "success", live_pipeline_run["detail"]  # it deployed the champion this run must not replace
    api = live_stack.api
    champion = mlflow_api(live_stack, "registered-models/alias", name="dlagent-classifier", alias="champion")["model_version"]
    (asset,) = api.get("/api/v2/assets?name_pattern=dlagent_training_data")["assets"]
    api.post("/api/v2/assets/events", {"asset_id": asset["id"], "extra": {"conf": WORSE_RETRAIN}})
    deadline = time.monotonic() + 120
    while not (runs := api.get(f"/api/v2/dags/{RETRAIN}/dagRuns")["dag_runs"]):
        assert time.monotonic() < deadline, "the asset event started no dl_agent_retrain run"
        time.sleep(2)
    (retrain,) = runs
    assert retrain["run_type"] == "asset_triggered"
    assert api.wait_for_run(RETRAIN, retrain["dag_run_id"], timeout=900) == "success", \
        live_stack.failure_report(api, RETRAIN, retrain["dag_run_id"])
    pipeline_run_id = f"retrain__{retrain['dag_run_id']}"
    pipeline_run = api.get(f"/api/v2/dags/{PIPELINE}/dagRuns/{pipeline_run_id}")
    tasks = {t["task_id"]: t["state"] for t in api.task_instances(PIPELINE, pipeline_run_id) if t["map_index"] == -1}
    assert pipeline_run["state"] == "success" and pipeline_run["conf"]["experiment_name"] == "live_retrain", tasks
    assert pipeline_run["conf"]["max_samples"] == LIVE_CONF["max_samples"]  # the event's conf reached the pipeline

    # the gate refused the worse model: deploy skipped, the reason recorded, the champion where it was
    assert tasks["evaluate"] == "success" and tasks["deploy"] == "skipped" and tasks["finish"] == "success", tasks
    experiment = mlflow_api(live_stack, "experiments/get-by-name", experiment_name="live_retrain")["experiment"]
    runs = mlflow_api(live_stack, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
    (tags,) = [run_tags(run) for run in runs if run_tags(run).get("airflow.task_id") == "evaluate"]
    assert tags["dlagent.gate.blessed"] == "false" and "worse than the champion" in tags["dlagent.gate.reasons"], tags
    (parent,) = [run_tags(run) for run in runs if run_tags(run).get("dlagent.kind") == "pipeline"]
    assert parent["dlagent.deploy"].startswith("skipped")
    after = mlflow_api(live_stack, "registered-models/alias", name="dlagent-classifier", alias="champion")["model_version"]
    assert after["version"] == champion["version"]


def test_bad_conf_is_refused_by_the_api_before_a_run_exists(live_stack):
    with pytest.raises(RuntimeError, match="HTTP 400") as refused:
        live_stack.api.trigger(PIPELINE, {**LIVE_CONF, "epochs": 0})
    assert "epochs" in str(refused.value)
