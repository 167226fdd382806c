"""The learning policy: state that survives across runs in MLflow, and learning the best arm."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from dlagent.agent.curves import analyze_curve
from dlagent.agent.observe import Observation
from dlagent.agent.plan import validate_plan
from dlagent.agent.policies.learning import LearningPolicy, context_of
from dlagent.agent.policies.state import MemoryStateStore, MLflowStateStore
from dlagent.errors import ConfigError
from mlflow import MlflowClient

from tests.agent.history import BEST_TRIAL_CURVE

RESOURCES = {"cpu_count": 2, "cpus_free": 1}
DIVERGED = {"loss": [1.0, 0.5, 3.0, float("nan")], "val_loss": [1.0, 0.6, 2.0, float("nan")]}


def observation(curve=BEST_TRIAL_CURVE) -> Observation:
    summary = analyze_curve(curve)
    return Observation(experiment_id="1", parent_run_id="p", config={"learning_rate": 0.001, "epochs": 10},
                       curves=[{"run_id": "r", "step": "train", "params": {}, **summary}], resources=RESOURCES)


def environment(best: str, seed: int = 0):
    """A synthetic pipeline: the best arm earns about 1.0, every other arm about 0.3."""
    rng = random.Random(seed)
    return lambda arm: (1.0 if arm == best else 0.3) + rng.gauss(0, 0.05)


def test_state_survives_across_runs_and_moves_to_the_best_arm(mlflow_uri, tmp_path):
    client = MlflowClient(mlflow_uri)
    experiment_id = client.create_experiment("bandit", artifact_location=str(tmp_path / "artifacts"))
    obs = observation()
    best = "lr_x2-epochs_x1"
    reward_of = environment(best)
    chosen = []
    for run in range(24):  # every simulated DAG run builds a fresh policy that reloads the state
        policy = LearningPolicy(store=MLflowStateStore(client, experiment_id), seed=7)
        plan = validate_plan(policy.decide(obs))
        assert plan["policy"]["name"] == "learning" and plan["policy"]["context"] == "overfit"
        chosen.append(plan["policy"]["arm"])
        assert policy.update(reward_of(plan["policy"]["arm"]), plan=plan, key=f"dag/manual__{run}") is True
    assert chosen[0] == "lr_x1-epochs_x1"  # nothing learnt yet: the rules' plan unchanged
    assert best in chosen[:8]  # the additive prior finds it in a few runs, not one run per arm
    assert Counter(chosen[-10:])[best] >= 8
    fresh = LearningPolicy(store=MLflowStateStore(client, experiment_id), seed=7)
    stats = fresh.statistics()
    assert stats["n"] == 24 and stats["by_context"]["overfit"][best][0] == Counter(chosen)[best]
    # A retried reward task does not count twice.
    assert fresh.update(5.0, plan=plan, key="dag/manual__23") is False
    assert fresh.statistics()["n"] == 24
    # Deterministic given the seed and the stored rewards.
    assert LearningPolicy(store=MLflowStateStore(client, experiment_id), seed=7).decide(obs) == fresh.decide(obs)
    # The state lives in one run of the experiment.
    runs = client.search_runs([experiment_id], filter_string="tags.`dlagent.kind` = 'agent-policy-state'")
    assert len(runs) == 1 and runs[0].info.run_name == "agent-policy-state"


def test_contexts_learn_their_own_best_arm_with_ucb():
    policy = LearningPolicy(store=MemoryStateStore(), strategy="ucb", ucb_c=0.3, seed=1)
    observations = {"overfit": observation(), "diverged": observation(DIVERGED)}
    best = {"overfit": "lr_x1-epochs_x0.5", "diverged": "lr_x0.5-epochs_x1"}
    envs = {ctx: environment(arm, seed=i) for i, (ctx, arm) in enumerate(best.items())}
    for run in range(60):
        ctx = "overfit" if run % 2 else "diverged"
        plan = policy.decide(observations[ctx])
        assert plan["policy"]["context"] == ctx == context_of(observations[ctx])
        policy.update(envs[ctx](plan["policy"]["arm"]), plan=plan)
    for ctx, arm in best.items():
        assert policy.decide(observations[ctx])["policy"]["arm"] == arm


def test_arms_scale_the_rules_plan_and_say_why():
    policy = LearningPolicy(strategy="epsilon_greedy", epsilon=0.0)
    first = policy.decide(observation())
    assert first["policy"]["arm"] == "lr_x1-epochs_x1"  # nothing learnt yet: the rules' plan as it is
    assert "learning_rate" not in first["train"] and first["train"].get("epochs", 10) == 10
    assert "start from the rules' plan" in first["reasons"][-1]["because"]
    policy.update(0.5, plan=first)
    plan = policy.decide(observation())
    arm = plan["policy"]["arm"]
    assert arm == "lr_x0.5-epochs_x0.5"  # epsilon_greedy: then the untried arms in arm order
    # rules: best epoch 5 + default patience 5 = 10 epochs (unchanged); the arm halves both.
    assert plan["train"]["learning_rate"] == 0.0005 and plan["train"]["epochs"] == 5
    assert plan["reasons"][-1]["decision"].startswith(f"learning: arm {arm}")


def test_an_arm_raises_the_rate_no_higher_than_tuning_searched():
    """Above the built-in search space's top a digits CNN from scratch lost 3.4 points at twice it and reached chance on
    one seed of six at four times it (bench/rate_ceiling.py): an arm stops at that top (cnn: 0.01), or at a better-half
    trial's higher rate, never below the rules' own rate."""
    doubling = dict(lr_scales=(2.0,), epoch_scales=(1.0,))  # one arm: lr_x2-epochs_x1

    def planned(config, trials=(), *, tuned=True, **kwargs):
        """The plan's learning_rate and reasons; the best trial (value 0.9) ran at the plan's rate, ``trials`` are more
        ``(rate, value, state)``; ``tuned=False``: no trial at all (the rate is the settings')."""
        rows = [(config["learning_rate"], 0.9, "COMPLETE"), *trials] if tuned else []
        runs = [{"number": i, "run_id": f"t{i}", "state": state, "value": value, "params": {"learning_rate": rate}}
                for i, (rate, value, state) in enumerate(rows)]
        obs = Observation(experiment_id="1", parent_run_id="p", config={"epochs": 10, **config}, trials=runs,
                          best_trial=runs[0] if runs else None, best_value_history=[0.9] * len(runs), resources=RESOURCES)
        plan = LearningPolicy(**doubling, **kwargs).decide(obs)
        return plan["train"]["learning_rate"], plan["reasons"]

    assert planned({"model": "cnn", "learning_rate": 0.004})[0] == 0.008  # below the ceiling: the arm as it is
    rate, reasons = planned({"model": "cnn", "learning_rate": 0.008})
    assert rate == 0.01 and reasons[-1]["decision"] == "learning: learning_rate 0.01, not the 0.016 arm lr_x2-epochs_x1 asked"
    assert reasons[-1]["because"].startswith("the ceiling 0.01 is the top of the cnn's built-in search space: a higher rate")
    assert planned({"model": "mlp", "learning_rate": 0.03})[0] == 0.06  # the mlp's space reaches 0.1 ...
    assert planned({"model": "mlp", "learning_rate": 0.008, "init_from": "models:/base@champion"})[0] == 0.01  # ... not in transfer
    assert planned({"model": "my_pkg.models:build", "learning_rate": 0.008})[0] == 0.01  # a builder of one's own: the common space
    # A wider space that tuning tried, in the better half of the trials, raises the ceiling; a poor or pruned trial does not.
    assert planned({"model": "cnn", "learning_rate": 0.008}, [(0.03, 0.89, "COMPLETE"), (0.001, 0.5, "COMPLETE"),
                                                              (0.002, 0.4, "COMPLETE")])[0] == 0.016
    assert planned({"model": "cnn", "learning_rate": 0.008}, [(0.03, 0.3, "COMPLETE"), (0.001, 0.89, "COMPLETE")])[0] == 0.01
    assert planned({"model": "cnn", "learning_rate": 0.008}, [(0.03, 0.95, "PRUNED"), (0.001, 0.89, "COMPLETE")])[0] == 0.01
    # Never below the rules' own rate, and it says so.
    rate, reasons = planned({"model": "cnn", "learning_rate": 0.02}, tuned=False)
    assert rate == 0.02 and reasons[-1]["because"].startswith("the ceiling 0.01 is the top of the cnn's built-in search space; "
                                                             "the rules' own rate 0.02, above it, is kept")
    assert planned({"model": "cnn", "learning_rate": 0.008}, max_learning_rate=0.005)[0] == 0.008
    rate, reasons = planned({"model": "cnn", "learning_rate": 0.008}, max_learning_rate=0.012)
    assert rate == 0.012 and reasons[-1]["because"].startswith("the ceiling 0.012 is max_learning_rate:")
    with pytest.raises(ConfigError, match="^max_learning_rate"):
        LearningPolicy(max_learning_rate=0)


def test_thompson_shares_what_one_arm_taught_with_arms_of_the_same_factor():
    policy = LearningPolicy(seed=3)
    for arm, reward in (("lr_x1-epochs_x1", 0.8), ("lr_x0.5-epochs_x1", -2.2), ("lr_x2-epochs_x1", 1.8)):
        policy.update(reward, arm=arm, context="overfit")
    posteriors = policy.posteriors("overfit", policy.store.records())
    # Never tried, yet ranked by what their learning-rate factor did elsewhere.
    assert posteriors["lr_x2-epochs_x1.5"][0] > posteriors["lr_x1-epochs_x1.5"][0] > posteriors["lr_x0.5-epochs_x1.5"][0]
    assert posteriors["lr_x2-epochs_x1.5"][2] == 0 and posteriors["lr_x2-epochs_x1"][2] == 1
    # Its own reward pulls an arm's posterior toward it and narrows it.
    assert posteriors["lr_x2-epochs_x1"][1] < posteriors["lr_x2-epochs_x1.5"][1]
    choices = Counter(LearningPolicy(store=policy.store, seed=s).decide(observation())["policy"]["arm"] for s in range(40))
    assert sum(n for arm, n in choices.items() if arm.startswith("lr_x2")) >= 30
    assert not any(arm.startswith("lr_x0.5") for arm in choices)


def test_reward_and_arguments_are_validated():
    policy = LearningPolicy(accuracy_weight=100, time_weight=0.01, compute_weight=0.1)
    assert policy.reward(0.02, 100.0, 10) == pytest.approx(2.0 - 1.0 - 1.0)
    obs = Observation(experiment_id="1", parent_run_id="p", compute={"run_seconds": 50.0, "epochs": 5})
    assert policy.reward_from_observation(obs, 0.95, 0.93) == pytest.approx(2.0 - 0.5 - 0.5)
    with pytest.raises(ConfigError, match="^seconds"):
        policy.reward(0.1, float("nan"), 1)
    with pytest.raises(ConfigError, match="^arm: unknown arm"):
        policy.update(1.0, arm="lr_x9", context="overfit")
    with pytest.raises(ConfigError, match="^context"):
        policy.update(1.0, arm="lr_x1-epochs_x1", context="sunny")
    with pytest.raises(ConfigError, match="^strategy"):
        LearningPolicy(strategy="softmax")
    with pytest.raises(ConfigError, match="^prior_sd"):
        LearningPolicy(prior_sd=0)
    with pytest.raises(ConfigError, match=r"^epsilon: .*got 1\.5"):
        LearningPolicy(epsilon=1.5)
    with pytest.raises(ConfigError, match="^lr_scales"):
        LearningPolicy(lr_scales=[1, 1])
