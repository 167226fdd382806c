"""Faults injected into the real services while dl_agent_pipeline runs, and concurrent deploys.

Each fault runs against the live stack (tests/conftest.py `live_stack`: api-server,
scheduler with LocalExecutor, dag-processor, triggerer, `mlflow server`, all on PostgreSQL):
a pipeline run is triggered through the REST API, the fault is injected while its tuning
workers run, and the run must still succeed with nothing lost: every MLflow run of the DAG
run ended (none left RUNNING), the study holds exactly `n_trials` finished trials and none
RUNNING, and the champion alias points at a registered version.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from dlagent.ml import tuning

from tests.conftest import PIPELINE, PROJECT_DIR
from tests.e2e.test_pipeline_dag import TINY_CONF
from tests.ml.tuning.workers import GRACE, HEARTBEAT, SPACE, by_state, finish, start_worker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
RELIABILITY_KIND = "fault"
FAULT_CONF = {**TINY_CONF, "experiment_name": "faults"}
MODEL_NAME = "dlagent-classifier"


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _trigger_and_wait_for(api, run_id: str, task_id: str, state: str = "running", timeout: float = 300) -> None:
    """Trigger a pipeline run and return once `task_id` (any map index) is in `state`."""
    api.trigger(PIPELINE, FAULT_CONF, run_id=run_id)
    deadline = time.monotonic() + timeout
    while True:
        states = {(t["task_id"], t["state"]) for t in api.task_instances(PIPELINE, run_id)}
        if (task_id, state) in states:
            return
        assert time.monotonic() < deadline, f"{task_id} never reached {state}: {sorted(states)}"
        time.sleep(0.5)


def _losses(stack, run_id: str) -> tuple[int, str]:
    """Items lost or left dangling by a DAG run: RUNNING MLflow runs, missing or RUNNING trials, champion."""
    import optuna
    from mlflow import MlflowClient

    client = MlflowClient(stack.mlflow_url)
    experiment = client.get_experiment_by_name(FAULT_CONF["experiment_name"])
    runs = client.search_runs([experiment.experiment_id], f"tags.`airflow.run_id` = '{run_id}'", max_results=500)
    running = [r.data.tags.get("airflow.task_id", "parent") for r in runs if r.info.status == "RUNNING"]
    storage = stack.env["AIRFLOW_CONN_OPTUNA_DEFAULT"].replace("postgresql://", "postgresql+psycopg2://")
    trials = optuna.load_study(study_name=f"{PIPELINE}.{run_id}", storage=storage).get_trials(deepcopy=False)
    finished = sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    stuck = sum(t.state.name == "RUNNING" for t in trials)
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    lost = len(running) + abs(FAULT_CONF["n_trials"] - finished) + stuck + (0 if champion.status == "READY" else 1)
    detail = (f"{len(runs)} MLflow runs, RUNNING: {running or 'none'}; trials finished {finished}/{FAULT_CONF['n_trials']}, "
              f"RUNNING {stuck}; champion v{champion.version}")
    return lost, detail


def _check_run(stack, run_id: str, reliability_record, name: str, what: str) -> None:
    state = stack.api.wait_for_run(PIPELINE, run_id, timeout=900)
    tasks = sorted((t["task_id"], t["map_index"], t["state"], t["try_number"]) for t in stack.api.task_instances(PIPELINE, run_id))
    lost, detail = _losses(stack, run_id) if state == "success" else (0, "")
    retried = [f"{t}[{m}]" if m >= 0 else t for t, m, _, tries in tasks if tries > 1]
    reliability_record("fault", name, state == "success" and lost == 0, lost=lost,
                       detail=f"{what}; run {state}; retried: {retried or 'none'}; {detail}")
    assert state == "success", f"{tasks}\n{stack.tail_logs(30)}"
    assert lost == 0, detail


def test_scheduler_killed_and_restarted_mid_run(live_stack, reliability_record):
    """SIGKILL to the scheduler's process group (its LocalExecutor task processes die too)."""
    _trigger_and_wait_for(live_stack.api, "fault_scheduler", "tune")
    live_stack.stop_service("scheduler", sig=signal.SIGKILL)
    time.sleep(5)
    live_stack.start_service("scheduler")
    _check_run(live_stack, "fault_scheduler", reliability_record, "scheduler SIGKILL mid-run, restarted",
               "scheduler and its task processes killed while tune ran")


