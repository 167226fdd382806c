"""The tuning operators on a real study store and a real MLflow store."""

from __future__ import annotations

import optuna
import pytest
from airflow.sdk.exceptions import AirflowFailException
from dlagent.operators.tune import CreateStudyOperator, TuneOperator, TuneSummaryOperator
from mlflow import MlflowClient

from tests.operators.context import make_context

SPACE = {"learning_rate": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}, "units": {"type": "int", "low": 16, "high": 64}}
SETTINGS = {
    "dataset": "digits", "data_options": {"max_samples": 300}, "train_config": {"model": "mlp", "epochs": 3, "seed": 0},
    "search_space": SPACE, "n_trials": 3, "experiment_name": "exp",
}


@pytest.fixture
def study_storage(tmp_path, monkeypatch) -> str:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    monkeypatch.setenv("DLAGENT_OPTUNA_STORAGE", url)
    return url


def test_create_workers_summary_share_one_study(mlflow_uri, study_storage):
    context = make_context("create_study")
    workers = CreateStudyOperator(task_id="create_study", n_workers=2, **SETTINGS).execute(context)
    assert workers == [0, 1]  # the return value the tune task is mapped over
    study_name = context["ti"].xcoms["study_name"]
    assert study_name == "test_dag.manual__1"
    for index in workers:
        TuneOperator(task_id="tune", worker_index=index, **SETTINGS).execute(make_context("tune", map_index=index))
    study = optuna.load_study(study_name=study_name, storage=study_storage)
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 3

    summary = TuneSummaryOperator(task_id="tune_summary", **SETTINGS).execute(make_context("tune_summary"))
    assert set(summary["best_params"]) == set(SPACE)
    assert summary["best_value"] == study.best_value

    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("dlagent.kind") == "pipeline")
    trials = [r for r in runs if "optuna.trial_number" in r.data.tags]
    assert len(trials) == 3 and all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trials)
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)


def test_the_agents_budget_replaces_the_params_and_is_checked(mlflow_uri, study_storage):
    budget = {"n_trials": 2, "n_workers": 3, "trial_epochs": 2, "min_trial_epochs": 1, "search_space": None, "seed_studies": []}
    context = make_context("create_study")
    assert CreateStudyOperator(task_id="create_study", n_workers=1, budget=budget, **SETTINGS).execute(context) == [0, 1, 2]
    assert context["ti"].xcoms["n_trials"] == 2
    result = TuneOperator(task_id="tune", worker_index=0, budget=budget, **SETTINGS).execute(make_context("tune", map_index=0))
    study = optuna.load_study(study_name="test_dag.manual__1", storage=study_storage)
    assert len(study.trials) == 2 and all(max(t.intermediate_values) <= 2 for t in study.trials)  # 2 of the 3 epochs
    assert study.user_attrs["dlagent.settings"]["max_resource"] == 2 and study.user_attrs["dlagent.settings"]["min_resource"] == 1
    assert result["study_n_trials"]["COMPLETE"] + result["study_n_trials"].get("PRUNED", 0) == 2
    with pytest.raises(AirflowFailException, match=r"budget\.n_trials"):
        CreateStudyOperator(task_id="create_study", budget={"n_workers": 1}, **SETTINGS).execute(make_context("create_study", run_id="b"))


def test_rerunning_create_study_continues_the_same_study(mlflow_uri, study_storage):
    operator = CreateStudyOperator(task_id="create_study", n_workers=1, **SETTINGS)
    operator.execute(make_context("create_study"))
    TuneOperator(task_id="tune", worker_index=0, **SETTINGS).execute(make_context("tune", map_index=0))
    operator.execute(make_context("create_study"))  # a cleared task, run again
    assert optuna.get_all_study_names(study_storage) == ["test_dag.manual__1"]
    assert len(optuna.load_study(study_name="test_dag.manual__1", storage=study_storage).trials) == 3


def test_trial_epochs_caps_every_trial_and_the_pruner(mlflow_uri, study_storage):
    settings = {**SETTINGS, "train_config": {**SETTINGS["train_config"], "epochs": 4}, "n_trials": 2, "trial_epochs": 2,
                "min_trial_epochs": 2}
    CreateStudyOperator(task_id="create_study", **settings).execute(make_context("create_study"))
    TuneOperator(task_id="tune", worker_index=0, **settings).execute(make_context("tune", map_index=0))
    study = optuna.load_study(study_name="test_dag.manual__1", storage=study_storage)
    assert study.user_attrs["dlagent.settings"]["max_resource"] == 2  # the pruner's top rung follows the cap
    assert study.user_attrs["dlagent.settings"]["min_resource"] == 2  # and its first rung, min_trial_epochs
    assert len(study.trials) == 2 and all(max(t.intermediate_values) <= 2 for t in study.trials)
    client = MlflowClient(mlflow_uri)
    trial_runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id], "tags.`optuna.trial_number` != ''")
    assert {r.data.params["epochs"] for r in trial_runs} == {"2"}


def _iris_csv(path) -> str:
    from sklearn.datasets import load_iris

    iris = load_iris()
    rows = [",".join([*map(str, features), str(label)]) for features, label in zip(iris.data, iris.target, strict=True)]
    path.write_text("a,b,c,d,label\n" + "\n".join(rows) + "\n")
    return f"csv:{path}"


