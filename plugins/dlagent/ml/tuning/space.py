"""Search spaces: validate a person's JSON space, the default spaces, sampling, and narrowing.

One format everywhere (Params, agent plans, the tuner)::

    {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": true},
     "units": {"type": "int", "low": 32, "high": 256, "step": 32},
     "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]}}

Names are :class:`~dlagent.ml.config.TrainConfig` fields; every bound and choice must itself
be a valid value of that field. ``model_args.<key>`` tunes an argument of the user's own model
builder (:mod:`dlagent.ml.builders`): any JSON value the builder accepts. :func:`narrow_search_space` builds the space of an agent's next
tuning round around the best trial, within the same fields' declared limits.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from dlagent.errors import ConfigError
from dlagent.ml.config import AUTO_MODEL, MODEL_ARGS_PREFIX, TrainConfig

if TYPE_CHECKING:
    import optuna

PARAM_TYPES = ("float", "int", "categorical")
_SPEC_KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}
_EXAMPLE = 'give e.g. {"learning_rate": {"type": "float", "low": 1e-4, "high": 0.1, "log": true}}.'

# How a best value is widened into the next round's range (see narrow_search_space).
LOG_FLOATS = ("learning_rate", "fine_tune_learning_rate", "l2")  # [best / width, best x width], log scale
LINEAR_FLOATS = ("dropout", "momentum", "freeze")  # best +- 0.1
LOG_INTS = ("units", "filters", "batch_size")  # [best / 2, best x 2], log scale
FIXED = ("model", "optimizer", "hidden_layers", "linear_path")  # fixed to the best choice
LINEAR_STEP = 0.1
LINEAR_CEILING = {"dropout": 0.9, "momentum": 0.99, "freeze": 1.0}  # below an open upper bound 1.0


def validate_search_space(space) -> dict:
    """Check a search space (a dict or its JSON text) and return it normalised.

    Raises :class:`ConfigError` naming ``search_space.<name>``; nothing is sampled from a space
    this refuses.
    """
    if isinstance(space, str):
        try:
            space = json.loads(space)
        except json.JSONDecodeError as exc:
            raise ConfigError("search_space", f"is not valid JSON: {exc}.", _EXAMPLE) from exc
    if not isinstance(space, dict):
        raise ConfigError("search_space", f"must be a JSON object of parameter specs, got {type(space).__name__}.", _EXAMPLE)
    if not space:
        raise ConfigError("search_space", "is empty: every trial would train the same model.", "add at least one parameter to tune.")
    fields = [f for f in TrainConfig.__dataclass_fields__ if f != "model_args"]
    normalised = {}
    for name, spec in space.items():
        field = f"search_space.{name}"
        if name not in fields and not _is_model_arg(name):
            raise ConfigError(field, f"{name!r} is not a training setting (known: {fields}, or {MODEL_ARGS_PREFIX}<key> for an "
                              "argument of your own model builder).", "use one of the known names, spelled as in the training Params.")
        normalised[name] = _validate_spec(field, name, spec)
    return normalised


def _is_model_arg(name) -> bool:
    return isinstance(name, str) and name.startswith(MODEL_ARGS_PREFIX) and name[len(MODEL_ARGS_PREFIX):].isidentifier()


def _validate_spec(field: str, name: str, spec) -> dict:
    if not isinstance(spec, dict):
        raise ConfigError(field, f"must be an object with a 'type', got {spec!r}.", 'give e.g. {"type": "float", "low": 0.0, "high": 0.5}.')
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        raise ConfigError(field, f"unknown type {kind!r}.", f"use one of {list(PARAM_TYPES)}.")
    unknown = sorted(set(spec) - _SPEC_KEYS[kind])
    if unknown:
        raise ConfigError(field, f"unknown key {unknown[0]!r} for type {kind!r} (allowed: {sorted(_SPEC_KEYS[kind])}).", "remove it or fix its spelling.")
    if kind == "categorical":
        return _validate_choices(field, name, spec.get("choices"))
    out: dict[str, Any] = {"type": kind}
    for key in ("low", "high"):
        out[key] = _bound(field, kind, key, spec)
    low, high = out["low"], out["high"]
    if low > high:
        raise ConfigError(field, f"low ({low}) is greater than high ({high}).", "swap them or fix the range.")
    log_scale = spec.get("log", False)
    if not isinstance(log_scale, bool):
        raise ConfigError(field, f"'log' must be true or false, got {log_scale!r}.", "use true or false.")
    if log_scale and low <= 0:
        raise ConfigError(field, f"a log scale needs low > 0, got low={low}.", "raise 'low' above zero or set 'log': false.")
    out["log"] = log_scale
    step = spec.get("step")
    if step is not None:
        out["step"] = _step(field, kind, step, low, high, log_scale)
    _check_value_for_field(field, name, low, "low")
    _check_value_for_field(field, name, high, "high")
    return out


def _validate_choices(field: str, name: str, choices) -> dict:
    if not isinstance(choices, list) or not choices:
        raise ConfigError(field, f"'choices' must be a non-empty list, got {choices!r}.", "list at least one value.")
    for choice in choices:
        if choice is not None and not isinstance(choice, (bool, int, float, str)):
            raise ConfigError(field, f"choice {choice!r} is not a number, string, boolean or null.", "use plain JSON values.")
    if len({json.dumps(c) for c in choices}) != len(choices):
        raise ConfigError(field, f"'choices' has duplicates: {choices}.", "list each value once.")
    for choice in choices:
        _check_value_for_field(field, name, choice, "choice")
    return {"type": "categorical", "choices": list(choices)}


def _bound(field: str, kind: str, key: str, spec: dict):
    if key not in spec:
        raise ConfigError(field, f"needs '{key}'.", "give both 'low' and 'high'.")
    value = spec[key]
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(field, f"'{key}' must be an integer for type 'int', got {value!r}.", "give whole numbers or use type 'float'.")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(field, f"'{key}' must be a finite number, got {value!r}.", "give a number.")
    return value if kind == "int" else float(value)


def _step(field: str, kind: str, step, low, high, log_scale: bool):
    if kind == "int" and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
        raise ConfigError(field, f"'step' must be an integer >= 1, got {step!r}.", "give e.g. 'step': 16.")
    if kind == "float" and (isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step <= 0):
        raise ConfigError(field, f"'step' must be a number > 0, got {step!r}.", "give e.g. 'step': 0.1.")
    if log_scale and step != 1:
        raise ConfigError(field, f"'step' ({step}) cannot be combined with 'log': true.", "drop one of them.")
    if step > high - low and high > low:
        raise ConfigError(field, f"'step' ({step}) is larger than the range [{low}, {high}].", "use a smaller step.")
    return step if kind == "int" else float(step)


def _check_value_for_field(field: str, name: str, value, what: str) -> None:
    """A bound or choice must be a valid value of the training setting it tunes (a model argument
    is the builder's to check: the first trial's build reports it)."""
    if _is_model_arg(name):
        return
    if name == "model" and value == AUTO_MODEL:  # trials would record 'auto', not the architecture they trained
        raise ConfigError(field, f"{what} 'auto' names no architecture of its own (it is the cnn or the mlp, as the data asks).",
                          "list the architectures to compare by name, e.g. [\"mlp\", \"cnn\"].")
    try:
        TrainConfig().replace(**{name: value})
    except ConfigError as exc:
        raise ConfigError(field, f"{what} {value!r} is not a valid {name}: {exc.problem}", exc.fix) from exc


def default_search_space(model: str, *, transfer: bool = False) -> dict:
    """A sensible starting space for a built-in model (already valid); for a user's builder the
    settings every model has (learning rate, batch size): its own arguments are the user's to
    put in a search space as ``model_args.<key>``. With ``transfer`` (``init_from`` set: the
    architecture is the source's) the two learning rates, the frozen share and the batch size."""
    if transfer:
        return {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                "fine_tune_learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
                "freeze": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25},
                "batch_size": {"type": "categorical", "choices": [16, 32, 64]}}
    common = {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "batch_size": {"type": "categorical", "choices": [32, 64, 128]},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
    }
    if model == AUTO_MODEL:
        raise ConfigError("model", "'auto' names no architecture until the data's samples are known, and the space depends on it.",
                          "pass TrainConfig.for_input(splits.input_shape).model (what the operators do), or a search_space.")
    if model == "mlp":
        return {**common, "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                "units": {"type": "int", "low": 32, "high": 256, "step": 32}}
    if model == "cnn":
        return {**common, "filters": {"type": "categorical", "choices": [16, 32, 64]},
                "units": {"type": "int", "low": 64, "high": 256, "step": 64}}
    if model == "resnet":
        return {**common, "filters": {"type": "categorical", "choices": [8, 16, 32]},
                "units": {"type": "int", "low": 64, "high": 256, "step": 64}}
    TrainConfig(model=model)  # a malformed name is refused here, naming the field
    return {name: common[name] for name in ("learning_rate", "batch_size")}


def suggest_params(trial: optuna.trial.Trial, space: dict) -> dict:
    """Sample one value per parameter of a validated space."""
    params = {}
    for name, spec in space.items():
        if spec["type"] == "categorical":
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif spec["type"] == "int":
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1), log=spec["log"])
        else:
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], step=spec.get("step"), log=spec["log"])
    return params


