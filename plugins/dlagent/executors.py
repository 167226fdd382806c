"""``WarmLocalExecutor``: Airflow's LocalExecutor whose worker processes start with TensorFlow,
Keras and MLflow already imported.

Use it as the executor of a single-machine deployment (what ``make ui`` starts)::

    AIRFLOW__CORE__EXECUTOR=dlagent.executors.WarmLocalExecutor

Why: the LocalExecutor forks its worker processes from the scheduler, and each worker forks a
fresh process per task instance (the Task SDK's supervisor); a dlagent task that touches a model
then imports TensorFlow, Keras and the MLflow client anew, 4-5 s of CPU before any work. This
executor imports them (:mod:`dlagent.preload`) in the scheduler once, just before the workers
are forked, so every task process starts with them loaded. The scheduler itself never runs a
TensorFlow op (:func:`dlagent.preload.check_fork_safe` checks it at start). The Celery
counterpart is :mod:`dlagent.celery_config`.

Where ``multiprocessing`` does not fork (macOS, or Python 3.14's default), the workers start
fresh interpreters and nothing is preloaded: it then runs as the plain LocalExecutor and says so.
Importing this module imports nothing heavy: every Airflow component that reads the executor
setting imports it.
"""

from __future__ import annotations

from airflow.executors.local_executor import LocalExecutor


class WarmLocalExecutor(LocalExecutor):
    """LocalExecutor with TensorFlow, Keras and MLflow imported before its workers fork."""

    def start(self) -> None:
        if self.is_mp_using_fork:
            import dlagent.preload

            self.log.info("dlagent: TensorFlow, Keras and MLflow preloaded in %.1f s for the task processes", dlagent.preload.SECONDS)
        else:
            self.log.warning("dlagent: multiprocessing does not fork here; the task processes import TensorFlow themselves")
        super().start()