@pytest.mark.parametrize(("table", "data"), [(False, {"input_shape": [8, 8]}), (True, None)], ids=["images, validate's summary",
                                                                                                   "table, read here"])
def test_model_auto_tunes_the_default_space_of_the_built_in_the_data_asks_for(mlflow_uri, study_storage, tmp_path, monkeypatch,
                                                                               table, data):
    """Left at ``auto``, the digits' 8 x 8 images are tuned as a ``cnn`` (its space has ``filters``),
    a CSV table's rows as an ``mlp``, and every trial run's params say which; the shape comes from
    ``validate_inputs``' data summary, or, without one, from reading the data set."""
    monkeypatch.setenv("DLAGENT_DATA_ROOTS", str(tmp_path))
    dataset = _iris_csv(tmp_path / "iris.csv") if table else "digits"
    settings = {**SETTINGS, "dataset": dataset, "data_options": {} if table else {"max_samples": 300},
                "train_config": {"epochs": 1, "seed": 0}, "search_space": None, "n_trials": 1, "data": data}
    context = make_context("create_study")
    create = CreateStudyOperator(task_id="create_study", **settings)
    create.execute(context)
    assert (create._loaded is None) == (data is not None)  # with the summary, the data set is not read again
    common = {"learning_rate", "batch_size", "dropout", "units"}
    assert set(context["ti"].xcoms["search_space"]) == (common if table else {*common, "filters"})
    TuneOperator(task_id="tune", worker_index=0, **settings).execute(make_context("tune", map_index=0))
    client = MlflowClient(mlflow_uri)
    trial_runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id], "tags.`optuna.trial_number` != ''")
    assert [r.data.params["model"] for r in trial_runs] == ["mlp" if table else "cnn"]


def test_model_auto_reads_no_data_where_no_default_space_is_needed(mlflow_uri, study_storage):
    """A given search space, zero trials, the summary task: nothing to choose a space for, so the
    data set is not read for its shape (the tuning worker still trains the built-in it asks for)."""
    auto = {**SETTINGS, "train_config": {"epochs": 1, "seed": 0}, "n_trials": 1}
    for run_id, settings in (("given", auto), ("zero", {**auto, "search_space": None, "n_trials": 0})):
        create = CreateStudyOperator(task_id="create_study", **settings)
        create.execute(make_context("create_study", run_id=run_id))
        assert create._loaded is None
    TuneOperator(task_id="tune", worker_index=0, **auto).execute(make_context("tune", run_id="given", map_index=0))
    summary = TuneSummaryOperator(task_id="tune_summary", **{**auto, "search_space": None})
    summary.execute(make_context("tune_summary", run_id="given"))
    assert summary._loaded is None
    client = MlflowClient(mlflow_uri)
    trial_runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id], "tags.`optuna.trial_number` != ''")
    assert [r.data.params["model"] for r in trial_runs] == ["cnn"]


def test_zero_trials_skips_tuning(mlflow_uri, study_storage):
    settings = {**SETTINGS, "n_trials": 0}
    assert CreateStudyOperator(task_id="create_study", **settings).execute(make_context("create_study")) == []
    assert TuneSummaryOperator(task_id="tune_summary", **settings).execute(make_context("tune_summary"))["best_params"] == {}


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"search_space": {"learning_rate": {"type": "float", "low": 0.1, "high": 0.01}}}, "search_space.learning_rate"),
        ({"search_space": {"learning_rate": {"type": "float", "low": 0, "high": 0.1, "log": True}}}, "search_space.learning_rate"),
        ({"search_space": {"units": {"type": "integer", "low": 1, "high": 3}}}, "search_space.units"),
        ({"search_space": {"batch_size": {"type": "categorical", "choices": []}}}, "search_space.batch_size"),
        ({"sampler": "annealing"}, "sampler"),
        ({"pruner": "sometimes"}, "pruner"),
        ({"n_trials": -1}, "n_trials"),
        ({"trial_epochs": 0}, "trial_epochs"),
        ({"trial_epochs": 2, "min_trial_epochs": 3}, "min_trial_epochs"),
        ({"metric": "val_rmse"}, "tune_metric: 'val_rmse' is not measured in a classification run"),
        ({"metric": "val_f1_macro"}, "tune_metric"),  # logged only when f1_macro is the primary metric
        ({"metric": "val_accuracy", "data_options": {"task": "regression"}}, "tune_metric"),
    ],
)
def test_bad_tuning_input_is_refused_before_any_trial(mlflow_uri, study_storage, changes, words):
    with pytest.raises(AirflowFailException, match="invalid input") as error:
        CreateStudyOperator(task_id="create_study", **{**SETTINGS, **changes}).execute(make_context("create_study"))
    assert words in str(error.value)
    assert not _has_tables(study_storage) or optuna.get_all_study_names(study_storage) == []


def _has_tables(url: str) -> bool:
    import sqlalchemy

    return "studies" in sqlalchemy.inspect(sqlalchemy.create_engine(url)).get_table_names()
