"""Conditions on MLflow that a sensor or a trigger waits for: one pure check shared by both.

A condition is a small JSON dict (validated by :func:`validate_condition`, built from keyword
arguments by :func:`build_condition`)::

    {"kind": "run_finished", "target": {"run_id": "abc..."}}
    {"kind": "threshold", "target": {...}, "metric": "val_accuracy", "op": ">=", "threshold": 0.9}
    {"kind": "drift", "target": {...}, "metric": "test_accuracy", "reference": 0.95,
     "max_drift": 0.02, "relative": false}

``target`` is one of:

* ``{"run_id": ...}``: that run;
* ``{"experiment_name": ..., "tags": {...}}``: the most recently started run of the
  experiment carrying all the tags (the ``agent-policy-state`` run is never picked);
* ``{"model_name": ..., "alias": "champion"}``: the model version under a registry alias; its
  metric is the version tag ``dlagent.metric.<metric>`` when set (what the gate measured),
  else the metric of the version's run.

:func:`check_condition` returns a JSON-able dict ``{"met": bool, "kind", "message", "value",
"run_id", "run_status", "model_version", ...}``; it raises :class:`ConditionError` when the
condition can never hold (a given run id that does not exist, or a run that ended FAILED or
KILLED without meeting it) and lets MLflow's own errors (unreachable server) through.

Semantics: a metric's value is its latest logged value; ``threshold`` holds when
``value <op> threshold``; ``drift`` holds when ``|value - reference| > max_drift`` (relative:
divided by ``|reference|``); a non-finite value never meets a threshold and always counts as
drift. A missing experiment, run, metric, model or alias is "not yet": the check returns
``met: false`` and says what it waits for.
"""

from __future__ import annotations

import math
import operator

from dlagent.errors import ConfigError
from dlagent.ml import mlflow_names as names

KINDS = ("run_finished", "threshold", "drift")
OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
TARGET_KEYS = ("run_id", "experiment_name", "model_name")
ENDED_BADLY = ("FAILED", "KILLED")


class ConditionError(RuntimeError):
    """The condition can never hold (its run is missing, failed or was killed)."""


def build_condition(*, run_id=None, experiment_name=None, run_tags=None, model_name=None, alias="champion",
                    metric=None, op=">=", threshold=None, reference=None, max_drift=None, relative=False) -> dict:
    """A validated condition from a sensor's keyword arguments.

    No ``metric``: wait for the run to finish. ``reference``/``max_drift``: drift. Else
    ``threshold`` with ``op``. Numbers may be given as numeric strings (templated fields).
    """
    if model_name is not None:
        target = {"model_name": model_name, "alias": alias}
    elif experiment_name is not None:
        target = {"experiment_name": experiment_name, "tags": run_tags or {}}
    else:
        target = {"run_id": run_id}
    if metric is None:
        condition = {"kind": "run_finished", "target": target}
    elif reference is not None or max_drift is not None:
        condition = {"kind": "drift", "target": target, "metric": metric, "reference": _number("reference", reference),
                     "max_drift": _number("max_drift", max_drift), "relative": relative}
    else:
        condition = {"kind": "threshold", "target": target, "metric": metric, "op": op, "threshold": _number("threshold", threshold)}
    if sum(x is not None for x in (run_id, experiment_name, model_name)) != 1:
        raise ConfigError("run_id", "give exactly one of run_id, experiment_name or model_name, got "
                          f"run_id={run_id!r}, experiment_name={experiment_name!r}, model_name={model_name!r}.",
                          "name the run, the experiment (latest run) or the registered model (alias) to watch.")
    return validate_condition(condition)


def _number(field, value):
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError as exc:
            raise ConfigError(field, f"must be a number, got {value!r}.", "give a number such as 0.9.") from exc
    return value


