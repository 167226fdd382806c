"""What one MLflow run says to the agent: a tuning trial, a training curve, a compression
candidate, the champion, a run's training settings. :mod:`dlagent.agent.observe` walks a
pipeline run's tree and builds the :class:`~dlagent.agent.observe.Observation` from these views;
the conventions they read (tags, metric names) are listed in that module's docstring.
"""

from __future__ import annotations

import dataclasses
import json
import math

from dlagent.agent.curves import analyze_curve, rounded
from dlagent.ml import mlflow_names as names
from dlagent.validation import finite

CURVE_METRICS = ("loss", "val_loss", "accuracy", "val_accuracy", "learning_rate")
VALUE_METRICS = ("objective", "value", "best_val_accuracy", "val_accuracy")


def is_trial(run) -> bool:
    tags = run.data.tags
    return tags.get(names.STEP_TAG) in names.TRIAL_STEPS or names.TRIAL_STATE_TAG in tags or any(tag in tags for tag in names.TRIAL_NUMBER_TAGS[:2])


def trial_direction(parent, trial_runs, completed) -> str:
    for run in [*trial_runs, parent]:
        value = (run.data.tags.get(names.DIRECTION_TAG) or run.data.tags.get("direction") or "").lower()
        if value in ("maximize", "minimize"):
            return value
    best = parent.data.metrics.get("best_value")
    values = [t["value"] for t in completed]
    if finite(best) and values and min(values) != max(values):
        if math.isclose(best, min(values), rel_tol=1e-6, abs_tol=1e-9):
            return "minimize"
    return "maximize"


def trial_view(run) -> dict:
    tags, metrics = run.data.tags, run.data.metrics
    number = next((tags[tag] for tag in names.TRIAL_NUMBER_TAGS if tags.get(tag) is not None), None)
    try:
        number = int(number) if number is not None else None
    except ValueError:
        number = None
    value = None
    for key in VALUE_METRICS:
        if key in metrics:
            value = metrics[key]
            break
    if value is None and tags.get(names.OPTUNA_VALUE_TAG) is not None:
        try:
            value = float(tags[names.OPTUNA_VALUE_TAG])
        except ValueError:
            value = None
    state = (tags.get(names.TRIAL_STATE_TAG) or tags.get("state") or "").upper()
    if not state:
        state = {"FINISHED": "COMPLETE" if value is not None else "FAIL", "RUNNING": "RUNNING", "SCHEDULED": "RUNNING"}.get(run.info.status, "FAIL")
    return {
        "number": number,
        "state": state,
        "value": rounded(value) if finite(value) else None,
        "params": train_params(run.data.params),
        "run_id": run.info.run_id,
        "epochs_run": int(metrics["epochs_run"]) if finite(metrics.get("epochs_run")) else None,
        "study": tags.get(names.STUDY_TAG),
        # a new best trial's saved weights (dlagent.ml.tuning), a warm start for the final training
        "checkpoint": f"runs:/{run.info.run_id}/{tags[names.CHECKPOINT_TAG]}" if tags.get(names.CHECKPOINT_TAG) else None,
    }


def curve_view(client, run, step: str) -> dict:
    history = {}
    for key in CURVE_METRICS:
        if key not in run.data.metrics:
            continue
        points = client.get_metric_history(run.info.run_id, key)
        points = sorted(points, key=lambda m: (m.step, m.timestamp))
        # One value per step (a retried epoch logs its step again: the later value wins).
        per_step = {}
        for m in points:
            per_step[m.step] = m.value
        history[key] = [per_step[s] for s in sorted(per_step)]
    summary = analyze_curve(history)
    return {"run_id": run.info.run_id, "step": step, "params": train_params(run.data.params), **summary}


def candidate_view(run) -> dict:
    from dlagent.ml.compression import CompressionConfig

    declared = {f.name: str(f.type) for f in dataclasses.fields(CompressionConfig)}
    config = {}
    for key, text in sorted(run.data.params.items()):
        if key in declared:
            config[key] = _typed(text, declared[key])
    metrics = finite_metrics(run)
    return {"run_id": run.info.run_id, "name": run.data.tags.get(names.CANDIDATE_TAG) or run.info.run_name or run.info.run_id,
            "config": config, "metrics": metrics}


