"""dl_agent_federated on the live services: the scheduler killed between two rounds.

The run is held between rounds the way the fault chain holds the pipeline between tasks: the DAG
is paused while round 1's aggregation runs, so that task finishes and round 2 does not start.
Then the scheduler is killed with SIGKILL, started again, and the DAG unpaused. The run must
carry on through round 2 with round 1 run once, round 2 starting from round 1's global weights,
and each round averaging each site's one update: one local MLflow run per site and round, one
aggregation per round, every step run FINISHED.

The run is ended (marked success) once round 2's aggregation has finished: the finalize,
compress, evaluate and deploy tasks after it run in the federated ``dags test`` runs
(tests/e2e/test_federated_dag.py), and the last three are the pipeline's own, which the fault
chain's live run takes through; on the live services each would be one more TensorFlow process.

What the restart relies on is Airflow's metadata database (round 1's task states and XComs) and
the tasks' recorded results (tests/operators/test_federated.py restarts every task of a run in
process); this test checks that the two hold together on the real scheduler.
"""

from __future__ import annotations

import signal
import time

import pytest
from dlagent.ml.federated.settings import MAX_ROUNDS

from tests.reliability.fault_chain import wait_for_task

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
RELIABILITY_KIND = "fault"
FEDERATED = "dl_agent_federated"
#: Small: 2 digits shards of about 100 rows, an MLP, 2 rounds of 1 local epoch; its own experiment and model name.
CONF = {"dataset": "digits", "max_samples": 300, "model": "mlp", "units": 16, "learning_rate": 0.01, "n_shards": 2, "rounds": 2,
        "local_epochs": 1, "seed": 3, "experiment_name": "federated_crash", "model_name": "federated-crash",
        "compression_candidates": [{"quantization": "dynamic"}], "max_metric_drop_points": 12.5}


def _xcom(api, run_id: str, task_id: str, key: str = "return_value"):
    return api.get(f"/api/v2/dags/{FEDERATED}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}")["value"]


def test_a_federated_run_whose_scheduler_is_killed_between_rounds_resumes_from_the_last_global_model(live_stack, reliability_record):
    from mlflow import MlflowClient

    api, run_id = live_stack.api, "federated_crash"
    api.wait_for_dag(FEDERATED)
    api.unpause(FEDERATED)
    api.trigger(FEDERATED, CONF, run_id=run_id)
    wait_for_task(api, run_id, ("round_01.aggregate",), dag_id=FEDERATED)
    api.set_paused(FEDERATED, True)  # round 1's aggregation finishes; no task of round 2 starts
    try:
        wait_for_task(api, run_id, ("round_01.aggregate",), state="success", dag_id=FEDERATED)
        started = sorted(t["task_id"] for t in api.task_instances(FEDERATED, run_id) if t["task_id"].startswith("round_02") and t["start_date"])
        assert started == [], f"round 2 started before the crash: {started}"
        live_stack.stop_service("scheduler", sig=signal.SIGKILL)
        time.sleep(2)
        live_stack.start_service("scheduler")
    finally:
        api.set_paused(FEDERATED, False)
    wait_for_task(api, run_id, ("round_02.aggregate",), dag_id=FEDERATED)
    api.set_paused(FEDERATED, True)  # round 2's aggregation finishes; finalize does not start
    try:
        wait_for_task(api, run_id, ("round_02.aggregate",), state="success", dag_id=FEDERATED)
        api.set_run_state(FEDERATED, run_id, "success")
    finally:
        api.set_paused(FEDERATED, False)
    tasks = api.task_instances(FEDERATED, run_id)

    round_one = _xcom(api, run_id, "round_01.aggregate", "round_result")
    round_two_plan = _xcom(api, run_id, "round_01.aggregate")  # what round 2's local tasks expanded over
    round_two = _xcom(api, run_id, "round_02.aggregate", "round_result")
    client = MlflowClient(live_stack.mlflow_url)
    experiment = client.get_experiment_by_name(CONF["experiment_name"])
    runs = client.search_runs([experiment.experiment_id], f"tags.`airflow.run_id` = '{run_id}'", max_results=200)
    steps = [(r.data.tags.get("dlagent.step"), r.data.tags.get("dlagent.federated.round"), r.data.tags.get("dlagent.federated.site"))
             for r in runs]
    parent = next(r for r in runs if r.data.tags.get("dlagent.kind") == "pipeline")
    client.set_terminated(parent.info.run_id, status="KILLED")  # the finish task that ends it does not run
    running = [r.info.run_name for r in runs if r.info.status != "FINISHED" and r.info.run_id != parent.info.run_id]
    expected = {("federated-local", str(n), str(s)) for n in (1, 2) for s in range(2)} | {("federated-aggregate", "1", None),
                                                                                            ("federated-aggregate", "2", None)}
    federated_steps = sorted(s for s in steps if s[0] in ("federated-local", "federated-aggregate"))
    lost = len(running) + len(set(federated_steps) ^ expected) + len(federated_steps) - len(set(federated_steps))
    rerun = sorted(t["task_id"] for t in tasks if t["task_id"].startswith("round_01") and t["try_number"] > 1)
    reliability_record("fault", "scheduler SIGKILL between federated rounds, restarted",
                       lost == 0 and not rerun and {a["global_uri"] for a in round_two_plan} == {round_one["global_uri"]},
                       lost=lost, detail=f"round 1 tasks re-run: {rerun or 'none'}; round 2 started from "
                                         f"{sorted({a['global_uri'] for a in round_two_plan})} (round 1's global {round_one['global_uri']}); "
                                         f"MLflow runs not FINISHED: {running or 'none'}; federated step runs {federated_steps}")
    assert rerun == []  # round 1 is not computed again
    assert {a["global_uri"] for a in round_two_plan} == {round_one["global_uri"]} and [a["round"] for a in round_two_plan] == [2, 2]
    assert round_two["history"][0] == round_one["history"][0] and [r["round"] for r in round_two["history"]] == [1, 2]
    assert federated_steps == sorted(expected) and running == []  # each site's one update per round, each round averaged once
    # round 3 is not planned (finalize takes round 2's model): round 2's aggregation skipped every later round's tasks at once
    skipped = _xcom(api, run_id, "round_02.aggregate", "skipmixin_key")["skipped"]
    assert sorted(skipped) == sorted(f"round_{n:02d}.{task}" for n in range(3, MAX_ROUNDS + 1) for task in ("local", "aggregate"))
