"""What every federated task shares: the validated settings, a site's training rows, the base operator."""

from __future__ import annotations

from collections.abc import Sequence

from dlagent.errors import ConfigError
from dlagent.operators.base import DlagentOperator


def federated_settings(train_config: dict | None, federated: dict | None, site_datasets):
    """The validated training and federated settings (``n_shards`` is the sites' count when they are named)."""
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.federated.settings import FederatedConfig

    config = TrainConfig.from_dict(dict(train_config or {}))
    if config.ensemble is not None and config.ensemble > 1:
        raise ConfigError("ensemble", f"is {config.ensemble}: federated rounds average one network's weights across the sites.",
                          "leave ensemble empty or 1.")
    config = config.replace(ensemble=1)  # the mlp's default ensemble is for a central training (dlagent.ml.ensemble)
    values = dict(federated or {})
    sites = list(site_datasets or [])
    if sites:
        for index, uri in enumerate(sites):
            if not isinstance(uri, str) or not uri.strip():
                raise ConfigError(f"site_datasets[{index}]", f"must be a data set URI, got {uri!r}.", "give e.g. 'npz:/site-a/data.npz'.")
        values["n_shards"] = len(sites)
    return config, FederatedConfig.from_dict(values), sites


def site_rows(dataset: str, site_datasets: list, data_options: dict | None, config, federated, site: int, allowed_roots):
    """The training rows of ``site``: its own data set's training split, or its shard of ``dataset``'s."""
    from dlagent.ml.data import load_dataset_with_options
    from dlagent.ml.federated.shards import partition

    if site_datasets:
        from dlagent.ml.streaming import is_streamed

        splits = load_dataset_with_options(site_datasets[site], data_options, seed=config.seed, allowed_roots=allowed_roots)
        if is_streamed(splits.x_train):
            raise ConfigError(f"site_datasets[{site}]", "federated training holds each site's rows in memory; this site's data set "
                              "is streamed (larger than the cache budget, or cache 'stream').",
                              "set the data option cache to 'memory' (if it fits), or split the site's file.")
        return splits.x_train, splits.y_train, splits
    splits = load_dataset_with_options(dataset, data_options, seed=config.seed, allowed_roots=allowed_roots)
    rows = partition(splits.y_train, federated.n_shards, federated.partition, seed=federated.seed, alpha=federated.skew_alpha,
                     regression=splits.is_regression)[site]
    return splits.x_train[rows], splits.y_train[rows], splits


class FederatedOperator(DlagentOperator):
    """The fields every federated task takes (the coordinator's ``dataset``, the sites' URIs, the
    data options, the training and federated settings), validated again in each task by
    :meth:`settings`: a task is a process of its own and may run on a site's worker."""

    template_fields: Sequence[str] = ("experiment_name", "dataset", "site_datasets", "data_options", "train_config", "federated")
    ui_color = "#e3f1e8"

    def __init__(self, *, dataset: str = "digits", site_datasets: list | None = None, data_options: dict | None = None,
                 train_config: dict | None = None, federated: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.dataset = dataset
        self.site_datasets = site_datasets
        self.data_options = data_options
        self.train_config = train_config
        self.federated = federated

    def settings(self):
        return federated_settings(self.train_config, self.federated, self.site_datasets)

    def evaluation_splits(self, config):
        """The coordinator's held-out data: ``dataset``'s validation and test splits."""
        from dlagent import settings
        from dlagent.ml.data import load_dataset_with_options

        return load_dataset_with_options(self.dataset, self.data_options, seed=config.seed, allowed_roots=settings.data_roots())


ROUND_RESULT_KEY = "round_result"  # the XCom of a round's record (the setup's: round 0), beside the next round's assignments
ROUND_GROUP_PREFIX = "round_"  # dl_agent_federated's task group of round n is round_group_id(n): round_01, round_02, ...


def round_group_id(round_number: int) -> str:
    """The task group of one round in ``dl_agent_federated`` (its tasks are ``<group>.local`` and ``<group>.aggregate``)."""
    return f"{ROUND_GROUP_PREFIX}{round_number:02d}"


class RoundPlanningOperator(FederatedOperator):
    """A task whose return value is the next round's plan: the setup (round 1) and each round's
    aggregation (the round after it). Planning inside them, not in a task of its own, saves each
    round a task process and a scheduling gap, which run alone between the sites' tasks and so
    bound what more workers can gain (``bench/federated.py --parts workers``).

    The return value is one assignment per site (the round plan, ``site`` and the global weights'
    URI): the next round's ``local`` task expands over it, and a site not drawn returns nothing.
    When the agent stops (or the Params' rounds have run) it is empty, so Airflow skips the next
    round's tasks and every later round's. The round's own record goes to the XCom
    :data:`ROUND_RESULT_KEY`.

    :param policy: ``rules`` (:mod:`dlagent.agent.federated`) or ``off`` (the Params as given).
    """

    template_fields: Sequence[str] = (*FederatedOperator.template_fields, "policy")

    def __init__(self, *, policy: str = "rules", **kwargs):
        super().__init__(**kwargs)
        self.policy = policy

    def plan_next_round(self, context, config, federated, record: dict) -> list[dict]:
        """Plan the round after ``record`` (``{"round", "global_uri", "history", "metric"}``), log
        the plan with its reasons (task log and the parent run's ``round_plan.json``), push
        ``record`` as :data:`ROUND_RESULT_KEY` and return the assignments (empty: stop)."""
        from dlagent.agent.federated import plan_round
        from dlagent.ml import mlflow_names as names
        from dlagent.ml.federated.aggregate import select_sites
        from dlagent.ml.metrics import get_metric

        round_number = int(record["round"]) + 1
        metric = get_metric(record["metric"])
        plan = plan_round(list(record["history"]), round_number=round_number, rounds=federated.rounds,
                          local_epochs=federated.local_epochs, learning_rate=config.learning_rate,
                          sites_per_round=federated.sites_per_round, n_sites=federated.n_shards, metric=metric.name,
                          higher_is_better=metric.higher_is_better, relative=metric.relative_points, policy=self.policy)
        for reason in plan.reasons:
            self.log.info("round %d, agent (%s): %s", round_number, self.policy, reason)
        self.hook.client.log_dict(self.parent_run_id(context), plan.to_dict(), names.federated_plan_file(round_number))
        self.push_xcom(context, ROUND_RESULT_KEY, record)
        if plan.action == "stop":
            self.log.info("round %d and every later round are not run: their tasks are skipped", round_number)
            return []
        sites = select_sites(federated.n_shards, plan.sites_per_round, round_number, federated.seed)
        shared = {**plan.to_dict(), "sites": sites, "global_uri": record["global_uri"], "metric": metric.name}
        # one assignment per site, drawn or not: map index i is site i in every round (dlagent.policy routes it to its queue)
        return [{**shared, "site": site} for site in range(federated.n_shards)]