def read_champion(client, name: str) -> dict | None:
    """The champion of registered model ``name`` as the agent sees it: ``{"name", "version", "run_id",
    "metrics"}`` (the version's gate metrics over its run's), or ``None``
    (:func:`dlagent.ml.mlflow_names.read_champion`)."""
    champion = names.read_champion(client, name, with_run_metrics=True)
    if champion is None:
        return None
    metrics = {k: rounded(v) for k, v in champion["metrics"].items() if finite(v)}
    return {"name": name, "version": champion["version"], "run_id": champion["run_id"], "metrics": dict(sorted(metrics.items()))}


def train_params(params: dict) -> dict:
    """The MLflow params of a run that are training settings, typed as the settings (str -> int/float)."""
    from dlagent.ml.config import MODEL_ARGS_PREFIX, TrainConfig, model_arg_from_param

    declared = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    out, model_args = {}, {}
    for key in sorted(params):
        if key in declared and key != "model_args":
            value = _typed(params[key], declared[key])
            if value is not None:
                out[key] = value
        elif key.startswith(MODEL_ARGS_PREFIX):
            model_args[key[len(MODEL_ARGS_PREFIX):]] = model_arg_from_param(params[key])
    if model_args:
        out["model_args"] = model_args
    return out


def _typed(text, declared: str):
    if "None" in declared and text in ("None", ""):
        return None
    try:
        if declared == "int":
            return int(float(text))
        if declared == "float":
            return float(text)
        if declared == "bool":
            return str(text).strip().lower() in ("true", "1", "yes")
        if declared.startswith("float | None"):
            return None if text in ("None", "") else float(text)
        if declared.startswith("int | None"):
            return None if text in ("None", "") else int(float(text))
    except ValueError:
        return None
    return str(text)


def better(a: float, b: float, direction: str) -> bool:
    return a > b if direction == "maximize" else a < b


def finite_metrics(run) -> dict:
    return {k: rounded(v) for k, v in sorted(run.data.metrics.items()) if finite(v)}


def champion_history(client, champion: dict) -> dict | None:
    """How the champion was made, for planning the next search on the same data: the pipeline
    run that trained it (the parent of its registered run), that run's tuning study, completed
    trials and best parameters, its training settings (the pipeline run's, before tuning), and
    the data its ``train`` run read (dataset input, :mod:`dlagent.ml.lineage`): the content
    digest and the split sizes.

    ``None``: the champion's run has no parent run (registered by hand, not by a pipeline) or the
    runs are gone. ``{"unreadable": "..."}``: MLflow refused to read them (permissions, a broken
    store): the history is a hint, so the caller plans without it rather than failing. A missing
    study, digest or parameter is ``None`` in the result, never guessed.
    """
    from mlflow.exceptions import MlflowException

    try:
        parent_id = client.get_run(champion["run_id"]).data.tags.get(names.PARENT_TAG) if champion.get("run_id") else None
        if not parent_id:
            return None
        parent = client.get_run(parent_id)
        trains = client.search_runs([parent.info.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
                                    filter_string=f"tags.`{names.PARENT_TAG}` = '{parent_id}' and tags.`{names.STEP_TAG}` = '{names.STEP_TRAIN}'")
    except MlflowException as exc:
        if names.is_missing(exc):
            return None
        return {"unreadable": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    params = parent.data.params
    best = train_params({key.removeprefix("best_"): value for key, value in params.items() if key.startswith("best_")})
    dataset = trains[0].inputs.dataset_inputs[0].dataset if trains and trains[0].inputs and trains[0].inputs.dataset_inputs else None
    try:
        profile = json.loads(dataset.profile) if dataset is not None and dataset.profile else {}
    except ValueError:
        profile = {}
    completed = parent.data.metrics.get("trials_complete")
    return {
        "pipeline_run_id": parent_id,
        "study": parent.data.tags.get(names.STUDY_TAG),
        "trials_complete": int(completed) if finite(completed) else 0,
        "best_params": best,
        "config": train_params(params),
        "data_digest": dataset.digest if dataset is not None else None,
        "dataset": dataset.name if dataset is not None else None,
        "splits": {key: profile.get(key) for key in ("n_train", "n_val", "n_test")},
    }
