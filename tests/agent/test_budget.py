"""Phase ``budget``: the agent plans the first tuning round before any trial; ``off`` runs the Params as given."""

from __future__ import annotations

import pytest
from dlagent.agent.observe import Observation
from dlagent.agent.plan import Plan
from dlagent.agent.policies.base import Policy
from dlagent.agent.policies.learning import LearningPolicy
from dlagent.agent.policies.rules import RulesPolicy

RESOURCES = {"cpu_count": 4, "cpus_free": 2, "load_1m": 1.5, "memory_free_gb": 8.0}
DIGITS = {"n_train": 1257, "n_val": 270, "n_test": 270, "input_shape": [8, 8, 1], "num_classes": 10}
PARAMS = {"n_trials": 6, "n_workers": 1, "trial_epochs": None, "min_trial_epochs": None, "search_space": None, "seed_studies": []}


def _observation(epochs: int = 20, resources=None) -> Observation:
    """What the agent sees before tuning: the parent run's settings, the free compute, no trial."""
    return Observation(experiment_id="1", parent_run_id="p", config={"epochs": epochs}, resources=resources or RESOURCES)


def _budget(policy=None, observation=None, **request) -> dict:
    plan = (policy or RulesPolicy()).budget(observation or _observation(), {**PARAMS, "data": DIGITS, **request})
    return Plan.from_dict(plan).to_dict()  # what the tuning tasks receive: a validated plan


def test_the_first_round_has_short_trials_a_later_first_rung_and_the_workers_given():
    plan = _budget(n_workers=2)
    assert plan["tune"] == {"n_trials": 6, "n_workers": 2, "trial_epochs": 8, "min_trial_epochs": 2, "search_space": None,
                            "seed_studies": []}
    decisions = {r["decision"] for r in plan["reasons"]}
    assert {"tune.n_trials=6", "tune.n_workers=2", "tune.trial_epochs=8", "tune.min_trial_epochs=2"} <= decisions
    assert all(r["because"] for r in plan["reasons"])


def test_the_params_n_trials_is_a_cap_and_initial_trials_a_ceiling():
    assert _budget(n_trials=3)["tune"]["n_trials"] == 3
    assert _budget(n_trials=40)["tune"]["n_trials"] == 8  # initial_trials
    assert _budget(RulesPolicy(max_workers=1), n_workers=3)["tune"]["n_workers"] == 1
    assert _budget(n_trials=2, n_workers=4)["tune"]["n_workers"] == 2  # never more workers than trials


def test_workers_are_bounded_by_the_memory_the_data_set_needs():
    big = {"n_train": 200_000, "n_val": 20_000, "n_test": 20_000, "input_shape": [64, 64, 3], "num_classes": 10}
    plan = _budget(data=big, n_workers=8, observation=_observation(resources={**RESOURCES, "cpus_free": 8, "memory_free_gb": 40.0}))
    # 240k x 12288 floats x 4 bytes x 4 copies = 47 GB per worker: one worker, though 8 were given
    assert plan["tune"]["n_workers"] == 1
    assert any("memory" in r["because"] for r in plan["reasons"] if r["decision"].startswith("tune.n_workers"))
    roomy = _observation(resources={**RESOURCES, "memory_free_gb": 40.0})
    # on Celery each worker is another machine; a streamed folder is not held in memory
    assert _budget(data=big, n_workers=8, observation=roomy, executor="CeleryExecutor")["tune"]["n_workers"] == 6
    assert _budget(data={**big, "streamed": True}, n_workers=8, observation=roomy, executor="LocalExecutor")["tune"]["n_workers"] == 6


def test_what_the_params_set_is_kept():
    plan = _budget(trial_epochs=5, min_trial_epochs=1)
    assert (plan["tune"]["trial_epochs"], plan["tune"]["min_trial_epochs"]) == (5, 1)
    rung = _budget(min_trial_epochs=3)["tune"]  # the person's first rung; the agent's short trials stay
    assert (rung["trial_epochs"], rung["min_trial_epochs"]) == (8, 3)
    assert _budget(min_trial_epochs=10)["tune"]["trial_epochs"] == 10  # trials run at least to the first rung
    assert _budget(RulesPolicy(warm_start=False), min_trial_epochs=3)["tune"]["trial_epochs"] is None
    assert _budget(trial_epochs="", min_trial_epochs="")["tune"]["trial_epochs"] == 8  # a Param left empty renders as ""
    assert _budget(RulesPolicy(initial_trials=0))["tune"]["n_trials"] == 0  # as after tuning: no first round
    follow_up = _budget(n_trials=4, n_workers=3, trial_epochs=6, seed_studies=["earlier"])  # a retune's conf: the agent's own plan
    assert follow_up["tune"] == {"n_trials": 4, "n_workers": 3, "trial_epochs": 6, "min_trial_epochs": None, "search_space": None,
                                 "seed_studies": ["earlier"]}
    assert _budget(n_trials=0)["tune"]["n_trials"] == 0
    short = _budget(observation=_observation(epochs=1))  # too few epochs to shorten
    assert short["tune"]["trial_epochs"] is None
    assert _budget(RulesPolicy(warm_start=False))["tune"]["trial_epochs"] is None  # no checkpoint to continue: full trials


