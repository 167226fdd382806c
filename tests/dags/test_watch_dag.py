"""dl_agent_watch: imports cleanly, is wired sensor -> agent -> conf -> trigger -> finish, and its
Params and templates give the sensor a valid condition."""

from __future__ import annotations

import copy

import pytest

from tests.conftest import PROJECT_DIR

DAG_ID = "dl_agent_watch"


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_DIR / "dags" / "dl_agent_watch.py"))
    assert bag.import_errors == {}
    return bag.dags[DAG_ID]


def test_schedule_tasks_and_dependencies(dag):
    assert dag.schedule == "@daily" and dag.catchup is False and dag.max_active_runs == 1
    assert {"dlagent", "agent"} <= set(dag.tags) and dag.doc_md
    order = ["watch_champion", "agent", "plan_conf", "trigger_pipeline", "finish"]
    assert set(dag.task_ids) == set(order)
    for upstream, downstream in zip(order[:-1], order[1:], strict=True):
        assert dag.get_task(upstream).downstream_task_ids == {downstream}
    for task in dag.tasks:
        assert task.owner == "dlagent" and task.retries >= 1
    trigger = dag.get_task("trigger_pipeline")
    assert trigger.trigger_dag_id == "dl_agent_pipeline" and trigger.skip_when_already_exists
    assert dag.get_task("finish").trigger_rule == "none_skipped"


def test_dag_serializes(dag):
    from airflow.serialization.serialized_objects import DagSerialization

    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    assert set(restored.task_ids) == set(dag.task_ids)


def test_default_params_are_valid_and_bad_values_are_refused(dag):
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dag.params)
    params.validate()
    assert params["model_name"] == "dlagent-classifier" and params["metric"] == "test_accuracy" and params["deferrable"] is True
    for name, value in [("condition", "sometimes"), ("max_drift", -1), ("deferrable", "yes"), ("reference", "high")]:
        bad = copy.deepcopy(dag.params)
        with pytest.raises(ParamValidationError, match=f"param {name}"):
            bad[name] = value
            bad.validate()


class SensorResult:
    """The sensor's XCom as a task instance returns it to a template."""

    def __init__(self, value):
        self.value = value

    def xcom_pull(self, task_ids=None, **_):
        return self.value if task_ids == "watch_champion" else None


def _rendered(dag, task_id: str, sensor_result=None, **params):
    task = copy.deepcopy(dag.get_task(task_id))
    values = {**{k: dag.params[k] for k in dag.params}, **params}
    context = {"params": values, "ti": SensorResult(sensor_result), "run_id": "scheduled__1"}
    task.render_template_fields(context, jinja_env=dag.get_template_env())
    return task


def test_params_give_the_sensor_a_valid_condition(dag):
    below = _rendered(dag, "watch_champion").condition()
    assert below == {"kind": "threshold", "target": {"model_name": "dlagent-classifier", "alias": "champion"},
                     "metric": "test_accuracy", "op": "<", "threshold": 0.9}
    above = _rendered(dag, "watch_champion", metric="test_rmse", condition="above", threshold=55.0).condition()
    assert above == {**below, "metric": "test_rmse", "op": ">", "threshold": 55.0}  # a regression champion's error metric
    drift = _rendered(dag, "watch_champion", condition="drift", reference=0.95, max_drift=0.01).condition()
    assert drift["kind"] == "drift" and drift["reference"] == 0.95 and drift["max_drift"] == 0.01
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="reference"):  # 'drift' without a reference: a clear failure
        _rendered(dag, "watch_champion", condition="drift").condition()


def test_deferrable_param_picks_the_wait_mode(dag):
    sensor = copy.deepcopy(dag.get_task("watch_champion"))
    assert sensor.deferrable is True and sensor.mode == "reschedule" and sensor.soft_fail is True
    sensor._pre_execute_hook({"task": sensor, "params": {"deferrable": False}})
    assert sensor.deferrable is False  # reschedule mode, as the Param says
    sensor._pre_execute_hook({"task": sensor, "params": {"deferrable": True}})
    assert sensor.deferrable is True


def test_agent_and_conf_are_templated_from_params(dag):
    agent = _rendered(dag, "agent", sensor_result={"met": True, "run_id": "abc123"}, policy="learning", experiment_name="exp")
    assert agent.policy == "learning" and agent.phase == "plan" and agent.experiment_name == "exp"
    assert agent.champion_name == "dlagent-classifier"
    assert agent.observe_run_id == "abc123"  # the champion's run, which leads to the pipeline run that made it
    assert _rendered(dag, "agent").observe_run_id is None  # no sensor result: the agent observes its own DAG run
    plan_conf = dag.get_task("plan_conf")
    assert plan_conf.base_conf == {"experiment_name": "{{ params.experiment_name }}"}
