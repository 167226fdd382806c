"""Observe a fixed MLflow history, decide with the rules policy, validate, log the plan."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from dlagent.agent import run_agent
from dlagent.agent.curves import analyze_curve
from dlagent.agent.observe import Observation, ObservationError, observe
from dlagent.agent.plan import log_plan, plan_to_json, validate_plan
from dlagent.agent.policies import Policy, load_policy
from dlagent.agent.policies.rules import RulesPolicy
from dlagent.errors import ConfigError
from mlflow import MlflowClient

from tests.agent.history import CHAMPION, build_history

# Its module-scoped fixture writes an MLflow history of runs: all its tests on one pytest-xdist worker, so it is written once.
pytestmark = pytest.mark.xdist_group("agent_history")

RESOURCES = {"cpu_count": 4, "cpus_free": 2, "load_1m": 1.5, "memory_free_gb": 8.0}


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """One store for the module (the tests only read it, or add runs of their own)."""
    folder = tmp_path_factory.mktemp("agent-history")
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    return client, build_history(client, artifact_location=str(folder / "artifacts"))


def test_observe_reads_the_history(history):
    client, ids = history
    obs = observe(client, ids["experiment_id"], ids["parent_run_id"], CHAMPION, resources=RESOURCES)
    assert obs.config["learning_rate"] == 0.001 and obs.config["model"] == "mlp" and "dataset" not in obs.config
    assert [t["number"] for t in obs.trials] == [0, 1, 2, 3, 4, 5]
    assert [t["state"] for t in obs.trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "PRUNED", "COMPLETE"]
    assert obs.best_trial["number"] == 3 and obs.direction == "maximize"
    assert obs.best_trial["params"] == {"dropout": 0.2, "epochs": 10, "learning_rate": 0.002, "model": "mlp", "seed": 42, "units": 128}
    assert obs.tuned_params == ["dropout", "learning_rate", "units"]
    assert obs.best_value_history == [0.9, 0.93, 0.95, 0.95]
    assert {c["step"] for c in obs.curves} == {"train", "trial"}
    trial_curve = obs.curve_of(ids["best_trial_run_id"])
    assert trial_curve["best_epoch"] == 4 and trial_curve["overfitting"] and trial_curve["gap"] == pytest.approx(0.08)
    train_curve = obs.curve_of(ids["train_run_id"])
    assert train_curve["still_improving"] and not train_curve["diverged"]
    assert obs.reference_score == 0.95 and obs.gate["blessed"] is True
    assert sorted(c["name"] for c in obs.candidates) == ["float32", "int8", "pruned80+int8"]
    assert obs.champion == {"name": CHAMPION, "version": "1", "run_id": obs.champion["run_id"], "metrics": {"test_accuracy": 0.92, "val_accuracy": 0.92}}
    assert obs.compute == {"runs": 11, "finished_runs": 10, "run_seconds": 107.0, "epochs": 53, "trials": 6}
    assert Observation.from_dict(json.loads(obs.to_json())) == obs  # JSON round trip


def test_rules_plan_is_deterministic_valid_and_explained(history):
    client, ids = history
    plans = []
    for _ in range(2):  # two observations of the same history, two policy instances
        obs = observe(client, ids["experiment_id"], ids["parent_run_id"], CHAMPION, resources=RESOURCES)
        plans.append(plan_to_json(RulesPolicy().decide(obs)))
    assert plans[0] == plans[1]
    plan = validate_plan(json.loads(plans[0]))
    assert plan["train"] == {"dropout": 0.3, "epochs": 8, "learning_rate": 0.002, "units": 128}  # best trial (units: tuned, so set though equal), best epoch 5 + patience 3, gap
    assert plan["tune"]["n_trials"] == 8 and plan["tune"]["n_workers"] == 2  # 2 free CPUs
    assert plan["tune"]["search_space"] == {
        "dropout": {"type": "float", "low": 0.1, "high": 0.3, "log": False},
        "learning_rate": {"type": "float", "low": 0.0006667, "high": 0.006, "log": True},
        "units": {"type": "int", "low": 64, "high": 256, "log": True},
    }
    assert plan["compress"] == [{"quantization": "int8", "sparsity": 0.0}]  # smallest within 1 point of 0.95
    assert plan["action"] == "deploy"  # blessed, 0.948 beats the champion's 0.92
    decisions = [r["decision"] for r in plan["reasons"]]
    assert "train.dropout=0.3" in decisions and "action=deploy" in decisions and "compress: int8" in decisions
    assert all(r["because"] for r in plan["reasons"])


def test_rules_stop_tuning_when_the_best_value_stalls(history):
    client, ids = history
    obs = observe(client, ids["experiment_id"], ids["parent_run_id"], CHAMPION, resources=RESOURCES)
    stalled = RulesPolicy(improvement_window=1).decide(obs)  # 0.95 -> 0.95 over the last trial
    assert stalled["tune"] is None
    improving = RulesPolicy(improvement_window=2).decide(obs)  # 0.93 -> 0.95 over the last two
    assert improving["tune"]["n_trials"] == 8
    obs.gate = {"run_id": "x", "blessed": False, "metrics": {"shipped_val_accuracy": 0.90}}  # worse than the champion (0.92)
    assert RulesPolicy(improvement_window=1).decide(obs)["action"] == "stop"
    assert RulesPolicy(improvement_window=2).decide(obs)["action"] == "retune"
    assert RulesPolicy(accuracy_budget_points=0.1).decide(obs)["compress"] == [{"quantization": "none", "sparsity": 0.0}]


def test_minimize_direction_and_nested_trials(history):
    from tests.agent.history import child

    client, ids = history
    experiment_id = ids["experiment_id"]
    parent = client.create_run(experiment_id).info.run_id
    tune = child(client, experiment_id, parent, "tune", "tune", 1_700_000_000_000)  # trials one level deeper
    for number, loss in enumerate([0.5, 0.3, 0.4]):
        child(client, experiment_id, tune, None, f"trial-{number}", 1_700_000_000_001 + number,
              tags={"optuna.trial_number": str(number), "optuna.state": "COMPLETE"}, params={"learning_rate": 0.01 * (number + 1)},
              metrics={"objective": loss})
    client.log_metric(parent, "best_value", 0.3)
    obs = observe(client, experiment_id, parent, resources=RESOURCES)
    assert obs.direction == "minimize" and obs.best_trial["number"] == 1 and obs.best_value_history == [0.5, 0.3, 0.3]


def test_rules_lower_the_learning_rate_on_divergence():
    curve = analyze_curve({"loss": [1.0, 0.5, 3.0, float("nan")], "val_loss": [1.0, 0.6, 2.0, float("nan")]})
    assert curve["diverged"] and curve["divergence_epoch"] == 2
    # A healthy model near zero loss: 0.01 -> 0.025 more than doubles, but gives back almost nothing of 1.5 -> 0.01.
    spike = analyze_curve({"loss": [1.5, 0.3, 0.1, 0.03, 0.01, 0.025, 0.012], "val_loss": [1.0, 0.3, 0.15, 0.1, 0.09, 0.1, 0.09]})
    assert not spike["diverged"] and spike["divergence_epoch"] is None
    assert analyze_curve({"loss": [1.5, 0.1, 1.0]})["diverged"]  # 0.1 -> 1.0 gave back most of what it had learnt
    obs = Observation(experiment_id="1", parent_run_id="p", config={"learning_rate": 0.5},
                      curves=[{"run_id": "r", "step": "train", "params": {}, **curve}], resources=RESOURCES)
    plan = validate_plan(RulesPolicy().decide(obs))
    assert plan["train"]["learning_rate"] == 0.15
    assert any("diverged" in r["because"] for r in plan["reasons"])


def test_run_agent_and_log_plan(history):
    client, ids = history
    plan, obs = run_agent(client, ids["experiment_id"], ids["parent_run_id"], champion_name=CHAMPION, resources=RESOURCES)
    agent_run = client.create_run(ids["experiment_id"], tags={"dlagent.step": "agent"})  # not a child: the module shares the history
    log_plan(client, agent_run.info.run_id, plan, obs)
    stored = json.loads(Path(client.download_artifacts(agent_run.info.run_id, "decisions.json")).read_text())
    assert stored == plan
    assert client.get_run(agent_run.info.run_id).data.tags["dlagent.action"] == "deploy"


def test_observe_errors_are_clear(history, monkeypatch):
    client, ids = history
    with pytest.raises(ConfigError, match="^parent_run_id: no MLflow run"):
        observe(client, ids["experiment_id"], "0" * 32)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(ObservationError, match=r"MLflow at http://127\.0\.0\.1:9"):
        observe(MlflowClient("http://127.0.0.1:9"), "0", "abc")


def test_load_policy():
    assert isinstance(load_policy("rules"), RulesPolicy)
    assert load_policy("dlagent.agent.policies.rules.RulesPolicy", max_trials=4).max_trials == 4
    assert load_policy("learning", seed=3).seed == 3
    for bad, match in [("genetic", "unknown policy 'genetic'"), ("json.JSONDecoder", "not a dlagent Policy"),
                       ("no_such_pkg.Policy", "cannot import"), ("", "must be a policy name")]:
        with pytest.raises(ConfigError, match=match) as info:
            load_policy(bad)
        assert info.value.field == "policy"
    with pytest.raises(ConfigError) as info:
        load_policy("rules", max_trials=0)
    assert info.value.field == "policy.max_trials" and "got 0" in str(info.value)
    with pytest.raises(ConfigError, match="bad arguments"):
        load_policy("rules", colour="red")
    assert issubclass(RulesPolicy, Policy)


def test_the_action_judges_the_candidate_the_gate_judged(history):
    """A blessed evaluation whose shipped candidate is worse than the champion is not deployed,
    even when another (unshipped) candidate would have beaten the champion."""
    client, ids = history
    obs = observe(client, ids["experiment_id"], ids["parent_run_id"], CHAMPION, resources=RESOURCES)
    gate = {**obs.gate, "metrics": {**obs.gate["metrics"], "shipped_val_accuracy": 0.91}}  # champion: 0.92
    plan = RulesPolicy().decide(dataclasses.replace(obs, gate=gate))
    assert plan["action"] != "deploy"
    assert any("the gated candidate val_accuracy 0.9100" in r["because"] for r in plan["reasons"] if r["decision"].startswith("action="))


def test_the_gate_only_vetoes_a_deploy_and_the_champion_measured_must_be_the_champion(history):
    """Better than the champion on validation but refused by the gate (the test split): stop, never retune;
    a champion_val_<metric> measured on another version than the champion now is not compared with."""
    client, ids = history
    obs = observe(client, ids["experiment_id"], ids["parent_run_id"], CHAMPION, resources=RESOURCES)
    refused = dataclasses.replace(obs, gate={**obs.gate, "blessed": False})
    plan = RulesPolicy().decide(refused)
    assert plan["tune"] is not None and plan["action"] == "stop", plan["reasons"]
    assert any("vetoes the deploy" in r["because"] for r in plan["reasons"] if r["decision"] == "action=stop")
    measured = {**obs.gate, "metrics": {**obs.gate["metrics"], "champion_val_accuracy": 0.99}}
    assert dataclasses.replace(obs, gate={**measured, "champion_version": "1"}).champion_score == 0.99
    assert dataclasses.replace(obs, gate={**measured, "champion_version": "7"}).champion_score == 0.92  # stored with version 1


def test_a_candidate_as_good_as_the_champion_and_smaller_is_deployed_as_the_gate_would(history):
    """The gate's second way to bless (as good as the champion, within its tie tolerance, and smaller
    or faster by its min_efficiency_gain) is asked of the validation split too: a tie there on a
    smaller candidate deploys; a loss beyond the tolerance, or a tie at the champion's size, does not."""
    from dlagent.ml import mlflow_names as names

    client, ids = history
    evaluate = next(r for r in client.search_runs([ids["experiment_id"]]) if r.data.tags.get(names.GATE_BLESSED_TAG))
    thresholds = {"tie_tolerance_points": 0.5, "min_efficiency_gain": 0.05}
    client.set_tag(evaluate.info.run_id, names.GATE_THRESHOLDS_TAG, json.dumps(thresholds))
    try:
        obs = observe(client, ids["experiment_id"], ids["parent_run_id"], CHAMPION, resources=RESOURCES)
    finally:  # the history is shared by the module's tests
        client.delete_tag(evaluate.info.run_id, names.GATE_THRESHOLDS_TAG)
    assert obs.gate["thresholds"] == thresholds

    def action(shipped: float, size: int, champion_version: str = "1") -> tuple[str, str]:  # the champion: 0.92, 100 kB
        metrics = {**obs.gate["metrics"], "shipped_val_accuracy": shipped, "shipped_size_bytes": size, "champion_size_bytes": 100_000}
        gate = {**obs.gate, "metrics": metrics, "champion_version": champion_version}
        plan = RulesPolicy().decide(dataclasses.replace(obs, gate=gate))
        return plan["action"], next(r["because"] for r in plan["reasons"] if r["decision"].startswith("action="))

    done, why = action(0.918, 60_000)
    assert done == "deploy", why
    assert "as good as the champion on validation (within the gate's tie tolerance) and smaller" in why
    assert "val_accuracy 0.9180 vs champion v1 0.9200 (-0.20 points" in why and "tie tolerance 0.5 points" in why
    assert action(0.92, 60_000)[0] == "deploy"
    assert action(0.914, 60_000)[0] != "deploy"  # -0.6 points: outside the tolerance
    assert action(0.92, 97_000)[0] != "deploy"  # 3 % smaller: not the gate's 5 %
    assert action(0.92, 60_000, champion_version="7")[0] != "deploy"  # sizes measured with another champion
    assert action(0.93, 100_000)[0] == "deploy"  # better: size does not matter
    assert RulesPolicy().decide(dataclasses.replace(obs, gate={**obs.gate, "blessed": False}))["action"] != "deploy"
    # an evaluate run logged before the thresholds tag: no tie tolerance known, only "better" deploys
    old = {**obs.gate, "thresholds": None, "metrics": {**obs.gate["metrics"], "shipped_val_accuracy": 0.92, "shipped_size_bytes": 60_000,
                                                         "champion_size_bytes": 100_000}}
    assert RulesPolicy().decide(dataclasses.replace(obs, gate=old))["action"] != "deploy"


