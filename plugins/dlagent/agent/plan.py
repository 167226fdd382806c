"""The agent's plan: a small JSON document saying what the next pipeline run should do, and why.

A plan is a plain dict (JSON-able, XCom-able) with these keys::

    {
      "action": "deploy" | "retune" | "stop",
      "train": {"learning_rate": 0.003, "epochs": 14, "dropout": 0.3},    # TrainConfig overrides
      "tune": {"n_trials": 8, "n_workers": 2,                             # or null: no tuning
               "search_space": {"learning_rate": {"type": "float", "low": 1e-4, "high": 9e-4, "log": true}},
               "seed_studies": ["<earlier round's study>"],                 # replayed into the new study
               "trial_epochs": 8,                                            # or null: trials train the full epochs
               "min_trial_epochs": 2},                                       # or null: the pruner may stop a trial after 1
      "compress": [{"sparsity": 0.8, "quantization": "int8"}],            # mapped candidates (width = length)
      "warm_start": "runs:/<trial run>/checkpoint/model.keras",           # or null: train from scratch
      "controller": {...ControllerSettings...},                            # or null: no in-training controller
      "policy": {"name": "learning", "arm": "lr_x2-epochs_x1", "context": "overfit"},  # or null
      "reasons": [{"decision": "train.dropout=0.3", "because": "train/validation accuracy gap 0.08 > 0.05"}]
    }

:func:`validate_plan` checks every field (unknown keys, types, ranges, with the field named in
the :class:`~dlagent.errors.ConfigError`) and returns a normalized copy: missing optional
sections become ``{}`` / ``None`` / ``[]`` / ``None``, and ``controller`` is expanded to all its
settings so the plan says exactly what will run. :func:`plan_to_json` is the deterministic
serialization (sorted keys, no NaN). Nothing here imports Airflow, Keras or MLflow.

Search spaces use one format everywhere (Params, plans, the tuner)::

    {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": true},
     "units": {"type": "int", "low": 32, "high": 256, "log": true},
     "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]}}

Names are :class:`~dlagent.ml.config.TrainConfig` fields; bounds and choices must be valid
values of that field. One validator checks them, the tuner's
(:func:`dlagent.ml.tuning.validate_search_space`), so a plan never holds a space the tuner refuses.
"""

from __future__ import annotations

import copy
import dataclasses
import json

from dlagent.errors import ConfigError
from dlagent.validation import check_int

ACTIONS = ("deploy", "retune", "stop")
SECTIONS = ("action", "compress", "controller", "policy", "reasons", "train", "tune", "warm_start")
TUNE_KEYS = ("n_trials", "n_workers", "search_space", "seed_studies", "trial_epochs", "min_trial_epochs")
WARM_START_SCHEMES = ("runs:/", "models:/")
POLICY_KEYS = ("arm", "context", "name")
MAX_TRIALS = 10_000
MAX_WORKERS = 256
MAX_EPOCHS = 10_000
MAX_CANDIDATES = 32
MAX_REASONS = 500
MAX_TEXT = 2_000


def _train_fields() -> dict[str, str]:
    from dlagent.ml.config import TrainConfig

    return {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}


