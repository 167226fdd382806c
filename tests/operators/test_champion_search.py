"""The champion's history in the agent's first tuning round, through the operators the DAG runs.

A first pipeline run tunes (a real study), trains and has its model registered as the champion.
A second run on the same data: validate -> agent (phase budget) -> create_study -> tune. The agent
finds the champion's study through its registered run's pipeline run, replays its trials into the
new study and narrows the space around its best trial; on changed data it starts afresh.
"""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from dlagent.errors import ConfigError
from dlagent.ml import tuning
from dlagent.ml.tuning import StudySettings
from dlagent.ml.tuning.space import inside
from dlagent.operators.agent import AgentOperator
from dlagent.operators.pipeline import ValidateInputsOperator
from dlagent.operators.train import TrainOperator
from dlagent.operators.tune import CreateStudyOperator, TuneOperator, TuneSummaryOperator
from mlflow import MlflowClient

from tests.operators.context import make_context
from tests.operators.test_tune import SETTINGS, study_storage  # noqa: F401 - the fixture

MODEL = "champion-search"
RESOURCES = {"cpu_count": 2, "cpus_free": 2, "load_1m": 0.5, "memory_free_gb": 8.0}
POLICY = {"trials_per_round": 2, "improvement_window": 2}
REQUEST = {"n_trials": 3, "n_workers": 1, "trial_epochs": None, "min_trial_epochs": None, "search_space": None, "seed_studies": []}


@pytest.fixture
def data_files(tmp_path, monkeypatch) -> tuple[str, str]:
    """Two npz files of 300 digits: the champion's, and the same with one label changed."""
    from sklearn.datasets import load_digits

    monkeypatch.setenv("DLAGENT_DATA_ROOTS", str(tmp_path))
    x, y = load_digits(return_X_y=True)
    x, y = x[:300].reshape(-1, 8, 8, 1).astype("float32") / 16.0, y[:300]
    np.savez(tmp_path / "digits.npz", x=x, y=y)
    changed = y.copy()
    changed[0] = (changed[0] + 1) % 10
    np.savez(tmp_path / "changed.npz", x=x, y=changed)
    return f"npz:{tmp_path / 'digits.npz'}", f"npz:{tmp_path / 'changed.npz'}"


def _tuned_champion(client, settings: dict) -> str:
    """Run 1, as the DAG runs it: validate, the agent's first round (no champion yet), tune 3 trials,
    train, register the training run's model as the champion. Returns the study name."""
    plan = _budget("run1", settings["dataset"])
    assert plan["tune"]["seed_studies"] == [] and plan["tune"]["n_trials"] == 3  # no champion yet: a first search
    context = make_context("create_study", run_id="run1")
    CreateStudyOperator(task_id="create_study", budget=plan["tune"], **settings).execute(context)
    TuneOperator(task_id="tune", worker_index=0, budget=plan["tune"], **settings).execute(make_context("tune", run_id="run1", map_index=0))
    TuneSummaryOperator(task_id="tune_summary", budget=plan["tune"], **settings).execute(make_context("tune_summary", run_id="run1"))
    trained = TrainOperator(task_id="train", dataset=settings["dataset"], data_options=settings["data_options"],
                            train_config=settings["train_config"], experiment_name="exp").execute(make_context("train", run_id="run1"))
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, source=trained["model_uri"], run_id=trained["run_id"])
    client.set_registered_model_alias(MODEL, "champion", version.version)
    return context["ti"].xcoms["study_name"]


def _validated(run_id: str, dataset: str) -> dict:
    return ValidateInputsOperator(task_id="validate_inputs", dataset=dataset, data_options={}, train_config=SETTINGS["train_config"],
                                  experiment_name="exp").execute(make_context("validate_inputs", run_id=run_id))


def _budget(run_id: str, dataset: str) -> dict:
    validated = _validated(run_id, dataset)
    return AgentOperator(task_id="agent_budget", phase="budget", request={**REQUEST, "data": validated["data"]}, experiment_name="exp",
                         champion_name=MODEL, fixed_resources=RESOURCES, policy_kwargs=POLICY).execute(
                             make_context("agent_budget", run_id=run_id))