def test_a_champion_of_another_split_is_compared_on_the_validation_rows_it_never_trained_on(history):
    """Where the evaluate step scored the champion on the validation rows it never trained on, the action and
    the reward compare this run's models on those rows too (unseen_by_champion_* metrics), not on the whole split."""
    from dlagent.agent import reward_run
    from dlagent.agent.policies.learning import LearningPolicy
    from dlagent.ml.mlflow_names import UNSEEN_BY_CHAMPION_PREFIX

    client, ids = history
    obs = observe(client, ids["experiment_id"], ids["parent_run_id"], CHAMPION, resources=RESOURCES)
    whole = {**obs.gate["metrics"], "champion_val_accuracy": 0.95, "shipped_val_accuracy": 0.93}
    unseen = {**whole, f"{UNSEEN_BY_CHAMPION_PREFIX}shipped_val_accuracy": 0.97, f"{UNSEEN_BY_CHAMPION_PREFIX}val_accuracy": 0.98}
    fair = dataclasses.replace(obs, gate={**obs.gate, "blessed": True, "metrics": unseen, "champion_version": "1"})
    assert fair.champion_score == 0.95 and fair.versus_champion("shipped") == 0.97 and fair.versus_champion("reference") == 0.98
    assert fair.reward_scores == (0.98, 0.95)  # what the learning policy's reward and bench/agent_vs_static.py compare
    plan = RulesPolicy().decide(fair)
    assert plan["action"] == "deploy", plan["reasons"]
    assert any("the gated candidate (both on the validation rows the champion never trained on) val_accuracy 0.9700 vs champion v1 "
               "0.9500" in r["because"] for r in plan["reasons"])
    # The whole split's figures alone (the same seed's champion): 0.93 against 0.95, no deploy.
    assert RulesPolicy().decide(dataclasses.replace(fair, gate={**fair.gate, "metrics": whole}))["action"] != "deploy"
    # Measured with another champion version than the one deployed now: none of it is compared.
    assert dataclasses.replace(fair, gate={**fair.gate, "champion_version": "7"}).versus_champion("shipped") is None

    planned = {"policy": {"name": "learning", "arm": "lr_x1-epochs_x1", "context": "overfit"}}
    reward = reward_run(LearningPolicy(seed=0), fair, planned, key="test/unseen")
    assert reward["recorded"] and reward["value"] == 0.98 and reward["baseline"] == 0.95
    assert "val_accuracy 0.9800 vs champion 0.9500 (both on the validation rows the champion never trained on)" in reward["because"]
    reward = reward_run(LearningPolicy(seed=0), dataclasses.replace(fair, gate={**fair.gate, "metrics": whole}), planned, key="w")
    assert reward["value"] == fair.reference_score and "never trained on" not in reward["because"]


