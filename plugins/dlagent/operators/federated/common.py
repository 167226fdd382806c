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
        splits = load_dataset_with_options(site_datasets[site], data_options, seed=config.seed, allowed_roots=allowed_roots)
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
