"""The worker loop each parallel tuning worker runs, and its heartbeat.

:func:`run_worker` loads the study and runs trials until the study holds ``n_trials`` finished
(COMPLETE + PRUNED) trials, counted across all workers, or its time budget ends. Each trial
trains with :func:`dlagent.ml.training.fit` and is pruned from its per-epoch validation metric.

Fault tolerance. Every running trial records a heartbeat in the storage. A worker that dies
(SIGKILL, a lost machine) stops beating; after ``grace_period`` seconds the next worker that
asks for a trial marks it FAIL and Optuna's ``RetryHeartbeatStaleTrialCallback`` queues a copy
(same params, system attr ``failed_trial`` = the dead trial's number), which the next free
worker runs. Workers whose share is done keep polling while other trials are RUNNING, so a
dead peer's trial is recovered even when no Airflow retry comes. (Optuna fails stale trials
only inside ``study.optimize()``; with ask/tell this loop calls ``fail_stale_trials`` itself.)

Exact trial count. Counting finished trials and asking for a new one happen under a lock per
study (a PostgreSQL advisory lock, a file lock for SQLite), so two workers never both take
the last slot: the study ends with exactly ``n_trials`` COMPLETE + PRUNED trials. (Optuna's
``MaxTrialsCallback`` only checks after a trial ends, so parallel workers overshoot.) Other
databases get no lock and may overshoot by up to one trial per worker.

Epochs are the unit of compute: each trial records ``epochs_run`` as a user attribute and
pruning steps are epochs (1-based), so ``min_resource``/``max_resource`` are epoch counts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass

from dlagent.errors import ConfigError
from dlagent.ml.tuning.factories import make_pruner, make_sampler, make_storage
from dlagent.ml.tuning.settings import DEFAULT_PRUNER, WorkerSettings, resolve_direction
from dlagent.ml.tuning.space import max_trial_epochs, suggest_params
from dlagent.ml.tuning.study import (
    EPOCHS_ATTR,
    TEST_ACCURACY_ATTR,
    beats_best,
    epochs_total,
    load_study,
    own_trials,
    recorded_settings,
    state_counts,
)

log = logging.getLogger(__name__)


def run_worker(settings: WorkerSettings, splits, *, client=None, callbacks=(), source_model=None) -> dict:
    """Run trials of an existing study until it holds ``settings.n_trials`` finished trials.

    Finished means COMPLETE or PRUNED, counted across every worker of the study. The worker
    also stops when ``timeout_s`` has passed (checked between trials; a running trial ends
    first) or, with ``max_epochs``, once the study's trials consumed that many epochs. With
    ``wait_for_running`` (default) a worker whose share is done polls until the other running
    trials end, so a dead worker's trial is failed and re-run here.

    Each trial trains ``base_config.replace(**sampled params)`` with per-epoch pruning on the
    metric; its value is the metric at the epoch whose weights are kept (the best
    ``val_loss`` epoch with early stopping, the last epoch without). Study settings left
    ``None`` are taken from what ``create_study`` recorded; a given one that differs is refused.

    With ``settings.experiment_id`` each trial is an MLflow run (child of ``parent_run_id``)
    logged through ``client`` and tagged ``optuna.study``, ``optuna.trial_number`` and its final
    ``optuna.state``.

    With ``base_config.init_from`` every trial fine-tunes a fresh copy of ``source_model`` (loaded
    once per worker through ``client`` when not given).

    A trial that raises is told FAIL and the error is raised (the task fails; a retry
    continues the study). A worker stopped by a signal (SIGKILL, or SIGTERM/KeyboardInterrupt,
    which are not caught) leaves its trial RUNNING without heartbeats: another worker, or this
    task's retry, fails it after ``grace_period`` and runs the re-queued copy.

    Returns small JSON: the trials this worker ran, by state, its epochs, why it stopped
    (``n_trials``, ``timeout``, ``max_epochs`` or ``others_running``), and the study's counts.
    """
    if not isinstance(settings, WorkerSettings):
        raise ConfigError("settings", f"must be a WorkerSettings, got {type(settings).__name__}.", "build it with WorkerSettings(...).")
    settings = dataclasses.replace(settings, base_config=settings.base_config.for_input(splits.input_shape))  # model 'auto'
    tracker = None
    if settings.experiment_id:
        if client is None:
            raise ConfigError("client", "an experiment_id was given but no MLflow client.", "pass the hook's client (hook.client).")
        from dlagent.ml.tuning.trials import TrialTracker

        tracker = TrialTracker(client, settings.experiment_id, settings.parent_run_id, settings.study_name, settings.worker_tags)
    if settings.base_config.init_from and source_model is None and client is not None:
        from dlagent.ml.transfer import load_source_model

        source_model = load_source_model(client, settings.base_config.init_from, allowed_roots=settings.allowed_roots)
    loop = _WorkerLoop(settings, splits, tracker, callbacks)
    loop.source_model = source_model
    return loop.run()


@dataclass
class _Objective:
    """What the trials of this worker optimise, resolved once from the study's recorded settings."""

    space: dict
    metric: str
    direction: str


