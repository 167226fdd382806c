"""Every limit declared once: the trigger form's Params are generated from the settings dataclasses,
and the agent's plan, its policies and the tuning operators accept exactly what the form accepts.

Each bound is probed through every validator (the value at the limit passes everywhere, the
value just beyond it is refused everywhere), so a number restated in one place and changed
there alone fails here.
"""

from __future__ import annotations

import math

import pytest
from dlagent.agent.plan import Plan, pipeline_conf, validate_plan
from dlagent.agent.policies.learning import LearningPolicy
from dlagent.agent.policies.rules import RulesPolicy
from dlagent.errors import ConfigError
from dlagent.ml.config import TrainConfig
from dlagent.ml.gate import GateThresholds
from dlagent.ml.tuning import TuneConfig
from dlagent.params import GATE_PARAM_NAMES, TRAIN_PARAM_NAMES, TUNE_PARAM_FIELDS, check_pipeline_conf, pipeline_params

#: the plan's ``tune`` keys that are Params (the others, search space and seed studies, are checked by their own tests)
PLAN_TUNE_KEYS = {"n_trials": "n_trials", "n_workers": "tuning_workers", "trial_epochs": "tune_trial_epochs",
                  "min_trial_epochs": "tune_min_trial_epochs"}


def _edges(bounds) -> tuple[list, list]:
    """``(accepted, refused)`` values at and just beyond the declared limits."""
    if bounds.kind == "choice":
        return list(bounds.choices), ["not-a-choice"]
    if bounds.kind == "bool":
        return [True, False], [1]
    accepted, refused = [], []
    step = 1 if bounds.kind == "int" else 1e-9 * max(1.0, abs(bounds.high or 1.0))
    for limit, is_open, direction in ((bounds.low, bounds.low_open, -1), (bounds.high, bounds.high_open, 1)):
        if limit is None:
            continue
        if is_open:
            accepted.append(limit - direction * step)
            refused.append(limit)
        else:
            accepted.append(limit)
            refused.append(limit + direction * step)
    if bounds.kind == "number":
        accepted = [a for a in accepted if math.isfinite(a)]
    return accepted, refused


def _param_accepts(name: str, value) -> bool:
    try:
        check_pipeline_conf({name: value})
    except ConfigError:
        return False
    return True


def _plan_accepts(section: str, key: str, value) -> bool:
    doc = {"action": "stop", "reasons": []}
    doc[section] = {key: value} if section == "train" else {"n_trials": 1, key: value} if key != "n_trials" else {key: value}
    try:
        Plan.from_dict(doc)
    except ConfigError as exc:
        assert exc.field == f"{section}.{key}", exc  # refused naming the setting
        return False
    return True


def test_the_params_are_generated_from_the_declared_bounds():
    params = pipeline_params()
    declared = {**{name: TrainConfig.bounds(name) for name in TRAIN_PARAM_NAMES},
                **{param: TuneConfig.bounds(field) for param, field in TUNE_PARAM_FIELDS.items()},
                **{name: GateThresholds.bounds(name) for name in GATE_PARAM_NAMES}}
    for name, bounds in declared.items():
        schema = {k: v for k, v in params[name].schema.items() if k not in ("title", "description")}
        assert schema == bounds.json_schema(), name
        assert params[name].schema["title"] == bounds.title and bounds.description, name


def test_an_optional_text_param_is_empty_as_null_not_as_an_empty_string():
    """The trigger form sends a field left empty as null: a text Param that may be empty must
    accept null (default None), or the form refuses its own default and the Trigger button stays
    disabled (seen with ``drop_columns`` declared ``Param("", type="string")``)."""
    for name, param in pipeline_params().items():
        if param.value == "" or (param.schema.get("type") == "string" and not param.schema.get("minLength") and "enum" not in param.schema):
            pytest.fail(f"{name}: an optional text Param must be Param(None, type=['null', 'string']), got {param.schema}")


@pytest.mark.parametrize("name", TRAIN_PARAM_NAMES)
def test_a_training_setting_has_one_limit_for_the_form_the_plan_and_the_core(name):
    accepted, refused = _edges(TrainConfig.bounds(name))
    for value in accepted:
        assert _param_accepts(name, value) and _plan_accepts("train", name, value), (name, value)
        TrainConfig().replace(**{name: value})
    for value in refused:
        assert not _param_accepts(name, value) and not _plan_accepts("train", name, value), (name, value)
        with pytest.raises(ConfigError):
            TrainConfig().replace(**{name: value})


@pytest.mark.parametrize(("key", "param"), sorted(PLAN_TUNE_KEYS.items()))
def test_a_tuning_setting_has_one_limit_for_the_form_the_plan_and_the_operators(key, param):
    accepted, refused = _edges(TuneConfig.bounds(key))
    for value in accepted:
        assert _param_accepts(param, value) and _plan_accepts("tune", key, value), (key, value)
    for value in refused:
        assert not _param_accepts(param, value) and not _plan_accepts("tune", key, value), (key, value)
        with pytest.raises(ConfigError):
            TuneConfig(**{key: value})