def test_mlflow_server_down_for_30_s_during_a_run(live_stack, reliability_record):
    _trigger_and_wait_for(live_stack.api, "fault_mlflow", "tune")
    live_stack.stop_service("mlflow")
    time.sleep(30)
    live_stack.start_service("mlflow")
    _check_run(live_stack, "fault_mlflow", reliability_record, "MLflow server down 30 s mid-run",
               "mlflow server stopped for 30 s while tune ran")


def _pg_ctlcluster() -> list[str] | None:
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not shutil.which("pg_ctlcluster") or not versions:
        return None
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"]


def test_postgresql_restarted_mid_run(live_stack, reliability_record):
    """The one PostgreSQL server holding the Airflow metadata DB, the MLflow store and the study."""
    command = _pg_ctlcluster()
    if command is None:
        message = "pg_ctlcluster not found: cannot restart the local PostgreSQL server"
        if _ci():
            pytest.fail(message)
        pytest.skip(message)
    _trigger_and_wait_for(live_stack.api, "fault_postgres", "tune")
    restarted = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert restarted.returncode == 0, restarted.stderr
    _check_run(live_stack, "fault_postgres", reliability_record, "PostgreSQL restarted mid-run",
               f"`{' '.join(command)}` while tune ran; services restarted by the stack: {live_stack.restarts or 'none'}")


def test_a_tuning_worker_killed_mid_trial_is_failed_retried_and_the_study_still_finishes(postgres_url, tmp_path, procs, reliability_record):
    """SIGKILL inside a trial: the study in PostgreSQL fails it after the heartbeat grace, retries it, completes."""
    n_trials = 6
    tuning.create_study(postgres_url, "killed", tuning.StudySettings(space=SPACE, pruner="none", seed=0))
    marker = tmp_path / "in-second-trial"
    procs.append(start_worker(tmp_path, postgres_url, "killed", n_trials, 0, stall_in_fit=2, marker=str(marker)))
    wait_for(marker.exists, 180, "the doomed worker to be inside its second trial", procs)
    procs.append(start_worker(tmp_path, postgres_url, "killed", n_trials, 1))

    def survivor_has_finished_a_trial() -> bool:
        trials = tuning.load_study(postgres_url, "killed").get_trials()
        return sum(t.state.name == "COMPLETE" for t in trials) >= 2

    wait_for(survivor_has_finished_a_trial, 180, "the second worker to finish a trial", procs)
    before = tuning.load_study(postgres_url, "killed").get_trials()
    running = [t for t in before if t.state.name == "RUNNING" and t.user_attrs.get("worker", "").endswith(f":{procs[0].pid}")]
    assert len(running) == 1
    victim = running[0].number
    finished_before = {t.number: t.value for t in before if t.state.name == "COMPLETE"}
    killed_at = datetime.now()
    os.kill(procs[0].pid, signal.SIGKILL)
    procs[0].wait(timeout=30)
    assert procs[0].returncode == -signal.SIGKILL

    result = finish(procs[1], tmp_path, 1)
    trials = {t.number: t for t in tuning.load_study(postgres_url, "killed").get_trials()}
    dead = trials[victim]
    assert dead.state.name == "FAIL"
    assert (dead.datetime_complete - killed_at).total_seconds() >= GRACE - HEARTBEAT - 0.5  # failed only after the grace period
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == victim]
    assert len(retries) == 1
    assert retries[0].state.name == "COMPLETE" and retries[0].params == dead.params
    assert retries[0].number in result["trials"]
    counts = by_state(trials.values())
    assert counts["COMPLETE"] + counts["PRUNED"] == n_trials
    assert counts["RUNNING"] == counts["WAITING"] == 0 and counts["FAIL"] == 1
    assert all(trials[n].state.name == "COMPLETE" and trials[n].value == v for n, v in finished_before.items())
    assert result["study_n_trials"]["COMPLETE"] == n_trials
    reliability_record("fault", "tuning worker SIGKILL mid-trial", True, lost=0,
                       detail=f"trial {victim} FAIL after the grace period, retried as {retries[0].number}; "
                              f"{n_trials} trials finished, none RUNNING; earlier results unchanged")