def test_the_learning_policy_plans_the_first_round_as_the_rules_do_and_a_custom_one_keeps_the_params():
    rules, learning = _budget(), _budget(LearningPolicy(seed=0))
    assert learning["tune"] == rules["tune"] and learning["policy"]["name"] == "learning"

    class Mine(Policy):
        name = "mine"

        def decide(self, observation):
            return {"action": "stop", "reasons": [{"decision": "stop", "because": "test"}]}

    assert _budget(Mine())["tune"] == PARAMS


def test_run_agent_in_phase_budget_needs_no_trial(tmp_path):
    from dlagent.agent import run_agent
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("exp", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment, tags={"dlagent.kind": "pipeline"}).info.run_id
    client.log_param(parent, "epochs", 10)
    outcome = run_agent(client, experiment, parent, phase="budget", resources=RESOURCES, request={**PARAMS, "data": DIGITS})
    assert outcome.plan["tune"]["trial_epochs"] == 4 and outcome.plan["tune"]["min_trial_epochs"] == 1
    assert outcome.plan["reasons"][-1]["decision"] == "phase=budget"


CHAMPION_SPACE_PARAMS = {"learning_rate": 0.003, "units": 96, "dropout": 0.1}


def _with_champion(history=..., **changes) -> Observation:
    """Before tuning, with a champion whose pipeline run tuned ``study-1`` on data digest ``d1``."""
    if history is ...:
        history = {"pipeline_run_id": "old", "study": "study-1", "trials_complete": 8, "best_params": CHAMPION_SPACE_PARAMS,
                   "config": {"model": "mlp", "epochs": 20}, "data_digest": "d1", "dataset": "digits",
                   "splits": {k: DIGITS[k] for k in ("n_train", "n_val", "n_test")}, **changes}
    observation = _observation()
    observation.config = {"model": "mlp", "epochs": 20}
    observation.champion = {"name": "m", "version": "3", "run_id": "r", "metrics": {}, "history": history}
    return observation


def test_a_champion_tuned_on_the_same_data_starts_the_search_from_its_study():
    policy = RulesPolicy(trials_per_round=4)
    plan = _budget(policy, _with_champion(), data={**DIGITS, "digest": "d1"}, n_trials=6)
    tune = plan["tune"]
    assert tune["seed_studies"] == ["study-1"] and tune["n_trials"] == 4  # a later round: trials_per_round
    assert tune["search_space"]["learning_rate"]["low"] == 0.001 and tune["search_space"]["learning_rate"]["high"] == 0.009
    assert tune["trial_epochs"] == 8  # short trials as in any first round
    decisions = {r["decision"]: r["because"] for r in plan["reasons"]}
    assert "digest d1" in decisions["tune.seed_studies=[study-1]"] and "champion's best trial" in decisions["tune.search_space narrowed"]
    given = _budget(policy, _with_champion(), data={**DIGITS, "digest": "d1"}, search_space={"units": {"type": "int", "low": 8, "high": 64}})
    assert given["tune"]["seed_studies"] == ["study-1"] and given["tune"]["search_space"]["units"]["high"] == 64
    few = _budget(policy, _with_champion(trials_complete=2), data={**DIGITS, "digest": "d1"})["tune"]
    assert few["seed_studies"] == ["study-1"] and few["search_space"] is None  # too few trials to narrow around


@pytest.mark.parametrize(("observation", "digest", "words"), [
    (_observation(), "d1", "no version of this model name holds the alias 'champion'"),
    (_with_champion(history=None), "d1", "not trained by a pipeline run"),
    (_with_champion(), "d2", "trained on other data (digest d1; this run's d2)"),
    (_with_champion(), None, "this run's unknown"),
    (_with_champion(study=None), "d1", "completed no tuning trial"),
    (_with_champion(config={"model": "cnn", "epochs": 20}), "d1", "trained another model (model 'cnn'; this run model 'mlp')"),
    (_with_champion(config={"model": "mlp", "init_from": "models:/base@champion"}), "d1", "init_from 'models:/base@champion'; this run init_from None"),
    (_with_champion(splits={"n_train": 1000, "n_val": 270, "n_test": 270}), "d1", "split the same data otherwise"),
    (_with_champion(history={"unreadable": "MlflowException: PERMISSION_DENIED"}), "d1", "could not be read from MLflow (MlflowException"),
])
def test_without_a_champion_tuned_on_this_data_and_model_the_first_round_is_the_default(observation, digest, words):
    plan = _budget(RulesPolicy(trials_per_round=4), observation, data={**DIGITS, "digest": digest})
    assert plan["tune"]["seed_studies"] == [] and plan["tune"]["search_space"] is None and plan["tune"]["n_trials"] == 6
    assert any(words in r["because"] for r in plan["reasons"]), plan["reasons"]
