"""Celery configuration for dlagent's workers: Airflow's own, plus warm task processes.

Set it on every Airflow component of a Celery deployment (the scheduler reads it too, to
create its Celery app; only the workers act on it)::

    AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=dlagent.celery_config.CELERY_CONFIG

Why: an Airflow 3 Celery worker forks a fresh process for every task instance (the Task SDK's
supervisor), and a dlagent task that touches a model then imports TensorFlow, Keras and the
MLflow client anew, 4-5 s of CPU on every task before any work. With this configuration the
worker imports them once when it starts (Celery's ``imports``: :mod:`dlagent.preload`), before
its pool forks, so every task process starts with them loaded. Importing runs no TensorFlow op
and starts none of its thread pools, so the forked task processes are as safe as a fresh
interpreter (:mod:`dlagent.preload` says what it checks). Everything else is Airflow's default
configuration, read from ``airflow.cfg`` as usual.

This module itself imports nothing heavy: the scheduler and the API server import it too.
"""

from __future__ import annotations

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

PRELOAD_MODULE = "dlagent.preload"

CELERY_CONFIG = {**DEFAULT_CELERY_CONFIG,
                 "imports": (*tuple(DEFAULT_CELERY_CONFIG.get("imports") or ()), PRELOAD_MODULE)}
