"""MLflowMetricTrigger: wait, in the triggerer, until a condition on MLflow holds.

The check is :func:`dlagent.ml.conditions.check_condition` (the same one the sensor's
``poke`` uses), run in a worker thread through ``asgiref.sync.sync_to_async`` so the blocking
``MlflowClient`` never stalls the triggerer's event loop.

Exactly one event is yielded::

    {"status": "success", "message": ..., "result": {...check result...}}
    {"status": "timeout", "message": ..., "result": {...last check...}, "timeout": seconds}
    {"status": "error",   "message": ..., "condition": {...}}

The timeout is measured with ``time.monotonic()`` from the start of :meth:`run`; a trigger
restarted on another triggerer starts a new timeout, which is why the sensor also passes its
timeout to ``defer()`` (Airflow then ends the wait even if the trigger keeps being restarted).
Checking has no side effects, so a trigger that runs twice is harmless.

Credentials: only ``tracking_uri`` is serialized. A tracking server with basic auth takes
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` from the triggerer's environment
(never from the serialized kwargs, which are stored in Airflow's database).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from dlagent.settings import redact_text, redact_url

CLASSPATH = "dlagent.triggers.mlflow_metric.MLflowMetricTrigger"


class MLflowMetricTrigger(BaseTrigger):
    """Poll MLflow every ``poll_interval`` seconds until ``condition`` holds or ``timeout`` passes.

    :param tracking_uri: the MLflow tracking URI (``MLflowHook(...).tracking_uri``).
    :param condition: a condition dict (see :mod:`dlagent.ml.conditions`).
    :param poll_interval: seconds between checks (> 0).
    :param timeout: seconds before a ``timeout`` event; ``None`` waits forever.
    """

    def __init__(self, *, tracking_uri: str, condition: dict, poll_interval: float = 60.0, timeout: float | None = None):
        super().__init__()
        self.tracking_uri = tracking_uri
        self.condition = condition
        self.poll_interval = float(poll_interval)
        self.timeout = None if timeout is None else float(timeout)
        self._client = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            CLASSPATH,
            {"tracking_uri": self.tracking_uri, "condition": self.condition,
             "poll_interval": self.poll_interval, "timeout": self.timeout},
        )

    def _check(self, condition: dict) -> dict:
        """Blocking: runs in a worker thread."""
        from mlflow import MlflowClient

        from dlagent.ml.conditions import check_condition

        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return check_condition(self._client, condition)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from asgiref.sync import sync_to_async

        from dlagent.errors import ConfigError
        from dlagent.ml.conditions import ConditionError, validate_condition

        started = time.monotonic()
        try:
            condition = validate_condition(self.condition)
            if not isinstance(self.tracking_uri, str) or not self.tracking_uri:
                raise ConfigError("tracking_uri", f"must be an MLflow tracking URI, got {self.tracking_uri!r}.", "pass MLflowHook().tracking_uri.")
            if not self.poll_interval > 0:
                raise ConfigError("poll_interval", f"must be > 0 seconds, got {self.poll_interval}.", "give e.g. 60.")
        except ConfigError as exc:
            yield TriggerEvent({"status": "error", "message": f"invalid trigger arguments: {exc}", "condition": self.condition})
            return
        check = sync_to_async(self._check, thread_sensitive=False)
        polls = 0
        while True:
            polls += 1
            try:
                result = await check(condition)
            except ConditionError as exc:
                yield TriggerEvent({"status": "error", "message": str(exc), "condition": condition})
                return
            except Exception as exc:  # noqa: BLE001 - reported as the one error event
                self.log.warning("MLflow check failed at %s: %s", redact_url(self.tracking_uri), redact_text(exc))
                yield TriggerEvent({"status": "error", "condition": condition,
                                    "message": f"MLflow at {redact_url(self.tracking_uri)} could not be read: {type(exc).__name__}: {redact_text(exc)}"})
                return
            if result["met"]:
                self.log.info("condition met after %d checks: %s", polls, result["message"])
                yield TriggerEvent({"status": "success", "message": result["message"], "result": result})
                return
            elapsed = time.monotonic() - started
            if self.timeout is not None and elapsed >= self.timeout:
                yield TriggerEvent({"status": "timeout", "timeout": self.timeout, "result": result,
                                    "message": f"condition not met after {elapsed:.1f}s (timeout {self.timeout:g}s, {polls} checks): {result['message']}"})
                return
            self.log.debug("%s; next check in %.1fs", result["message"], self.poll_interval)
            wait = self.poll_interval if self.timeout is None else min(self.poll_interval, max(0.0, self.timeout - elapsed))
            await asyncio.sleep(wait)
