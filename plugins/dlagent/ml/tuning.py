"""Hyper-parameter tuning with Optuna: one study in a database, trials run by parallel workers.

The flow the operators follow (nothing here imports Airflow):

1. :func:`validate_search_space` checks the person's JSON space once, before any trial.
2. :func:`create_study` creates the study (and the storage tables) **once**, from one task,
   before the workers start — concurrent creation races on PostgreSQL. It records the
   tuning settings on the study, and a re-run with the same name continues the study.
3. :func:`run_worker` is what each parallel worker runs: it loads the study and runs trials
   until the study holds ``n_trials`` finished (COMPLETE + PRUNED) trials, counted across all
   workers, or its time budget ends. Each trial trains with :func:`dlagent.ml.training.fit`
   and is pruned from its per-epoch validation metric.
4. :func:`study_summary` (small JSON for XCom) and :func:`log_study_to_mlflow` (best params,
   counts and plots on the parent MLflow run) report the result.

Fault tolerance. Every running trial records a heartbeat in the storage. A worker that dies
(SIGKILL, a lost machine) stops beating; after ``grace_period`` seconds the next worker that
asks for a trial marks it FAIL and Optuna's ``RetryHeartbeatStaleTrialCallback`` queues a copy
(same params, system attr ``failed_trial`` = the dead trial's number), which the next free
worker runs. Workers whose share is done keep polling while other trials are RUNNING, so a
dead peer's trial is recovered even when no Airflow retry comes.

Exact trial count. Counting finished trials and asking for a new one happen under a lock per
study (a PostgreSQL advisory lock, a file lock for SQLite), so two workers never both take
the last slot: the study ends with exactly ``n_trials`` COMPLETE + PRUNED trials. (Optuna's
``MaxTrialsCallback`` only checks after a trial ends, so parallel workers overshoot.) Other
databases get no lock and may overshoot by up to one trial per worker.

Epochs are the unit of compute: each trial records ``epochs_run`` as a user attribute and
pruning steps are epochs (1-based), so ``min_resource``/``max_resource`` are epoch counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlagent.errors import ConfigError
from dlagent.ml.config import TrainConfig
from dlagent.settings import redact_url
from dlagent.validation import check_int

if TYPE_CHECKING:
    import optuna

    from dlagent.ml.data import DatasetSplits

log = logging.getLogger(__name__)

PARAM_TYPES = ("float", "int", "categorical")
SAMPLERS = ("tpe", "random", "gp", "cmaes")
PRUNERS = ("hyperband", "median", "none")
METRICS = {"val_accuracy": "maximize", "val_loss": "minimize", "accuracy": "maximize", "loss": "minimize"}
DIRECTIONS = ("maximize", "minimize")

DEFAULT_HEARTBEAT_INTERVAL = 30  # seconds between heartbeats of a running trial
DEFAULT_GRACE_PERIOD = 90  # a trial silent this long is failed and retried
DEFAULT_MAX_RETRY = 3  # retries of one killed trial (then it stays FAIL)
DEFAULT_REDUCTION_FACTOR = 3
MEDIAN_STARTUP_TRIALS = 3  # the median pruner prunes nothing before this many trials finished
SETTINGS_ATTR = "dlagent.settings"  # study user attr holding the settings create_study recorded
EPOCHS_ATTR = "epochs_run"  # trial user attr: epochs this trial trained
TEST_ACCURACY_ATTR = "test_accuracy"  # trial user attr (only with record_test_accuracy=True)
COPIED_ATTR = "dlagent.copied_from"  # trial user attr: "<study>#<number>" of a trial replayed from an earlier study
SEEDED_ATTR = "dlagent.seeded_from"  # study user attr: the studies whose trials were replayed into it
CHECKPOINT_TAG = "dlagent.checkpoint"  # MLflow tag on a trial run: artifact path of its saved model
CHECKPOINT_PATH = "checkpoint/model.keras"

_SPEC_KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}


# --------------------------------------------------------------------------- search space


def validate_search_space(space) -> dict:
    """Check a search space (a dict or its JSON text) and return it normalised.

    Each entry maps a :class:`TrainConfig` field to ``{"type": "float"|"int", "low", "high",
    "log"?, "step"?}`` or ``{"type": "categorical", "choices": [...]}``. Every bound and
    choice must itself be a valid value of that field. Raises :class:`ConfigError` naming
    ``search_space.<name>``; nothing is sampled from a space this refuses.
    """
    if isinstance(space, str):
        try:
            space = json.loads(space)
        except json.JSONDecodeError as exc:
            raise ConfigError("search_space", f"is not valid JSON: {exc}.", 'give e.g. {"learning_rate": {"type": "float", "low": 1e-4, "high": 0.1, "log": true}}.') from exc
    if not isinstance(space, dict):
        raise ConfigError("search_space", f"must be a JSON object of parameter specs, got {type(space).__name__}.", 'give e.g. {"learning_rate": {"type": "float", "low": 1e-4, "high": 0.1, "log": true}}.')
    if not space:
        raise ConfigError("search_space", "is empty: every trial would train the same model.", "add at least one parameter to tune.")
    fields = list(TrainConfig.__dataclass_fields__)
    normalised = {}
    for name, spec in space.items():
        field = f"search_space.{name}"
        if name not in fields:
            raise ConfigError(field, f"{name!r} is not a training setting (known: {fields}).", "use one of the known names, spelled as in the training Params.")
        normalised[name] = _validate_spec(field, name, spec)
    return normalised


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
        choices = spec.get("choices")
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

    out: dict[str, Any] = {"type": kind}
    for key in ("low", "high"):
        if key not in spec:
            raise ConfigError(field, f"needs '{key}'.", "give both 'low' and 'high'.")
        value = spec[key]
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(field, f"'{key}' must be an integer for type 'int', got {value!r}.", "give whole numbers or use type 'float'.")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(field, f"'{key}' must be a finite number, got {value!r}.", "give a number.")
        out[key] = value if kind == "int" else float(value)
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
        if kind == "int" and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
            raise ConfigError(field, f"'step' must be an integer >= 1, got {step!r}.", "give e.g. 'step': 16.")
        if kind == "float" and (isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step <= 0):
            raise ConfigError(field, f"'step' must be a number > 0, got {step!r}.", "give e.g. 'step': 0.1.")
        if log_scale and step != 1:
            raise ConfigError(field, f"'step' ({step}) cannot be combined with 'log': true.", "drop one of them.")
        if step > high - low and high > low:
            raise ConfigError(field, f"'step' ({step}) is larger than the range [{low}, {high}].", "use a smaller step.")
        out["step"] = step if kind == "int" else float(step)
    _check_value_for_field(field, name, low, "low")
    _check_value_for_field(field, name, high, "high")
    return out


def _check_value_for_field(field: str, name: str, value, what: str) -> None:
    """A bound or choice must be a valid value of the training setting it tunes."""
    try:
        TrainConfig().replace(**{name: value})
    except ConfigError as exc:
        raise ConfigError(field, f"{what} {value!r} is not a valid {name}: {exc.problem}", exc.fix) from exc


def default_search_space(model: str) -> dict:
    """A sensible starting space for ``"mlp"`` or ``"cnn"`` (already valid)."""
    common = {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "batch_size": {"type": "categorical", "choices": [32, 64, 128]},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
    }
    if model == "mlp":
        return {**common, "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                "units": {"type": "int", "low": 32, "high": 256, "step": 32}}
    if model == "cnn":
        return {**common, "filters": {"type": "categorical", "choices": [16, 32, 64]},
                "units": {"type": "int", "low": 64, "high": 256, "step": 64}}
    raise ConfigError("model", f"no default search space for {model!r}.", "use 'mlp' or 'cnn', or give a search_space.")


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


# --------------------------------------------------------------------------- sampler, pruner


def make_sampler(name: str = "tpe", seed: int | None = 0, *, space: dict | None = None, n_startup_trials: int | None = None):
    """An Optuna sampler by name: ``tpe`` (default), ``random``, ``gp`` or ``cmaes``.

    The same name and seed give the same sequence of suggestions. ``cmaes`` handles numeric
    parameters only: a ``space`` with a categorical parameter is refused. ``gp`` needs PyTorch
    and ``cmaes`` the ``cmaes`` package; a missing one is refused with the fix.
    """
    import importlib.util

    import optuna

    if name not in SAMPLERS:
        raise ConfigError("sampler", f"unknown sampler {name!r}.", f"use one of {list(SAMPLERS)}.")
    _check_int_arg("seed", seed, low=0, allow_none=True)
    _check_int_arg("n_startup_trials", n_startup_trials, low=0, allow_none=True)
    startup = {} if n_startup_trials is None else {"n_startup_trials": n_startup_trials}
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        if importlib.util.find_spec("torch") is None:
            raise ConfigError("sampler", "'gp' (Gaussian-process sampler) needs PyTorch, which is not installed.", "install torch or use 'tpe'.")
        return optuna.samplers.GPSampler(seed=seed, **startup)
    if name == "cmaes":
        categorical = sorted(n for n, s in (space or {}).items() if s.get("type") == "categorical")
        if categorical:
            raise ConfigError("sampler", f"'cmaes' handles numeric parameters only; the search space has categorical {categorical}.", "use 'tpe', or make those parameters int/float ranges.")
        if importlib.util.find_spec("cmaes") is None:
            raise ConfigError("sampler", "'cmaes' needs the 'cmaes' package, which is not installed.", "pip install cmaes, or use 'tpe'.")
        return optuna.samplers.CmaEsSampler(seed=seed, **startup)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant_liar: parallel workers do not all sample next to the same running trial.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, **startup)


def make_pruner(name: str = "hyperband", min_resource: int = 1, max_resource: int = 20, *, reduction_factor: int = DEFAULT_REDUCTION_FACTOR):
    """An Optuna pruner by name: ``hyperband`` (default), ``median`` or ``none``.

    Resources are epochs: no trial is pruned before ``min_resource`` epochs, and
    ``max_resource`` is the most epochs a trial trains (Hyperband's brackets derive from it).
    """
    import optuna

    if name not in PRUNERS:
        raise ConfigError("pruner", f"unknown pruner {name!r}.", f"use one of {list(PRUNERS)}.")
    _check_int_arg("min_resource", min_resource, low=1)
    _check_int_arg("max_resource", max_resource, low=1)
    if min_resource > max_resource:
        raise ConfigError("min_resource", f"must be <= max_resource ({max_resource}), got {min_resource}.", "lower min_resource or raise the epochs.")
    _check_int_arg("reduction_factor", reduction_factor, low=2)
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=min_resource)
    return optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=max_resource, reduction_factor=reduction_factor)


def _check_int_arg(name: str, value, *, low: int, allow_none: bool = False) -> None:
    check_int(name, value, low=low, optional=allow_none)


# --------------------------------------------------------------------------- storage, study


def make_storage(
    url: str,
    *,
    heartbeat_interval: int | None = DEFAULT_HEARTBEAT_INTERVAL,
    grace_period: int | None = DEFAULT_GRACE_PERIOD,
    max_retry: int | None = DEFAULT_MAX_RETRY,
    create_tables: bool = True,
    on_stale_trial=None,
):
    """An :class:`optuna.storages.RDBStorage` for a SQLAlchemy URL (SQLite or PostgreSQL).

    With a ``heartbeat_interval`` every running trial beats; one silent for ``grace_period``
    seconds is failed by the next worker and re-queued by
    ``RetryHeartbeatStaleTrialCallback(max_retry=max_retry)`` (``None``: retry forever).
    ``on_stale_trial(study, frozen_trial)`` is then called too (e.g. to close its MLflow run).
    Workers pass ``create_tables=False``: only :func:`create_study` creates tables, because
    concurrent table creation races on PostgreSQL.
    """
    import optuna

    if not isinstance(url, str) or "://" not in url:
        raise ConfigError("storage_url", f"must be a SQLAlchemy URL, got {url!r}.", "use e.g. 'sqlite:///optuna.db' or 'postgresql+psycopg2://user@host/db'.")
    _check_int_arg("heartbeat_interval", heartbeat_interval, low=1, allow_none=True)
    _check_int_arg("grace_period", grace_period, low=1, allow_none=True)
    _check_int_arg("max_retry", max_retry, low=0, allow_none=True)
    if heartbeat_interval is not None and grace_period is not None and grace_period <= heartbeat_interval:
        raise ConfigError("grace_period", f"must be longer than heartbeat_interval ({heartbeat_interval} s), got {grace_period} s.", "use at least two heartbeat intervals.")
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        database = _sqlite_path(url)
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs["connect_args"] = {"timeout": 60}  # several local processes share the file
    else:
        engine_kwargs["pool_pre_ping"] = True  # a connection idle during a long trial may be gone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        callback = None
        if heartbeat_interval is not None:
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
            callback = _StaleTrialCallback(retry, on_stale_trial)
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=callback,
                skip_table_creation=not create_tables,
            )
        except ImportError as exc:
            raise ConfigError("storage_url", f"no database driver for {redact_url(url)}: {exc}.", "name the driver, e.g. 'postgresql+psycopg2://'.") from exc


class _StaleTrialCallback:
    """Optuna's retry callback, then ours (both get the stale trial after it was set FAIL)."""

    def __init__(self, retry, extra):
        self.retry = retry
        self.extra = extra

    def __call__(self, study, trial) -> None:
        log.warning("trial %d of study %r stopped beating (its worker died): marked FAIL and re-queued", trial.number, study.study_name)
        self.retry(study, trial)
        if self.extra is not None:
            self.extra(study, trial)


def _sqlite_path(url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _resolve_direction(metric: str | None, direction: str | None) -> tuple[str, str]:
    metric = metric or "val_accuracy"
    if metric not in METRICS:
        raise ConfigError("metric", f"unknown metric {metric!r}.", f"use one of {list(METRICS)}.")
    natural = METRICS[metric]
    direction = direction or natural
    if direction not in DIRECTIONS:
        raise ConfigError("direction", f"must be 'maximize' or 'minimize', got {direction!r}.", f"use {natural!r} for {metric}.")
    if direction != natural:
        raise ConfigError("direction", f"{metric} should be {natural}d, got {direction!r}.", f"use {natural!r} or leave it empty.")
    return metric, direction


def create_study(
    storage_url: str,
    study_name: str,
    *,
    direction: str | None = None,
    metric: str = "val_accuracy",
    space: dict | str | None = None,
    sampler_name: str = "tpe",
    pruner_name: str = "hyperband",
    seed: int = 0,
    min_resource: int = 1,
    max_resource: int | None = None,
    n_startup_trials: int | None = None,
    seed_from: list | tuple | None = None,
) -> dict:
    """Create the study and its tables once (one task, before the workers); safe to re-run.

    ``seed_from`` names earlier studies in the same storage (an agent's earlier tuning
    rounds): their finished trials are replayed into the new study (:func:`seed_study`), so
    its sampler starts from what they learnt and its pruner compares new trials with them.

    The settings are recorded on the study (user attr ``dlagent.settings``) so every worker
    tunes the same thing. A re-run with the same name and settings continues the study (never
    starts over); the same name with different settings is refused. ``direction`` defaults to
    the metric's natural one. Returns small JSON: name, whether it was created, trial counts.
    """
    import optuna

    if not isinstance(study_name, str) or not study_name.strip():
        raise ConfigError("study_name", f"must be a non-empty string, got {study_name!r}.", "derive it from the DAG id and task id.")
    metric, direction = _resolve_direction(metric, direction)
    settings = _settings(metric, direction, space, sampler_name, pruner_name, seed, min_resource, max_resource, n_startup_trials)
    # Check the names before touching the database.
    make_sampler(sampler_name, seed, space=settings["space"], n_startup_trials=n_startup_trials)
    make_pruner(pruner_name, min_resource, max_resource or max(min_resource, 1))
    storage = make_storage(storage_url, heartbeat_interval=None, create_tables=True)
    created = study_name not in optuna.study.get_all_study_names(storage)
    study = optuna.create_study(storage=storage, study_name=study_name, direction=direction, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ConfigError("direction", f"study {study_name!r} exists with direction {study.direction.name.lower()!r}, not {direction!r}.", "use a new study name or the same direction.")
    recorded = study.user_attrs.get(SETTINGS_ATTR)
    if recorded is None:
        study.set_user_attr(SETTINGS_ATTR, settings)
    elif recorded != settings:
        changed = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
        raise ConfigError(
            "study_name",
            f"study {study_name!r} exists with different settings ({', '.join(f'{k}: {recorded.get(k)!r} -> {settings.get(k)!r}' for k in changed)}).",
            "use a new study name to tune something else, or the same settings to continue it.",
        )
    seeded = None
    if seed_from:
        seeded = seed_study(storage_url, study_name, seed_from)
    counts = _state_counts(_own_trials(study.get_trials(deepcopy=False)))
    log.info("study %r %s in %s (%s)", study_name, "created" if created else "continued", redact_url(storage_url), counts)
    out = {"study_name": study_name, "created": created, "direction": direction, "metric": metric, "n_trials": counts}
    if seeded is not None:
        out["seeded"] = seeded
    return out


def seed_study(storage_url: str, study_name: str, from_studies) -> dict:
    """Replay the finished trials of ``from_studies`` into the (new) study ``study_name``.

    Why: an agent tunes in rounds, each its own study (a narrowed space is a new study:
    Optuna refuses to change a categorical's choices inside one). A fresh study's pruner has
    nobody to compare with, so its first trials run to the end; its sampler knows nothing.
    Replaying the earlier rounds' trials fixes both.

    Each COMPLETE or PRUNED trial whose parameters all lie inside this study's space is
    enqueued with those parameters, asked, its intermediate values reported again through
    ``should_prune`` (so the pruner records them in this study's own brackets and rungs) and
    told its original state and value. Copies carry the user attr ``dlagent.copied_from``
    (``"<study>#<number>"``) and are left out of the trial counts, the ``n_trials`` target and
    the epochs spent; trials outside the space are skipped. Runs once per study (user attr
    ``dlagent.seeded_from``): a re-run or a retried task does not copy twice.
    """
    import optuna
    from optuna.trial import TrialState

    if isinstance(from_studies, str) or not isinstance(from_studies, (list, tuple)) or not all(isinstance(n, str) and n for n in from_studies):
        raise ConfigError("seed_from", f"must be a list of study names, got {from_studies!r}.", 'give e.g. ["dl_agent_pipeline__run1__tune"].')
    storage = make_storage(storage_url, heartbeat_interval=None, create_tables=False)
    reader = load_study(storage_url, study_name, storage=storage)
    if reader.user_attrs.get(SEEDED_ATTR) is not None:
        return {"copied": 0, "skipped": 0, "from": list(reader.user_attrs[SEEDED_ATTR]), "already_seeded": True}
    settings = reader.user_attrs.get(SETTINGS_ATTR) or {}
    space = settings.get("space")
    if space is None:
        raise ConfigError("search_space", f"study {study_name!r} records no search space to replay trials into.", "create it with a space.")
    names = [n for n in from_studies if n != study_name]
    missing = sorted(set(names) - set(optuna.study.get_all_study_names(storage)))
    if missing:
        raise ConfigError("seed_from", f"no study {missing[0]!r} in {redact_url(storage_url)}.", "name studies of the same storage (the earlier rounds').")
    sources = {name: sorted(load_study(storage_url, name, storage=storage).get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)),
                            key=lambda t: t.number) for name in names}
    # The workers' pruner: max_resource as recorded, else the training epochs (the longest trial seen).
    max_resource = settings.get("max_resource") or max((max(t.intermediate_values, default=1) for ts in sources.values() for t in ts), default=1)
    pruner = make_pruner(settings.get("pruner") or "hyperband", settings.get("min_resource") or 1, max_resource)
    study = load_study(storage_url, study_name, sampler=optuna.samplers.RandomSampler(seed=0), pruner=pruner, storage=storage)
    copied = skipped = 0
    for name, olds in sources.items():
        for old in olds:
            if not _inside(old.params, space):
                skipped += 1
                continue
            study.enqueue_trial({k: old.params[k] for k in space}, user_attrs={COPIED_ATTR: f"{name}#{old.number}"})
            trial = study.ask()
            suggest_params(trial, space)
            for step in sorted(old.intermediate_values):
                trial.report(old.intermediate_values[step], step)
                trial.should_prune()  # records the value in this study's rungs; the old state stands
            if old.state == TrialState.COMPLETE:
                study.tell(trial, old.value)
            else:
                study.tell(trial, state=TrialState.PRUNED)
            copied += 1
    study.set_user_attr(SEEDED_ATTR, names)
    log.info("study %r seeded with %d trials of %s (%d outside its space skipped)", study_name, copied, names, skipped)
    return {"copied": copied, "skipped": skipped, "from": names, "already_seeded": False}


def _inside(params: dict, space: dict) -> bool:
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


def _own_trials(trials) -> list:
    """The trials a study ran itself, without the ones replayed from earlier studies."""
    return [t for t in trials if COPIED_ATTR not in t.user_attrs]


def _settings(metric, direction, space, sampler_name, pruner_name, seed, min_resource, max_resource, n_startup_trials) -> dict:
    return {
        "metric": metric,
        "direction": direction,
        "space": validate_search_space(space) if space is not None else None,
        "sampler": sampler_name,
        "pruner": pruner_name,
        "seed": seed,
        "min_resource": min_resource,
        "max_resource": max_resource,
        "n_startup_trials": n_startup_trials,
    }


def load_study(storage_url: str, study_name: str, *, sampler=None, pruner=None, storage=None):
    """Load an existing study (for workers and reports); a missing one is refused.

    Pass a ``storage`` from :func:`make_storage` to get heartbeats; otherwise a plain one is
    opened (no table creation).
    """
    import optuna

    storage = storage or make_storage(storage_url, heartbeat_interval=None, create_tables=False)
    try:
        return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError as exc:
        raise ConfigError("study_name", f"no study {study_name!r} in {redact_url(storage_url)}.", "create it first with create_study (the tune task's first step).") from exc
    except Exception as exc:
        # A storage without Optuna's tables (never initialised) reads as a missing study.
        if "no such table" in str(exc) or "does not exist" in str(exc) or "UndefinedTable" in type(getattr(exc, "orig", exc)).__name__:
            raise ConfigError("study_name", f"no study {study_name!r} in {redact_url(storage_url)} (no Optuna tables).", "create it first with create_study.") from exc
        raise


# --------------------------------------------------------------------------- the worker


def run_worker(
    storage_url: str,
    study_name: str,
    splits: DatasetSplits,
    base_config: TrainConfig,
    space: dict | str | None,
    n_trials: int,
    *,
    timeout_s: float | None = None,
    metric: str | None = None,
    direction: str | None = None,
    sampler_name: str | None = None,
    pruner_name: str | None = None,
    seed: int | None = None,
    min_resource: int | None = None,
    max_resource: int | None = None,
    n_startup_trials: int | None = None,
    max_epochs: int | None = None,
    heartbeat_interval: int = DEFAULT_HEARTBEAT_INTERVAL,
    grace_period: int = DEFAULT_GRACE_PERIOD,
    max_retry: int | None = DEFAULT_MAX_RETRY,
    wait_for_running: bool = True,
    tracking_uri: str | None = None,
    experiment_id: str | None = None,
    parent_run_id: str | None = None,
    worker_tags: dict | None = None,
    worker_index: int = 0,
    record_test_accuracy: bool = False,
    callbacks=(),
) -> dict:
    """Run trials of an existing study until it holds ``n_trials`` finished trials.

    Finished means COMPLETE or PRUNED, counted across every worker of the study. The worker
    also stops when ``timeout_s`` has passed (checked between trials; a running trial ends
    first) or, with ``max_epochs``, once the study's trials consumed that many epochs. With
    ``wait_for_running`` (default) a worker whose share is done polls until the other running
    trials end, so a dead worker's trial is failed and re-run here.

    Each trial trains ``base_config.replace(**sampled params)`` with per-epoch pruning on
    ``metric``; its value is the metric at the epoch whose weights are kept (the best
    ``val_loss`` epoch with early stopping, the last epoch without). Settings left ``None``
    are taken from what :func:`create_study` recorded; a given one that differs is refused.

    With ``experiment_id`` each trial is an MLflow run (child of ``parent_run_id``) tagged
    ``optuna.study``, ``optuna.trial_number`` and its final ``optuna.state``.

    A trial that raises is told FAIL and the error is raised (the task fails; a retry
    continues the study). A worker stopped by a signal (SIGKILL, or SIGTERM/KeyboardInterrupt,
    which are not caught) leaves its trial RUNNING without heartbeats: another worker, or this
    task's retry, fails it after ``grace_period`` and runs the re-queued copy.

    Returns small JSON: the trials this worker ran, by state, its epochs, why it stopped
    (``n_trials``, ``timeout``, ``max_epochs`` or ``others_running``), and the study's counts.
    """
    _check_int_arg("n_trials", n_trials, low=1)
    _check_int_arg("worker_index", worker_index, low=0)
    _check_int_arg("max_epochs", max_epochs, low=1, allow_none=True)
    if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0):
        raise ConfigError("timeout_s", f"must be a number of seconds > 0, got {timeout_s!r}.", "give e.g. 3600, or leave it empty for no limit.")
    if not isinstance(base_config, TrainConfig):
        raise ConfigError("train", f"base_config must be a TrainConfig, got {type(base_config).__name__}.", "build it with TrainConfig.from_dict(...).")

    tracker = _TrialTracker(tracking_uri, experiment_id, parent_run_id, study_name, worker_tags) if experiment_id else None
    storage = make_storage(
        storage_url, heartbeat_interval=heartbeat_interval, grace_period=grace_period, max_retry=max_retry,
        create_tables=False, on_stale_trial=tracker.close_stale if tracker else None,
    )
    reader = load_study(storage_url, study_name, storage=storage)
    settings = _merge_settings(
        reader.user_attrs.get(SETTINGS_ATTR) or {},
        {"metric": metric, "direction": direction, "space": validate_search_space(space) if space is not None else None,
         "sampler": sampler_name, "pruner": pruner_name, "seed": seed, "min_resource": min_resource,
         "max_resource": max_resource, "n_startup_trials": n_startup_trials},
    )
    metric, direction = _resolve_direction(settings["metric"], settings["direction"])
    if reader.direction.name.lower() != direction:
        raise ConfigError("direction", f"study {study_name!r} has direction {reader.direction.name.lower()!r}, not {direction!r}.", "use the study's direction.")
    space = settings["space"]
    if space is None:
        raise ConfigError("search_space", "is missing: neither given to the worker nor recorded on the study.", "pass the search space to create_study or run_worker.")
    max_resource = settings["max_resource"] or _max_epochs(space, base_config)
    min_resource = settings["min_resource"] or 1
    base_seed = settings["seed"] if settings["seed"] is not None else 0
    # Worker i of a fresh study uses a seed derived from (seed, i): the same seed gives the
    # same sequence, and parallel workers do not all propose the same points.
    worker_seed = _derive_seed(base_seed, worker_index, len(reader.get_trials(deepcopy=False)))
    sampler = make_sampler(settings["sampler"] or "tpe", worker_seed, space=space, n_startup_trials=settings["n_startup_trials"])
    pruner = make_pruner(settings["pruner"] or "hyperband", min_resource, max_resource)
    study = load_study(storage_url, study_name, sampler=sampler, pruner=pruner, storage=storage)

    worker = f"{socket.gethostname()}:{os.getpid()}"
    started = time.monotonic()
    ran: list[dict] = []
    stopped = None
    log.info("worker %s (index %d) joins study %r: target %d finished trials, metric %s (%s)", worker, worker_index, study_name, n_trials, metric, direction)
    while stopped is None:
        if timeout_s is not None and time.monotonic() - started >= timeout_s:
            stopped = "timeout"
            break
        with _study_lock(storage, study_name):
            _fail_stale_trials(study)
            trials = _own_trials(study.get_trials(deepcopy=False))
            counts = _state_counts(trials)
            finished = counts["COMPLETE"] + counts["PRUNED"]
            trial = None
            if finished >= n_trials:
                stopped = "n_trials"
            elif max_epochs is not None and _epochs_total(trials) >= max_epochs:
                stopped = "max_epochs"
            elif finished + counts["RUNNING"] < n_trials:
                trial = _ask(study)
                # Beat once before the lock is released: a worker killed from here on leaves a
                # trial the others can recognise as stale.
                storage.record_heartbeat(_trial_id(storage, study, trial))
        if stopped is not None:
            break
        if trial is None:
            if not wait_for_running:
                stopped = "others_running"
                break
            time.sleep(min(heartbeat_interval, 5))
            continue
        ran.append(_run_trial(
            study, storage, trial, splits, base_config, space, metric, direction,
            heartbeat_interval=heartbeat_interval, tracker=tracker, worker=worker,
            record_test_accuracy=record_test_accuracy, callbacks=callbacks,
        ))

    final = _own_trials(study.get_trials(deepcopy=False))
    result = {
        "study_name": study_name,
        "worker": worker,
        "worker_index": worker_index,
        "trials": [r["number"] for r in ran],
        "states": _count_by(r["state"] for r in ran),
        "epochs_run": sum(r["epochs_run"] for r in ran),
        "stopped": stopped,
        "seconds": round(time.monotonic() - started, 3),
        "study_n_trials": _state_counts(final),
    }
    log.info("worker %s stops (%s): ran %d trials, %d epochs; study now %s", worker, stopped, len(ran), result["epochs_run"], result["study_n_trials"])
    return result


