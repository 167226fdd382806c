"""Faults injected into the real services while dl_agent_pipeline runs, and concurrent deploys.

The live faults ride on the session's shared live run (tests/conftest.py ``live_pipeline_run``,
injected by tests/reliability/fault_chain.py on the live stack: api-server, scheduler with
LocalExecutor, dag-processor, triggerer, ``mlflow server``, all on PostgreSQL): the scheduler and
its task processes killed while tuning runs, the MLflow server down for 30 s while training runs
(the watch sensor waits through it, poke mode and deferred), PostgreSQL restarted while the
candidates are compressed. The run must still succeed with nothing lost: every MLflow run of the
DAG run ended (none left RUNNING), the study holds exactly ``n_trials`` finished trials and none
RUNNING, and the champion alias points at a registered version. Each fault is its own item.
Below them: a tuning worker killed inside a trial, two deploys at once, and clearing and
re-running every task of the shared run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime

import pytest
from dlagent.ml import tuning
from dlagent.ml.mlflow_names import RESULT_INPUTS_TAG

from tests.conftest import PIPELINE, PROJECT_DIR, required_on_ci
from tests.ml.tuning.workers import GRACE, HEARTBEAT, SPACE, by_state, finish, start_worker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
RELIABILITY_KIND = "fault"
MODEL_NAME = "dlagent-classifier"


def test_one_run_rides_out_a_killed_scheduler_mlflow_down_30_s_and_a_postgresql_restart(live_stack, live_pipeline_run,
                                                                                    reliability_record):
    """The three faults, one after the other, in the session's shared live run (tests/reliability/fault_chain.py);
    each recorded as its own item, and the sensor that waited through the MLflow outage as one more."""
    run = live_pipeline_run
    retried = [f"{t}[{m}]" if m >= 0 else t for t, m, _, tries in run["tasks"] if tries > 1]
    for name, what in run["faults"]:
        reliability_record("fault", name, run["state"] == "success" and run["lost"] == 0, lost=run["lost"],
                           detail=f"{what}; one run carried {len(run['faults'])} faults: run {run['state']}; retried: "
                                  f"{retried or 'none'}; services restarted by the stack: {run['restarts'] or 'none'}; {run['detail']}")
    reliability_record("fault", "MLflow server down 30 s under the sensor (poke and deferrable)", run["sensor"]["ok"],
                       detail=run["sensor"]["detail"])
    assert run["state"] == "success", run["detail"]
    assert run["lost"] == 0, run["detail"]
    assert run["sensor"]["ok"], run["sensor"]["detail"]
    if not run["postgres_restart"]:
        required_on_ci("pg_ctlcluster not found: the PostgreSQL restart was not tried (the other faults were)")


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
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == victim]
    counts = by_state(trials.values())
    changed = [n for n, v in finished_before.items() if trials[n].state.name != "COMPLETE" or trials[n].value != v]
    # lost: trials of the budget that never finished, and results that were there before the kill and changed
    lost = max(0, n_trials - counts["COMPLETE"] - counts["PRUNED"]) + len(changed)
    checks = {
        "the killed trial is FAIL": dead.state.name == "FAIL",
        "failed only after the grace period": dead.datetime_complete is not None
        and (dead.datetime_complete - killed_at).total_seconds() >= GRACE - HEARTBEAT - 0.5,
        "retried once with its parameters": len(retries) == 1 and retries[0].state.name == "COMPLETE"
        and retries[0].params == dead.params and retries[0].number in result["trials"],
        "exactly the budget finished": counts["COMPLETE"] + counts["PRUNED"] == n_trials,
        "none RUNNING or WAITING, one FAIL": counts["RUNNING"] == counts["WAITING"] == 0 and counts["FAIL"] == 1,
        "the worker reports the whole budget": result["study_n_trials"]["COMPLETE"] == n_trials,
    }
    failed = [name for name, ok in checks.items() if not ok]
    reliability_record("fault", "tuning worker SIGKILL mid-trial", not failed and not lost, lost=lost,
                       detail=(f"FAILED: {failed}; " if failed else "") + f"trial {victim} {dead.state.name}, retried as "
                              f"{[t.number for t in retries]}; {counts}; {len(changed)} earlier result(s) changed")
    assert not failed, failed
    assert lost == 0


# ------------------------------------------------------------------------------- concurrency

DEPLOYER = """
import json, sys, time
from pathlib import Path
from dlagent.ml.locks import named_lock
from dlagent.ml.registry import register_champion
from mlflow import MlflowClient
uri, model_uri, key, go, lock_db, ready = sys.argv[1:7]
client = MlflowClient(uri, registry_uri=uri)
lock = named_lock(lock_db, "dlagent.deploy/concurrent-model")  # as DeployOperator takes it
Path(ready).touch()
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
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    deployers = [subprocess.Popen([sys.executable, "-c", DEPLOYER, live_stack.mlflow_url, uri, f"run-{i}", str(go), lock_db, str(ready[i])],
                                  env=env, cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i, uri in enumerate(logged)]
    # Both have imported and wait on the same file (a fixed sleep let a slow import start its deploy after the other's ended).
    deadline = time.monotonic() + 120
    while not all(path.exists() for path in ready):
        if time.monotonic() > deadline or any(p.poll() is not None for p in deployers):
            for p in deployers:
                p.kill()
            pytest.fail(f"a deployer never got ready: {[p.communicate()[1][-2000:] for p in deployers]}")
        time.sleep(0.05)
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


def test_clearing_and_rerunning_every_task_duplicates_nothing(live_stack, live_pipeline_run, reliability_record):
    """Clear the whole finished run (as the UI's Clear button does) and let it run again. The run is the
    session's shared REST run (tests/conftest.py `live_pipeline_run`), already read by the e2e test."""
    from mlflow import MlflowClient

    api, run_id = live_stack.api, live_pipeline_run["run_id"]
    assert live_pipeline_run["state"] == "success", live_pipeline_run["detail"]
    client = MlflowClient(live_stack.mlflow_url)
    experiment = client.get_experiment_by_name(live_pipeline_run["conf"]["experiment_name"]).experiment_id

    def snapshot():
        runs = client.search_runs([experiment], f"tags.`airflow.run_id` = '{run_id}'", max_results=500)
        versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
        models = {m.model_id for m in client.search_logged_models([experiment], max_results=500)}
        # a step computed again (not returned from its record) would have recorded other inputs
        recorded = {r.info.run_id: r.data.tags.get(RESULT_INPUTS_TAG) for r in runs if r.data.tags.get(RESULT_INPUTS_TAG)}
        return ({r.info.run_id for r in runs}, [r.info.status for r in runs], sorted(v.version for v in versions), models, recorded)

    runs_before, _, versions_before, models_before, recorded_before = snapshot()
    api.post(f"/api/v2/dags/{PIPELINE}/clearTaskInstances",
             {"dag_run_id": run_id, "only_failed": False, "reset_dag_runs": True, "dry_run": False})
    assert api.wait_for_run(PIPELINE, run_id) == "success", live_stack.failure_report(api, PIPELINE, run_id)
    tries = {t["try_number"] for t in api.task_instances(PIPELINE, run_id) if t["state"] == "success"}
    runs_after, statuses, versions_after, models_after, recorded_after = snapshot()
    new_runs, new_models = runs_after - runs_before, models_after - models_before
    recomputed = sorted(run for run, digest in recorded_after.items() if recorded_before.get(run) != digest)
    ok = (not new_runs and not new_models and not recomputed and len(recorded_before) >= 5 and "RUNNING" not in statuses
          and versions_after == versions_before and max(tries) >= 2)
    reliability_record("concurrency", "clear and re-run every task", ok, lost=len(runs_before - runs_after),
                       detail=f"{len(runs_after)} MLflow runs ({len(new_runs)} new), {len(new_models)} new logged models, "
                              f"statuses {sorted(set(statuses))}; registry versions {versions_before} -> {versions_after}; "
                              f"try numbers {sorted(tries)}; {len(recorded_before)} step results recorded, "
                              f"{len(recomputed)} computed again")
    assert ok