def validate_plan(doc) -> dict:
    """Return a validated, normalized copy of ``doc`` (a dict or a JSON string).

    Raises :class:`ConfigError` naming the first bad field (``train.learning_rate``,
    ``tune.search_space.units.low``, ``compress[1].sparsity``, ``reasons[0].because``...).
    """
    if isinstance(doc, (str, bytes)):
        try:
            doc = json.loads(doc)
        except ValueError as exc:
            raise ConfigError("plan", f"is not valid JSON: {exc}.", "pass a JSON object.") from exc
    if not isinstance(doc, dict):
        raise ConfigError("plan", f"must be a JSON object, got {type(doc).__name__}.", f"pass a mapping with keys {list(SECTIONS)}.")
    unknown = sorted(set(doc) - set(SECTIONS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown plan section (known: {list(SECTIONS)}).", "remove it or fix its spelling.")
    if "action" not in doc:
        raise ConfigError("action", "is missing.", f"give one of {list(ACTIONS)}.")
    if doc["action"] not in ACTIONS:
        raise ConfigError("action", f"must be one of {list(ACTIONS)}, got {doc['action']!r}.", f"give one of {list(ACTIONS)}.")
    if "reasons" not in doc:
        raise ConfigError("reasons", "is missing.", 'give a list of {"decision": ..., "because": ...} (every decision says why).')
    return {
        "action": doc["action"],
        "train": validate_train(doc.get("train")),
        "tune": validate_tune(doc.get("tune")),
        "warm_start": validate_warm_start(doc.get("warm_start")),
        "compress": validate_compress(doc.get("compress")),
        "controller": validate_controller(doc.get("controller")),
        "policy": validate_policy(doc.get("policy")),
        "reasons": validate_reasons(doc["reasons"]),
    }


def plan_to_json(plan: dict, *, indent: int | None = 2) -> str:
    """The deterministic serialization of a (validated) plan: sorted keys, no NaN/inf."""
    return json.dumps(validate_plan(plan), sort_keys=True, indent=indent, allow_nan=False)


# --------------------------------------------------------------------------- sections


def validate_train(section) -> dict:
    """TrainConfig overrides: known fields only, each value valid for its field."""
    from dlagent.ml.config import TrainConfig

    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError("train", f"must be a JSON object of training settings, got {type(section).__name__}.", "pass e.g. {\"epochs\": 20}.")
    fields = _train_fields()
    for name in sorted(section):
        if name not in fields:
            raise ConfigError(f"train.{name}", f"unknown training setting (known: {sorted(fields)}).", "remove it or fix its spelling.")
    try:
        TrainConfig.from_dict(dict(section))
    except ConfigError as exc:
        raise ConfigError(f"train.{exc.field}", exc.problem, exc.fix) from exc
    return {name: section[name] for name in sorted(section)}


def validate_tune(section) -> dict | None:
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigError("tune", f"must be a JSON object or null, got {type(section).__name__}.", 'pass {"n_trials": 8, "n_workers": 1, "search_space": null}.')
    unknown = sorted(set(section) - set(TUNE_KEYS))
    if unknown:
        raise ConfigError(f"tune.{unknown[0]}", f"unknown tuning setting (known: {list(TUNE_KEYS)}).", "remove it or fix its spelling.")
    if "n_trials" not in section:
        raise ConfigError("tune.n_trials", "is missing.", "give the number of trials to run (0 for none).")
    n_trials = _int("tune.n_trials", section["n_trials"], 0, MAX_TRIALS)
    n_workers = _int("tune.n_workers", section.get("n_workers", 1), 1, MAX_WORKERS)
    seeds = section.get("seed_studies") or []
    if not isinstance(seeds, list) or len(seeds) > MAX_CANDIDATES or not all(isinstance(n, str) and 0 < len(n) <= 512 for n in seeds):
        raise ConfigError("tune.seed_studies", f"must be a list of at most {MAX_CANDIDATES} study names, got {seeds!r}.",
                          "name the earlier rounds' Optuna studies, or give [] for none.")
    trial_epochs = section.get("trial_epochs")
    if trial_epochs is not None:
        trial_epochs = _int("tune.trial_epochs", trial_epochs, 1, MAX_EPOCHS)
    min_trial_epochs = section.get("min_trial_epochs")
    if min_trial_epochs is not None:
        min_trial_epochs = _int("tune.min_trial_epochs", min_trial_epochs, 1, trial_epochs or MAX_EPOCHS)
    return {"n_trials": n_trials, "n_workers": n_workers, "search_space": validate_search_space(section.get("search_space")),
            "seed_studies": list(seeds), "trial_epochs": trial_epochs, "min_trial_epochs": min_trial_epochs}


def validate_warm_start(value) -> str | None:
    """``None`` (train from scratch) or the URI of the weights to start the training from."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(WARM_START_SCHEMES) or len(value) > 1000 or any(c.isspace() for c in value):
        raise ConfigError("warm_start", f"must be null or a model URI starting with {' or '.join(WARM_START_SCHEMES)}, got {value!r}.",
                          "give a trial checkpoint (runs:/<run id>/checkpoint/model.keras), or null to train from scratch.")
    return value


def validate_search_space(space, field: str = "tune.search_space") -> dict | None:
    """Validate a search space (format in the module docstring); ``None`` means the default one.

    The rules live in one place, :func:`dlagent.ml.tuning.validate_search_space` (what the
    tuner itself accepts); this only names the field under ``field`` (``tune.search_space.units``
    in a plan) and sorts the parameters so a plan serializes deterministically.
    """
    from dlagent.ml.tuning import validate_search_space as validate_for_tuner

    if space is None:
        return None
    try:
        checked = validate_for_tuner(space)
    except ConfigError as exc:
        raise ConfigError(_rebase_field(exc.field, field), exc.problem, exc.fix) from exc
    return {name: checked[name] for name in sorted(checked)}


def _rebase_field(name: str, field: str) -> str:
    """``search_space.units`` (the tuner's name) -> ``<field>.units``."""
    prefix = "search_space"
    if name == prefix or name.startswith(prefix + "."):
        return field + name[len(prefix):]
    return f"{field}.{name}"


def validate_compress(section) -> list:
    """Compression candidates: each a partial ``CompressionConfig`` (unknown keys refused)."""
    if section is None:
        return []
    if not isinstance(section, list):
        raise ConfigError("compress", f"must be a list of candidate settings, got {type(section).__name__}.",
                          'pass e.g. [{"sparsity": 0.8, "quantization": "int8"}], or [] for none.')
    if len(section) > MAX_CANDIDATES:
        raise ConfigError("compress", f"has {len(section)} candidates, more than {MAX_CANDIDATES}.", "keep the mapped expansion small.")
    from dlagent.ml.compression import CompressionConfig

    out = []
    for i, candidate in enumerate(section):
        where = f"compress[{i}]"
        if not isinstance(candidate, dict):
            raise ConfigError(where, f"must be a JSON object, got {candidate!r}.", 'give e.g. {"sparsity": 0.8, "quantization": "int8"}.')
        try:
            CompressionConfig.from_dict(dict(candidate))
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc.field}", exc.problem, exc.fix) from exc
        except TypeError as exc:
            raise ConfigError(where, f"is not a valid compression setting: {exc}.", "check the value types.") from exc
        out.append({key: candidate[key] for key in sorted(candidate)})
    return out


def validate_controller(section) -> dict | None:
    from dlagent.agent.controller import ControllerSettings

    if section is None:
        return None
    return ControllerSettings.from_dict(section).to_dict()


def validate_policy(section) -> dict | None:
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigError("policy", f"must be a JSON object or null, got {type(section).__name__}.", 'pass {"name": "rules"}.')
    unknown = sorted(set(section) - set(POLICY_KEYS))
    if unknown:
        raise ConfigError(f"policy.{unknown[0]}", f"unknown key (known: {list(POLICY_KEYS)}).", "remove it.")
    name = section.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError("policy.name", f"must be a non-empty string, got {name!r}.", "name the policy that made the plan.")
    for key in ("arm", "context"):
        value = section.get(key)
        if value is not None and (not isinstance(value, str) or not value or len(value) > 200):
            raise ConfigError(f"policy.{key}", f"must be a short non-empty string or null, got {value!r}.", "give the bandit's label.")
    return {"name": name, "arm": section.get("arm"), "context": section.get("context")}


def validate_reasons(reasons) -> list:
    if not isinstance(reasons, list):
        raise ConfigError("reasons", f"must be a list, got {type(reasons).__name__}.", 'give [{"decision": ..., "because": ...}].')
    if len(reasons) > MAX_REASONS:
        raise ConfigError("reasons", f"has {len(reasons)} entries, more than {MAX_REASONS}.", "keep one reason per decision.")
    out = []
    for i, reason in enumerate(reasons):
        where = f"reasons[{i}]"
        if not isinstance(reason, dict) or set(reason) != {"decision", "because"}:
            raise ConfigError(where, f"must be an object with exactly 'decision' and 'because', got {reason!r}.", "say what was decided and why.")
        for key in ("decision", "because"):
            text = reason[key]
            if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
                raise ConfigError(f"{where}.{key}", f"must be a non-empty string of at most {MAX_TEXT} characters, got {text!r}.", "write a short sentence.")
        out.append({"decision": reason["decision"], "because": reason["because"]})
    return out


def _int(field, value, low, high):
    return check_int(field, value, low=low, high=high)


def empty_plan(action: str = "stop") -> dict:
    """A do-nothing plan skeleton (callers add sections and reasons)."""
    return copy.deepcopy({"action": action, "train": {}, "tune": None, "warm_start": None, "compress": [], "controller": None,
                          "policy": None, "reasons": []})


def log_plan(client, run_id: str, plan: dict, observation=None) -> dict:
    """Validate ``plan`` and record it on MLflow run ``run_id``; return the validated plan.

    Artifacts ``decisions.json`` (the plan with its reasons) and, when given,
    ``observation.json``; tags ``dlagent.action``, ``dlagent.policy`` and ``dlagent.arm``.
    A failure to store the plan is raised: a decision nobody can read back is not made.
    """
    plan = validate_plan(plan)
    client.log_text(run_id, plan_to_json(plan), "decisions.json")
    if observation is not None:
        data = observation.to_dict() if hasattr(observation, "to_dict") else observation
        client.log_text(run_id, json.dumps(data, sort_keys=True, indent=2, allow_nan=False, default=str), "observation.json")
    policy = plan["policy"] or {}
    client.set_tag(run_id, "dlagent.action", plan["action"])
    if policy.get("name"):
        client.set_tag(run_id, "dlagent.policy", policy["name"])
    if policy.get("arm"):
        client.set_tag(run_id, "dlagent.arm", policy["arm"])
    return plan
