"""Federated training as Airflow tasks: set up, then per round train each site and average; finalize.

Each round is a task group of ``dl_agent_federated``: one mapped local-training task per site
and the aggregation, which also plans the next round (the setup plans the first). Only weights (as MLflow artifact URIs),
sample counts and metrics travel between them; a site's rows, and the path it read them from,
stay inside its own task. The finalized global model is logged like a trained one, so the
pipeline's compress, evaluate and deploy tasks take it unchanged.

- :mod:`.common`: the settings every task validates, a site's rows, and the round planning;
- :mod:`.setup`: before the rounds (validate, each site's check, the round-0 model);
- :mod:`.rounds`: a round's local update and aggregation, and the finalized model.

The ML work is :mod:`dlagent.ml.federated`; the round plan is :mod:`dlagent.agent.federated`.
"""

from dlagent.operators.federated.common import ROUND_RESULT_KEY, round_group_id
from dlagent.operators.federated.rounds import (
    FederatedAggregateOperator,
    FederatedFinalizeOperator,
    FederatedLocalOperator,
)
from dlagent.operators.federated.setup import FederatedSetupOperator, FederatedSiteCheckOperator, FederatedValidateOperator

__all__ = [
    "ROUND_RESULT_KEY",
    "FederatedAggregateOperator",
    "FederatedFinalizeOperator",
    "FederatedLocalOperator",
    "FederatedSetupOperator",
    "FederatedSiteCheckOperator",
    "FederatedValidateOperator",
    "round_group_id",
]
