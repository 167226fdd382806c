"""The whole federated loop in one process: what a benchmark, a test or a notebook runs.

The Airflow DAG runs the same steps as tasks (one local update per site, one aggregation per
round); this loop is the reference they are checked against.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from dlagent.ml.config import TrainConfig
from dlagent.ml.federated.aggregate import select_sites, update_bytes, weighted_average
from dlagent.ml.federated.local import local_update
from dlagent.ml.federated.settings import FederatedConfig

log = logging.getLogger(__name__)


@dataclass
class FederatedResult:
    model: object
    history: list = field(default_factory=list)  # per round: sites, their samples, val scores, bytes

    @property
    def rounds_run(self) -> int:
        return len(self.history)


def global_scores(model, x: np.ndarray, y: np.ndarray, task: str, primary) -> dict:
    """The global model's ``val_``/``test_`` style scores on a held-out split (keys as ``report_scores``, ``test_`` prefix)."""
    from dlagent.ml.metrics import report_scores
    from dlagent.ml.models import keras_predict

    return report_scores(task, y, keras_predict(model, x), primary)


def run_federated(model, shards: Sequence[tuple[np.ndarray, np.ndarray]], x_val: np.ndarray, y_val: np.ndarray, *,
                  config: TrainConfig, federated: FederatedConfig, task: str = "classification", primary=None,
                  on_round: Callable[[dict], bool | None] | None = None) -> FederatedResult:
    """Train ``model`` (freshly built: its weights are round 0's global model) over ``federated.rounds``.

    Each round draws its sites (:func:`select_sites`), trains each from the global weights on
    its shard (:func:`local_update`), averages the updates by sample count and scores the new
    global model on the validation split. ``on_round(record)`` sees each round's record and may
    return ``True`` to stop early (the agent's convergence check).
    """
    from dlagent.ml.metrics import get_metric

    primary = primary or get_metric("rmse" if task == "regression" else "accuracy")
    global_weights = model.get_weights()
    result = FederatedResult(model=model)
    for round_number in range(1, federated.rounds + 1):
        sites = select_sites(federated.n_shards, federated.sites_per_round, round_number, federated.seed)
        updates = []
        for site in sites:
            x, y = shards[site]
            updates.append(local_update(model, global_weights, x, y, config=config, epochs=federated.local_epochs,
                                        mu=federated.mu, seed=federated.seed * 1000 + round_number * 64 + site, task=task))
        global_weights = weighted_average([(u.weights, u.samples) for u in updates])
        model.set_weights(global_weights)
        scores = global_scores(model, x_val, y_val, task, primary)
        record = {"round": round_number, "sites": sites, "samples": [u.samples for u in updates],
                  "train_loss": [u.metrics["train_loss"] for u in updates],
                  "val": {key.replace("test_", "val_", 1): value for key, value in scores.items()},
                  "bytes_per_site": update_bytes(global_weights)}
        result.history.append(record)
        log.info("round %d: sites %s, val %s", round_number, sites, record["val"])
        if on_round is not None and on_round(record):
            break
    return result