class _WorkerLoop:
    """The loop of one worker: its storage, study (with sampler and pruner) and what it ran."""

    def __init__(self, settings: WorkerSettings, splits, tracker, callbacks):
        self.settings, self.splits, self.tracker, self.callbacks = settings, splits, tracker, tuple(callbacks)
        self.source_model = None  # init_from: the model every trial fine-tunes a copy of
        self.storage = make_storage(
            settings.storage_url, heartbeat_interval=settings.heartbeat_interval, grace_period=settings.grace_period,
            max_retry=settings.max_retry, create_tables=False, on_stale_trial=tracker.close_stale if tracker else None,
        )
        reader = load_study(settings.storage_url, settings.study_name, storage=self.storage)
        study_settings = settings.study.merged_with(recorded_settings(reader))
        metric, direction = resolve_direction(study_settings.metric, study_settings.direction)
        if reader.direction.name.lower() != direction:
            raise ConfigError("direction", f"study {settings.study_name!r} has direction {reader.direction.name.lower()!r}, not {direction!r}.",
                              "use the study's direction.")
        space = study_settings.space
        if space is None:
            raise ConfigError("search_space", "is missing: neither given to the worker nor recorded on the study.",
                              "pass the search space to create_study or the worker.")
        self.objective = _Objective(space=space, metric=metric, direction=direction)
        max_resource = study_settings.max_resource or max_trial_epochs(space, settings.base_config)
        base_seed = study_settings.seed if study_settings.seed is not None else 0
        # Worker i of a fresh study uses a seed derived from (seed, i): the same seed gives the
        # same sequence, and parallel workers do not all propose the same points.
        worker_seed = derive_seed(base_seed, settings.worker_index, len(reader.get_trials(deepcopy=False)))
        sampler = make_sampler(study_settings.sampler or "tpe", worker_seed, space=space, n_startup_trials=study_settings.n_startup_trials)
        pruner = make_pruner(study_settings.pruner or DEFAULT_PRUNER, study_settings.min_resource or 1, max_resource)
        self.study = load_study(settings.storage_url, settings.study_name, sampler=sampler, pruner=pruner, storage=self.storage)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def run(self) -> dict:
        settings, study = self.settings, self.study
        started = time.monotonic()
        ran: list[dict] = []
        stopped = None
        log.info("worker %s (index %d) joins study %r: target %d finished trials, metric %s (%s)", self.worker, settings.worker_index,
                 settings.study_name, settings.n_trials, self.objective.metric, self.objective.direction)
        while stopped is None:
            if settings.timeout_s is not None and time.monotonic() - started >= settings.timeout_s:
                stopped = "timeout"
                break
            trial, stopped = self._next_trial()
            if stopped is not None:
                break
            if trial is None:
                if not settings.wait_for_running:
                    stopped = "others_running"
                    break
                time.sleep(min(settings.heartbeat_interval, 5))
                continue
            ran.append(self._run_trial(trial))
        final = own_trials(study.get_trials(deepcopy=False))
        result = {
            "study_name": settings.study_name,
            "worker": self.worker,
            "worker_index": settings.worker_index,
            "trials": [r["number"] for r in ran],
            "states": _count_by(r["state"] for r in ran),
            "epochs_run": sum(r["epochs_run"] for r in ran),
            "stopped": stopped,
            "seconds": round(time.monotonic() - started, 3),
            "study_n_trials": state_counts(final),
        }
        log.info("worker %s stops (%s): ran %d trials, %d epochs; study now %s", self.worker, stopped, len(ran), result["epochs_run"],
                 result["study_n_trials"])
        return result

    def _next_trial(self):
        """``(trial, None)`` to run one, ``(None, None)`` to wait, ``(None, reason)`` to stop."""
        from dlagent.ml.locks import named_lock

        settings, study = self.settings, self.study
        # Serialise "count the trials, then ask for one" across all workers of the study.
        with named_lock(self.storage.url, f"dlagent.tuning/{settings.study_name}", engine=self.storage.engine):
            _fail_stale_trials(study)
            trials = own_trials(study.get_trials(deepcopy=False))
            counts = state_counts(trials)
            finished = counts["COMPLETE"] + counts["PRUNED"]
            if finished >= settings.n_trials:
                return None, "n_trials"
            if settings.max_epochs is not None and epochs_total(trials) >= settings.max_epochs:
                return None, "max_epochs"
            if finished + counts["RUNNING"] >= settings.n_trials:
                return None, None
            trial = _ask(study)
            # Beat once before the lock is released: a worker killed from here on leaves a
            # trial the others can recognise as stale.
            self.storage.record_heartbeat(_trial_id(self.storage, study, trial))
            return trial, None

    def _run_trial(self, trial) -> dict:
        import keras
        import optuna
        from optuna.trial import TrialState

        from dlagent.ml.callbacks import EpochPruningCallback
        from dlagent.ml.training import evaluate, fit

        settings, study, tracker, objective = self.settings, self.study, self.tracker, self.objective
        started = time.monotonic()
        trial_id = _trial_id(self.storage, study, trial)
        retry_of = self.storage.get_trial_system_attrs(trial_id).get("failed_trial")  # set by the retry callback
        params = suggest_params(trial, objective.space)
        trial.set_user_attr("worker", self.worker)
        state, value, error, reason = TrialState.FAIL, None, None, None
        epochs_run, test_accuracy, run_id = 0, None, None
        pruning = EpochPruningCallback(trial, objective.metric)
        with Heartbeat(self.storage, trial_id, settings.heartbeat_interval):
            try:
                # One network a trial (unless the space tunes ``ensemble``): trials compare settings, an ensemble is the final model's.
                config = settings.base_config.replace(**{"ensemble": 1, **params})
                if tracker is not None:
                    run_id = tracker.start(trial, config, retry_of, splits=self.splits)
                extra = [tracker.epoch_logger(run_id)] if run_id else []
                # The MLflow logger runs before the pruner, so a pruned trial's last epoch is logged.
                result = fit(self.splits, config, callbacks=[*self.callbacks, *extra, pruning], source_model=self.source_model)
                epochs_run = result.epochs_run
                kept = result.kept_epoch  # the epoch whose weights the trial ends with
                value = float(result.history[objective.metric][kept])
                if math.isfinite(value):
                    state = TrialState.COMPLETE
                    if settings.record_test_accuracy:
                        test_accuracy = evaluate(result.model, self.splits).get("test_accuracy")
                    if tracker is not None and run_id and beats_best(study, value, objective.direction):
                        tracker.save_checkpoint(run_id, result.model)
                else:
                    reason = f"{objective.metric} is {value}"
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
        shown = f", {objective.metric}={value:.4f}" if value is not None and state == TrialState.COMPLETE else ""
        log.info("trial %d %s after %d epochs%s (params %s)", trial.number, state.name, epochs_run, shown, params)
        if error is not None:
            raise error
        return {"number": trial.number, "state": state.name, "epochs_run": epochs_run}


def derive_seed(seed: int, worker_index: int, n_existing: int) -> int:
    """The sampler seed of worker ``worker_index`` joining a study that holds ``n_existing`` trials."""
    if worker_index == 0 and n_existing == 0:
        return seed
    digest = hashlib.sha256(f"{seed}/{worker_index}/{n_existing}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31 - 1)


def _count_by(values) -> dict:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


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


class Heartbeat:
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