def _merge_settings(recorded: dict, given: dict) -> dict:
    merged = dict(recorded)
    for key, value in given.items():
        if value is None:
            merged.setdefault(key, None)
            continue
        if recorded.get(key) is not None and recorded[key] != value:
            field = "search_space" if key == "space" else key
            raise ConfigError(field, f"the study was created with {recorded[key]!r}, this worker got {value!r}.", "give every worker the settings the study was created with (or leave it empty).")
        merged[key] = value
    return merged


def _max_epochs(space: dict, base_config: TrainConfig) -> int:
    spec = space.get("epochs")
    if spec is None:
        return base_config.epochs
    return int(max(spec["choices"])) if spec["type"] == "categorical" else int(spec["high"])


def _derive_seed(seed: int, worker_index: int, n_existing: int) -> int:
    if worker_index == 0 and n_existing == 0:
        return seed
    digest = hashlib.sha256(f"{seed}/{worker_index}/{n_existing}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31 - 1)


def _ask(study):
    with warnings.catch_warnings():
        # Optuna warns that heartbeats are meant for optimize(); this loop beats itself.
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        return study.ask()


def _trial_id(storage, study, trial) -> int:
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), trial.number)


def _fail_stale_trials(study) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _study_lock(storage, study_name: str):
    """Serialise 'count the trials, then ask for one' across all workers of a study."""
    from dlagent.ml.locks import named_lock

    return named_lock(storage.url, f"dlagent.tuning/{study_name}", engine=storage.engine)