def test_rules_warm_start_from_the_best_trials_checkpoint_and_seed_the_next_round(history):
    client, ids = history
    obs = observe(client, ids["experiment_id"], ids["parent_run_id"], CHAMPION, resources=RESOURCES)
    assert obs.best_trial["checkpoint"] is None and obs.best_trial["study"] == "s"
    cold = RulesPolicy(improvement_window=2).decide(obs)
    assert cold["warm_start"] is None and cold["train"]["epochs"] == 8
    assert any(r["decision"] == "warm_start=null" and "saved no weights" in r["because"] for r in cold["reasons"])
    assert cold["tune"]["seed_studies"] == ["s"]  # the next round's study replays this one's trials

    obs.best_trial["checkpoint"] = checkpoint = f"runs:/{obs.best_trial['run_id']}/checkpoint/model.keras"
    assert obs.config["model"] == "mlp" and "ensemble" not in obs.config  # a classifier: one network by default
    from dlagent.agent.run_views import train_params

    assert train_params({"ensemble": "1", "l2": "None"}) == {"ensemble": 1}  # typed as the setting: an int, not 1.0
    obs.best_trial["params"]["ensemble"] = 1  # what every trial logs: it trains one network
    averaged = validate_plan(RulesPolicy(improvement_window=2).decide(dataclasses.replace(obs, config={**obs.config, "ensemble": 5})))
    assert averaged["warm_start"] is None and averaged["train"]["epochs"] == 8  # every member from scratch
    assert "ensemble" not in averaged["train"]  # the trial's one network is not the final training's setting
    assert any(r["decision"] == "warm_start=null" and "averages 5 networks (ensemble) and trial 3 trained one" in r["because"]
               for r in averaged["reasons"])
    regressor = RulesPolicy(improvement_window=2).decide(dataclasses.replace(obs, metric="rmse"))  # a regression mlp's default: 5
    assert regressor["warm_start"] is None and any("averages 5 networks" in r["because"] for r in regressor["reasons"])
    warm = validate_plan(RulesPolicy(improvement_window=2).decide(obs))
    # The best trial converged (best epoch 5 of 8): fine-tune its weights for early_stopping_patience (3)
    # epochs at 0.3 x its learning rate, instead of 8 epochs from scratch; dropout has no weights, so the gap rule still applies.
    assert warm["warm_start"] == checkpoint
    assert warm["train"] == {"dropout": 0.3, "epochs": 3, "learning_rate": 0.0006, "units": 128}
    assert any(r["decision"] == "warm_start=trial 3" for r in warm["reasons"])
    # Continued weights with a fresh optimizer trip the controller's start rule without diverging: off for a warm start.
    assert warm["controller"]["start_loss_factor"] is None and cold["controller"]["start_loss_factor"] == 1.1
    assert warm["controller"]["divergence_threshold"] == cold["controller"]["divergence_threshold"] == 2.0
    assert RulesPolicy(warm_start=False).decide(obs)["warm_start"] is None
    with pytest.raises(ConfigError, match="^fine_tune_lr_factor"):
        RulesPolicy(fine_tune_lr_factor=0)


