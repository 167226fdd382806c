"""Each extra link gives the right MLflow URL for a real store, filled by running the operators.

Airflow calls ``get_link(operator, ti_key=<running task instance>)`` when a try ends and stores
the URL as XCom; here the same call is made on the operators that ran (``conftest.pipeline``),
with a task instance that pulls their XComs the way ``RuntimeTaskInstance.xcom_pull`` does.
The expected URLs are built from what MLflow holds, not from the XComs.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
from airflow.sdk.exceptions import AirflowSkipException
from dlagent.hooks.mlflow import MLflowHook
from dlagent.links import MLflowRunLink, RegisteredModelLink, TuningStudyLink
from dlagent.operators.base import DlagentOperator
from dlagent.operators.deploy import DeployOperator
from mlflow import MlflowClient

from tests.operators.context import make_context
from tests.plugin.conftest import DAG_ID, MODEL_NAME, RUN_ID

UI = "http://127.0.0.1:5000"


_ALL = object()


class RuntimeTI:
    """What the task runner passes as ``ti_key`` at the end of a try: the task instance itself.

    ``xcom_pull`` answers as ``RuntimeTaskInstance.xcom_pull`` does: without ``map_indexes``,
    the values of every map index (one value unwrapped, ``None`` when there is none: Airflow's
    sequence read, which logs nothing); with ``map_indexes``, that one instance's value, and a
    missing one is recorded in ``missing`` (Airflow's API client logs it as an error).
    ``siblings`` holds other map indexes' XComs ({map_index: {key: value}}).
    """

    def __init__(self, context, siblings: dict | None = None):
        stub = context["ti"]
        self.dag_id, self.task_id, self.run_id, self.map_index = stub.dag_id, stub.task_id, stub.run_id, stub.map_index
        self._by_index = {**(siblings or {}), self.map_index: stub.xcoms}
        self.missing: list[tuple[str, int]] = []

    def xcom_pull(self, task_ids=None, key="return_value", *, map_indexes=_ALL, **_):
        assert task_ids == self.task_id, "a link reads its own task's XComs"
        if map_indexes is _ALL:
            values = [xcoms[key] for _, xcoms in sorted(self._by_index.items()) if key in xcoms]
            return None if not values else values[0] if len(values) == 1 else values
        assert map_indexes == self.map_index, "a link reads its own task instance's XComs"
        if key not in self._by_index[map_indexes]:
            self.missing.append((key, map_indexes))
        return self._by_index[map_indexes].get(key)


def links(operator, context) -> dict:
    return {link.name: link.get_link(operator, ti_key=RuntimeTI(context)) for link in operator.operator_extra_links}


def links_of(pipeline, label: str) -> dict:
    return links(pipeline.operators[label], pipeline.contexts[label])


def mlflow_runs(pipeline):
    client = MlflowClient(pipeline.uri)
    experiment = client.get_experiment_by_name("plugin")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get("dlagent.kind") == "pipeline" and r.data.tags["airflow.run_id"] == RUN_ID)
    return client, experiment.experiment_id, parent, runs


def task_run(runs, task_id: str, map_index: int = -1):
    (run,) = [r for r in runs if r.data.tags.get("airflow.task_id") == task_id and "dlagent.step" in r.data.tags
              and r.data.tags.get("airflow.map_index") == str(map_index)]
    return run


@pytest.mark.parametrize(("label", "map_index"), [("train", -1), ("compress", 0), ("evaluate", -1), ("deploy", -1),
                                                  ("agent_plan", -1), ("agent_decide", -1)])
def test_mlflow_run_link_opens_the_tasks_own_child_run(pipeline_env, label, map_index):
    _, experiment_id, parent, runs = mlflow_runs(pipeline_env)
    run = task_run(runs, label, map_index)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert links_of(pipeline_env, label)["MLflow run"] == f"{UI}/#/experiments/{experiment_id}/runs/{run.info.run_id}"


@pytest.mark.parametrize("label", ["create_study", "tune", "tune_summary"])
def test_tuning_tasks_link_to_the_study_on_the_parent_run(pipeline_env, label):
    client, experiment_id, parent, runs = mlflow_runs(pipeline_env)
    got = links_of(pipeline_env, label)
    parent_url = f"{UI}/#/experiments/{experiment_id}/runs/{parent.info.run_id}"
    assert got["Tuning study"] == f"{parent_url}/artifacts"
    assert got["MLflow run"] == parent_url  # tuning tasks have no run of their own; trials are the parent's children
    # what the link promises is there: the study, its plots, its trials under that run
    assert parent.data.tags["optuna.study"] == f"{DAG_ID}.{RUN_ID}"
    assert any(a.path.endswith(".png") for a in client.list_artifacts(parent.info.run_id, "optuna"))
    trials = [r for r in runs if "optuna.trial_number" in r.data.tags]
    assert len(trials) == 2 and {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent.info.run_id}


def test_registered_model_link_opens_the_champion_version(pipeline_env):
    version = pipeline_env.results["deploy"]["version"]
    client = MlflowClient(pipeline_env.uri, registry_uri=pipeline_env.uri)
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == str(version)
    got = links_of(pipeline_env, "deploy")
    assert got["Registered model"] == f"{UI}/#/models/{quote(MODEL_NAME, safe='')}/versions/{version}"
    assert set(got) == {"MLflow run", "Registered model"}


def test_agent_tasks_link_to_the_decisions_page_relative_to_the_airflow_ui(pipeline_env):
    got = links_of(pipeline_env, "agent_decide")
    # the UI resolves it against its own base URL; ':' and '+' of the run id are escaped
    assert got["Agent decisions"] == "dlagent/runs/dl_agent_pipeline/manual__2026-01-02T03%3A04%3A05.678901%2B00%3A00"


def test_what_operators_record_for_links_is_small_json(pipeline_env):
    xcoms = pipeline_env.contexts["train"]["ti"].xcoms
    _, experiment_id, _, runs = mlflow_runs(pipeline_env)
    assert xcoms["mlflow_run"] == {"experiment_id": experiment_id, "run_id": task_run(runs, "train").info.run_id, "map_index": -1}
    assert set(xcoms["mlflow_parent_run"]) == {"experiment_id", "run_id", "map_index"}
    assert pipeline_env.contexts["deploy"]["ti"].xcoms["registered_model"] == {
        "name": MODEL_NAME, "version": str(pipeline_env.results["deploy"]["version"])}


def test_skipped_deploy_has_no_model_link_and_links_the_parent_run_with_the_reason(pipeline_env):
    evaluation = {**pipeline_env.results["evaluate"], "blessed": False, "reasons": ["worse than the champion"]}
    operator = DeployOperator(task_id="deploy", evaluation=evaluation, model_name=MODEL_NAME, experiment_name="plugin-skip",
                              deploy_dir=str(pipeline_env.folder / "deploy"))
    context = make_context("deploy", dag_id=DAG_ID, run_id="manual__skipped")
    with pytest.raises(AirflowSkipException):
        operator.execute(context)
    got = links(operator, context)
    assert got["Registered model"] == ""  # an empty link: the UI shows no button
    client = MlflowClient(pipeline_env.uri)
    parent_id = got["MLflow run"].rsplit("/", 1)[1]
    assert client.get_run(parent_id).data.tags["dlagent.deploy"].startswith("skipped: worse than the champion")


class FailingStep(DlagentOperator):
    def run(self, context):
        with self.step_run(context, "train"):
            raise RuntimeError("diverged")


def test_a_failed_task_still_links_to_its_failed_run(mlflow_uri, monkeypatch):
    monkeypatch.delenv("DLAGENT_MLFLOW_UI_URL", raising=False)
    operator = FailingStep(task_id="train", experiment_name="exp")
    context = make_context("train")
    with pytest.raises(RuntimeError):
        operator.execute(context)
    run_id = links(operator, context)["MLflow run"].rsplit("/", 1)[1]
    assert MlflowClient(mlflow_uri).get_run(run_id).info.status == "FAILED"


def test_no_xcom_no_link():
    ti = RuntimeTI(make_context("train"))
    operator = FailingStep(task_id="train")
    for link in (MLflowRunLink(), TuningStudyLink(), RegisteredModelLink()):
        assert link.get_link(operator, ti_key=ti) == ""
    assert ti.missing == []  # no single-XCom read of a key that is not there: no "XCom not found" error


def test_a_task_without_a_child_run_links_its_parent_run_without_asking_for_the_missing_key(monkeypatch):
    monkeypatch.setenv("DLAGENT_MLFLOW_UI_URL", UI)
    context = make_context("validate_inputs")
    context["ti"].xcom_push(key="mlflow_parent_run", value={"experiment_id": "1", "run_id": "parent"})
    ti = RuntimeTI(context)
    assert MLflowRunLink().get_link(FailingStep(task_id="validate_inputs"), ti_key=ti) == f"{UI}/#/experiments/1/runs/parent"
    assert ti.missing == []


def test_mapped_instances_link_their_own_child_run_and_the_shared_parent_run(monkeypatch):
    monkeypatch.setenv("DLAGENT_MLFLOW_UI_URL", UI)
    parent = {"experiment_id": "1", "run_id": "parent", "map_index": 0}

    def child(index: int) -> dict:  # what DlagentOperator.step_run pushes: the run and whose it is
        return {"experiment_id": "1", "run_id": f"child-{index}", "map_index": index}

    siblings = {0: {"mlflow_parent_run": parent, "mlflow_run": child(0)}, 2: {"mlflow_parent_run": parent, "mlflow_run": child(2)}}
    operator = FailingStep(task_id="compress")
    context = make_context("compress", map_index=1)
    context["ti"].xcom_push(key="mlflow_parent_run", value=parent)
    context["ti"].xcom_push(key="mlflow_run", value=child(1))
    own = RuntimeTI(context, siblings)
    assert MLflowRunLink().get_link(operator, ti_key=own) == f"{UI}/#/experiments/1/runs/child-1"
    assert own.missing == []
    # an instance that failed before its child run opened, while its siblings opened theirs: the parent run, no lookup error
    early = make_context("compress", map_index=1)
    early["ti"].xcom_push(key="mlflow_parent_run", value=parent)
    failed = RuntimeTI(early, siblings)
    assert MLflowRunLink().get_link(operator, ti_key=failed) == f"{UI}/#/experiments/1/runs/parent"
    assert failed.missing == []
    tune = RuntimeTI(make_context("tune", map_index=1), {0: {"mlflow_parent_run": parent}})  # tune workers: no child run
    assert MLflowRunLink().get_link(operator, ti_key=tune) == f"{UI}/#/experiments/1/runs/parent"
    assert TuningStudyLink().get_link(operator, ti_key=tune) == f"{UI}/#/experiments/1/runs/parent/artifacts"
    assert tune.missing == []


def test_mlflow_ui_url_follows_the_setting_the_server_and_the_connection(monkeypatch, tmp_path):
    monkeypatch.delenv("DLAGENT_MLFLOW_UI_URL", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_MLFLOW_DEFAULT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    assert MLflowHook().ui_url == "http://127.0.0.1:5000"  # the embedded store: `make mlflow-ui`
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://user:secret@mlflow.example:8443/")
    assert MLflowHook().ui_url == "https://mlflow.example:8443"  # the server is its UI; never the password
    monkeypatch.setenv("DLAGENT_MLFLOW_UI_URL", "http://localhost:5001/")
    assert MLflowHook().ui_url == "http://localhost:5001"  # e.g. http://mlflow:5000 inside docker compose
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", '{"conn_type": "mlflow", "host": "mlflow", "port": 5000, '
                                                      '"extra": {"ui_url": "https://mlflow.corp/"}}')
    assert MLflowHook().ui_url == "https://mlflow.corp"
