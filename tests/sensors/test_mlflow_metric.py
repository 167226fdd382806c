"""MLflowMetricSensor in poke mode and deferrable mode, against a real MLflow store."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
)
from dlagent.errors import ConfigError
from dlagent.ml.conditions import build_condition, check_condition
from dlagent.sensors.mlflow_metric import MLflowMetricSensor
from dlagent.triggers.mlflow_metric import MLflowMetricTrigger
from mlflow import MlflowClient

from tests.operators.context import make_context


@pytest.fixture
def store(mlflow_uri, tmp_path):
    client = MlflowClient(mlflow_uri)
    experiment_id = client.create_experiment("watched", artifact_location=str(tmp_path / "artifacts"))
    return client, experiment_id


def sensor(**kwargs) -> MLflowMetricSensor:
    kwargs.setdefault("task_id", "wait_for_accuracy")
    kwargs.setdefault("poke_interval", 0.1)
    kwargs.setdefault("timeout", 5)
    return MLflowMetricSensor(**kwargs)


def test_poke_waits_for_the_metric_then_returns_it(store):
    client, experiment_id = store
    run_id = client.create_run(experiment_id).info.run_id
    waiting = sensor(run_id=run_id, metric="val_accuracy", op=">=", threshold=0.9)
    context = make_context("wait_for_accuracy")
    first = waiting.poke(context)
    assert not first.is_done and first.xcom_value is None
    client.log_metric(run_id, "val_accuracy", 0.85)
    assert not waiting.poke(context).is_done
    client.log_metric(run_id, "val_accuracy", 0.93)
    done = waiting.poke(context)
    assert done.is_done and done.xcom_value["value"] == 0.93 and done.xcom_value["run_id"] == run_id
    assert waiting.execute(context)["met"] is True  # poke mode through BaseSensorOperator.execute


def test_timeout_and_soft_fail(store):
    client, experiment_id = store
    run_id = client.create_run(experiment_id).info.run_id
    context = make_context("wait_for_accuracy")
    with pytest.raises(AirflowSensorTimeout):
        sensor(run_id=run_id, metric="val_accuracy", threshold=0.9, timeout=0.3).execute(context)
    with pytest.raises(AirflowSkipException):
        sensor(run_id=run_id, metric="val_accuracy", threshold=0.9, timeout=0.3, soft_fail=True).execute(context)
    client.set_terminated(run_id, status="FAILED")  # can never hold: fails at once, skipped with soft_fail
    with pytest.raises(AirflowFailException, match="ended FAILED without logging val_accuracy"):
        sensor(run_id=run_id, metric="val_accuracy", threshold=0.9).execute(context)
    with pytest.raises(AirflowSkipException):
        sensor(run_id=run_id, metric="val_accuracy", threshold=0.9, soft_fail=True).execute(context)


def test_run_finished_latest_run_alias_and_drift(store):
    client, experiment_id = store
    context = make_context("wait")
    run_id = client.create_run(experiment_id, tags={"dlagent.step": "train"}).info.run_id
    finished = sensor(run_id=run_id)
    assert not finished.poke(context).is_done
    client.log_metric(run_id, "test_accuracy", 0.91)
    client.set_terminated(run_id)
    assert finished.poke(context).xcom_value["run_status"] == "FINISHED"

    latest = sensor(experiment_name="watched", run_tags={"dlagent.step": "train"}, metric="test_accuracy", op=">", threshold="0.9")
    assert latest.poke(context).xcom_value["run_id"] == run_id  # a templated threshold arrives as a string
    assert not sensor(experiment_name="watched", run_tags={"dlagent.step": "evaluate"}, metric="test_accuracy", threshold=0.5).poke(context).is_done
    assert not sensor(experiment_name="nowhere", metric="test_accuracy", threshold=0.5).poke(context).is_done

    by_alias = sensor(model_name="digits", metric="test_accuracy", op=">=", threshold=0.9)
    assert not by_alias.poke(context).is_done  # no model registered yet: wait
    client.create_registered_model("digits")
    version = client.create_model_version("digits", source="/nonexistent/model", run_id=run_id,
                                          tags={"dlagent.metric.test_accuracy": "0.95"})
    assert not by_alias.poke(context).is_done  # no alias yet
    client.set_registered_model_alias("digits", "champion", version.version)
    seen = by_alias.poke(context).xcom_value
    assert seen["value"] == 0.95 and seen["model_version"] == "1"  # the gate's measurement (version tag)

    drift = sensor(model_name="digits", metric="test_accuracy", reference=0.96, max_drift=0.02)
    assert not drift.poke(context).is_done  # |0.95 - 0.96| = 0.01
    drifted = sensor(run_id=run_id, metric="test_accuracy", reference=0.96, max_drift=0.02).poke(context).xcom_value
    assert drifted["drift"] == pytest.approx(0.05) and "drifted" in drifted["message"]
    relative = sensor(run_id=run_id, metric="test_accuracy", reference=0.95, max_drift=0.05, relative=True)
    assert not relative.poke(context).is_done  # 4.2% < 5%


def test_bad_arguments_fail_the_task_naming_the_field(store):
    context = make_context("wait")
    for kwargs, field in [({"run_id": "a", "metric": "m", "op": "=>", "threshold": 1}, "op:"),
                          ({"run_id": "a", "metric": "m", "threshold": "high"}, "threshold:"),
                          ({"run_id": "a", "experiment_name": "e"}, "run_id:"),
                          ({"run_id": "a", "metric": "m"}, "threshold:"),
                          ({"model_name": "digits"}, "model_name:")]:
        with pytest.raises(AirflowFailException, match=f"invalid sensor arguments: {field}"):
            sensor(**kwargs).poke(context)
    with pytest.raises(ConfigError, match="^max_drift"):
        build_condition(run_id="a", metric="m", reference=1.0, max_drift=-1)


def test_deferrable_defers_to_the_trigger(store, mlflow_uri):
    client, experiment_id = store
    run_id = client.create_run(experiment_id).info.run_id
    waiting = sensor(run_id=run_id, metric="val_accuracy", threshold=0.9, deferrable=True, poke_interval=2, timeout=30)
    with pytest.raises(TaskDeferred) as deferred:
        waiting.execute(make_context("wait_for_accuracy"))
    trigger = deferred.value.trigger
    assert isinstance(trigger, MLflowMetricTrigger) and deferred.value.method_name == "execute_complete"
    classpath, kwargs = trigger.serialize()
    assert kwargs["tracking_uri"] == mlflow_uri and kwargs["poll_interval"] == 2 and kwargs["timeout"] == 30
    assert kwargs["condition"] == build_condition(run_id=run_id, metric="val_accuracy", threshold=0.9)
    assert deferred.value.timeout.total_seconds() >= 30
    client.log_metric(run_id, "val_accuracy", 0.95)  # already true: no deferral at all
    assert waiting.execute(make_context("wait_for_accuracy"))["value"] == 0.95


def test_execute_complete_success_error_and_missing_event(store):
    waiting = sensor(run_id="abc", metric="val_accuracy", threshold=0.9, deferrable=True)
    context = make_context("wait_for_accuracy")
    result = {"met": True, "value": 0.95, "run_id": "abc", "message": "val_accuracy 0.95 >= 0.9 on run abc"}
    assert waiting.execute_complete(context, {"status": "success", "message": result["message"], "result": result}) == result
    with pytest.raises(AirflowException, match="MLflow condition check failed: boom"):
        waiting.execute_complete(context, {"status": "error", "message": "boom"})
    with pytest.raises(AirflowException, match="without a trigger event"):
        waiting.execute_complete(context, None)
    with pytest.raises(AirflowException, match="unknown trigger event status 'maybe'"):
        waiting.execute_complete(context, {"status": "maybe"})
    with pytest.raises(AirflowSensorTimeout, match="not met in time"):
        waiting.execute_complete(context, {"status": "timeout", "message": "condition not met after 1.0s"})
    soft = sensor(run_id="abc", metric="val_accuracy", threshold=0.9, deferrable=True, soft_fail=True)
    with pytest.raises(AirflowSkipException):  # how the task runner resumes it: soft_fail applies
        soft.resume_execution("execute_complete", {"event": {"status": "error", "message": "boom"}}, context)


def test_check_condition_is_pure_and_json(store):
    import json

    client, experiment_id = store
    run_id = client.create_run(experiment_id).info.run_id
    client.log_metric(run_id, "loss", float("nan"))
    result = check_condition(client, build_condition(run_id=run_id, metric="loss", op="<", threshold=1.0))
    assert result["met"] is False and result["value"] == "nan"
    json.dumps(result, allow_nan=False)