def test_rules_on_a_linear_mlp_add_a_hidden_layer_and_never_a_dropout_that_acts_on_nothing(history):
    """``hidden_layers`` 0 (a linear ``mlp``) has no hidden layer: an accuracy gap leaves the
    dropout alone, and a model under-fitting on a plateau gets one hidden layer, not more units."""
    client, ids = history
    obs = observe(client, ids["experiment_id"], ids["parent_run_id"], CHAMPION, resources=RESOURCES)
    linear = dataclasses.replace(obs, config={**obs.config, "model": "mlp", "hidden_layers": 0})
    tuned = obs.best_trial["params"]
    assert RulesPolicy(improvement_window=2).decide(obs)["train"]["dropout"] > tuned["dropout"]  # the gap rule, with a hidden layer
    plan = RulesPolicy(improvement_window=2).decide(linear)
    assert plan["train"]["dropout"] == tuned["dropout"] and "hidden_layers" not in plan["train"]
    assert any(r["decision"] == "train.dropout unchanged" and "linear" in r["because"] for r in plan["reasons"])

    obs.best_trial["checkpoint"] = "runs:/r/checkpoint/model.keras"  # shared by both observations, as is the curve:
    curve = obs.main_curve  # now a plateau well below 0.9 training accuracy
    curve.update(gap=None, underfitting=True, plateau=True, final_accuracy=0.7)
    wider = RulesPolicy(improvement_window=2).decide(obs)["train"]
    deeper = RulesPolicy(improvement_window=2).decide(linear)
    assert wider["units"] == 2 * tuned["units"] and "hidden_layers" not in wider
    assert deeper["train"]["hidden_layers"] == 1 and deeper["train"]["units"] == tuned["units"]
    assert deeper["warm_start"] is None and "hidden_layers" not in tuned  # the trial trained the run's depth, 0: its weights do not fit
    assert any(r["decision"] == "warm_start=null" and "hidden_layers 0 -> 1" in r["because"] for r in deeper["reasons"])