# ------------------------------------------------------------------------------- concurrency

DEPLOYER = """
import json, sys, time
from pathlib import Path
from dlagent.ml.locks import named_lock
from dlagent.ml.registry import register_champion
from mlflow import MlflowClient
uri, model_uri, key, go, lock_db = sys.argv[1:6]
client = MlflowClient(uri, registry_uri=uri)
lock = named_lock(lock_db, "dlagent.deploy/concurrent-model")  # as DeployOperator takes it
while not Path(go).exists():
    time.sleep(0.01)
print(json.dumps(register_champion(client, model_uri, "concurrent-model", idempotency_key=key, lock=lock)), flush=True)
"""


def test_two_deploys_at_once_give_one_champion_and_both_versions(live_stack, digits_small, tmp_path, reliability_record):
    """Two processes register and promote at the same instant against the MLflow server."""
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.model_store import log_keras_model
    from dlagent.ml.tracking import ensure_experiment
    from dlagent.ml.training import fit
    from mlflow import MlflowClient

    client = MlflowClient(live_stack.mlflow_url)
    run_id = client.create_run(ensure_experiment(client, "concurrency", None)).info.run_id
    model = fit(digits_small, TrainConfig(model="mlp", epochs=1, units=8, early_stopping_patience=0)).model
    logged = [log_keras_model(client, run_id, model, digits_small.x_test[:2], labels=digits_small.class_names, name=f"m{i}")
              for i in range(2)]
    go = tmp_path / "go"
    env = {**os.environ, "MLFLOW_TRACKING_URI": live_stack.mlflow_url}
    lock_db = live_stack.env["AIRFLOW_CONN_OPTUNA_DEFAULT"].replace("postgresql://", "postgresql+psycopg2://")
    deployers = [subprocess.Popen([sys.executable, "-c", DEPLOYER, live_stack.mlflow_url, uri, f"run-{i}", str(go), lock_db],
                                  env=env, cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i, uri in enumerate(logged)]
    time.sleep(3)  # both processes have imported and wait on the same file
    go.touch()
    outputs = [p.communicate(timeout=300) for p in deployers]
    assert all(p.returncode == 0 for p in deployers), [err[-2000:] for _, err in outputs]

    versions = sorted(v.version for v in client.search_model_versions("name = 'concurrent-model'"))
    aliases = {k: str(v) for k, v in client.get_registered_model("concurrent-model").aliases.items()}
    # one champion; the other version is its `previous`, so a rollback reaches it
    ok = versions == ["1", "2"] and aliases.get("champion") in versions and set(aliases.values()) == {"1", "2"}
    reliability_record("concurrency", "two deploys at once", ok, lost=max(0, 2 - len(versions)),
                       detail=f"versions {versions}, aliases {aliases}")
    assert ok, (versions, aliases)


def test_clearing_and_rerunning_every_task_duplicates_nothing(live_stack, reliability_record):
    """Clear the whole finished run (as the UI's Clear button does) and let it run again."""
    from mlflow import MlflowClient

    api, run_id = live_stack.api, "idempotent_rerun"
    api.trigger(PIPELINE, FAULT_CONF, run_id=run_id)
    assert api.wait_for_run(PIPELINE, run_id) == "success", live_stack.tail_logs(30)
    client = MlflowClient(live_stack.mlflow_url)
    experiment = client.get_experiment_by_name(FAULT_CONF["experiment_name"]).experiment_id

    def snapshot():
        runs = client.search_runs([experiment], f"tags.`airflow.run_id` = '{run_id}'", max_results=500)
        versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
        return ({r.info.run_id for r in runs}, [r.info.status for r in runs], sorted(v.version for v in versions))

    runs_before, _, versions_before = snapshot()
    api.post(f"/api/v2/dags/{PIPELINE}/clearTaskInstances",
             {"dag_run_id": run_id, "only_failed": False, "reset_dag_runs": True, "dry_run": False})
    assert api.wait_for_run(PIPELINE, run_id) == "success", live_stack.tail_logs(30)
    tries = {t["try_number"] for t in api.task_instances(PIPELINE, run_id) if t["state"] == "success"}
    runs_after, statuses, versions_after = snapshot()
    new_runs = runs_after - runs_before
    ok = not new_runs and "RUNNING" not in statuses and versions_after == versions_before and max(tries) >= 2
    reliability_record("concurrency", "clear and re-run every task", ok, lost=len(runs_before - runs_after),
                       detail=f"{len(runs_after)} MLflow runs ({len(new_runs)} new), statuses {sorted(set(statuses))}; "
                              f"registry versions {versions_before} -> {versions_after}; try numbers {sorted(tries)}")
    assert ok


# ------------------------------------------------------------------- the sensor and its trigger

def _mlflow_server(procs, tmp_path, port: int) -> subprocess.Popen:
    """``mlflow server`` in a process group of its own (it starts uvicorn workers, a job runner,
    huey consumers): ``procs`` stops the whole group after the test."""
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
               "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    with open(tmp_path / "mlflow-server.log", "ab") as log:
        return procs.start(command, stdout=log, stderr=subprocess.STDOUT)


def _wait_up(url: str, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            assert time.monotonic() < deadline, f"MLflow at {url} did not come up"
            time.sleep(0.5)


def test_sensor_and_trigger_ride_out_the_mlflow_server_down_for_30_s(tmp_path, procs, monkeypatch, reliability_record):
    """Poke mode and the deferrable trigger both wait through the outage and then see the metric."""
    import asyncio
    import threading

    from dlagent.ml.conditions import build_condition
    from dlagent.sensors.mlflow_metric import MLflowMetricSensor
    from dlagent.triggers.mlflow_metric import MLflowMetricTrigger
    from dlagent_dev.stack import free_port
    from mlflow import MlflowClient

    from tests.operators.context import make_context

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    _mlflow_server(procs, tmp_path, port)
    _wait_up(url)
    client = MlflowClient(url)
    run_id = client.create_run(client.create_experiment("watched")).info.run_id
    assert procs.stop(procs[0], grace=30) == []  # down: the server and every worker of it, so the port is free

    results: dict = {}

    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # the sensor's hook: no Connection, so the env

    def poke_mode():
        sensor = MLflowMetricSensor(task_id="watch", run_id=run_id, metric="val_accuracy", op=">=", threshold=0.9,
                                    poke_interval=1, timeout=240, mode="poke")
        try:
            results["sensor"] = sensor.execute(make_context("watch"))
        except Exception as exc:  # noqa: BLE001 - recorded and asserted below
            results["sensor"] = exc

    def deferred():
        trigger = MLflowMetricTrigger(tracking_uri=url, poll_interval=1, timeout=240,
                                      condition=build_condition(run_id=run_id, metric="val_accuracy", op=">=", threshold=0.9))

        async def first_event():
            async for event in trigger.run():
                return event.payload

        results["trigger"] = asyncio.run(first_event())

    threads = [threading.Thread(target=poke_mode), threading.Thread(target=deferred)]
    for thread in threads:
        thread.start()
    time.sleep(30)  # the server stays down while both wait
    _mlflow_server(procs, tmp_path, port)
    _wait_up(url)
    client.log_metric(run_id, "val_accuracy", 0.95)
    for thread in threads:
        thread.join(timeout=300)
    sensor, trigger = results.get("sensor"), results.get("trigger")
    ok = isinstance(sensor, dict) and sensor.get("met") is True and (trigger or {}).get("status") == "success"
    reliability_record("fault", "MLflow server down 30 s under the sensor (poke and deferrable)", ok,
                       detail=f"poke mode returned {str(sensor)[:200]}; trigger event status {(trigger or {}).get('status')}: "
                              f"{str((trigger or {}).get('message'))[:200]}")
    assert ok, (sensor, trigger)
