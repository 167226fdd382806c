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

:class:`Plan` is that document as a frozen, validated object: :meth:`Plan.from_dict` checks
every field once (unknown keys, types, ranges, with the field named in the
:class:`~dlagent.errors.ConfigError`) and normalizes it: missing optional sections become
``{}`` / ``None`` / ``[]`` / ``None``, and ``controller`` is expanded to all its settings so the
plan says exactly what will run. A ``Plan`` reads like a mapping (``plan["train"]``), is never
validated again inside a task, and is only re-validated where it crosses a boundary (an XCom, a
``decisions.json`` read back). :func:`validate_plan` returns the normalized dict, and
:func:`plan_to_json` the deterministic serialization (sorted keys, no NaN).

Pure plan logic lives here too: :func:`pipeline_conf` (a plan as the conf of a pipeline run),
:func:`summarize` (a readable account for the task log) and :func:`plan_params` (the agent run's
MLflow params). Nothing here imports Airflow, Keras or MLflow.

Search spaces use one format everywhere (Params, plans, the tuner)::

    {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": true},
     "units": {"type": "int", "low": 32, "high": 256, "log": true},
     "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]}}

Names are :class:`~dlagent.ml.config.TrainConfig` fields; bounds and choices must be valid
values of that field. One validator checks them, the tuner's
(:func:`dlagent.ml.tuning.validate_search_space`), so a plan never holds a space the tuner refuses.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass

from dlagent.errors import ConfigError

ACTIONS = ("deploy", "retune", "stop")
SECTIONS = ("action", "compress", "controller", "policy", "reasons", "train", "tune", "warm_start")
TUNE_KEYS = ("n_trials", "n_workers", "search_space", "seed_studies", "trial_epochs", "min_trial_epochs")
WARM_START_SCHEMES = ("runs:/", "models:/")
POLICY_KEYS = ("arm", "context", "name")
MAX_SEED_STUDIES = 32
MAX_REASONS = 500
MAX_TEXT = 2_000


def _train_fields() -> dict[str, str]:
    from dlagent.ml.config import TrainConfig

    return {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}


@dataclass(frozen=True, eq=False)
class Plan(Mapping):
    """A validated plan (see the module docstring); build it with :meth:`from_dict`."""

    action: str
    train: dict
    tune: dict | None
    warm_start: str | None
    compress: list
    controller: dict | None
    policy: dict | None
    reasons: list

    @classmethod
    def from_dict(cls, doc) -> Plan:
        """Validate ``doc`` (a dict, its JSON text, or a ``Plan``) once; raise ``ConfigError`` naming the
        first bad field (``train.learning_rate``, ``tune.search_space.units.low``, ``compress[1].sparsity``...)."""
        if isinstance(doc, Plan):
            return doc
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
        return cls(
            action=doc["action"],
            train=validate_train(doc.get("train")),
            tune=validate_tune(doc.get("tune")),
            warm_start=validate_warm_start(doc.get("warm_start")),
            compress=validate_compress(doc.get("compress")),
            controller=validate_controller(doc.get("controller")),
            policy=validate_policy(doc.get("policy")),
            reasons=validate_reasons(doc["reasons"]),
        )

    def with_reasons(self, extra: list[dict]) -> Plan:
        """This plan with more reasons appended (only the new ones are checked)."""
        if not extra:
            return self
        return dataclasses.replace(self, reasons=validate_reasons([*self.reasons, *extra]))

    def to_dict(self) -> dict:
        """A deep copy as plain JSON-able data (what XCom and ``decisions.json`` carry)."""
        return json.loads(json.dumps({name: getattr(self, name) for name in _ORDER}, allow_nan=False))

    def to_json(self, *, indent: int | None = 2) -> str:
        """The deterministic serialization: sorted keys, no NaN/inf."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent, allow_nan=False)

    # a read-only mapping of its sections, so ``plan["train"]`` reads like the JSON document
    def __getitem__(self, key):
        if key not in SECTIONS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(_ORDER)

    def __len__(self) -> int:
        return len(_ORDER)


_ORDER = ("action", "train", "tune", "warm_start", "compress", "controller", "policy", "reasons")


def validate_plan(doc) -> dict:
    """Validate ``doc`` (a dict, its JSON text or a :class:`Plan`) and return the normalized dict."""
    return Plan.from_dict(doc).to_dict()


def plan_to_json(plan, *, indent: int | None = 2) -> str:
    """The deterministic serialization of a plan (validated first unless it is a :class:`Plan`)."""
    return Plan.from_dict(plan).to_json(indent=indent)


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
    """The next tuning round; its limits are :class:`dlagent.ml.tuning.TuneConfig`'s (the trigger form's)."""
    from dlagent.ml.tuning.settings import TuneConfig

    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigError("tune", f"must be a JSON object or null, got {type(section).__name__}.", 'pass {"n_trials": 8, "n_workers": 1, "search_space": null}.')
    unknown = sorted(set(section) - set(TUNE_KEYS))
    if unknown:
        raise ConfigError(f"tune.{unknown[0]}", f"unknown tuning setting (known: {list(TUNE_KEYS)}).", "remove it or fix its spelling.")
    if "n_trials" not in section:
        raise ConfigError("tune.n_trials", "is missing.", "give the number of trials to run (0 for none).")
    seeds = section.get("seed_studies") or []
    if not isinstance(seeds, list) or len(seeds) > MAX_SEED_STUDIES or not all(isinstance(n, str) and 0 < len(n) <= 512 for n in seeds):
        raise ConfigError("tune.seed_studies", f"must be a list of at most {MAX_SEED_STUDIES} study names, got {seeds!r}.",
                          "name the earlier rounds' Optuna studies, or give [] for none.")
    try:
        tune = TuneConfig(n_trials=section["n_trials"], n_workers=section.get("n_workers", 1),
                          trial_epochs=section.get("trial_epochs"), min_trial_epochs=section.get("min_trial_epochs"))
    except ConfigError as exc:
        raise ConfigError(f"tune.{exc.field}", exc.problem, exc.fix) from exc
    return {"n_trials": tune.n_trials, "n_workers": tune.n_workers, "search_space": validate_search_space(section.get("search_space")),
            "seed_studies": list(seeds), "trial_epochs": tune.trial_epochs, "min_trial_epochs": tune.min_trial_epochs}


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
    from dlagent.ml.selection import validate_candidates

    if section is None:
        return []
    return validate_candidates(section, "compress", allow_empty=True)


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


def log_plan(client, run_id: str, plan: Plan, observation=None) -> Plan:
    """Record ``plan`` on MLflow run ``run_id``; return it.

    Artifacts ``decisions.json`` (the plan with its reasons) and, when given,
    ``observation.json``; tags ``dlagent.action``, ``dlagent.policy`` and ``dlagent.arm``.
    A failure to store the plan is raised: a decision nobody can read back is not made.
    """
    from dlagent.ml import mlflow_names as names

    plan = Plan.from_dict(plan)
    client.log_text(run_id, plan.to_json(), names.DECISIONS_FILE)
    if observation is not None:
        data = observation.to_dict() if hasattr(observation, "to_dict") else observation
        client.log_text(run_id, json.dumps(data, sort_keys=True, indent=2, allow_nan=False, default=str), names.OBSERVATION_FILE)
    policy = plan.policy or {}
    client.set_tag(run_id, names.ACTION_TAG, plan.action)
    if policy.get("name"):
        client.set_tag(run_id, names.POLICY_TAG, policy["name"])
    if policy.get("arm"):
        client.set_tag(run_id, names.ARM_TAG, policy["arm"])
    return plan


# --------------------------------------------------------------------------- plan -> pipeline conf, log, params

#: Where each part of a plan goes in a ``dl_agent_pipeline`` conf (kept only if it is a Param).
TUNE_TO_PARAMS = {"n_trials": "n_trials", "n_workers": "tuning_workers", "search_space": "search_space", "seed_studies": "tune_seed_studies",
                  "trial_epochs": "tune_trial_epochs", "min_trial_epochs": "tune_min_trial_epochs"}
SECTION_PARAMS = ("compress", "controller")


def pipeline_conf(plan, accepted, base: dict | None = None) -> tuple[dict, list[str]]:
    """``(conf, notes)``: the conf of a pipeline run that follows ``plan``.

    ``base`` first (e.g. the observed run's settings), then the plan's ``train`` settings
    under their own names, its ``tune`` section as ``n_trials`` / ``tuning_workers`` /
    ``search_space`` / ``tune_seed_studies`` / ``tune_trial_epochs`` / ``tune_min_trial_epochs``
    (no tuning: ``n_trials`` 0), and ``compress`` / ``controller`` as is. Only names in
    ``accepted`` (the pipeline's Params) are kept; ``notes`` says what was left out and why.
    Empty (``None``) base values are not sent.
    """
    plan = Plan.from_dict(plan)
    accepted = set(accepted)
    wanted: dict = {k: v for k, v in (base or {}).items() if v is not None}
    wanted.update(plan.train)
    if plan.tune is None:
        wanted["n_trials"] = 0
    else:
        for key, param in TUNE_TO_PARAMS.items():
            if plan.tune.get(key) is not None:
                wanted[param] = plan.tune[key]
    for section in SECTION_PARAMS:
        if plan[section]:
            wanted[section] = plan[section]
    conf, notes = {}, []
    for name, value in wanted.items():
        if name in accepted:
            conf[name] = value
        else:
            notes.append(f"{name}={json.dumps(value, sort_keys=True)} left out: dl_agent_pipeline has no Param {name!r}")
    return conf, notes


def summarize(plan, *, phase: str = "plan", observed: str | None = None, agent_run_id: str | None = None,
              where: str | None = None) -> str:
    """A readable account of a plan: every decision with its reason (for the task log).

    ``where``: the tracking store, already redacted, named after the agent run.
    """
    plan = Plan.from_dict(plan)
    policy = plan.policy or {}
    who = policy.get("name") or "?"
    if policy.get("arm"):
        who += f", arm {policy['arm']} in context {policy.get('context')!r}"
    lines = [f"agent plan (phase {phase}, policy {who}) for pipeline run {observed}: action={plan.action}"]
    lines.append(f"  train: {json.dumps(plan.train, sort_keys=True) if plan.train else 'unchanged'}")
    tune = plan.tune
    lines.append("  tune: none" if tune is None else
                 f"  tune: {tune['n_trials']} trials on {tune['n_workers']} workers, "
                 f"search space {json.dumps(tune['search_space'], sort_keys=True) if tune['search_space'] else 'default'}")
    lines.append(f"  compress: {json.dumps(plan.compress, sort_keys=True) if plan.compress else 'none'}")
    controller = plan.controller
    lines.append("  controller: none" if controller is None else
                 f"  controller: patience {controller['patience']}, factor {controller['factor']}, clipnorm {controller['clipnorm']}")
    lines.append(f"  {len(plan.reasons)} decisions, each with its reason:")
    for reason in plan.reasons:
        lines.append(f"    - {reason['decision']}: {reason['because']}")
    if agent_run_id:
        lines.append(f"  recorded as decisions.json of MLflow run {agent_run_id}" + (f" at {where}" if where else ""))
    return "\n".join(lines)


def plan_params(plan, *, phase: str, policy: str, champion: str | None, observed: str) -> dict:
    """The agent run's MLflow params: what was decided, flat (``train.<name>``, ``tune.n_trials``...)."""
    plan = Plan.from_dict(plan)
    params = {"phase": phase, "policy": policy, "champion_name": champion or "", "observed_run_id": observed, "action": plan.action}
    for name, value in plan.train.items():
        params[f"train.{name}"] = value
    if plan.tune is not None:
        params["tune.n_trials"] = plan.tune["n_trials"]
        params["tune.n_workers"] = plan.tune["n_workers"]
    params["compress.candidates"] = len(plan.compress)
    if (plan.policy or {}).get("arm"):
        params["policy.arm"] = plan.policy["arm"]
        params["policy.context"] = plan.policy["context"]
    return params