class _Heartbeat:
    """Records the trial's heartbeat every ``interval`` seconds in a daemon thread."""

    def __init__(self, storage, trial_id: int, interval: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"optuna-heartbeat-{trial_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried next interval
                log.warning("heartbeat of trial id %d failed: %s", self.trial_id, exc)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()


def epoch_pruning_callback(trial, monitor: str):
    """A Keras callback: report ``monitor`` after every epoch and raise ``TrialPruned``.

    Like ``optuna_integration.KerasPruningCallback`` (which works with Keras 3), but the step
    is the number of epochs done (1-based), so the pruner's ``min_resource``/``max_resource``
    are epoch counts; it also counts the epochs a pruned trial consumed (``epochs_run``).
    """
    import keras
    import optuna

    class EpochPruningCallback(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs_run = 0

        def on_train_begin(self, logs=None):
            self.epochs_run = 0

        def on_epoch_end(self, epoch, logs=None):
            self.epochs_run = epoch + 1
            value = (logs or {}).get(monitor)
            if value is None:
                log.warning("metric %r missing from the epoch logs %s: trial %d is not pruned", monitor, sorted(logs or {}), trial.number)
                return
            value = float(value)
            trial.report(value, step=self.epochs_run)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {self.epochs_run}: {monitor}={value:.4f}")

    return EpochPruningCallback()


def _run_trial(study, storage, trial, splits, base_config, space, metric, direction, *, heartbeat_interval, tracker, worker, record_test_accuracy, callbacks) -> dict:
    import keras
    import optuna
    from optuna.trial import TrialState

    from dlagent.ml.training import evaluate, fit

    started = time.monotonic()
    trial_id = _trial_id(storage, study, trial)
    retry_of = storage.get_trial_system_attrs(trial_id).get("failed_trial")  # set by the retry callback
    params = suggest_params(trial, space)
    trial.set_user_attr("worker", worker)
    state, value, error, reason = TrialState.FAIL, None, None, None
    epochs_run, test_accuracy = 0, None
    run_id = None
    pruning = epoch_pruning_callback(trial, metric)
    with _Heartbeat(storage, trial_id, heartbeat_interval):
        try:
            config = base_config.replace(**params)
            if tracker is not None:
                run_id = tracker.start(trial, config, retry_of)
            extra = [tracker.epoch_logger(run_id)] if run_id else []
            # The MLflow logger runs before the pruner, so a pruned trial's last epoch is logged.
            result = fit(splits, config, callbacks=[*callbacks, *extra, pruning])
            epochs_run = result.epochs_run
            kept = result.best_epoch if config.early_stopping_patience > 0 else result.epochs_run - 1
            value = float(result.history[metric][kept])
            if math.isfinite(value):
                state = TrialState.COMPLETE
                if record_test_accuracy:
                    test_accuracy = evaluate(result.model, splits)["test_accuracy"]
                if tracker is not None and run_id and _beats_best(study, value, direction):
                    tracker.save_checkpoint(run_id, result.model)
            else:
                reason = f"{metric} is {value}"
        except optuna.TrialPruned as exc:
            state, epochs_run, reason = TrialState.PRUNED, pruning.epochs_run, str(exc)
        except Exception as exc:
            epochs_run, error, reason = pruning.epochs_run, exc, f"{type(exc).__name__}: {exc}"
        finally:
            keras.backend.clear_session()
    trial.set_user_attr(EPOCHS_ATTR, epochs_run)
    trial.set_user_attr("seconds", round(time.monotonic() - started, 3))
    if test_accuracy is not None:
        trial.set_user_attr(TEST_ACCURACY_ATTR, test_accuracy)
    if reason and state != TrialState.PRUNED:
        trial.set_user_attr("fail_reason", reason[:500])
    frozen = study.tell(trial, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)
    if frozen.state != state:
        # Another worker declared this trial stale (this one was silent past the grace period)
        # and queued a retry; what this run found is dropped with the trial.
        log.warning("trial %d was failed by another worker while running here; its result is dropped", trial.number)
        state, reason = frozen.state, "declared stale by another worker"
    if tracker is not None and run_id:
        tracker.finish(run_id, state.name, value, epochs_run, reason)
    log.info("trial %d %s after %d epochs%s (params %s)", trial.number, state.name, epochs_run, f", {metric}={value:.4f}" if value is not None and state == TrialState.COMPLETE else "", params)
    if error is not None:
        raise error
    return {"number": trial.number, "state": state.name, "epochs_run": epochs_run}


class _TrialTracker:
    """One MLflow child run per trial, found again by a key from study name + trial number."""

    def __init__(self, tracking_uri, experiment_id, parent_run_id, study_name, worker_tags):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.experiment_id, self.parent_run_id, self.study_name = experiment_id, parent_run_id, study_name
        self.worker_tags = {str(k): str(v) for k, v in (worker_tags or {}).items()}

    def key(self, number: int) -> str:
        from dlagent.ml.tracking import run_key

        return run_key("optuna", self.study_name, "trial", number)

    def start(self, trial, config: TrainConfig, retry_of) -> str | None:
        from dlagent.ml import tracking

        tags = {**self.worker_tags, "optuna.study": self.study_name, "optuna.trial_number": str(trial.number), "optuna.state": "RUNNING"}
        if retry_of is not None:
            tags["optuna.retry_of"] = str(retry_of)
        try:
            run_id, _ = tracking.find_or_create_run(
                self.client, self.experiment_id, self.key(trial.number), run_name=f"trial-{trial.number}",
                tags=tags, parent_run_id=self.parent_run_id,
            )
            tracking.log_params_safely(self.client, run_id, config.to_dict())
            trial.set_user_attr("mlflow_run_id", run_id)
            return run_id
        except Exception as exc:  # noqa: BLE001 - logging never kills training
            log.warning("could not open an MLflow run for trial %d: %s", trial.number, exc)
            return None

    def save_checkpoint(self, run_id: str, model) -> None:
        """Keep the weights of a new best trial as artifact ``checkpoint/model.keras`` (tag
        ``dlagent.checkpoint``): a final training can start from them instead of from scratch.
        Only new bests are saved, so a study stores a handful of small files, not one per trial."""
        import tempfile

        try:
            with tempfile.TemporaryDirectory(prefix="dlagent-checkpoint-") as folder:
                path = Path(folder) / Path(CHECKPOINT_PATH).name
                model.save(path)
                self.client.log_artifact(run_id, str(path), str(Path(CHECKPOINT_PATH).parent))
            self.client.set_tag(run_id, CHECKPOINT_TAG, CHECKPOINT_PATH)
        except Exception as exc:  # noqa: BLE001 - a missing checkpoint only means a final training from scratch
            log.warning("could not save the checkpoint of run %s: %s", run_id, exc)

    def epoch_logger(self, run_id: str):
        from dlagent.ml.tracking import mlflow_epoch_logger

        return mlflow_epoch_logger(self.client, run_id)

    def finish(self, run_id: str, state: str, value, epochs_run: int, reason: str | None) -> None:
        from dlagent.ml.tracking import log_metrics

        try:
            log_metrics(self.client, run_id, {"objective": value if state == "COMPLETE" else None, "epochs_run": epochs_run})
            self.client.set_tag(run_id, "optuna.state", state)
            if reason:
                self.client.set_tag(run_id, "optuna.reason", reason[:500])
            self.client.set_terminated(run_id, status="FAILED" if state == "FAIL" else "FINISHED")
        except Exception as exc:  # noqa: BLE001
            log.warning("could not close MLflow run %s: %s", run_id, exc)

    def close_stale(self, study, trial) -> None:
        """The run of a trial whose worker died: tag it FAIL and end it FAILED."""
        from dlagent.ml.tracking import find_run

        try:
            run = find_run(self.client, self.experiment_id, self.key(trial.number))
            if run is not None:
                self.client.set_tag(run.info.run_id, "optuna.state", "FAIL")
                self.client.set_tag(run.info.run_id, "optuna.reason", "worker died (heartbeat stale); trial re-queued")
                self.client.set_terminated(run.info.run_id, status="FAILED")
        except Exception as exc:  # noqa: BLE001
            log.warning("could not close the MLflow run of stale trial %d: %s", trial.number, exc)


# --------------------------------------------------------------------------- reports


def _count_by(values) -> dict:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def _state_counts(trials) -> dict:
    counts = {s: 0 for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def trial_epochs(trial) -> int:
    """Epochs a trial trained: its ``epochs_run`` attr, else its reported epochs (a killed one)."""
    recorded = trial.user_attrs.get(EPOCHS_ATTR)
    return int(recorded) if recorded is not None else len(trial.intermediate_values)


def _epochs_total(trials) -> int:
    return sum(trial_epochs(t) for t in trials)


def _best(study):
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return study.best_trial


def _beats_best(study, value: float, direction: str) -> bool:
    """Whether ``value`` beats every COMPLETE trial so far (replayed ones included)."""
    best = _best(study)
    if best is None:
        return True
    return value > best.value if direction == "maximize" else value < best.value


def _summary_of(study) -> dict:
    """Counts and epochs of the study's own trials; the best trial may be a replayed one
    (the best so far over the earlier rounds too)."""
    trials = _own_trials(study.get_trials(deepcopy=False))
    best = _best(study)
    settings = study.user_attrs.get(SETTINGS_ATTR) or {}
    summary = {
        "study_name": study.study_name,
        "direction": study.direction.name.lower(),
        "metric": settings.get("metric"),
        "best_value": best.value if best else None,
        "best_params": dict(best.params) if best else {},
        "best_trial_number": best.number if best else None,
        "n_trials": _state_counts(trials),
        "n_finished": sum(1 for t in trials if t.state.name in ("COMPLETE", "PRUNED")),
        "epochs_total": _epochs_total(trials),
    }
    if best is not None and TEST_ACCURACY_ATTR in best.user_attrs:
        summary["best_test_accuracy"] = best.user_attrs[TEST_ACCURACY_ATTR]
    return summary


def study_summary(storage_url: str, study_name: str) -> dict:
    """Small JSON about a study: best value and params, trials by state, epochs consumed."""
    return _summary_of(load_study(storage_url, study_name))


def log_study_to_mlflow(study, tracking_uri: str | None, run_id: str) -> dict:
    """Log a study on the (parent) MLflow run ``run_id``; return :func:`study_summary` JSON.

    Params ``best_<name>``; metrics ``best_value``, ``trials_<state>``, ``epochs_total``;
    PNG plots under ``optuna/`` (optimization history, parameter importances, intermediate
    values) and ``optuna/study_summary.json``. A plot that cannot be drawn (e.g. importances
    with fewer than 2 complete trials) is skipped with the reason as tag
    ``optuna.plot_skipped.<plot>``. Logging problems are reported, not raised.
    """
    import tempfile

    from mlflow import MlflowClient

    from dlagent.ml import tracking

    client = MlflowClient(tracking_uri)
    summary = _summary_of(study)
    if summary["best_params"]:
        tracking.log_params_safely(client, run_id, {f"best_{k}": v for k, v in summary["best_params"].items()})
    metrics = {f"trials_{state.lower()}": n for state, n in summary["n_trials"].items()}
    metrics["epochs_total"] = summary["epochs_total"]
    if summary["best_value"] is not None:
        metrics["best_value"] = summary["best_value"]
        metrics["best_trial_number"] = summary["best_trial_number"]
    tracking.log_metrics(client, run_id, metrics)
    client.set_tag(run_id, "optuna.study", study.study_name)
    with tempfile.TemporaryDirectory(prefix="dlagent-optuna-") as folder:
        path = Path(folder) / "study_summary.json"
        path.write_text(json.dumps(summary, indent=2, default=str))
        _log_artifact(client, run_id, path)
        for name, reason in _plot_study(study, Path(folder)).items():
            if reason is None:
                _log_artifact(client, run_id, Path(folder) / f"{name}.png")
            else:
                log.info("plot %s skipped: %s", name, reason)
                client.set_tag(run_id, f"optuna.plot_skipped.{name}", reason[:500])
    return summary


def _log_artifact(client, run_id: str, path: Path) -> None:
    try:
        client.log_artifact(run_id, str(path), artifact_path="optuna")
    except Exception as exc:  # noqa: BLE001 - a lost plot must not fail the tuning step
        log.warning("could not log %s to MLflow run %s: %s", path.name, run_id, exc)


def _plot_study(study, folder: Path) -> dict:
    """Draw the plots as PNG files; return ``{name: None}`` when drawn, else the reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as optuna_plots

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots = {
        "optimization_history": optuna_plots.plot_optimization_history,
        "param_importances": optuna_plots.plot_param_importances,
        "intermediate_values": optuna_plots.plot_intermediate_values,
    }
    outcome: dict[str, str | None] = {}
    for name, plot in plots.items():
        if name == "param_importances" and len(complete) < 2:
            outcome[name] = f"needs at least 2 complete trials, the study has {len(complete)}."
            continue
        if name == "intermediate_values" and not any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
            outcome[name] = "no trial reported per-epoch values."
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = plot(study)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(figure)
            outcome[name] = None
        except Exception as exc:  # noqa: BLE001 - e.g. importances of parameters that never varied
            outcome[name] = f"{type(exc).__name__}: {exc}"
    return outcome
