"""TrainOperator, EvaluateOperator and the pipeline operators against a real MLflow store."""

from __future__ import annotations

import os

import pytest
from airflow.sdk.exceptions import AirflowFailException
from dlagent.operators.evaluate import EvaluateOperator
from dlagent.operators.pipeline import FinishPipelineOperator, ValidateInputsOperator
from dlagent.operators.train import TrainOperator
from mlflow import MlflowClient

from tests.operators.context import make_context

TINY = {"dataset": "digits", "data_options": {"max_samples": 300}}
TRAIN = {"model": "mlp", "epochs": 3, "seed": 1}


def _runs(uri, experiment="exp"):
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_train_then_evaluate_as_child_runs_of_one_parent(mlflow_uri):
    train = TrainOperator(task_id="train", train_config=TRAIN, overrides={"units": 16}, experiment_name="exp", **TINY)
    context = make_context("train")
    out = train.execute(context)
    assert out["config"]["units"] == 16 and out["model_uri"].startswith("models:/")
    assert context["ti"].xcoms["model_uri"] == out["model_uri"]  # each key is its own XCom too

    evaluate = EvaluateOperator(task_id="evaluate", model_uri=out["model_uri"], seed=1, experiment_name="exp", **TINY)
    result = evaluate.execute(make_context("evaluate"))
    assert 0.0 <= result["test_accuracy"] <= 1.0

    runs = {r.data.tags.get("airflow.task_id", "parent"): r for r in _runs(mlflow_uri)}
    assert set(runs) == {"parent", "train", "evaluate"}
    parent_id = runs["parent"].info.run_id
    assert runs["train"].data.tags["mlflow.parentRunId"] == parent_id
    assert runs["evaluate"].data.tags["mlflow.parentRunId"] == parent_id
    assert runs["train"].data.params["units"] == "16"
    assert runs["evaluate"].data.metrics["test_accuracy"] == pytest.approx(result["test_accuracy"])
    assert runs["train"].info.status == runs["evaluate"].info.status == "FINISHED"


def test_a_cleared_task_returns_its_recorded_result_and_trains_again_only_on_new_inputs(mlflow_uri):
    client = MlflowClient(mlflow_uri)
    first = TrainOperator(task_id="train", train_config=TRAIN, experiment_name="exp", **TINY).execute(make_context("train"))
    experiment = client.get_experiment_by_name("exp").experiment_id

    cleared = make_context("train")
    again = TrainOperator(task_id="train", train_config=TRAIN, experiment_name="exp", **TINY).execute(cleared)
    assert again == first  # recorded, not trained again: a second training would give another model
    assert cleared["ti"].xcoms["model_uri"] == first["model_uri"] and cleared["ti"].xcoms["mlflow_run"]["run_id"] == first["run_id"]
    assert len(client.search_logged_models([experiment])) == 1

    # Another input (a fixed Param, a changed upstream result): the same run, trained anew.
    changed = TrainOperator(task_id="train", train_config={**TRAIN, "epochs": 2}, experiment_name="exp", **TINY).execute(make_context("train"))
    assert changed["run_id"] == first["run_id"] and changed["model_uri"] != first["model_uri"]
    assert changed["config"]["epochs"] == 2 and len(client.search_logged_models([experiment])) == 2
    assert len(_runs(mlflow_uri)) == 2  # the parent and one train run


def test_a_missing_model_is_refused_before_any_run(mlflow_uri):
    evaluate = EvaluateOperator(task_id="evaluate", model_uri="models:/m-doesnotexist", experiment_name="exp", **TINY)
    with pytest.raises(AirflowFailException, match="m-doesnotexist"):
        evaluate.execute(make_context("evaluate"))
    assert MlflowClient(mlflow_uri).get_experiment_by_name("exp") is None  # nothing was started