def validate_condition(condition) -> dict:
    """Return a normalized copy of ``condition``; :class:`ConfigError` names the bad field."""
    if not isinstance(condition, dict):
        raise ConfigError("condition", f"must be a JSON object, got {type(condition).__name__}.", "build it with build_condition(...).")
    kind = condition.get("kind")
    if kind not in KINDS:
        raise ConfigError("condition.kind", f"must be one of {list(KINDS)}, got {kind!r}.", f"pick one of {list(KINDS)}.")
    allowed = {"run_finished": {"kind", "target"},
               "threshold": {"kind", "target", "metric", "op", "threshold"},
               "drift": {"kind", "target", "metric", "reference", "max_drift", "relative"}}[kind]
    unknown = sorted(set(condition) - allowed)
    if unknown:
        raise ConfigError(f"condition.{unknown[0]}", f"is not a setting of a {kind!r} condition (known: {sorted(allowed)}).", "remove it.")
    out = {"kind": kind, "target": _validate_target(condition.get("target"), kind)}
    if kind == "run_finished":
        return out
    metric = condition.get("metric")
    if not isinstance(metric, str) or not metric.strip():
        raise ConfigError("metric", f"must be a metric name, got {metric!r}.", "name the metric to watch, e.g. 'val_accuracy'.")
    out["metric"] = metric
    if kind == "threshold":
        op = condition.get("op", ">=")
        if op not in OPERATORS:
            raise ConfigError("op", f"must be one of {list(OPERATORS)}, got {op!r}.", f"pick one of {list(OPERATORS)}.")
        out["op"] = op
        out["threshold"] = _finite_number("threshold", condition.get("threshold"))
        return out
    out["reference"] = _finite_number("reference", condition.get("reference"))
    out["max_drift"] = _finite_number("max_drift", condition.get("max_drift"))
    if out["max_drift"] < 0:
        raise ConfigError("max_drift", f"must be >= 0, got {out['max_drift']}.", "give the largest tolerated change.")
    relative = condition.get("relative", False)
    if not isinstance(relative, bool):
        raise ConfigError("relative", f"must be true or false, got {relative!r}.", "give a boolean.")
    if relative and out["reference"] == 0:
        raise ConfigError("reference", "cannot be 0 for a relative drift.", "use an absolute drift (relative=false).")
    out["relative"] = relative
    return out


def _validate_target(target, kind) -> dict:
    if not isinstance(target, dict):
        raise ConfigError("condition.target", f"must be a JSON object, got {target!r}.", "give run_id, experiment_name or model_name.")
    given = [k for k in TARGET_KEYS if target.get(k) is not None]
    if len(given) != 1:
        raise ConfigError("run_id", f"give exactly one of {list(TARGET_KEYS)}, got {sorted(k for k in target if target[k] is not None)}.",
                          "name the run, the experiment (latest run) or the registered model (alias) to watch.")
    key = given[0]
    allowed = {"run_id": {"run_id"}, "experiment_name": {"experiment_name", "tags"}, "model_name": {"model_name", "alias"}}[key]
    unknown = sorted(k for k in set(target) - allowed if target[k] is not None)
    if unknown:
        raise ConfigError(unknown[0], f"does not go with {key} (allowed: {sorted(allowed)}).", "remove it.")
    value = target[key]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"must be a non-empty string, got {value!r}.", f"give the {key.replace('_', ' ')}.")
    if key == "run_id":
        return {"run_id": value}
    if key == "experiment_name":
        tags = target.get("tags") or {}
        if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, (str, int, float)) for k, v in tags.items()):
            raise ConfigError("run_tags", f"must be a mapping of tag names to values, got {tags!r}.", 'give e.g. {"dlagent.step": "train"}.')
        return {"experiment_name": value, "tags": {k: str(v) for k, v in sorted(tags.items())}}
    if kind == "run_finished":
        raise ConfigError("model_name", "a model version does not finish: 'run_finished' needs run_id or experiment_name.",
                          "give a metric to watch, or a run_id.")
    alias = target.get("alias") or "champion"
    if not isinstance(alias, str):
        raise ConfigError("alias", f"must be a string, got {alias!r}.", "give e.g. 'champion'.")
    return {"model_name": value, "alias": alias}


