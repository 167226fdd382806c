"""The agent between federated rounds (dlagent.agent.federated): each rule, its reason, and 'off'."""

from __future__ import annotations

import pytest
from dlagent.agent.federated import DROP_POINTS, PATIENCE, plan_round
from dlagent.errors import ConfigError

SETTINGS = {"rounds": 10, "local_epochs": 4, "learning_rate": 0.01, "sites_per_round": 3, "metric": "accuracy"}


def _history(scores, *, losses=None, sites=(0, 1, 2), epochs=4, rate=0.01):
    losses = losses or [[1.0, 1.0, 1.0]] * len(scores)
    return [{"round": i + 1, "sites": list(sites), "val": {"val_accuracy": s}, "train_loss": list(loss), "local_epochs": epochs,
             "learning_rate": rate} for i, (s, loss) in enumerate(zip(scores, losses, strict=True))]


def test_the_first_round_runs_the_params_and_a_round_past_the_last_stops():
    first = plan_round([], round_number=1, **SETTINGS)
    assert (first.action, first.local_epochs, first.learning_rate) == ("train", 4, 0.01)
    assert first.reasons == ["first round: the Params' settings"]
    last = plan_round(_history([0.5] * 10), round_number=11, **SETTINGS)
    assert last.action == "stop" and "all 10 rounds" in last.reasons[0]


def test_improving_rounds_keep_their_settings():
    plan = plan_round(_history([0.5, 0.6, 0.7]), round_number=4, **SETTINGS)
    assert (plan.action, plan.local_epochs, plan.learning_rate) == ("train", 4, 0.01)
    assert plan.reasons[0].startswith("improving")


def test_no_improvement_for_patience_rounds_stops_early_and_says_so():
    flat = [0.80, 0.90] + [0.9005] * PATIENCE  # 0.05 points: under the 0.2-point minimum
    plan = plan_round(_history(flat), round_number=len(flat) + 1, **SETTINGS)
    assert plan.action == "stop"
    assert plan.reasons[0].startswith("converged: val_accuracy has not improved by 0.2 points in 2 rounds (best 0.9 at round 2)")
    still = plan_round(_history([0.80, 0.90, 0.9005, 0.91]), round_number=5, **SETTINGS)  # a 1-point gain in the window
    assert still.action == "train"


def test_a_fall_below_the_best_halves_the_learning_rate():
    plan = plan_round(_history([0.80, 0.90, 0.90 - (DROP_POINTS + 1) / 100]), round_number=4, **SETTINGS)
    assert plan.action == "train" and plan.learning_rate == pytest.approx(0.005)
    assert "got worse" in plan.reasons[0] and "learning rate halved to 0.005" in plan.reasons[0]


def test_client_drift_halves_local_epochs_only_when_every_site_fitted_its_own_data_better():
    losses = [[1.0, 1.0, 1.0], [0.5, 0.6, 0.4]]
    drift = plan_round(_history([0.80, 0.79], losses=losses), round_number=3, **SETTINGS)
    assert drift.local_epochs == 2 and any(r.startswith("client drift") for r in drift.reasons)
    mixed = plan_round(_history([0.80, 0.79], losses=[[1.0, 1.0, 1.0], [0.5, 1.2, 0.4]]), round_number=3, **SETTINGS)
    assert mixed.local_epochs == 4
    other_sites = _history([0.80, 0.79], losses=losses)
    other_sites[0]["sites"] = [0, 1, 3]
    assert plan_round(other_sites, round_number=3, **SETTINGS).local_epochs == 4  # not the same sites: no comparison


def test_error_metrics_count_relative_points_and_lower_is_better():
    rmse = {**SETTINGS, "metric": "rmse", "higher_is_better": False, "relative": True}
    history = [{"round": i + 1, "sites": [0], "val": {"val_rmse": v}, "train_loss": [1.0], "local_epochs": 4, "learning_rate": 0.01}
               for i, v in enumerate([10.0, 8.0, 7.99, 7.995])]  # 0.1 % better: under 0.2 % of the error
    assert plan_round(history, round_number=5, **rmse).action == "stop"
    history[-1]["val"]["val_rmse"] = 7.9  # 1.25 % better
    assert plan_round(history, round_number=5, **rmse).action == "train"


def test_off_runs_every_round_as_the_params_say():
    history = _history([0.80, 0.50, 0.50, 0.50], losses=[[1.0] * 3, [0.5] * 3, [0.4] * 3, [0.3] * 3])
    plan = plan_round(history, round_number=5, policy="off", **SETTINGS)
    assert (plan.action, plan.local_epochs, plan.learning_rate) == ("train", 4, 0.01)
    with pytest.raises(ConfigError, match="agent_policy"):
        plan_round(history, round_number=5, policy="learning", **SETTINGS)


def test_a_fall_in_a_round_of_only_some_sites_draws_one_site_more_from_then_on():
    partial = {**SETTINGS, "sites_per_round": 2, "n_sites": 4}
    history = _history([0.80, 0.79], sites=(0, 1))
    for record in history:
        record["sites_per_round"] = 2
    plan = plan_round(history, round_number=3, **partial)
    assert plan.sites_per_round == 3 and any(r.startswith("too few sites") for r in plan.reasons)
    history.append({**history[-1], "round": 3, "sites": [0, 1, 3], "sites_per_round": 3, "val": {"val_accuracy": 0.85}})
    assert plan_round(history, round_number=4, **partial).sites_per_round == 3  # kept from then on
    everyone = _history([0.80, 0.79], sites=(0, 1, 2, 3))
    assert plan_round(everyone, round_number=3, **partial).sites_per_round == 2  # all sites drew: nothing to widen
