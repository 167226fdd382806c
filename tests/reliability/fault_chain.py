"""The fault chain: one pipeline run on the live services that rides out three faults, one after the other.

While its tuning workers run, the scheduler and its task processes are killed (SIGKILL) and the
scheduler restarted; while it trains, the MLflow server is down for 30 s (the watch sensor, in poke
mode and deferred to its trigger, waits through the same outage); while it compresses, the one
PostgreSQL server (Airflow's metadata DB, the MLflow store, the study) restarts.

It is the session's shared live run (tests/conftest.py ``live_pipeline_run``): every task process
on the live services imports TensorFlow, so a run costs a minute or two, and the tests that only
read a finished run (the end-to-end check) or replay it (clear and re-run) take this one instead
of running their own. The fault tests record each fault as its own item from what it returns.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.conftest import PIPELINE

MODEL_NAME = "dlagent-classifier"


def wait_for_task(api, run_id: str, task_ids: tuple[str, ...], state: str = "running", timeout: float = 600,
                  dag_id: str = PIPELINE) -> str:
    """Return the first of ``task_ids`` (any map index) seen in ``state``; fail at once if the run ends first."""
    deadline = time.monotonic() + timeout
    while True:
        states = {(t["task_id"], t["state"]) for t in api.task_instances(dag_id, run_id)}
        for task_id in task_ids:
            if (task_id, state) in states:
                return task_id
        run_state = api.run_state(dag_id, run_id)
        assert run_state not in ("success", "failed"), f"the run ended ({run_state}) before any of {task_ids} was {state}: {sorted(states)}"
        assert time.monotonic() < deadline, f"none of {task_ids} reached {state}: {sorted(states)}"
        time.sleep(0.5)


def losses(stack, run_id: str, conf: dict) -> tuple[int, str]:
    """Items lost or left dangling by a DAG run: RUNNING MLflow runs, missing or RUNNING trials, champion."""
    import optuna
    from mlflow import MlflowClient

    client = MlflowClient(stack.mlflow_url)
    experiment = client.get_experiment_by_name(conf["experiment_name"])
    runs = client.search_runs([experiment.experiment_id], f"tags.`airflow.run_id` = '{run_id}'", max_results=500)
    running = [r.data.tags.get("airflow.task_id", "parent") for r in runs if r.info.status == "RUNNING"]
    storage = stack.env["AIRFLOW_CONN_OPTUNA_DEFAULT"].replace("postgresql://", "postgresql+psycopg2://")
    trials = optuna.load_study(study_name=f"{PIPELINE}.{run_id}", storage=storage).get_trials(deepcopy=False)
    finished = sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    stuck = sum(t.state.name == "RUNNING" for t in trials)
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    lost = len(running) + abs(conf["n_trials"] - finished) + stuck + (0 if champion.status == "READY" else 1)
    detail = (f"{len(runs)} MLflow runs, RUNNING: {running or 'none'}; trials finished {finished}/{conf['n_trials']}, "
              f"RUNNING {stuck}; champion v{champion.version}")
    return lost, detail


def pg_ctlcluster() -> list[str] | None:
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not shutil.which("pg_ctlcluster") or not versions:
        return None
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"]


class SensorDuringOutage:
    """The watch sensor in poke mode and its deferrable trigger, waiting on a metric of the live MLflow
    server while the chain takes that server down: both must ride out the outage and fire."""

    def __init__(self, url: str):
        from mlflow import MlflowClient

        self.url, self.client = url, MlflowClient(url)
        experiment = self.client.get_experiment_by_name("watched")
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment("watched")
        self.run_id = self.client.create_run(experiment_id).info.run_id
        self.results: dict = {}
        self.threads: list = []

    def start(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import asyncio
        import threading

        from dlagent.ml.conditions import build_condition
        from dlagent.sensors.mlflow_metric import MLflowMetricSensor
        from dlagent.triggers.mlflow_metric import MLflowMetricTrigger

        from tests.operators.context import make_context

        monkeypatch.setenv("MLFLOW_TRACKING_URI", self.url)  # the sensor's hook: no Connection, so the env
        monkeypatch.delenv("AIRFLOW_CONN_MLFLOW_DEFAULT", raising=False)

        def poke_mode():
            sensor = MLflowMetricSensor(task_id="watch", run_id=self.run_id, metric="val_accuracy", op=">=", threshold=0.9,
                                        poke_interval=1, timeout=300, mode="poke")
            try:
                self.results["sensor"] = sensor.execute(make_context("watch"))
            except Exception as exc:  # noqa: BLE001 - recorded and asserted below
                self.results["sensor"] = exc

        def deferred():
            trigger = MLflowMetricTrigger(tracking_uri=self.url, poll_interval=1, timeout=300,
                                          condition=build_condition(run_id=self.run_id, metric="val_accuracy", op=">=", threshold=0.9))

            async def first_event():
                async for event in trigger.run():
                    return event.payload

            self.results["trigger"] = asyncio.run(first_event())

        self.threads = [threading.Thread(target=poke_mode), threading.Thread(target=deferred)]
        for thread in self.threads:
            thread.start()

    def finish(self) -> dict:
        """Log the metric (the outage is over), wait for both; ``{"ok", "detail"}``."""
        self.client.log_metric(self.run_id, "val_accuracy", 0.95)  # after the outage: both must now see it
        for thread in self.threads:
            thread.join(timeout=300)
        sensor, trigger = self.results.get("sensor"), self.results.get("trigger")
        ok = isinstance(sensor, dict) and sensor.get("met") is True and (trigger or {}).get("status") == "success"
        return {"ok": ok, "detail": f"poke mode returned {str(sensor)[:200]}; trigger event status {(trigger or {}).get('status')}: "
                                    f"{str((trigger or {}).get('message'))[:200]}"}


def run_with_faults(stack, run_id: str, conf: dict) -> dict:
    """Trigger ``run_id`` with ``conf``, inject the three faults, wait for the end; what happened, as a dict."""
    api = stack.api
    command = pg_ctlcluster()
    faults: list[tuple[str, str]] = []  # (item, what happened)
    api.trigger(PIPELINE, conf, run_id=run_id)

    # 1. SIGKILL to the scheduler's process group while tune runs: its LocalExecutor task processes die with it
    # (they have process groups of their own; dlagent.preload has Linux kill them with their supervisor)
    wait_for_task(api, run_id, ("tune",))
    stack.stop_service("scheduler", sig=signal.SIGKILL)
    time.sleep(5)
    stack.start_service("scheduler")
    faults.append(("scheduler SIGKILL mid-run, restarted", "scheduler and its task processes killed while tune ran"))

    # 2. the MLflow server stopped for 30 s while training runs; the sensor and its trigger wait through it.
    # The DAG is paused meanwhile: the running task finishes, no new one starts, so fault 3 below can be
    # placed inside a compress or evaluate task instead of racing the run to it (on a loaded machine the
    # sensor's retries outlasted the whole rest of the run, and fault 3 found nothing running).
    during = wait_for_task(api, run_id, ("train", "compression_candidates", "compress"))
    api.set_paused(PIPELINE, True)
    try:
        sensor = SensorDuringOutage(stack.mlflow_url)
        with pytest.MonkeyPatch.context() as patch:
            sensor.start(patch)
            stack.stop_service("mlflow")
            time.sleep(30)
            stack.start_service("mlflow")
            stack.wait_healthy(timeout=180)
            faults.append(("MLflow server down 30 s mid-run", f"mlflow server stopped for 30 s while {during} ran"))
            sensed = sensor.finish()
    finally:
        api.set_paused(PIPELINE, False)

    # 3. PostgreSQL restarted while the candidates are compressed (or the model evaluated)
    if command is not None:
        during = wait_for_task(api, run_id, ("compress", "evaluate", "agent_decide"))
        restarted = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert restarted.returncode == 0, restarted.stderr
        faults.append(("PostgreSQL restarted mid-run", f"`{' '.join(command)}` while {during} ran"))

    state = api.wait_for_run(PIPELINE, run_id, timeout=900)
    tasks = sorted((t["task_id"], t["map_index"], t["state"], t["try_number"]) for t in api.task_instances(PIPELINE, run_id))
    lost, detail = losses(stack, run_id, conf) if state == "success" else (0, stack.failure_report(api, PIPELINE, run_id))
    return {"run_id": run_id, "state": state, "conf": conf, "faults": faults, "tasks": tasks, "lost": lost, "detail": detail,
            "sensor": sensed, "postgres_restart": command is not None, "restarts": dict(stack.restarts)}
