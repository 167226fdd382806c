"""The plan schema: valid plans normalize deterministically, malformed ones name the field."""

from __future__ import annotations

import json

import pytest
from dlagent.agent.plan import plan_to_json, validate_plan
from dlagent.errors import ConfigError


def good_plan(**changes) -> dict:
    plan = {
        "action": "retune",
        "train": {"learning_rate": 0.003, "epochs": 12, "dropout": 0.3},
        "tune": {"n_trials": 8, "n_workers": 2,
                 "search_space": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                                  "units": {"type": "int", "low": 32, "high": 256, "log": True},
                                  "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]}}},
        "compress": [{"sparsity": 0.8, "quantization": "int8"}, {"quantization": "dynamic"}],
        "controller": {"patience": 1, "factor": 0.5},
        "policy": {"name": "rules", "arm": None, "context": None},
        "reasons": [{"decision": "train.dropout=0.3", "because": "accuracy gap 0.08"}],
    }
    plan.update(changes)
    return plan


def test_valid_plan_is_normalized_and_serialized_deterministically():
    plan = validate_plan(good_plan())
    assert plan["controller"]["patience"] == 1 and plan["controller"]["clipnorm"] == 1.0  # expanded to every setting
    assert validate_plan(plan) == plan  # idempotent
    text = plan_to_json(good_plan())
    shuffled = dict(reversed(list(good_plan().items())))
    assert plan_to_json(shuffled) == text
    assert json.loads(text) == plan
    assert list(json.loads(text)) == sorted(json.loads(text))
    assert validate_plan(text) == plan  # a JSON string is accepted too


def test_warm_start_seed_studies_and_trial_epochs_round_trip():
    plan = validate_plan(good_plan(warm_start="runs:/abc123/checkpoint/model.keras",
                                   tune={"n_trials": 3, "seed_studies": ["round0", "round1"], "trial_epochs": 10,
                                         "min_trial_epochs": 3}))
    assert plan["warm_start"] == "runs:/abc123/checkpoint/model.keras"
    assert plan["tune"]["seed_studies"] == ["round0", "round1"] and plan["tune"]["n_workers"] == 1
    assert plan["tune"]["trial_epochs"] == 10 and plan["tune"]["min_trial_epochs"] == 3
    assert validate_plan(good_plan())["tune"]["seed_studies"] == []
    assert validate_plan(good_plan())["tune"]["trial_epochs"] is None  # trials train the full epochs


def test_minimal_plan_gets_empty_sections():
    plan = validate_plan({"action": "stop", "reasons": []})
    assert plan == {"action": "stop", "train": {}, "tune": None, "warm_start": None, "compress": [], "controller": None,
                    "policy": None, "reasons": []}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"action": "launch"}, "action"),
        ({"surprise": 1}, "surprise"),
        ({"train": {"lr": 0.1}}, "train.lr"),
        ({"train": {"learning_rate": -1.0}}, "train.learning_rate"),
        ({"train": {"epochs": 2.5}}, "train.epochs"),
        ({"train": [1, 2]}, "train"),
        ({"tune": {"n_trials": -1}}, "tune.n_trials"),
        ({"tune": {"n_trials": 4, "n_workers": 0}}, "tune.n_workers"),
        ({"tune": {"n_trials": 4, "parallel": 2}}, "tune.parallel"),
        ({"tune": {"n_trials": 4, "search_space": {"lr": {"type": "float", "low": 0.1, "high": 1}}}}, "tune.search_space.lr"),
        ({"tune": {"n_trials": 4, "search_space": {"learning_rate": {"type": "float", "low": 0.1, "high": 0.01}}}}, "tune.search_space.learning_rate"),
        ({"tune": {"n_trials": 4, "search_space": {"learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}}}, "tune.search_space.learning_rate"),
        ({"tune": {"n_trials": 4, "search_space": {"dropout": {"type": "float", "low": 0.1, "high": 1.5}}}}, "tune.search_space.dropout"),
        ({"tune": {"n_trials": 4, "search_space": {"units": {"type": "float", "low": 8, "high": 64}}}}, "tune.search_space.units"),
        ({"tune": {"n_trials": 4, "search_space": {"optimizer": {"type": "categorical", "choices": ["adam", "lbfgs"]}}}}, "tune.search_space.optimizer"),
        ({"tune": {"n_trials": 4, "seed_studies": "round0"}}, "tune.seed_studies"),
        ({"tune": {"n_trials": 4, "seed_studies": ["round0", ""]}}, "tune.seed_studies"),
        ({"tune": {"n_trials": 4, "trial_epochs": 0}}, "tune.trial_epochs"),
        ({"tune": {"n_trials": 4, "trial_epochs": 2.5}}, "tune.trial_epochs"),
        ({"tune": {"n_trials": 4, "trial_epochs": True}}, "tune.trial_epochs"),
        ({"tune": {"n_trials": 4, "trial_epochs": 4, "min_trial_epochs": 5}}, "tune.min_trial_epochs"),
        ({"tune": {"n_trials": 4, "min_trial_epochs": 0}}, "tune.min_trial_epochs"),
        ({"warm_start": "/tmp/model.keras"}, "warm_start"),
        ({"warm_start": 42}, "warm_start"),
        ({"warm_start": "runs:/abc/checkpoint/model keras"}, "warm_start"),
        ({"compress": [{"sparsity": 1.5}]}, "compress[0].sparsity"),
        ({"compress": [{"quantization": "int8"}, {"quantization": "int4"}]}, "compress[1].quantization"),
        ({"compress": [{"prune": True}]}, "compress[0].prune"),
        ({"controller": {"factor": 2.0}}, "controller.factor"),
        ({"controller": {"speed": 1}}, "controller.speed"),
        ({"policy": {"arm": "x"}}, "policy.name"),
        ({"reasons": [{"decision": "x"}]}, "reasons[0]"),
        ({"reasons": [{"decision": "x", "because": ""}]}, "reasons[0].because"),
        ({"reasons": "because"}, "reasons"),
    ],
)
def test_malformed_plan_names_the_field(change, field):
    with pytest.raises(ConfigError) as info:
        validate_plan(good_plan(**change))
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")


def test_missing_required_sections_and_bad_documents():
    with pytest.raises(ConfigError, match="^action: is missing"):
        validate_plan({"reasons": []})
    with pytest.raises(ConfigError, match="^reasons: is missing"):
        validate_plan({"action": "stop"})
    with pytest.raises(ConfigError, match="^plan: is not valid JSON"):
        validate_plan("{not json")
    with pytest.raises(ConfigError, match="^plan: must be a JSON object"):
        validate_plan([1])


def test_plan_search_spaces_are_checked_by_the_tuner_itself():
    from dlagent.ml import tuning

    space = {"units": {"type": "int", "low": 32, "high": 256, "step": 32}, "batch_size": {"type": "categorical", "choices": [32, 64]}}
    plan = validate_plan(good_plan(tune={"n_trials": 4, "search_space": space}))
    assert plan["tune"]["search_space"] == tuning.validate_search_space(space)
    assert list(plan["tune"]["search_space"]) == ["batch_size", "units"]  # sorted: deterministic JSON
    duplicate = {"batch_size": {"type": "categorical", "choices": [32, 32]}}  # a rule of the tuner's
    with pytest.raises(ConfigError) as info:
        validate_plan(good_plan(tune={"n_trials": 4, "search_space": duplicate}))
    assert info.value.field == "tune.search_space.batch_size" and "duplicates" in info.value.problem