def test_a_failing_step_ends_its_run_failed(mlflow_uri):
    trained = TrainOperator(task_id="train", train_config=TRAIN, experiment_name="exp", **TINY).execute(make_context("train"))
    # the candidate's model only turns out to be missing inside the step, when its TFLite file is read
    ghost = {"candidate": "int8", "model_uri": "models:/m-doesnotexist", "metrics": {"val_accuracy": 0.9, "test_accuracy": 0.9, "gzip_size_bytes": 1,
                                                                                       "size_bytes": 1, "latency_ms_p95": 0.1}}
    evaluate = EvaluateOperator(task_id="evaluate", model_uri=trained["model_uri"], candidates=[ghost], seed=1, explain=False,
                                latency_runs=5, experiment_name="exp", **TINY)
    with pytest.raises(Exception, match="m-doesnotexist"):
        evaluate.execute(make_context("evaluate"))
    (step,) = [r for r in _runs(mlflow_uri) if r.data.tags.get("airflow.task_id") == "evaluate"]
    assert step.info.status == "FAILED"


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"train_config": {**TRAIN, "epochs": 0}}, "epochs: must be in [1, 1000]"),
        ({"train_config": {**TRAIN, "learning_rate": -1.0}}, "learning_rate"),
        ({"train_config": TRAIN, "dataset": f"npz:{os.environ['DLAGENT_HOME']}/data/missing.npz"}, "does not exist"),
        ({"train_config": TRAIN, "dataset": "npz:/missing.npz"}, "outside the allowed data roots"),
        ({"train_config": TRAIN, "dataset": "cifar"}, "unknown data set"),
    ],
)
def test_bad_input_fails_without_retry_and_before_any_run(mlflow_uri, kwargs, words):
    operator = TrainOperator(task_id="train", experiment_name="exp", **{**TINY, **kwargs})
    with pytest.raises(AirflowFailException, match="invalid input") as error:
        operator.execute(make_context("train"))
    assert words in str(error.value)
    assert MlflowClient(mlflow_uri).get_experiment_by_name("exp") is None  # nothing was started


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ("this:build", "is not on the model allow-list"),
        ("include.models.missing:build", "cannot be found"),
        ("include.models.example:DEFAULTS", "not a function"),
        ("tests.ml.builders_for_tests:returns_dict", "not a keras.Model"),
        ("tests.ml.builders_for_tests:three_outputs", "the data needs (None, 10)"),
    ],
)
def test_a_broken_model_builder_is_refused_by_the_first_task_before_any_run(mlflow_uri, monkeypatch, model, words):
    monkeypatch.setenv("DLAGENT_MODEL_MODULES", "include.,tests.ml.builders_for_tests")
    validate = ValidateInputsOperator(task_id="validate_inputs", train_config={**TRAIN, "model": model}, experiment_name="exp", **TINY)
    with pytest.raises(AirflowFailException, match="invalid input") as error:
        validate.execute(make_context("validate_inputs"))
    assert "nothing was run: model: " in str(error.value) and words in str(error.value)
    assert MlflowClient(mlflow_uri).get_experiment_by_name("exp") is None  # no parent run, no study, no registry call


@pytest.mark.parametrize(
    ("init_from", "words"),
    [
        ("models:/dlagent-classifier@champion", "does not exist in the model registry"),
        ("/etc/model.keras", "outside the allowed data roots"),
    ],
)
def test_a_transfer_source_that_cannot_be_used_is_refused_before_any_run(mlflow_uri, init_from, words):
    validate = ValidateInputsOperator(task_id="validate_inputs", train_config={**TRAIN, "init_from": init_from}, experiment_name="exp", **TINY)
    with pytest.raises(AirflowFailException, match="nothing was run: init_from: ") as error:
        validate.execute(make_context("validate_inputs"))
    assert words in str(error.value)
    assert MlflowClient(mlflow_uri).get_experiment_by_name("exp") is None


# The tuning Params as the DAG renders them (the form's defaults), by TuneConfig field.
TUNING = {"n_trials": 6, "n_workers": 1, "timeout_s": None, "trial_epochs": None, "min_trial_epochs": None, "sampler": "tpe",
          "pruner": "successive_halving", "metric": None}


@pytest.mark.parametrize(
    ("agent_policy", "changes", "words"),
    [
        ("off", {"min_trial_epochs": 4}, "tune_min_trial_epochs: must be in [1, 3]"),  # the training's 3 epochs
        ("rules", {"min_trial_epochs": 4}, "tune_min_trial_epochs: must be in [1, 3]"),  # the agent keeps a person's rung
        ("off", {"trial_epochs": 2, "min_trial_epochs": 3}, "tune_min_trial_epochs: must be in [1, 2]"),
        ("off", {"n_trials": 0, "min_trial_epochs": 4}, "tune_min_trial_epochs"),  # refused with no trial too: the Params contradict
        ("rules", {"metric": "val_rmse"}, "tune_metric: 'val_rmse' is not measured in a classification run"),
        ("off", {"pruner": "sometimes"}, "pruner"),
        ("off", {"n_workers": 0}, "tuning_workers"),
    ],
)
def test_bad_tuning_params_are_refused_by_the_first_task(mlflow_uri, agent_policy, changes, words):
    """What create_study would refuse after agent_budget, the first task refuses, naming the trigger form's field."""
    validate = ValidateInputsOperator(task_id="validate_inputs", train_config=TRAIN, experiment_name="exp",
                                      tuning={**TUNING, **changes}, agent_policy=agent_policy, **TINY)
    with pytest.raises(AirflowFailException, match="nothing was run: ") as error:
        validate.execute(make_context("validate_inputs"))
    assert words in str(error.value)
    assert MlflowClient(mlflow_uri).get_experiment_by_name("exp") is None