def test_rules_respect_max_trials_when_no_trial_completed():
    from dlagent.agent.observe import Observation

    failed = [{"number": n, "state": "FAIL", "value": None, "params": {}, "run_id": f"r{n}", "epochs_run": 0, "study": "s",
               "checkpoint": None} for n in range(4)]
    obs = Observation(experiment_id="1", parent_run_id="p", trials=failed, resources=RESOURCES)
    assert RulesPolicy(initial_trials=8, max_trials=4).decide(obs)["tune"] is None
    assert RulesPolicy(initial_trials=8, max_trials=6).decide(obs)["tune"]["n_trials"] == 2


def test_rules_read_completed_trials_without_a_best_value_history_as_too_early_to_tell():
    """An observation built by hand may list completed trials and no history: the plan says so, it does not crash."""
    done = {"number": 0, "state": "COMPLETE", "value": 0.9, "params": {"learning_rate": 0.002}, "run_id": "t0", "epochs_run": 8,
            "study": "s", "checkpoint": None}
    obs = Observation(experiment_id="1", parent_run_id="p", config={"epochs": 8}, trials=[done], best_trial=done, resources=RESOURCES)
    policy = RulesPolicy()
    assert policy.tuning_progress(obs) == (True, None)
    assert policy.tuning_progress(dataclasses.replace(obs, trials=[], best_trial=None)) == (None, None)
    plan = validate_plan(policy.decide(obs))
    assert plan["tune"]["n_trials"] == policy.trials_per_round
    assert any("only 1 completed trials" in r["because"] for r in plan["reasons"])


