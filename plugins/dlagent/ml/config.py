"""Training settings: one validated dataclass shared by the DAG Params, operators and core.

The field names are the names used everywhere (Params, MLflow params, tuning search spaces,
agent plans): ``learning_rate``, never ``lr``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from dlagent.errors import ConfigError

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
        _check_choice("model", self.model, MODELS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_int("epochs", self.epochs, low=1, high=10_000)
        _check_int("batch_size", self.batch_size, low=1, high=65_536)
        _check_int("units", self.units, low=1, high=65_536)
        _check_int("filters", self.filters, low=1, high=4_096)
        _check_int("early_stopping_patience", self.early_stopping_patience, low=0, high=10_000)
        _check_int("seed", self.seed, low=0, high=2**31 - 1)
        _check_float("learning_rate", self.learning_rate, low=0.0, high=10.0, low_open=True)
        _check_float("momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        _check_float("dropout", self.dropout, low=0.0, high=1.0, high_open=True)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Build from a dict (Params, a plan, best trial params); unknown keys are refused."""
        if not isinstance(values, dict):
            raise ConfigError("train", f"must be a JSON object, got {type(values).__name__}.", "pass a mapping of settings.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown training setting (known: {sorted(known)}).", "remove it or fix its spelling.")
        return cls(**values)

    def replace(self, **changes) -> TrainConfig:
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ConfigError(name, f"must be one of {list(choices)}, got {value!r}.", f"pick one of {list(choices)}.")


def _check_int(name, value, *, low, high):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {value!r} ({type(value).__name__}).", f"give a whole number in [{low}, {high}].")
    if not low <= value <= high:
        raise ConfigError(name, f"must be in [{low}, {high}], got {value}.", f"give a whole number in [{low}, {high}].")


def _check_float(name, value, *, low, high, low_open=False, high_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, got {value!r}.", "give a number.")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = ("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")
        raise ConfigError(name, f"must be in {interval}, got {value}.", f"give a value in {interval}.")