def test_a_first_rung_above_the_trial_epochs_is_left_to_the_agent(mlflow_uri):
    """With the agent on, a first rung above the Params' trial epochs lengthens the trials (the rules
    policy plans trial_epochs 3 here, and create_study accepts that plan): the first task accepts it."""
    from dlagent.agent.observe import Observation
    from dlagent.agent.plan import Plan
    from dlagent.agent.policies.rules import RulesPolicy

    tuning = {**TUNING, "trial_epochs": 2, "min_trial_epochs": 3}
    validate = ValidateInputsOperator(task_id="validate_inputs", train_config=TRAIN, experiment_name="exp", tuning=tuning,
                                      agent_policy="rules", **TINY)
    out = validate.execute(make_context("validate_inputs"))
    seen = Observation(experiment_id="1", parent_run_id="p", config={"epochs": TRAIN["epochs"]}, resources={"cpus_free": 2})
    asked = {key: tuning[key] for key in ("n_trials", "n_workers", "trial_epochs", "min_trial_epochs")}
    plan = Plan.from_dict(RulesPolicy().budget(seen, {**asked, "search_space": None, "seed_studies": [], "data": out["data"]}))
    assert (plan.tune["trial_epochs"], plan.tune["min_trial_epochs"]) == (3, 3)  # a plan create_study takes


def test_validate_then_finish_closes_the_parent_run(mlflow_uri):
    validate = ValidateInputsOperator(task_id="validate_inputs", train_config=TRAIN, experiment_name="exp", tuning=TUNING, **TINY)
    out = validate.execute(make_context("validate_inputs"))
    assert out["data"]["n_train"] > 0
    finish = FinishPipelineOperator(task_id="finish", collect={"test_accuracy": "evaluate.test_accuracy"}, experiment_name="exp")
    context = make_context("finish")
    context["ti"].xcoms[("evaluate", "return_value")] = {"test_accuracy": 0.9}
    assert finish.execute(context)["status"] == "FINISHED"
    (parent,) = _runs(mlflow_uri)
    assert parent.info.status == "FINISHED" and parent.data.metrics["test_accuracy"] == 0.9
    assert parent.info.run_id == out["parent_run_id"]


def test_finish_marks_the_parent_failed_when_a_task_failed(mlflow_uri):
    finish = FinishPipelineOperator(task_id="finish", experiment_name="exp")
    context = make_context("finish")
    context["ti"].task_states = {"validate_inputs": "success", "train": "failed", "evaluate": "upstream_failed",
                                 "compress_0": "upstream_failed", "deploy": "skipped"}
    with pytest.raises(AirflowFailException, match=r"^train failed \(2 later task\(s\) did not run: upstream failed\); "
                                                   r"MLflow parent run \w+ marked FAILED$"):
        finish.execute(context)
    (parent,) = _runs(mlflow_uri)
    assert parent.info.status == "FAILED"


def test_the_inputs_digest_reads_a_lazy_sequence_by_its_items():
    """Mapped upstream results arrive as a lazy sequence whose repr names no values (Airflow's
    LazyXComSequence): the digest must see the same inputs as with the plain list, and other ones
    when an item differs."""
    from collections.abc import Sequence

    class Lazy(Sequence):
        def __init__(self, items):
            self.items = items

        def __getitem__(self, index):
            return self.items[index]

        def __len__(self):
            return len(self.items)

    candidates = [{"candidate": "int8", "model_uri": "models:/m-1", "metrics": {"test_accuracy": 0.9}}]

    def digest(value):
        evaluate = EvaluateOperator(task_id="evaluate", model_uri="models:/m-0", candidates=value, experiment_name="exp", **TINY)
        return evaluate._inputs_digest(make_context("evaluate"))

    assert digest(Lazy(candidates)) == digest(Lazy(list(candidates))) == digest(candidates)
    assert digest(Lazy([{**candidates[0], "model_uri": "models:/m-2"}])) != digest(candidates)