def _finite_number(field, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(field, f"must be a finite number, got {value!r}.", "give a number.")
    return float(value)


# --------------------------------------------------------------------------- check


def check_condition(client, condition: dict) -> dict:
    """Evaluate ``condition`` against MLflow through ``client`` (see the module docstring)."""
    from mlflow.exceptions import MlflowException

    condition = validate_condition(condition)
    kind, target = condition["kind"], condition["target"]
    result = {"met": False, "kind": kind, "value": None, "run_id": None, "run_status": None, "model_version": None}
    if kind != "run_finished":
        result["metric"] = condition["metric"]
    run, version = None, None
    if "run_id" in target:
        try:
            run = client.get_run(target["run_id"])
        except MlflowException as exc:
            if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                raise ConditionError(f"MLflow run {target['run_id']!r} does not exist") from exc
            raise
    elif "experiment_name" in target:
        run = _latest_run(client, target["experiment_name"], target["tags"])
        if run is None:
            return {**result, "message": f"waiting: no run yet in experiment {target['experiment_name']!r}" + (
                f" with tags {target['tags']}" if target["tags"] else "")}
    else:
        version = _version_by_alias(client, target["model_name"], target["alias"])
        if version is None:
            return {**result, "message": f"waiting: no version of model {target['model_name']!r} under alias {target['alias']!r} yet"}
        result["model_version"] = str(version.version)
        if version.run_id:
            try:
                run = client.get_run(version.run_id)
            except MlflowException as exc:
                if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                    raise
    if run is not None:
        result["run_id"] = run.info.run_id
        result["run_status"] = run.info.status
    where = f"model {target['model_name']!r}@{target['alias']} v{result['model_version']}" if version is not None else f"run {result['run_id']}"

    if kind == "run_finished":
        status = run.info.status
        if status == "FINISHED":
            return {**result, "met": True, "message": f"{where} finished"}
        if status in ENDED_BADLY and "run_id" in target:
            raise ConditionError(f"{where} ended {status}: it will never finish successfully")
        return {**result, "message": f"waiting: {where} is {status}"}

    metric = condition["metric"]
    value = None
    if version is not None and (version.tags or {}).get(names.metric_tag(metric)) is not None:
        try:
            value = float(version.tags[names.metric_tag(metric)])
        except ValueError:
            value = None
    if value is None and run is not None:
        value = run.data.metrics.get(metric)
    if value is None:
        _give_up_if_ended(run, target, where, f"without logging {metric}")
        return {**result, "message": f"waiting: {metric} not logged yet on {where}"}
    result["value"] = float(value) if math.isfinite(value) else str(value)
    if kind == "threshold":
        op, threshold = condition["op"], condition["threshold"]
        met = math.isfinite(value) and OPERATORS[op](value, threshold)
        message = f"{metric} {value:.6g} {op} {threshold:g} on {where}" if met else f"waiting: {metric} {value:.6g} is not {op} {threshold:g} on {where}"
        result.update(threshold=threshold, op=op)
    else:
        reference, limit = condition["reference"], condition["max_drift"]
        drift = abs(value - reference) / (abs(reference) if condition["relative"] else 1.0) if math.isfinite(value) else math.inf
        met = drift > limit
        unit = " (relative)" if condition["relative"] else ""
        message = (f"{metric} {value:.6g} drifted by {drift:.6g}{unit} from {reference:g} (> {limit:g}) on {where}" if met
                   else f"waiting: {metric} {value:.6g} within {limit:g}{unit} of {reference:g} on {where}")
        result.update(reference=reference, max_drift=limit, drift=drift if math.isfinite(drift) else "inf")
    if not met:
        _give_up_if_ended(run, target, where, f"with {metric} = {value:.6g}")
    return {**result, "met": bool(met), "message": message}


def _give_up_if_ended(run, target, where, what):
    if run is not None and "run_id" in target and run.info.status in ENDED_BADLY:
        raise ConditionError(f"{where} ended {run.info.status} {what}: the condition can no longer hold")


def _latest_run(client, experiment_name: str, tags: dict):
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    clauses = [names.tag_equals(k, v) for k, v in sorted(tags.items())]
    runs = client.search_runs([experiment.experiment_id], filter_string=" and ".join(clauses),
                              order_by=["attributes.start_time DESC"], max_results=10)
    for run in runs:
        if run.data.tags.get(names.KIND_TAG) != names.KIND_POLICY_STATE:
            return run
    return None


def _version_by_alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if names.is_missing(exc):
            return None
        raise
