"""The in-training controller: a Keras callback that adapts the optimizer while a model trains.

:class:`AdaptiveController` is Keras' own ``ReduceLROnPlateau`` (reused for the plateau case:
same ``monitor``/``factor``/``patience``/``min_delta``/``cooldown`` semantics, same state reset
in ``on_train_begin``) plus divergence handling:

* **plateau** (``monitor`` has not improved by ``min_delta`` for ``patience`` epochs): the
  learning rate is multiplied by ``factor`` (never below ``min_learning_rate``), exactly as
  ``keras.callbacks.ReduceLROnPlateau`` does it;
* **divergence** (``divergence_monitor`` or ``monitor`` is NaN/inf; ``divergence_monitor``
  jumps above ``divergence_threshold`` times its best epoch value so far; or, before any
  healthy epoch, it ends the epoch above ``start_loss_factor`` times the first batch's loss,
  i.e. training made the model worse than its initialization): the weights of the last
  healthy epoch are restored and the optimizer's slot variables cleared (a NaN epoch leaves
  NaN weights and NaN momenta behind), the learning rate is multiplied by
  ``divergence_factor``, gradient clipping is switched on (``optimizer.clipnorm``, when the
  optimizer clips by nothing else or by a larger norm) and the momentum, when the optimizer
  has one (SGD, RMSprop), is multiplied by ``momentum_factor``. After ``max_recoveries``
  divergences training is stopped (``model.stop_training``).

Every change is logged (``what: old -> new because ...``) and kept in ``controller.changes``
as ``{"epoch", "setting", "old", "new", "because"}`` so an operator can log it to MLflow.

Early stopping is not duplicated here: it is ``TrainConfig.early_stopping_patience`` (Keras'
``EarlyStopping``, added by :func:`dlagent.ml.training.fit`).

Keras is imported lazily: ``ControllerSettings`` (used to validate a plan's ``controller``
section) costs nothing to import; the callback itself, :class:`dlagent.ml.callbacks.AdaptiveController`,
is imported on first use.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from dlagent.errors import ConfigError
from dlagent.validation import check_int, check_number, settings_from_dict

MODES = ("auto", "min", "max")


@dataclass(frozen=True)
class ControllerSettings:
    """The plan's ``controller`` section, validated on creation (ConfigError is a ValueError)."""

    monitor: str = "val_loss"
    mode: str = "auto"
    factor: float = 0.5
    patience: int = 2
    min_delta: float = 1e-4
    cooldown: int = 0
    min_learning_rate: float = 1e-6
    divergence_monitor: str = "loss"
    divergence_threshold: float = 2.0
    start_loss_factor: float | None = 1.1
    divergence_factor: float = 0.1
    clipnorm: float | None = 1.0
    momentum_factor: float = 0.5
    restore_on_divergence: bool = True
    max_recoveries: int = 5

    def __post_init__(self):
        for name in ("monitor", "divergence_monitor"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"controller.{name}", f"must be a metric name such as 'val_loss', got {value!r}.", "name a metric Keras logs.")
        if self.mode not in MODES:
            raise ConfigError("controller.mode", f"must be one of {list(MODES)}, got {self.mode!r}.", "use 'auto' unless the metric is unusual.")
        _number("factor", self.factor, low=0.0, high=1.0, low_open=True, high_open=True, fix="give a fraction in (0, 1), e.g. 0.5.")
        _integer("patience", self.patience, low=0)
        _number("min_delta", self.min_delta, low=0.0, high=math.inf, fix="give a non-negative number, e.g. 1e-4.")
        _integer("cooldown", self.cooldown, low=0)
        _number("min_learning_rate", self.min_learning_rate, low=0.0, high=10.0, fix="give a learning rate floor in [0, 10], e.g. 1e-6.")
        _number("divergence_threshold", self.divergence_threshold, low=1.0, high=math.inf, low_open=True,
                fix="give a factor > 1: the loss rising above this many times its best value counts as divergence.")
        if self.start_loss_factor is not None:
            _number("start_loss_factor", self.start_loss_factor, low=1.0, high=math.inf,
                    fix="give a factor >= 1 (an epoch's loss above this many times the first batch's loss is divergence), or null.")
        _number("divergence_factor", self.divergence_factor, low=0.0, high=1.0, low_open=True, high_open=True,
                fix="give a fraction in (0, 1), e.g. 0.1.")
        if self.clipnorm is not None:
            _number("clipnorm", self.clipnorm, low=0.0, high=math.inf, low_open=True, fix="give a positive norm, e.g. 1.0, or null for no clipping.")
        _number("momentum_factor", self.momentum_factor, low=0.0, high=1.0, fix="give a fraction in [0, 1], e.g. 0.5.")
        if not isinstance(self.restore_on_divergence, bool):
            raise ConfigError("controller.restore_on_divergence", f"must be true or false, got {self.restore_on_divergence!r}.", "give a boolean.")
        _integer("max_recoveries", self.max_recoveries, low=0)

    @classmethod
    def from_dict(cls, values: dict | None) -> ControllerSettings:
        """Build from a dict (a plan's ``controller`` section); unknown keys are refused."""
        if values is None:
            return cls()
        return settings_from_dict(cls, values, section="controller", prefix="controller.", what="controller setting")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _number(name, value, **limits):
    check_number(f"controller.{name}", value, **limits)


def _integer(name, value, *, low):
    check_int(f"controller.{name}", value, low=low)


def controller_from_plan(section: dict | None) -> list:
    """Keras callbacks for a plan's ``controller`` section (``None`` or ``{}``: none)."""
    if not section:
        return []
    from dlagent.ml.callbacks import AdaptiveController

    settings = ControllerSettings.from_dict(section)
    return [AdaptiveController(**settings.to_dict())]


def __getattr__(name):
    """``AdaptiveController`` lives in :mod:`dlagent.ml.callbacks` (it imports Keras); reached here lazily."""
    if name == "AdaptiveController":
        from dlagent.ml.callbacks import AdaptiveController

        return AdaptiveController
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
