"""Where a learning policy keeps its rewards: ``(context, arm, reward)`` records.

* :class:`MLflowStateStore` (what the pipeline uses): one run named ``agent-policy-state``
  (tag ``dlagent.kind = agent-policy-state``, found again by tag ``dlagent.key``) in the
  pipeline's experiment. Each reward is **appended** as a point of the metric
  ``reward/<context>/<arm>`` (MLflow metric histories are append-only, so two DAG runs
  rewarding at once lose nothing, unlike a read-modify-write JSON blob); the state is the
  replay of those histories. Idempotency keys are tags ``dlagent.reward_key.<sha1>``.
  The rewards are visible as charts in the MLflow UI.
* :class:`MemoryStateStore`: in-process (notebooks, tests, benchmarks).
"""

from __future__ import annotations

import hashlib

from dlagent.errors import ConfigError
from dlagent.ml import mlflow_names as names

STATE_RUN_NAME = names.POLICY_STATE_RUN_NAME
REWARD_PREFIX = names.REWARD_METRIC_PREFIX


# --------------------------------------------------------------------------- state stores


class MemoryStateStore:
    """Rewards kept in this process."""

    def __init__(self):
        self._records: list[tuple[str, str, float]] = []
        self._keys: set[str] = set()

    def records(self) -> list[tuple[str, str, float]]:
        return list(self._records)

    def record(self, context: str, arm: str, reward: float, key: str | None = None) -> bool:
        if key is not None and key in self._keys:
            return False
        self._records.append((context, arm, float(reward)))
        if key is not None:
            self._keys.add(key)
        return True


class MLflowStateStore:
    """Rewards as append-only metric histories of one ``agent-policy-state`` run (see module doc).

    :param client: an ``MlflowClient`` (``MLflowHook(...).client`` in a task).
    :param experiment_id: the experiment holding the state run (the pipeline's).
    :param policy_key: separates independent bandits in one experiment.
    """

    def __init__(self, client, experiment_id: str, *, policy_key: str = "learning"):
        if not isinstance(experiment_id, str) or not experiment_id:
            raise ConfigError("experiment_id", f"must be an MLflow experiment id, got {experiment_id!r}.", "pass hook.get_experiment_id(name).")
        if not isinstance(policy_key, str) or not policy_key or len(policy_key) > 200:
            raise ConfigError("policy_key", f"must be a short non-empty string, got {policy_key!r}.", "give e.g. 'learning'.")
        self.client = client
        self.experiment_id = experiment_id
        self.policy_key = policy_key
        self._run_id: str | None = None

    @property
    def key(self) -> str:
        return f"{STATE_RUN_NAME}/{self.policy_key}"

    def run_id(self, *, create: bool = True) -> str | None:
        """The state run's id (created, FINISHED, on first write; ``None`` if absent and not creating)."""
        if self._run_id is not None:
            return self._run_id
        run = names.find_run(self.client, self.experiment_id, self.key)
        if run is None:
            if not create:
                return None
            run = self.client.create_run(self.experiment_id, run_name=STATE_RUN_NAME,
                                         tags={names.RUN_KEY_TAG: self.key, names.KIND_TAG: names.KIND_POLICY_STATE,
                                               names.POLICY_TAG: self.policy_key})
            self.client.set_terminated(run.info.run_id, status="FINISHED")
            # Two first writers may race to create it: the oldest run with the key wins.
            winner = names.find_run(self.client, self.experiment_id, self.key)
            if winner is not None and winner.info.run_id != run.info.run_id:
                self.client.delete_run(run.info.run_id)
                run = winner
        self._run_id = run.info.run_id
        return self._run_id

    def records(self) -> list[tuple[str, str, float]]:
        run_id = self.run_id(create=False)
        if run_id is None:
            return []
        run = self.client.get_run(run_id)
        points = []
        for metric in sorted(run.data.metrics):
            if not metric.startswith(REWARD_PREFIX):
                continue
            parts = metric[len(REWARD_PREFIX):].split("/")
            if len(parts) != 2:
                continue
            context, arm = parts
            for m in self.client.get_metric_history(run_id, metric):
                points.append((m.timestamp, m.step, context, arm, float(m.value)))
        points.sort()
        return [(c, a, v) for _, _, c, a, v in points]

    def record(self, context: str, arm: str, reward: float, key: str | None = None) -> bool:
        import time

        from mlflow.entities import Metric

        run_id = self.run_id()
        tag = None
        if key is not None:
            tag = names.REWARD_KEY_TAG_PREFIX + hashlib.sha1(key.encode()).hexdigest()[:16]
            if tag in self.client.get_run(run_id).data.tags:
                return False
        metric = f"{REWARD_PREFIX}{context}/{arm}"
        step = len(self.client.get_metric_history(run_id, metric))  # informational: the n-th reward of this arm here
        self.client.log_batch(run_id, metrics=[Metric(metric, float(reward), int(time.time() * 1000), step)])
        if tag is not None:
            self.client.set_tag(run_id, tag, key[:500])
        return True
