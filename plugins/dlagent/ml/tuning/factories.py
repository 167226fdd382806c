"""Optuna's moving parts by name: the sampler, the pruner and the RDB storage (with heartbeats).

Each factory checks its arguments before it builds anything, so a bad name or number is
refused with the field and the fix, never deep inside Optuna.
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Any

from dlagent.errors import ConfigError
from dlagent.ml.tuning.settings import (
    DEFAULT_GRACE_PERIOD,
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_MAX_RETRY,
    DEFAULT_PRUNER,
    PRUNERS,
    SAMPLERS,
)
from dlagent.settings import redact_url
from dlagent.validation import check_int

log = logging.getLogger(__name__)

DEFAULT_REDUCTION_FACTOR = 3
MEDIAN_STARTUP_TRIALS = 3  # the median pruner prunes nothing before this many trials finished


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
    check_int("seed", seed, low=0, optional=True)
    check_int("n_startup_trials", n_startup_trials, low=0, optional=True)
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


def make_pruner(name: str = DEFAULT_PRUNER, min_resource: int = 1, max_resource: int = 20, *, reduction_factor: int = DEFAULT_REDUCTION_FACTOR):
    """An Optuna pruner by name: ``successive_halving`` (default), ``hyperband``, ``median`` or ``none``.

    Resources are epochs: no trial is pruned before ``min_resource`` epochs, and
    ``max_resource`` is the most epochs a trial trains (Hyperband's brackets derive from it).
    Hyperband runs successive halving in several brackets and compares a trial only with the
    trials of its own bracket: with a budget of a few trials most of them have no rival yet and
    nothing is pruned. ``successive_halving`` is one bracket (rungs at ``min_resource`` times
    powers of ``reduction_factor``): from the second trial on, a trial that is not in the top
    ``1/reduction_factor`` of those that reached its rung (at least the best one) stops there.
    """
    import optuna

    if name not in PRUNERS:
        raise ConfigError("pruner", f"unknown pruner {name!r}.", f"use one of {list(PRUNERS)}.")
    check_int("min_resource", min_resource, low=1)
    check_int("max_resource", max_resource, low=1)
    if min_resource > max_resource:
        raise ConfigError("min_resource", f"must be <= max_resource ({max_resource}), got {min_resource}.", "lower min_resource or raise the epochs.")
    check_int("reduction_factor", reduction_factor, low=2)
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=min_resource)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=reduction_factor)
    return optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=max_resource, reduction_factor=reduction_factor)


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
    Workers pass ``create_tables=False``: only ``create_study`` creates tables, because
    concurrent table creation races on PostgreSQL.
    """
    import optuna

    from dlagent.ml.locks import sqlite_path

    if not isinstance(url, str) or "://" not in url:
        raise ConfigError("storage_url", f"must be a SQLAlchemy URL, got {url!r}.", "use e.g. 'sqlite:///optuna.db' or 'postgresql+psycopg2://user@host/db'.")
    check_int("heartbeat_interval", heartbeat_interval, low=1, optional=True)
    check_int("grace_period", grace_period, low=1, optional=True)
    check_int("max_retry", max_retry, low=0, optional=True)
    if heartbeat_interval is not None and grace_period is not None and grace_period <= heartbeat_interval:
        raise ConfigError("grace_period", f"must be longer than heartbeat_interval ({heartbeat_interval} s), got {grace_period} s.", "use at least two heartbeat intervals.")
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        database = sqlite_path(url)
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
            callback = StaleTrialCallback(retry, on_stale_trial)
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


@functools.lru_cache(maxsize=32)
def reading_storage(url: str):
    """A storage without heartbeats or table creation, one per URL per process.

    Reports and reads (a summary, a loaded study, a worker polling its study) reuse it instead
    of opening an engine, and its pool of connections, per call: a loop that reads a study
    every few seconds would otherwise use up PostgreSQL's connections.
    """
    return make_storage(url, heartbeat_interval=None, create_tables=False)


class StaleTrialCallback:
    """Optuna's retry callback, then ours (both get the stale trial after it was set FAIL)."""

    def __init__(self, retry, extra):
        self.retry = retry
        self.extra = extra

    def __call__(self, study, trial) -> None:
        log.warning("trial %d of study %r stopped beating (its worker died): marked FAIL and re-queued", trial.number, study.study_name)
        self.retry(study, trial)
        if self.extra is not None:
            self.extra(study, trial)
