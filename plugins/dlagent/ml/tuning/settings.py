"""The tuning settings, each declared once: what a person sets, what a study records, what a worker runs.

* :class:`TuneConfig`: the trigger form's tuning settings (``n_trials``, ``n_workers``, ...) with
  their limits; the Params, the tuning operators and the agent's plan read the same bounds.
* :class:`StudySettings`: what :func:`~dlagent.ml.tuning.study.create_study` records on a study
  (user attr ``dlagent.settings``), so every worker tunes the same thing. A field left ``None``
  means "the default" when a study is created and "as recorded" when a worker joins it.
* :class:`WorkerSettings`: everything one worker needs besides the data and an MLflow client.

:data:`METRICS` maps each tuning metric to its direction, from the primary metrics'
(:mod:`dlagent.ml.metrics`): ``val_accuracy`` is maximised, ``val_rmse`` and ``val_loss`` minimised.
The objective left empty is the run's primary metric on the validation split, ``val_<metric>``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from dlagent.errors import ConfigError
from dlagent.ml.config import MAX_EPOCHS, TrainConfig
from dlagent.ml.metrics import METRICS as PRIMARY_METRICS
from dlagent.validation import bounded, check_fields, check_int, field_bounds

METRICS = {"val_loss": "minimize", "loss": "minimize",
           **{key: m.direction for m in PRIMARY_METRICS.values() for key in (m.val_key, m.name)}}
TUNE_METRICS = ("val_loss", *(m.val_key for m in PRIMARY_METRICS.values()))  # the trigger form: validation metrics only
DIRECTIONS = ("maximize", "minimize")
SAMPLERS = ("tpe", "random", "gp", "cmaes")
PRUNERS = ("hyperband", "successive_halving", "median", "none")
DEFAULT_PRUNER = "successive_halving"  # bench/default_pruner.py; the one default: the Params, the operator, a new study and a study read back
MAX_TRIALS = 10_000
MAX_WORKERS = 64
MAX_TIMEOUT_S = 7 * 24 * 3600

DEFAULT_HEARTBEAT_INTERVAL = 30  # seconds between heartbeats of a running trial
DEFAULT_GRACE_PERIOD = 90  # a trial silent this long is failed and retried
DEFAULT_MAX_RETRY = 3  # retries of one killed trial (then it stays FAIL)


def direction_for(metric: str) -> str:
    """``maximize`` or ``minimize``: the natural direction of a tuning metric."""
    if metric not in METRICS:
        raise ConfigError("metric", f"unknown metric {metric!r}.", f"use one of {list(METRICS)}.")
    return METRICS[metric]


def resolve_direction(metric: str | None, direction: str | None) -> tuple[str, str]:
    """``(metric, direction)`` with the defaults filled in; a direction against the metric is refused."""
    metric = metric or "val_accuracy"
    natural = direction_for(metric)
    direction = direction or natural
    if direction not in DIRECTIONS:
        raise ConfigError("direction", f"must be 'maximize' or 'minimize', got {direction!r}.", f"use {natural!r} for {metric}.")
    if direction != natural:
        raise ConfigError("direction", f"{metric} should be {natural}d, got {direction!r}.", f"use {natural!r} or leave it empty.")
    return metric, direction


@dataclass(frozen=True)
class TuneConfig:
    """A person's tuning settings (the trigger form, an agent's plan). Validated on creation."""

    n_trials: int = bounded(6, "int", low=0, high=MAX_TRIALS, title="Tuning trials",
                            description="Optuna trials in the hyper-parameter search (pruned trials count); 0 skips tuning. "
                                        "With the agent on, the most its first round may run.")
    n_workers: int = bounded(1, "int", low=1, high=MAX_WORKERS, title="Tuning workers",
                             description="Parallel worker tasks sharing one study (mapped tasks; one Airflow slot each). With "
                                         "the agent on, the most it may use (fewer with fewer trials or too little memory).")
    timeout_s: int | None = bounded(None, "int", low=1, high=MAX_TIMEOUT_S, optional=True, title="Tuning time budget (s)",
                                    description="Each worker stops starting trials after this many seconds; empty for no limit.")
    trial_epochs: int | None = bounded(None, "int", low=1, high=MAX_EPOCHS, optional=True, title="Epochs per trial",
                                       description="Each tuning trial trains at most this many epochs (the search ranks settings on "
                                                   "short runs); empty for the training's epochs, or, with the agent on, its choice "
                                                   "(it shortens trials when the final training continues the best trial's weights).")
    min_trial_epochs: int | None = bounded(None, "int", low=1, high=MAX_EPOCHS, optional=True, title="Epochs before pruning",
                                           description="No tuning trial is pruned before this many epochs (the pruner's first "
                                                       "rung; at most the trial's epochs); empty for 1. The agent sets it with "
                                                       "Epochs per trial.")
    sampler: str = bounded("tpe", "choice", choices=SAMPLERS, title="Sampler",
                           description="Optuna sampler: TPE (default), random, Gaussian process, CMA-ES (numeric spaces only).")
    pruner: str = bounded(DEFAULT_PRUNER, "choice", choices=PRUNERS, title="Pruner",
                          description="Stops unpromising trials early from their per-epoch validation metric: successive halving "
                                      "(default; one bracket: from the second trial on, a trial below the top third at "
                                      "its rung stops), Hyperband (hedges over several brackets: for budgets of many "
                                      "trials), median, none.")
    metric: str | None = bounded(None, "choice", choices=TUNE_METRICS, optional=True, title="Tuning objective",
                                 description="Per-epoch validation metric the search optimises (accuracy up, rmse and loss "
                                             "down); empty for the primary metric's, val_<metric>.")

    def __post_init__(self):
        check_fields(self)
        if self.min_trial_epochs is not None and self.trial_epochs is not None:
            check_int("min_trial_epochs", self.min_trial_epochs, low=1, high=self.trial_epochs,
                      fix=f"give at most trial_epochs ({self.trial_epochs}), or leave it empty.")

    def objective(self, primary_metric: str | None = None) -> str:
        """The metric the search optimises: ``metric``, else ``val_<primary_metric>`` (accuracy by default)."""
        return self.metric or f"val_{primary_metric or 'accuracy'}"

    @classmethod
    def bounds(cls, name: str):
        return field_bounds(cls, name)

    def trial_config(self, base: TrainConfig) -> TrainConfig:
        """``base`` with its epochs capped at ``trial_epochs`` (the study's ``max_resource`` follows)."""
        if self.trial_epochs is None or self.trial_epochs >= base.epochs:
            return base
        return base.replace(epochs=self.trial_epochs)

    def resolve_objective(self, primary, direction: str | None = None) -> tuple[str, str]:
        """``(metric, direction)`` the search optimises in a run whose primary metric is ``primary``
        (a :class:`~dlagent.ml.metrics.Metric`): refused unless every epoch of such a run logs it."""
        metric, direction = resolve_direction(self.objective(primary.name), direction)
        logged = ("val_loss", primary.val_key, *(("val_accuracy",) if primary.task == "classification" else ()))
        if metric not in logged:
            raise ConfigError("tune_metric", f"{metric!r} is not measured in a {primary.task} run whose primary metric is "
                              f"{primary.name!r} (each epoch logs {list(logged)}).",
                              f"use one of {list(logged)}, or leave it empty for {primary.val_key}.")
        return metric, direction

    def first_rung(self, trial_config: TrainConfig) -> int:
        """The pruner's first rung: ``min_trial_epochs`` (at most the trials' epochs), else 1."""
        if self.min_trial_epochs is None:
            return 1
        return check_int("min_trial_epochs", self.min_trial_epochs, low=1, high=trial_config.epochs,
                         fix=f"give at most the trials' epochs ({trial_config.epochs}), or leave it empty.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class StudySettings:
    """What a study tunes, recorded on it once (user attr ``dlagent.settings``)."""

    metric: str | None = None
    direction: str | None = None
    space: dict | None = None
    sampler: str | None = None
    pruner: str | None = None
    seed: int | None = None
    min_resource: int | None = None
    max_resource: int | None = None
    n_startup_trials: int | None = None

    def __post_init__(self):
        if self.space is not None:
            from dlagent.ml.tuning.space import validate_search_space

            object.__setattr__(self, "space", validate_search_space(self.space))
        if self.metric is not None:
            resolve_direction(self.metric, self.direction)
        elif self.direction is not None and self.direction not in DIRECTIONS:
            raise ConfigError("direction", f"must be 'maximize' or 'minimize', got {self.direction!r}.", "pick one, or leave it empty.")
        for name in ("seed", "n_startup_trials"):
            check_int(name, getattr(self, name), low=0, optional=True)
        for name in ("min_resource", "max_resource"):
            check_int(name, getattr(self, name), low=1, optional=True)

    def for_new_study(self) -> StudySettings:
        """The settings a new study records: metric, direction, sampler, pruner, seed and first rung filled in."""
        metric, direction = resolve_direction(self.metric, self.direction)
        return dataclasses.replace(self, metric=metric, direction=direction, sampler=self.sampler or "tpe",
                                   pruner=self.pruner or DEFAULT_PRUNER, seed=0 if self.seed is None else self.seed,
                                   min_resource=self.min_resource or 1)

    def merged_with(self, recorded: dict) -> StudySettings:
        """The recorded settings with the given ones filled in; a given one that differs is refused."""
        merged = dict(recorded)
        for key, value in self.to_dict().items():
            if value is None:
                merged.setdefault(key, None)
                continue
            if recorded.get(key) is not None and recorded[key] != value:
                name = "search_space" if key == "space" else key
                raise ConfigError(name, f"the study was created with {recorded[key]!r}, this worker got {value!r}.",
                                  "give every worker the settings the study was created with (or leave it empty).")
            merged[key] = value
        return StudySettings(**{k: merged.get(k) for k in self.to_dict()})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class WorkerSettings:
    """One tuning worker's settings (see :func:`dlagent.ml.tuning.worker.run_worker`)."""

    storage_url: str
    study_name: str
    base_config: TrainConfig
    n_trials: int
    study: StudySettings = field(default_factory=StudySettings)
    timeout_s: float | None = None
    max_epochs: int | None = None
    heartbeat_interval: int = DEFAULT_HEARTBEAT_INTERVAL
    grace_period: int = DEFAULT_GRACE_PERIOD
    max_retry: int | None = DEFAULT_MAX_RETRY
    wait_for_running: bool = True
    worker_index: int = 0
    record_test_accuracy: bool = False
    # MLflow: with an experiment id each trial is a child run of parent_run_id
    experiment_id: str | None = None
    parent_run_id: str | None = None
    worker_tags: dict = field(default_factory=dict)
    # transfer learning: the folders a base_config.init_from .keras file may be read from
    allowed_roots: list | None = None

    def __post_init__(self):
        check_int("n_trials", self.n_trials, low=1)
        check_int("worker_index", self.worker_index, low=0)
        check_int("max_epochs", self.max_epochs, low=1, optional=True)
        if self.timeout_s is not None and (isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float))
                                           or not math.isfinite(self.timeout_s) or self.timeout_s <= 0):
            raise ConfigError("timeout_s", f"must be a number of seconds > 0, got {self.timeout_s!r}.",
                              "give e.g. 3600, or leave it empty for no limit.")
        if not isinstance(self.base_config, TrainConfig):
            raise ConfigError("train", f"base_config must be a TrainConfig, got {type(self.base_config).__name__}.",
                              "build it with TrainConfig.from_dict(...).")
        if not isinstance(self.study, StudySettings):
            raise ConfigError("study", f"must be a StudySettings, got {type(self.study).__name__}.", "build it with StudySettings(...).")
