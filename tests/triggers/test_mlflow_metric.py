"""MLflowMetricTrigger: serialize round trip, exactly one event (success, timeout, error)."""

from __future__ import annotations

import asyncio
import importlib
import threading
import time

import pytest
from dlagent.ml.conditions import build_condition
from dlagent.triggers.mlflow_metric import MLflowMetricTrigger
from mlflow import MlflowClient


def collect(trigger: MLflowMetricTrigger) -> tuple[list, float, int]:
    """Run the trigger to completion; return its events, the time taken and how often a
    concurrent coroutine got the loop (the trigger must never block it)."""

    async def main():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.02)

        task = asyncio.create_task(ticker())
        started = time.monotonic()
        events = [event async for event in trigger.run()]
        done.set()
        await task
        return events, time.monotonic() - started, ticks

    return asyncio.run(main())


@pytest.fixture
def run(mlflow_uri, tmp_path):
    client = MlflowClient(mlflow_uri)
    experiment_id = client.create_experiment("watched", artifact_location=str(tmp_path / "artifacts"))
    return client, client.create_run(experiment_id).info.run_id


def test_serialize_round_trip():
    condition = build_condition(run_id="abc", metric="val_accuracy", op=">=", threshold=0.9)
    trigger = MLflowMetricTrigger(tracking_uri="http://mlflow:5000", condition=condition, poll_interval=5, timeout=60)
    classpath, kwargs = trigger.serialize()
    assert classpath == "dlagent.triggers.mlflow_metric.MLflowMetricTrigger"
    assert kwargs == {"tracking_uri": "http://mlflow:5000", "condition": condition, "poll_interval": 5.0, "timeout": 60.0}
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)


def test_success_when_the_metric_is_logged_during_the_run(run, mlflow_uri):
    client, run_id = run
    condition = build_condition(run_id=run_id, metric="val_accuracy", op=">=", threshold=0.9)
    client.log_metric(run_id, "val_accuracy", 0.5)
    timer = threading.Timer(0.5, lambda: client.log_metric(run_id, "val_accuracy", 0.93))
    timer.start()
    try:
        events, seconds, ticks = collect(MLflowMetricTrigger(tracking_uri=mlflow_uri, condition=condition, poll_interval=0.2, timeout=20))
    finally:
        timer.join()
    assert len(events) == 1
    payload = events[0].payload
    assert payload["status"] == "success" and payload["result"]["value"] == 0.93 and payload["result"]["run_id"] == run_id
    assert "0.93 >= 0.9" in payload["message"]
    # The loop kept running while MLflow was polled (a blocking call would starve the ticker); the time
    # bound only catches a trigger that missed the metric, with room for a loaded machine.
    assert ticks >= 10 and seconds < 60


def test_timeout_yields_one_timeout_event(run, mlflow_uri):
    client, run_id = run
    condition = build_condition(run_id=run_id, metric="val_accuracy", op=">=", threshold=0.9)
    events, seconds, ticks = collect(MLflowMetricTrigger(tracking_uri=mlflow_uri, condition=condition, poll_interval=0.2, timeout=1))
    assert [e.payload["status"] for e in events] == ["timeout"]
    assert "not logged yet" in events[0].payload["message"] and events[0].payload["timeout"] == 1.0
    assert seconds >= 1.0 and ticks >= 20  # never before the timeout, and the loop was never blocked
    assert seconds < 30  # it does end (generous: a loaded machine stretches every sleep)


def test_unreachable_mlflow_yields_one_error_event(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    condition = build_condition(run_id="abc", metric="val_accuracy", threshold=0.9)
    events, _, _ = collect(MLflowMetricTrigger(tracking_uri="http://127.0.0.1:9", condition=condition, poll_interval=0.2, timeout=30))
    assert len(events) == 1 and events[0].payload["status"] == "error"
    assert "http://127.0.0.1:9 could not be read" in events[0].payload["message"]


def test_conditions_that_can_never_hold_are_errors(run, mlflow_uri):
    client, run_id = run
    missing = build_condition(run_id="0" * 32)
    events, _, _ = collect(MLflowMetricTrigger(tracking_uri=mlflow_uri, condition=missing, poll_interval=0.2, timeout=5))
    assert [e.payload["status"] for e in events] == ["error"] and "does not exist" in events[0].payload["message"]
    client.set_terminated(run_id, status="FAILED")
    events, _, _ = collect(MLflowMetricTrigger(tracking_uri=mlflow_uri, condition=build_condition(run_id=run_id), poll_interval=0.2, timeout=5))
    assert [e.payload["status"] for e in events] == ["error"] and "ended FAILED" in events[0].payload["message"]
    bad = {"kind": "threshold", "target": {"run_id": run_id}, "metric": "val_accuracy", "op": "~", "threshold": 1}
    events, _, _ = collect(MLflowMetricTrigger(tracking_uri=mlflow_uri, condition=bad, poll_interval=0.2, timeout=5))
    assert [e.payload["status"] for e in events] == ["error"] and "op:" in events[0].payload["message"]