@pytest.mark.parametrize("name", GATE_PARAM_NAMES)
def test_a_gate_limit_has_one_bound_for_the_form_and_the_gate(name):
    accepted, refused = _edges(GateThresholds.bounds(name))
    for value in accepted:
        assert _param_accepts(name, value)
        GateThresholds(**{name: value})
    for value in refused:
        assert not _param_accepts(name, value)
        with pytest.raises(ConfigError):
            GateThresholds(**{name: value})


@pytest.mark.parametrize(
    ("argument", "limit"),
    [("max_epochs", TrainConfig.bounds("epochs").high), ("max_units", TrainConfig.bounds("units").high),
     ("max_trials", TuneConfig.bounds("n_trials").high), ("initial_trials", TuneConfig.bounds("n_trials").high),
     ("trials_per_round", TuneConfig.bounds("n_trials").high), ("max_workers", TuneConfig.bounds("n_workers").high)],
)
def test_the_rules_policy_reads_the_same_limits(argument, limit):
    RulesPolicy(**{argument: limit})
    with pytest.raises(ConfigError) as error:
        RulesPolicy(**{argument: limit + 1})
    assert error.value.field == argument


def test_a_plan_at_the_params_maximum_gives_a_retune_conf_the_dag_accepts():
    """The epochs bug: the Param allowed 1,000 epochs, the plan and the learning policy 10,000, so an agent
    could plan a retune whose conf the form then refused. At the maximum everywhere, the conf is accepted."""
    top = TrainConfig.bounds("epochs").high
    workers = TuneConfig.bounds("n_workers").high
    plan = validate_plan({"action": "retune", "reasons": [{"decision": "x", "because": "y"}],
                          "train": {"epochs": top, "learning_rate": TrainConfig.bounds("learning_rate").high},
                          "tune": {"n_trials": TuneConfig.bounds("n_trials").high, "n_workers": workers,
                                   "trial_epochs": top, "min_trial_epochs": top}})
    conf, notes = pipeline_conf(plan, pipeline_params(), {"dataset": "digits"})
    assert not notes
    check_pipeline_conf(conf)  # what TriggerDagRunOperator's run is created with: the form accepts it
    assert conf["epochs"] == top and conf["tuning_workers"] == workers and conf["tune_trial_epochs"] == top

    # The learning policy scales the rules' epochs and learning rate; at the top it stays within the form's limits.
    class AtTheTop(RulesPolicy):
        def decide(self, observation):
            plan = super().decide(observation)
            plan["train"] = {**plan["train"], "epochs": top, "learning_rate": TrainConfig.bounds("learning_rate").high}
            return plan

    from dlagent.agent.observe import Observation

    policy = LearningPolicy(lr_scales=(2.0,), epoch_scales=(1.5,))
    policy.rules = AtTheTop()
    scaled = Plan.from_dict(policy.decide(Observation(experiment_id="1", parent_run_id="p", resources={"cpus_free": 1})))
    assert scaled["train"]["epochs"] == top and scaled["train"]["learning_rate"] == TrainConfig.bounds("learning_rate").high
    conf, _ = pipeline_conf(scaled, pipeline_params(), {"dataset": "digits"})
    check_pipeline_conf(conf)


@pytest.mark.parametrize("name", ["n_shards", "partition", "skew_alpha", "rounds", "local_epochs", "strategy", "mu", "clients_per_round"])
def test_a_federated_setting_has_one_limit_for_the_form_and_the_core(name):
    """dl_agent_federated's form is generated from FederatedConfig: a value at a limit passes both,
    one beyond it is refused by both."""
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError
    from dlagent.ml.federated.settings import FederatedConfig
    from dlagent.params import FEDERATED_PARAM_NAMES, federated_params

    assert name in FEDERATED_PARAM_NAMES
    params = federated_params()
    bounds = FederatedConfig.bounds(name)
    schema = {k: v for k, v in params[name].schema.items() if k not in ("title", "description")}
    assert schema == bounds.json_schema()
    valid = {"n_shards": 64, "strategy": "fedprox"}  # so that the other fields' cross-checks hold at every edge
    accepted, refused = _edges(bounds)
    for value in accepted:
        ParamsDict(params)[name] = value
        FederatedConfig.from_dict({**valid, name: value})
    for value in refused:
        with pytest.raises(ParamValidationError):
            ParamsDict(params)[name] = value
        with pytest.raises(ConfigError):
            FederatedConfig.from_dict({**valid, name: value})



def test_the_image_size_param_takes_one_side_or_height_x_width_and_never_a_hexadecimal_look_alike():
    """The DAGs render templates as native objects: a string such as '0x32' would reach the task as
    the number 50, so the form refuses a leading zero; 'HxW' with other digits stays a string."""
    from dlagent.ml.streaming import parse_image_size

    for good in (None, "32", "64x48", "4096x1"):
        assert _param_accepts("image_size", good), good
        assert parse_image_size(good) in (None, (32, 32), (64, 48), (4096, 1))
    for bad in ("0x32", "032", "32 x 32", "32x", "x32", "64x48x3", 32):
        assert not _param_accepts("image_size", bad), bad
    assert _param_accepts("color_mode", "rgb") and not _param_accepts("color_mode", "cmyk")
