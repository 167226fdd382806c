"""The agent as Airflow tasks, on a real MLflow store holding a fixed pipeline history.

AgentOperator observes a pipeline run (trials, curves, evaluation, compression candidates, a
champion), decides with a policy, logs an ``agent`` child run with ``decisions.json`` and
returns the plan; PlanBranchOperator follows its action; PlanConfOperator turns it into a
``dl_agent_pipeline`` conf.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, DownstreamTasksSkipped
from dlagent.agent.plan import pipeline_conf, plan_to_json, validate_plan
from dlagent.agent.policies.base import Policy
from dlagent.ml.tracking import run_key
from dlagent.operators.agent import AgentOperator, PlanBranchOperator, PlanConfOperator
from mlflow import MlflowClient

from tests.agent.history import BEST_TRIAL_CURVE, CANDIDATES, CHAMPION, TRAIN_CURVE, TRIALS, child, log_curve
from tests.operators.context import make_context

RESOURCES = {"cpu_count": 4, "cpus_free": 2, "load_1m": 1.5, "memory_free_gb": 8.0}
DAG_ID = "dl_agent_pipeline"
T0 = 1_700_000_000_000


def pipeline_history(client, experiment_id: str, run_id: str, *, dag_id: str = DAG_ID, val_accuracy: float = 0.95) -> str:
    """One finished pipeline run as the operators would leave it; returns its parent run id.

    The parent carries the key AgentOperator looks for (dag id + run id), six trials (the
    best one over-fits), a training run with per-epoch metrics, a blessed evaluation and three
    compression candidates.
    """
    parent = client.create_run(experiment_id, run_name=f"{dag_id} {run_id}", start_time=T0, tags={
        "dlagent.key": run_key(dag_id, run_id), "dlagent.kind": "pipeline", "airflow.dag_id": dag_id, "airflow.run_id": run_id,
    }).info.run_id
    for key, value in {"model": "mlp", "epochs": 10, "learning_rate": 0.001, "dropout": 0.2, "units": 128,
                       "early_stopping_patience": 3, "optimizer": "adam", "dataset": "digits"}.items():
        client.log_param(parent, key, value)
    for i, (number, state, value, lr, units, dropout) in enumerate(TRIALS):
        metrics = {"epochs_run": 8.0, **({"objective": value} if value is not None else {})}
        trial = child(client, experiment_id, parent, None, f"trial-{number}", T0 + 1000 * (i + 1),
                      tags={"optuna.trial_number": str(number), "optuna.state": state, "optuna.study": f"{dag_id}.{run_id}"},
                      params={"model": "mlp", "epochs": 10, "seed": 42, "learning_rate": lr, "units": units, "dropout": dropout},
                      metrics=metrics, status="FAILED" if state == "FAIL" else "FINISHED")
        if number == 3:
            log_curve(client, trial, BEST_TRIAL_CURVE)
    train = child(client, experiment_id, parent, "train", "train", T0 + 20_000,
                  params={"learning_rate": 0.002, "units": 128, "dropout": 0.2, "epochs": 5},
                  metrics={"epochs_run": 5.0, "best_val_accuracy": 0.89}, seconds=30)
    log_curve(client, train, TRAIN_CURVE)
    child(client, experiment_id, parent, "evaluate", "evaluate", T0 + 60_000, tags={"dlagent.gate.blessed": "true"},
          metrics={"val_accuracy": val_accuracy, "test_accuracy": 0.5, "test_loss": 0.2}, seconds=2)  # test: never read
    for j, (name, sparsity, quantization, accuracy, size, latency) in enumerate(CANDIDATES):
        child(client, experiment_id, parent, "compress", f"compress[{j}]", T0 + 70_000 + j, tags={"dlagent.candidate": name},
              params={"sparsity": sparsity, "quantization": quantization},
              metrics={"val_accuracy": accuracy, "size_bytes": float(size), "latency_ms_p95": latency}, seconds=5)
    return parent


def register_champion(client, experiment_id: str, accuracy: float = 0.92) -> None:
    old = client.create_run(experiment_id, run_name="old champion", start_time=T0 - 10**7).info.run_id
    client.log_metric(old, "val_accuracy", accuracy)
    client.set_terminated(old)
    client.create_registered_model(CHAMPION)
    version = client.create_model_version(CHAMPION, source="/nonexistent/model", run_id=old,
                                          tags={"dlagent.metric.val_accuracy": str(accuracy)})
    client.set_registered_model_alias(CHAMPION, "champion", version.version)


@pytest.fixture
def store(mlflow_uri, tmp_path):
    """A real MLflow store with experiment ``exp``, a champion and the pipeline run ``manual__1``."""
    client = MlflowClient(mlflow_uri)
    experiment_id = client.create_experiment("exp", artifact_location=str(tmp_path / "artifacts"))
    register_champion(client, experiment_id)
    parent = pipeline_history(client, experiment_id, "manual__1")
    return client, experiment_id, parent


def agent(task_id: str = "agent", **kwargs) -> AgentOperator:
    settings = {"experiment_name": "exp", "champion_name": CHAMPION, "fixed_resources": RESOURCES, **kwargs}
    return AgentOperator(task_id=task_id, **settings)


def agent_runs(client, experiment_id, parent=None) -> list:
    query = "tags.`dlagent.step` = 'agent'" + (f" and tags.`mlflow.parentRunId` = '{parent}'" if parent else "")
    return client.search_runs([experiment_id], filter_string=query)


def decisions(client, run_id: str) -> dict:
    return json.loads(Path(client.download_artifacts(run_id, "decisions.json")).read_text())


# --------------------------------------------------------------------------- AgentOperator


def test_plan_phase_is_deterministic_logged_and_pushed(store):
    client, experiment_id, parent = store
    context = make_context("agent_plan", dag_id=DAG_ID, run_id="manual__1")
    plan = agent("agent_plan", phase="plan").execute(context)

    assert plan == validate_plan(plan)  # valid against the schema, already normalized
    assert plan["train"] == {"dropout": 0.3, "epochs": 8, "learning_rate": 0.002, "units": 128}  # best trial; best epoch 5 + patience 3; gap
    assert plan["tune"]["n_trials"] == 8 and plan["tune"]["n_workers"] == 2
    assert plan["compress"] == [{"quantization": "int8", "sparsity": 0.0}]
    assert plan["controller"]["patience"] == 1
    assert plan["reasons"][-1]["decision"] == "phase=plan"
    assert all(r["because"] for r in plan["reasons"])
    # Every section is its own XCom, so downstream tasks take agent.output["train"], ...
    xcoms = context["ti"].xcoms
    assert xcoms["train"] == plan["train"] and xcoms["compress"] == plan["compress"] and xcoms["action"] == plan["action"]

    (run,) = agent_runs(client, experiment_id, parent)
    assert run.info.status == "FINISHED"
    assert run.data.tags["dlagent.phase"] == "plan" and run.data.tags["dlagent.action"] == plan["action"]
    assert run.data.tags["dlagent.policy"] == "rules" and run.data.tags["dlagent.observed_run_id"] == parent
    assert run.data.params["train.dropout"] == "0.3" and run.data.params["policy"] == "rules"
    assert run.data.metrics["reasons"] == len(plan["reasons"])
    assert decisions(client, run.info.run_id) == plan
    observation = json.loads(Path(client.download_artifacts(run.info.run_id, "observation.json")).read_text())
    assert observation["parent_run_id"] == parent and observation["resources"] == RESOURCES

    # Same history, observed again (a retried task, then another DAG run watching it): same plan.
    again = agent("agent_plan", phase="plan").execute(make_context("agent_plan", dag_id=DAG_ID, run_id="manual__1"))
    assert plan_to_json(again) == plan_to_json(plan)
    assert len(agent_runs(client, experiment_id, parent)) == 1  # the retry continued its own run
    other = agent("agent_plan", phase="plan", observe_run_id=parent).execute(
        make_context("agent_plan", dag_id="dl_agent_watch", run_id="scheduled__1"))
    assert plan_to_json(other) == plan_to_json(plan)


def test_budget_phase_plans_the_first_round_and_off_leaves_the_params(store, mlflow_uri):
    client, experiment_id, _ = store
    request = {"n_trials": 6, "n_workers": 2, "trial_epochs": None, "min_trial_epochs": None, "search_space": None,
               "seed_studies": [], "data": {"n_train": 1000, "n_val": 200, "n_test": 200, "input_shape": [8, 8, 1]}}
    context = make_context("agent_budget", dag_id=DAG_ID, run_id="manual__2")
    plan = agent("agent_budget", phase="budget", request=request).execute(context)
    assert plan["tune"]["n_trials"] == 6 and plan["tune"]["n_workers"] == 2 and plan["tune"]["trial_epochs"] == 8
    assert context["ti"].xcoms["tune"] == plan["tune"]  # what the tuning tasks take
    (run,) = [r for r in agent_runs(client, experiment_id) if r.data.tags.get("dlagent.phase") == "budget"]
    assert decisions(client, run.info.run_id) == plan
    off = agent("agent_budget", phase="budget", policy="off", request=request).execute(make_context("agent_budget", run_id="manual__3"))
    assert off["tune"] is None  # the tuning tasks then run the Params as given
    with pytest.raises(AirflowFailException, match="request: phase 'budget' needs"):
        agent("agent_budget", phase="budget").execute(make_context("agent_budget", run_id="manual__4"))


def test_observe_run_id_may_name_any_run_under_the_pipeline_run(store):
    client, experiment_id, parent = store
    evaluate = next(r for r in client.search_runs([experiment_id], "tags.`dlagent.step` = 'evaluate'"))
    plan = agent("agent", observe_run_id=evaluate.info.run_id, fixed_resources=None).execute(
        make_context("agent", dag_id="dl_agent_watch", run_id="w1"))
    (run,) = agent_runs(client, experiment_id)
    observation = json.loads(Path(client.download_artifacts(run.info.run_id, "observation.json")).read_text())
    assert observation["resources"]["cpu_count"] >= 1 and observation["resources"]["pool"] == "default_pool"  # measured
    assert run.data.tags["dlagent.observed_run_id"] == parent  # walked up to the pipeline run
    assert run.data.tags["mlflow.parentRunId"] != parent  # logged under the watching DAG run's own parent
    assert plan["train"]["epochs"] == 8
    with pytest.raises(AirflowFailException, match="observe_run_id: no MLflow run"):
        agent("agent", observe_run_id="0" * 32).execute(make_context("agent", dag_id="dl_agent_watch", run_id="w2"))


def test_decide_phase_and_branch_follow_the_action(store):
    client, experiment_id, parent = store
    context = make_context("agent_decide", dag_id=DAG_ID, run_id="manual__1")
    plan = agent("agent_decide", phase="decide").execute(context)
    assert plan["action"] == "deploy"  # blessed, the int8 candidate's 0.948 beats the champion's 0.92
    assert plan["reasons"][-1] == {"decision": "reward: none recorded", "because": "policy 'rules' does not learn from rewards"}
    (run,) = agent_runs(client, experiment_id, parent)
    assert run.data.tags["dlagent.phase"] == "decide"

    branch, _ = branch_dag(plan)
    with pytest.raises(DownstreamTasksSkipped) as skipped:
        branch.execute(branch_context(branch))
    assert sorted(skipped.value.tasks) == [("retune", -1), ("stop", -1)]


def test_learning_policy_state_survives_two_dag_runs(store):
    client, experiment_id, parent_1 = store
    pipeline_history(client, experiment_id, "manual__2")
    kwargs = {"policy": "learning", "policy_kwargs": {"seed": 3}}

    # DAG run 1: plan after tuning, then decide after evaluation (which rewards the plan).
    first = agent("agent_plan", phase="plan", **kwargs).execute(make_context("agent_plan", dag_id=DAG_ID, run_id="manual__1"))
    assert first["policy"] == {"name": "learning", "arm": "lr_x1-epochs_x1", "context": "overfit"}  # nothing learnt yet: the rules' plan
    assert first["train"]["learning_rate"] == 0.002 and first["train"]["epochs"] == 8  # the rules' values, unscaled
    decide = agent("agent_decide", phase="decide", **kwargs)
    decided = decide.execute(make_context("agent_decide", dag_id=DAG_ID, run_id="manual__1"))
    reward = decided["reasons"][-1]
    assert reward["decision"].startswith("reward ") and reward["decision"].endswith(" recorded")
    assert "arm lr_x1-epochs_x1 in context 'overfit'" in reward["because"]
    # A cleared decide task returns its recorded decision; one whose try died after rewarding (its run
    # left unfinished) decides again, and the reward key keeps it from rewarding the same run twice.
    assert decide.execute(make_context("agent_decide", dag_id=DAG_ID, run_id="manual__1")) == decided
    decide_run = next(r for r in agent_runs(client, experiment_id) if r.data.tags["dlagent.phase"] == "decide")
    client.set_terminated(decide_run.info.run_id, status="FAILED")
    retried = decide.execute(make_context("agent_decide", dag_id=DAG_ID, run_id="manual__1"))
    assert retried["reasons"][-1]["decision"].endswith("already recorded")

    # The state is one MLflow run of the experiment, holding one reward.
    (state,) = client.search_runs([experiment_id], "tags.`dlagent.kind` = 'agent-policy-state'")
    history = client.get_metric_history(state.info.run_id, "reward/overfit/lr_x1-epochs_x1")
    assert len(history) == 1
    expected = 100 * (0.95 - 0.92) - 0.001 * 107.0 - 0.01 * 53  # a*gain - b*seconds - c*epochs of the observed run
    assert history[0].value == pytest.approx(expected, abs=0.05)

    # DAG run 2, a fresh operator in a fresh process as far as it knows: it reads the reward back.
    second = agent("agent_plan", phase="plan", **kwargs).execute(make_context("agent_plan", dag_id=DAG_ID, run_id="manual__2"))
    why = next(r["because"] for r in second["reasons"] if r["decision"].startswith("learning: arm"))
    assert "Thompson sample" in why and "1 rewards in all" in why  # it read the first run's reward back


class BrokenPolicy(Policy):
    """A policy whose plan is malformed: the operator must refuse it, not fix it."""

    name = "broken"

    def decide(self, observation) -> dict:
        return {"action": "launch", "reasons": []}


class StopPolicy(Policy):
    name = "always-stop"

    def decide(self, observation) -> dict:
        return {"action": "stop", "reasons": [{"decision": "action=stop", "because": "this policy always stops"}]}


def test_policies_are_pluggable_by_class_path_and_a_malformed_plan_fails(store):
    client, experiment_id, parent = store
    plan = agent(policy="tests.operators.test_agent.StopPolicy", phase="decide").execute(
        make_context("agent", dag_id=DAG_ID, run_id="manual__1"))
    assert plan["action"] == "stop" and plan["policy"] is None and plan["train"] == {}
    with pytest.raises(AirflowFailException, match=r"invalid input, nothing was run: action: must be one of .*'launch'"):
        agent("agent_broken", policy="tests.operators.test_agent.BrokenPolicy").execute(
            make_context("agent_broken", dag_id=DAG_ID, run_id="manual__1"))
    broken = next(r for r in agent_runs(client, experiment_id, parent) if r.data.tags["airflow.task_id"] == "agent_broken")
    assert broken.info.status == "FAILED"  # the failed decision is on record, with no decisions.json
    assert not [a for a in client.list_artifacts(broken.info.run_id) if a.path == "decisions.json"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policy": "genetic"}, "policy: unknown policy 'genetic'"),
        ({"policy": "no_such_pkg.Policy"}, "policy: cannot import module"),
        ({"policy": "rules", "policy_kwargs": {"max_trials": 0}}, "policy.max_trials: must be in"),
        ({"policy": "learning", "policy_kwargs": {"epsilon": 2}}, "policy.epsilon: must be in"),
        ({"phase": "later"}, "phase: must be one of"),
        ({"policy_kwargs": "[1]"}, "policy_kwargs: must be a JSON object"),
    ],
)
def test_bad_arguments_fail_before_mlflow_is_touched(mlflow_uri, kwargs, message):
    with pytest.raises(AirflowFailException, match=f"invalid input, nothing was run: {message}"):
        agent(**kwargs).execute(make_context("agent"))
    assert MlflowClient(mlflow_uri).get_experiment_by_name("exp") is None  # nothing was created


def test_unreachable_mlflow_fails_clearly_and_fast(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    started = time.monotonic()
    with pytest.raises(AirflowException, match=r"the agent made no decision: MLflow at http://127\.0\.0\.1:9 could not be read") as info:
        agent().execute(make_context("agent"))
    assert not isinstance(info.value, AirflowFailException)  # transient: Airflow may retry it
    assert "no default plan is used" in str(info.value)
    assert time.monotonic() - started < 30


# --------------------------------------------------------------------------- PlanBranchOperator


def plan_with(action: str) -> dict:
    return {"action": action, "reasons": [{"decision": f"action={action}", "because": "test"}]}


def branch_dag(plan, **kwargs):
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG

    with DAG("branch_test", schedule=None) as dag:
        branch = PlanBranchOperator(task_id="branch", plan=plan, **kwargs)
        branch >> [EmptyOperator(task_id="deploy"), EmptyOperator(task_id="retune"), EmptyOperator(task_id="stop")]
    return branch, dag


def branch_context(branch) -> dict:
    context = make_context("branch", dag_id="branch_test")
    context["ti"].task = branch
    return context


@pytest.mark.parametrize(("action", "skipped"), [("deploy", ["retune", "stop"]), ("retune", ["deploy", "stop"]),
                                                 ("stop", ["deploy", "retune"])])
def test_branch_runs_the_task_of_the_action_and_skips_the_others(action, skipped):
    branch, _ = branch_dag(json.dumps(plan_with(action)))  # a JSON string is accepted too
    with pytest.raises(DownstreamTasksSkipped) as info:
        branch.execute(branch_context(branch))
    assert sorted(info.value.tasks) == [(task_id, -1) for task_id in skipped]


def test_branch_without_a_task_for_the_action_skips_everything():
    branch, _ = branch_dag(plan_with("stop"), stop_task_id=None)
    with pytest.raises(DownstreamTasksSkipped) as info:
        branch.execute(branch_context(branch))
    assert sorted(info.value.tasks) == [("deploy", -1), ("retune", -1), ("stop", -1)]


def test_branch_refuses_a_malformed_plan():
    branch, _ = branch_dag({"action": "launch", "reasons": []})
    with pytest.raises(AirflowFailException, match="invalid plan, no branch taken: action"):
        branch.execute(branch_context(branch))
    with pytest.raises(ValueError, match="deploy_task_id"):
        branch_dag(plan_with("stop"), deploy_task_id="")


# --------------------------------------------------------------------------- PlanConfOperator


PLAN = {
    "action": "retune",
    "train": {"learning_rate": 0.002, "epochs": 8, "dropout": 0.3, "momentum": 0.5},
    "tune": {"n_trials": 8, "n_workers": 2, "search_space": {"learning_rate": {"type": "float", "low": 0.001, "high": 0.01, "log": True}},
             "seed_studies": ["dl_agent_pipeline__manual__1"], "trial_epochs": 4,
             "min_trial_epochs": 2},
    "compress": [{"quantization": "int8"}],
    "reasons": [{"decision": "x", "because": "y"}],
}


def test_plan_becomes_a_pipeline_conf_with_only_accepted_params(mlflow_uri):
    from dlagent.params import pipeline_params

    conf = PlanConfOperator(task_id="plan_conf", plan=PLAN, base_conf={"dataset": "digits", "max_samples": None}).execute(
        make_context("plan_conf"))
    names = set(pipeline_params())
    assert set(conf) <= names
    assert conf["learning_rate"] == 0.002 and conf["epochs"] == 8 and conf["dropout"] == 0.3 and conf["dataset"] == "digits"
    assert conf["n_trials"] == 8 and conf["tuning_workers"] == 2 and conf["search_space"] == PLAN["tune"]["search_space"]
    assert conf["tune_seed_studies"] == ["dl_agent_pipeline__manual__1"]  # the retune's study replays this run's trials
    assert conf["tune_trial_epochs"] == 4 and conf["tune_min_trial_epochs"] == 2  # its trials train 2 to 4 epochs
    assert "max_samples" not in conf  # an empty base value is not sent
    _, notes = pipeline_conf(PLAN, {"learning_rate"})
    assert any(note.startswith("epochs=8 left out") for note in notes)
    no_tuning, _ = pipeline_conf({**PLAN, "tune": None}, names)
    assert no_tuning["n_trials"] == 0  # the plan says no more trials: train with the plan's settings


def test_plan_conf_starts_from_the_observed_run_settings(store):
    client, experiment_id, parent = store
    for name, value in (("data.label_column", "y"), ("data.max_samples", "300")):  # what validate_inputs logs of the data options
        client.log_param(parent, name, value)
    context = make_context("agent", dag_id="dl_agent_watch", run_id="w1")
    plan = agent("agent", observe_run_id=parent).execute(context)
    assert context["ti"].xcoms["observed_run_id"] == parent
    conf = PlanConfOperator(task_id="plan_conf", plan=plan, observed_run_id=parent, base_conf={"experiment_name": "exp"},
                            experiment_name="exp").execute(make_context("plan_conf", dag_id="dl_agent_watch", run_id="w1"))
    # What the plan leaves alone stays as the observed run had it (mlp, patience 3), not the Params' defaults (cnn, 5).
    assert conf["model"] == "mlp" and conf["early_stopping_patience"] == 3 and conf["dataset"] == "digits"
    assert conf["epochs"] == 8 and conf["dropout"] == 0.3 and conf["learning_rate"] == 0.002  # what the plan changed
    assert conf["experiment_name"] == "exp" and conf["n_trials"] == plan["tune"]["n_trials"]
    assert conf["label_column"] == "y" and conf["max_samples"] == 300  # the follow-up reads the data as the observed run did


def test_plan_conf_refuses_what_the_pipeline_params_refuse(mlflow_uri):
    # One limit for the plan and the Param: a plan cannot hold more workers than the trigger form allows.
    plan = {**PLAN, "tune": {**PLAN["tune"], "n_workers": 200}}
    with pytest.raises(AirflowFailException, match=r"invalid input, nothing was run: tune\.n_workers: must be in \[1, 64\], got 200"):
        PlanConfOperator(task_id="plan_conf", plan=plan).execute(make_context("plan_conf"))
    # What only the Param knows (a base conf value out of its range) is still refused by the Param.
    with pytest.raises(AirflowFailException, match=r"conf\.retune_budget: dl_agent_pipeline's Param refuses 99"):
        PlanConfOperator(task_id="plan_conf", plan=PLAN, base_conf={"retune_budget": 99}).execute(make_context("plan_conf"))
    with pytest.raises(AirflowFailException, match="invalid input, nothing was run: action"):
        PlanConfOperator(task_id="plan_conf", plan={"action": "go", "reasons": []}).execute(make_context("plan_conf"))
    with pytest.raises(AirflowFailException, match="observed_run_id: no MLflow run"):
        PlanConfOperator(task_id="plan_conf", plan=PLAN, observed_run_id="0" * 32).execute(make_context("plan_conf"))
