"""Training settings: one validated dataclass shared by the DAG Params, operators and core.

The field names are the names used everywhere (Params, MLflow params, tuning search spaces,
agent plans): ``learning_rate``, never ``lr``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dlagent.validation import check_choice, check_int, check_number, settings_from_dict

MODELS = ("mlp", "cnn")
OPTIMIZERS = ("adam", "sgd", "rmsprop")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "cnn"
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.0
    units: int = 128
    filters: int = 32
    dropout: float = 0.2
    early_stopping_patience: int = 5
    seed: int = 42

    def __post_init__(self):
        check_choice("model", self.model, MODELS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_int("epochs", self.epochs, low=1, high=10_000)
        check_int("batch_size", self.batch_size, low=1, high=65_536)
        check_int("units", self.units, low=1, high=65_536)
        check_int("filters", self.filters, low=1, high=4_096)
        check_int("early_stopping_patience", self.early_stopping_patience, low=0, high=10_000)
        check_int("seed", self.seed, low=0, high=2**31 - 1)
        check_number("learning_rate", self.learning_rate, low=0.0, high=10.0, low_open=True)
        check_number("momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        check_number("dropout", self.dropout, low=0.0, high=1.0, high_open=True)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Build from a dict (Params, a plan, best trial params); unknown keys are refused."""
        return settings_from_dict(cls, values, section="train", prefix="", what="training setting")

    def replace(self, **changes) -> TrainConfig:
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
