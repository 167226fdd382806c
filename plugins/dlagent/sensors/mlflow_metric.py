"""MLflowMetricSensor: wait until something holds in MLflow (a run finished, a metric crossed a
threshold, a metric drifted), in poke, reschedule or deferrable mode.

The condition is built from the sensor's (templated) arguments by
:func:`dlagent.ml.conditions.build_condition` and checked by
:func:`dlagent.ml.conditions.check_condition`, the same function the trigger runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue, conf

from dlagent.hooks.mlflow import MLflowHook
from dlagent.settings import redact_url

EVENT_STATUSES = ("success", "error", "timeout")


class MLflowMetricSensor(BaseSensorOperator):
    """Wait for a condition on MLflow; return what was seen as a small JSON dict (XCom).

    What to watch (exactly one):

    :param run_id: a run (templated).
    :param experiment_name: the latest run of this experiment carrying ``run_tags`` (templated).
    :param model_name: the model version under registry alias ``alias`` (templated).

    What must hold:

    - no ``metric``: the run has finished (status FINISHED);
    - ``metric`` with ``op`` (``>=``, ``<=``, ``>``, ``<``) and ``threshold``: the metric's latest
      value crosses the threshold;
    - ``metric`` with ``reference`` and ``max_drift`` (``relative`` to divide by the reference):
      the metric moved more than ``max_drift`` away from ``reference``.

    :param mlflow_conn_id: the MLflow Connection (see :class:`~dlagent.hooks.mlflow.MLflowHook`).
    :param deferrable: wait in the triggerer (:class:`~dlagent.triggers.mlflow_metric.MLflowMetricTrigger`)
        instead of a worker slot; defaults to Airflow's ``[operators] default_deferrable``.
    :param poke_interval, timeout, mode, soft_fail: as for every sensor; in deferrable mode the
        trigger polls every ``poke_interval`` seconds and gives up after ``timeout``.

    Returns ``{"met": true, "kind", "value", "run_id", "run_status", "model_version", "message", ...}``.
    A run that ended FAILED or KILLED without meeting the condition fails the task at once
    (skipped with ``soft_fail``) instead of waiting for the timeout.
    """

    template_fields: Sequence[str] = ("run_id", "experiment_name", "run_tags", "model_name", "alias", "metric",
                                      "op", "threshold", "reference", "max_drift")
    ui_color = "#d5f0f5"

    def __init__(self, *, run_id: str | None = None, experiment_name: str | None = None, run_tags: dict | None = None,
                 model_name: str | None = None, alias: str = "champion", metric: str | None = None, op: str = ">=",
                 threshold: float | str | None = None, reference: float | str | None = None,
                 max_drift: float | str | None = None, relative: bool = False,
                 mlflow_conn_id: str = MLflowHook.default_conn_name,
                 deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False), **kwargs):
        super().__init__(**kwargs)
        self.run_id = run_id
        self.experiment_name = experiment_name
        self.run_tags = run_tags
        self.model_name = model_name
        self.alias = alias
        self.metric = metric
        self.op = op
        self.threshold = threshold
        self.reference = reference
        self.max_drift = max_drift
        self.relative = relative
        self.mlflow_conn_id = mlflow_conn_id
        self.deferrable = deferrable

    @cached_property
    def hook(self) -> MLflowHook:
        return MLflowHook(mlflow_conn_id=self.mlflow_conn_id)

    def condition(self) -> dict:
        """The validated condition (after templating); bad input fails the task without retries."""
        from airflow.sdk.exceptions import AirflowFailException

        from dlagent.errors import ConfigError
        from dlagent.ml.conditions import build_condition

        try:
            return build_condition(run_id=self.run_id, experiment_name=self.experiment_name, run_tags=self.run_tags,
                                   model_name=self.model_name, alias=self.alias, metric=self.metric, op=self.op,
                                   threshold=self.threshold, reference=self.reference, max_drift=self.max_drift,
                                   relative=self.relative)
        except ConfigError as exc:
            raise AirflowFailException(f"invalid sensor arguments: {exc}") from exc

    def _check(self, condition: dict) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from dlagent.ml.conditions import ConditionError, check_condition

        try:
            return check_condition(self.hook.client, condition)
        except ConditionError as exc:
            raise AirflowFailException(str(exc)) from exc

    def poke(self, context) -> PokeReturnValue:
        result = self._check(self.condition())
        self.log.info("%s (MLflow %s)", result["message"], redact_url(self.hook.tracking_uri))
        return PokeReturnValue(is_done=result["met"], xcom_value=result if result["met"] else None)

    def execute(self, context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        from airflow.sdk.exceptions import AirflowFailException

        from dlagent.triggers.mlflow_metric import MLflowMetricTrigger

        condition = self.condition()
        try:
            result = self._check(condition)  # already true: no need to defer
        except AirflowFailException:
            if self.soft_fail:
                from airflow.sdk.exceptions import AirflowSkipException

                raise AirflowSkipException("Skipping due to soft_fail is set to True.") from None
            raise
        if result["met"]:
            self.log.info("%s", result["message"])
            return result
        self.log.info("%s; deferring to the triggerer (poll every %ss, timeout %ss)", result["message"], self.poke_interval, self.timeout)
        self.defer(
            trigger=MLflowMetricTrigger(tracking_uri=self.hook.tracking_uri, condition=condition,
                                        poll_interval=max(self.poke_interval, 0.1), timeout=self.timeout),
            method_name="execute_complete",
            # The trigger times out itself with a clear message; Airflow's limit is the backstop.
            timeout=timedelta(seconds=self.timeout + max(60.0, 2 * self.poke_interval)),
        )

    def execute_complete(self, context, event: dict | None = None) -> dict:
        """Resume after the trigger: reject a missing or unknown event first."""
        from airflow.sdk.exceptions import AirflowException, AirflowSensorTimeout

        if not isinstance(event, dict) or "status" not in event:
            raise AirflowException(f"MLflowMetricSensor resumed without a trigger event (got {event!r}).")
        status = event["status"]
        if status not in EVENT_STATUSES:
            raise AirflowException(f"MLflowMetricSensor got an unknown trigger event status {status!r}: {event!r}.")
        message = event.get("message", "")
        if status == "timeout":
            raise AirflowSensorTimeout(f"MLflow condition not met in time: {message}")
        if status == "error":
            raise AirflowException(f"MLflow condition check failed: {message}")
        self.log.info("%s", message)
        return event.get("result") or {"met": True, "message": message}
