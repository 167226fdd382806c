"""How a plan reaches the pipeline's tasks: training overrides and controller, candidates, the branch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException
from dlagent.ml.selection import DEFAULT_CANDIDATES
from dlagent.operators.agent import AgentOperator, PlanBranchOperator
from dlagent.operators.compress import CompressionCandidatesOperator
from dlagent.operators.train import TrainOperator
from mlflow import MlflowClient

from tests.operators.context import make_context

TINY = {"dataset": "digits", "data_options": {"max_samples": 300}}


def test_training_applies_overrides_in_order_and_runs_the_planned_controller(mlflow_uri):
    # min_delta 1.0: val_loss never "improves" enough, so the controller lowers the learning rate
    controller = {"patience": 1, "factor": 0.5, "min_delta": 1.0, "cooldown": 0}
    out = TrainOperator(
        task_id="train", train_config={"model": "mlp", "epochs": 4, "units": 16, "learning_rate": 0.01, "seed": 0},
        overrides=[{"units": 24, "learning_rate": 0.02}, {"learning_rate": 0.005}, None], controller=controller,
        experiment_name="exp", **TINY,
    ).execute(make_context("train"))
    client = MlflowClient(mlflow_uri)
    run = client.get_run(out["run_id"])
    assert run.data.params["units"] == "24" and float(run.data.params["learning_rate"]) == pytest.approx(0.005)
    changes = json.loads(Path(client.download_artifacts(out["run_id"], "controller_changes.json")).read_text())["changes"]
    assert changes and all(c["new"] < c["old"] for c in changes if c["setting"] == "learning_rate")


def test_training_continues_from_a_planned_warm_start(mlflow_uri, tmp_path):
    first = TrainOperator(task_id="train", train_config={"model": "mlp", "epochs": 3, "units": 16, "seed": 0},
                          experiment_name="exp", **TINY).execute(make_context("train"))
    client = MlflowClient(mlflow_uri)
    # What dlagent.ml.tuning saves for a new best trial: a plain .keras file under checkpoint/.
    from dlagent.ml.model_store import load_keras_model

    folder = tmp_path / "ckpt"
    folder.mkdir()
    load_keras_model(client, first["model_uri"]).save(folder / "model.keras")
    client.log_artifact(first["run_id"], str(folder / "model.keras"), "checkpoint")
    warm = f"runs:/{first['run_id']}/checkpoint/model.keras"
    out = TrainOperator(task_id="train_more", train_config={"model": "mlp", "epochs": 2, "units": 16, "seed": 0}, warm_start=warm,
                        experiment_name="exp", **TINY).execute(make_context("train_more"))
    run = client.get_run(out["run_id"])
    assert run.data.tags["dlagent.warm_start"] == warm and run.data.params["epochs"] == "2"
    metrics = client.get_run(out["run_id"]).data.metrics
    assert metrics["epochs_run"] == 2 and metrics["start_val_loss"] > 0 and metrics["kept_start_weights"] in (0, 1)
    # It continued from the first model: the starting loss is the first model's, far below an untrained one's (ln 10 = 2.3).
    history = client.get_metric_history(first["run_id"], "val_loss")
    assert metrics["start_val_loss"] == pytest.approx(min(m.value for m in history), rel=1e-3)
    with pytest.raises(AirflowFailException, match="warm_start"):
        TrainOperator(task_id="t", train_config={"model": "mlp", "epochs": 1}, warm_start="/tmp/model.keras",
                      experiment_name="exp", **TINY).execute(make_context("t"))


def test_bad_override_layer_is_refused_naming_it(mlflow_uri):
    with pytest.raises(AirflowFailException, match=r"overrides\[1\]"):
        TrainOperator(task_id="train", train_config={"model": "mlp", "epochs": 1}, overrides=[{}, "fast"], experiment_name="exp",
                      **TINY).execute(make_context("train"))


@pytest.mark.parametrize(
    ("given", "planned", "expected"),
    [
        ([{"quantization": "int8"}], [{"quantization": "dynamic"}], ["int8"]),  # a person's Param wins
        (None, [{"quantization": "dynamic"}, {"quantization": "float16"}], ["dynamic", "float16"]),  # then the plan
        (None, [], [c["quantization"] for c in DEFAULT_CANDIDATES]),  # then the defaults
    ],
)
def test_candidates_come_from_the_param_then_the_plan_then_the_defaults(mlflow_uri, given, planned, expected):
    out = CompressionCandidatesOperator(task_id="compression_candidates", candidates=given, planned=planned,
                                        experiment_name="exp").execute(make_context("compression_candidates"))
    assert [c["quantization"] for c in out] == expected


def _plan(action: str) -> dict:
    return {"action": action, "reasons": [{"decision": f"action={action}", "because": "test"}]}


@pytest.mark.parametrize(
    ("action", "allow_retune", "branch"),
    [("deploy", False, "deploy"), ("retune", True, "retune_conf"), ("retune", False, "stop"), ("stop", True, "stop")],
)
def test_branch_follows_the_plan_and_the_retune_budget(action, allow_retune, branch):
    operator = PlanBranchOperator(task_id="follow_plan", plan=_plan(action), retune_task_id="retune_conf", allow_retune=allow_retune)
    context = make_context("follow_plan")
    assert operator.choose_branch(context) == branch
    assert context["ti"].xcoms["return_value"] == branch  # kept for the run summary


def test_malformed_plan_fails_the_branch():
    with pytest.raises(AirflowFailException, match="invalid plan"):
        PlanBranchOperator(task_id="follow_plan", plan={"action": "celebrate", "reasons": []}).choose_branch(make_context("follow_plan"))


def test_agent_off_changes_nothing(mlflow_uri):
    plan = AgentOperator(task_id="agent_plan", policy="off", experiment_name="exp").execute(make_context("agent_plan"))
    assert plan["action"] == "deploy" and plan["train"] == {} and plan["compress"] == [] and plan["controller"] is None