def test_rules_short_trials_then_continue_the_best_one(history):
    """With warm start, trials train trial_epochs_fraction x the epochs; a still-improving best
    trial is continued for the rest of a from-scratch training's epochs."""
    client, ids = history
    obs = observe(client, ids["experiment_id"], ids["parent_run_id"], CHAMPION, resources=RESOURCES)
    plan = validate_plan(RulesPolicy(improvement_window=2).decide(obs))
    assert plan["tune"]["trial_epochs"] == 4  # 0.4 x the pipeline's 10 epochs
    assert any(r["decision"] == "tune.trial_epochs=4" and "warm start" in r["because"] for r in plan["reasons"])
    assert plan["tune"]["min_trial_epochs"] == 1  # 0.25 x 4 epochs: the pruner's first rung
    assert RulesPolicy(improvement_window=2, min_trial_epochs_fraction=0.5).decide(obs)["tune"]["min_trial_epochs"] == 2
    assert RulesPolicy(improvement_window=2, trial_epochs_fraction=0.3).decide(obs)["tune"]["trial_epochs"] == 3
    assert RulesPolicy(improvement_window=2, trial_epochs_fraction=1.0).decide(obs)["tune"]["trial_epochs"] is None
    cold = RulesPolicy(improvement_window=2, warm_start=False).decide(obs)["tune"]
    assert cold["trial_epochs"] is None and cold["min_trial_epochs"] is None  # the trials' weights would be thrown away
    first = RulesPolicy().decide(Observation(experiment_id="1", parent_run_id="p", config={"epochs": 20}, resources=RESOURCES))
    assert first["tune"]["search_space"] is None and first["tune"]["trial_epochs"] == 8 and first["tune"]["min_trial_epochs"] == 2
    for bad in (0, 1.5, "half"):
        with pytest.raises(ConfigError, match="^trial_epochs_fraction"):
            RulesPolicy(trial_epochs_fraction=bad)
        with pytest.raises(ConfigError, match="^min_trial_epochs_fraction"):
            RulesPolicy(min_trial_epochs_fraction=bad)

    # The best trial was cut off by trial_epochs while still improving (8 epochs, best at the last).
    curve = analyze_curve({"loss": [1.0, 0.6, 0.45, 0.35, 0.3, 0.26, 0.23, 0.21], "val_loss": [1.0, 0.7, 0.55, 0.47, 0.42, 0.39, 0.37, 0.36],
                           "accuracy": [0.7, 0.8, 0.85, 0.88, 0.9, 0.91, 0.915, 0.92], "val_accuracy": [0.7, 0.79, 0.84, 0.87, 0.89, 0.9, 0.905, 0.91]})
    assert curve["still_improving"]
    best = {"number": 0, "state": "COMPLETE", "value": 0.91, "params": {"learning_rate": 0.002}, "run_id": "t0", "epochs_run": 8,
            "study": "s", "checkpoint": "runs:/t0/checkpoint/model.keras"}
    cut = Observation(experiment_id="1", parent_run_id="p", config={"epochs": 20, "early_stopping_patience": 5}, trials=[best],
                      best_trial=best, best_value_history=[0.91], curves=[{"run_id": "t0", "step": "trial", "params": {}, **curve}],
                      resources=RESOURCES)
    warm = validate_plan(RulesPolicy().decide(cut))
    # From scratch: the configured 20 epochs (more than the curve's 8 x 1.5 + patience 5 = 17); the trial ran 8 of them,
    # so 12 more (early stopping may end it sooner).
    assert warm["warm_start"] == best["checkpoint"] and warm["train"] == {"epochs": 12, "learning_rate": 0.002}
    assert RulesPolicy(max_epochs=10).decide(cut)["train"]["epochs"] == 10  # capped at max_epochs
    cut.config["epochs"] = 10
    assert RulesPolicy().decide(cut)["train"]["epochs"] == 9  # the curve's 17 - 8
    cut.config["epochs"] = 11
    assert RulesPolicy(max_epochs=11).decide(cut)["train"]["epochs"] == 5  # 11 - 8 = 3, but at least the patience