def inside(params: dict, space: dict) -> bool:
    """Whether every parameter of ``space`` has a value in ``params`` that the space allows."""
    for name, spec in space.items():
        if name not in params:
            return False
        value = params[name]
        if spec["type"] == "categorical":
            if value not in spec["choices"]:
                return False
        elif not (isinstance(value, (int, float)) and spec["low"] - 1e-12 <= value <= spec["high"] + 1e-12):
            return False
        elif spec.get("step") and abs(((value - spec["low"]) / spec["step"]) - round((value - spec["low"]) / spec["step"])) > 1e-6:
            return False
    return True


def max_trial_epochs(space: dict, base_config: TrainConfig) -> int:
    """The most epochs a trial of ``space`` trains (Hyperband's ``max_resource``)."""
    spec = space.get("epochs")
    if spec is None:
        return base_config.epochs
    return int(max(spec["choices"])) if spec["type"] == "categorical" else int(spec["high"])


def narrow_search_space(params: dict, *, width: float = 3.0) -> tuple[dict, list[str]]:
    """A search space around ``params`` (the best trial's), with one note per parameter.

    ``learning_rate``, ``fine_tune_learning_rate`` and ``l2`` in [best / ``width``, best x ``width``] on a
    log scale; ``dropout``, ``momentum`` and ``freeze`` +-0.1; ``units``, ``filters`` and ``batch_size`` in [best / 2, best x 2] on a
    log scale; ``model``, ``optimizer``, ``hidden_layers`` and ``linear_path`` fixed to the best choice. Model arguments are not
    re-searched (their limits are the builder's): the plan's training settings carry the best
    trial's ``model_args``. Every range stays inside
    the field's declared limits (:meth:`TrainConfig.bounds`), so the space is always valid.
    """
    space, notes = {}, []
    for name in sorted(params):
        value = params[name]
        if name in LOG_FLOATS and _is_number(value) and value > 0:
            high_limit = TrainConfig.bounds(name).high
            low, high = _sig(value / width), _sig(min(high_limit, value * width))
            if low < high:
                space[name] = {"type": "float", "low": low, "high": high, "log": True}
                notes.append(f"{name} in [{low:g}, {high:g}] (log, best {value:g} /{width:g} x{width:g})")
        elif name in LINEAR_FLOATS and _is_number(value):
            floor = TrainConfig.bounds(name).low
            low, high = round(max(floor, value - LINEAR_STEP), 4), round(min(LINEAR_CEILING[name], value + LINEAR_STEP), 4)
            if low < high:
                space[name] = {"type": "float", "low": low, "high": high, "log": False}
                notes.append(f"{name} in [{low:g}, {high:g}] (best {value:g} +-{LINEAR_STEP:g})")
        elif name in LOG_INTS and isinstance(value, int) and not isinstance(value, bool):
            low, high = max(1, value // 2), min(TrainConfig.bounds(name).high, value * 2)
            if low < high:
                space[name] = {"type": "int", "low": low, "high": high, "log": True}
                notes.append(f"{name} in [{low}, {high}] (log, best {value} /2 x2)")
        elif name in FIXED:
            try:
                TrainConfig.from_dict({name: value})
            except ConfigError:
                continue
            space[name] = {"type": "categorical", "choices": [value]}
            notes.append(f"{name} fixed to {value!r}")
    return space, notes


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _sig(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")
