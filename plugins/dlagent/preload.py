"""What a warm worker imports once, before it forks task processes (a Celery worker,
:mod:`dlagent.celery_config`; the LocalExecutor's scheduler, :mod:`dlagent.executors`):
TensorFlow, Keras, the MLflow client and the dlagent modules a task that trains, averages,
compresses or evaluates a model reads; and every process forked from then on dies with the
process that forked it (:func:`_die_with_parent`).

Only imports: no TensorFlow op runs here, so TensorFlow's eager context and its thread pools do
not exist yet when the worker forks (a runtime created before ``fork`` is not safe to use in the
child; an imported library is). :func:`check_fork_safe` asserts that, and the worker runs it
right after importing, so a TensorFlow that one day starts its runtime on import stops the
worker at start-up with a clear message instead of hanging its tasks.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
_forking_pid = os.getpid()  # the process about to fork (set again before each fork)


def _note_parent() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()  # loaded once here, not in every forked child


def _die_with_parent() -> None:
    """In a child this process forked: ask Linux to SIGKILL it when the forking process dies.

    Airflow 3.3's supervisor puts each task process in a process group of its own, so a task
    whose supervisor died (its scheduler or Celery worker killed) would run on as an orphan: its
    logs go nowhere, nobody reports its state, and the retry Airflow starts runs beside it. A
    task process that starts instantly (preloaded) gets far that way (a whole tuning round). With
    this, a killed scheduler takes its LocalExecutor workers, their supervisors and their task
    processes with it, as a killed Celery worker takes its pool's, and the retry runs alone."""
    prctl = getattr(_LIBC, "prctl", None)
    if prctl is None:  # not Linux: the orphan case stays as Airflow leaves it
        return
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != _forking_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def _preload() -> float:
    started = time.perf_counter()
    import keras  # noqa: F401
    import mlflow  # noqa: F401
    import tensorflow  # noqa: F401

    import dlagent.ml.compression  # noqa: F401
    import dlagent.ml.evaluation  # noqa: F401
    import dlagent.ml.federated.local  # noqa: F401
    import dlagent.ml.model_store  # noqa: F401
    import dlagent.ml.training  # noqa: F401

    return time.perf_counter() - started


def check_fork_safe() -> None:
    """Raise ``RuntimeError`` when TensorFlow's eager runtime already exists in this process."""
    from tensorflow.python.eager import context

    made = context._context  # noqa: SLF001 (TensorFlow has no public "initialized?"; context.context() would create it)
    if made is not None and made._context_handle is not None:  # noqa: SLF001
        raise RuntimeError("TensorFlow's runtime was started before the worker forked its task processes, which would not be "
                           "safe: run without dlagent's warm workers (AIRFLOW__CORE__EXECUTOR=LocalExecutor, or unset "
                           "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS) and report this.")


SECONDS = _preload()
check_fork_safe()
os.register_at_fork(before=_note_parent, after_in_child=_die_with_parent)
log.info("dlagent: TensorFlow, Keras and MLflow preloaded in %.1f s; task processes fork with them", SECONDS)
