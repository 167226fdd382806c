"""Federated settings: one validated dataclass, each limit declared once (:func:`dlagent.validation.bounded`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dlagent.errors import ConfigError
from dlagent.ml.config import MAX_EPOCHS, MAX_SEED
from dlagent.validation import bounded, check_fields, field_bounds, settings_from_dict

PARTITIONS = ("iid", "label_skew")  # how one data set is split into shards for an experiment
STRATEGIES = ("fedavg", "fedprox")
MAX_SHARDS = 64
MAX_ROUNDS = 20  # dl_agent_federated has one task group per round, built up to this many


@dataclass(frozen=True)
class FederatedConfig:
    n_shards: int = bounded(4, "int", low=2, high=MAX_SHARDS, title="Shards",
                            description="Sites taking part: one data set is split into this many shards (partition).")
    partition: str = bounded("iid", "choice", choices=PARTITIONS, title="Partition",
                             description="'iid': every shard a random share of every class; 'label_skew': each shard's classes "
                                         "drawn from a Dirichlet(skew_alpha) distribution, so sites see different classes.")
    skew_alpha: float = bounded(0.5, "number", low=0.0, high=1000.0, low_open=True, title="Label-skew concentration",
                                description="Dirichlet concentration of 'label_skew': small (0.1) gives sites few classes each, "
                                            "large (100) approaches IID.")
    rounds: int = bounded(10, "int", low=1, high=MAX_ROUNDS, title="Rounds",
                          description="Federated rounds: each trains the selected sites from the global model and averages them.")
    local_epochs: int = bounded(1, "int", low=1, high=MAX_EPOCHS, title="Local epochs",
                                description="Epochs each site trains on its shard per round.")
    strategy: str = bounded("fedavg", "choice", choices=STRATEGIES, title="Strategy",
                            description="'fedavg' averages the sites' weights by sample count; 'fedprox' also adds "
                                        "mu/2 * ||w - w_global||^2 to each site's loss.")
    mu: float = bounded(0.0, "number", low=0.0, high=100.0, title="FedProx mu",
                        description="Weight of FedProx's proximal term, >= 0 (0.01-1 is usual); 0 with 'fedavg'.")
    clients_per_round: int = bounded(0, "int", low=0, high=MAX_SHARDS, title="Sites per round",
                                     description="Sites drawn (seeded) to train in each round; 0 means all of them.")
    seed: int = bounded(42, "int", low=0, high=MAX_SEED, title="Seed",
                        description="Seeds the partition, the sites drawn each round and the local training.")

    def __post_init__(self):
        check_fields(self)
        if self.strategy == "fedavg" and self.mu != 0:
            raise ConfigError("mu", f"is the proximal term of 'fedprox'; strategy 'fedavg' ignores it, got {self.mu!r}.",
                              "set strategy 'fedprox', or mu 0.")
        if self.clients_per_round > self.n_shards:
            raise ConfigError("clients_per_round", f"{self.clients_per_round} sites per round, but there are {self.n_shards} shards.",
                              f"use at most {self.n_shards}, or 0 for all of them.")

    @classmethod
    def from_dict(cls, values: dict) -> FederatedConfig:
        return settings_from_dict(cls, values, section="federated", prefix="", what="federated setting")

    @classmethod
    def bounds(cls, name: str):
        return field_bounds(cls, name)

    @property
    def sites_per_round(self) -> int:
        return self.clients_per_round or self.n_shards

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