def test_a_retrain_on_the_champions_data_starts_from_its_study(mlflow_uri, study_storage, data_files):  # noqa: F811 - the fixture
    client = MlflowClient(mlflow_uri)
    settings = {**SETTINGS, "dataset": data_files[0], "data_options": {}, "search_space": None}  # the model's default space, as the
    # DAG's default Params give it to the agent and to the tuning tasks alike
    champion_study = _tuned_champion(client, settings)

    plan = _budget("run2", data_files[0])
    tune = plan["tune"]
    assert tune["seed_studies"] == [champion_study] and tune["n_trials"] == 2, plan["reasons"]  # trials_per_round after the champion's
    best = optuna.load_study(study_name=champion_study, storage=study_storage).best_params
    assert set(tune["search_space"]) == set(best)  # every parameter the champion's search tuned, narrowed around its best
    assert tune["search_space"]["learning_rate"]["low"] < best["learning_rate"] < tune["search_space"]["learning_rate"]["high"]

    context = make_context("create_study", run_id="run2")
    CreateStudyOperator(task_id="create_study", budget=tune, **settings).execute(context)
    TuneOperator(task_id="tune", worker_index=0, budget=tune, **settings).execute(make_context("tune", run_id="run2", map_index=0))
    study = optuna.load_study(study_name=context["ti"].xcoms["study_name"], storage=study_storage)
    copied = [t for t in study.trials if "dlagent.copied_from" in t.user_attrs]
    own = [t for t in study.trials if "dlagent.copied_from" not in t.user_attrs]
    assert study.user_attrs["dlagent.seeded_from"] == [champion_study]
    finished = [t for t in optuna.load_study(study_name=champion_study, storage=study_storage).trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(copied) == sum(inside(t.params, tune["search_space"]) for t in finished) >= 1  # the best trial at least
    assert len(own) == 2 and all(inside(t.params, tune["search_space"]) for t in own)

    changed = _budget("run3", data_files[1])  # one label changed: another digest
    assert changed["tune"]["seed_studies"] == [] and changed["tune"]["search_space"] is None and changed["tune"]["n_trials"] == 3
    assert any("trained on other data" in r["because"] for r in changed["reasons"])


def test_an_agent_proposed_study_is_best_effort_one_the_params_name_must_be_there_and_comparable(study_storage):  # noqa: F811
    settings = StudySettings(space=SETTINGS["search_space"], max_resource=4)
    created = tuning.create_study(study_storage, "new", settings, seed_from=["gone"], optional_seeds=["gone"])
    assert created["seeded"]["missing"] == ["gone"] and created["seeded"]["copied"] == 0
    with pytest.raises(ConfigError, match="no study 'gone'"):
        tuning.create_study(study_storage, "newer", settings, seed_from=["gone"])

    def study_with_a_trial(name: str, **changes) -> None:
        tuning.create_study(study_storage, name, StudySettings(**{"space": SETTINGS["search_space"], "max_resource": 4, **changes}))
        study = optuna.load_study(study_name=name, storage=study_storage)
        study.add_trial(optuna.trial.create_trial(params={"learning_rate": 0.01, "units": 32}, value=0.9, distributions={
            "learning_rate": optuna.distributions.FloatDistribution(1e-3, 3e-2, log=True),
            "units": optuna.distributions.IntDistribution(16, 64)}, intermediate_values={1: 0.8, 2: 0.9}))

    study_with_a_trial("rmse", metric="val_rmse", direction="minimize")
    study_with_a_trial("longer", max_resource=20)
    study_with_a_trial("alike")
    seeded = tuning.create_study(study_storage, "agent", settings, seed_from=["rmse", "longer", "alike"],
                                 optional_seeds=["rmse", "longer", "alike"])["seeded"]
    assert seeded["incomparable"] == ["rmse", "longer"] and seeded["from"] == ["alike"] and seeded["copied"] == 1
    with pytest.raises(ConfigError, match="study 'rmse' measured val_rmse"):  # named in the Params: refused, not skipped
        tuning.create_study(study_storage, "person", settings, seed_from=["rmse"])
