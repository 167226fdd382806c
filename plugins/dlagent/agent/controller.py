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
section) costs nothing to import; ``AdaptiveController`` is built on first access.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

from dlagent.errors import ConfigError
from dlagent.validation import check_int, check_number, settings_from_dict

log = logging.getLogger(__name__)

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
    settings = ControllerSettings.from_dict(section)
    return [_controller_class()(**settings.to_dict())]


_CLASS = None


def _controller_class():
    """Define :class:`AdaptiveController` on first use (Keras costs seconds to import)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    import keras
    import numpy as np

    class AdaptiveController(keras.callbacks.ReduceLROnPlateau):
        """Adapt learning rate, momentum and gradient clipping on plateau or divergence.

        Args are those of :class:`ControllerSettings` (``min_learning_rate`` is Keras'
        ``min_lr``); bad values raise ``ValueError``. ``verbose=1`` also prints each change.
        """

        def __init__(self, monitor="val_loss", mode="auto", factor=0.5, patience=2, min_delta=1e-4, cooldown=0,
                     min_learning_rate=1e-6, divergence_monitor="loss", divergence_threshold=2.0, start_loss_factor=1.1,
                     divergence_factor=0.1, clipnorm=1.0, momentum_factor=0.5, restore_on_divergence=True, max_recoveries=5,
                     verbose=0):
            settings = ControllerSettings(
                monitor=monitor, mode=mode, factor=factor, patience=patience, min_delta=min_delta, cooldown=cooldown,
                min_learning_rate=min_learning_rate, divergence_monitor=divergence_monitor,
                divergence_threshold=divergence_threshold, start_loss_factor=start_loss_factor,
                divergence_factor=divergence_factor, clipnorm=clipnorm,
                momentum_factor=momentum_factor, restore_on_divergence=restore_on_divergence, max_recoveries=max_recoveries,
            )
            super().__init__(monitor=monitor, factor=factor, patience=patience, verbose=0, mode=mode,
                             min_delta=min_delta, cooldown=cooldown, min_lr=min_learning_rate)
            self.settings = settings
            self.print_changes = bool(verbose)
            self.changes: list[dict] = []
            self.recoveries = 0
            self.best_divergence_value = None
            self.start_loss = None
            self._healthy_weights = None

        # ---------------------------------------------------------------- state
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)  # ReduceLROnPlateau._reset(): best, wait, cooldown
            self.changes = []
            self.recoveries = 0
            self.best_divergence_value = None
            self.start_loss = None
            self._healthy_weights = self.model.get_weights() if self.settings.restore_on_divergence else None

        def on_train_batch_end(self, batch, logs=None):
            if self.start_loss is not None or not logs:
                return
            value = logs.get(self.settings.divergence_monitor)
            if value is not None and math.isfinite(float(value)):
                self.start_loss = float(value)  # the loss of the first batch: where training started

        # ---------------------------------------------------------------- decisions
        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            watched = logs.get(self.settings.divergence_monitor)
            why = self._divergence(watched, logs.get(self.monitor))
            if why:
                self._recover(epoch, why, logs)
                return
            if watched is not None:
                watched = float(watched)
                if self.best_divergence_value is None or watched < self.best_divergence_value:
                    self.best_divergence_value = watched
            if self._healthy_weights is not None:
                self._healthy_weights = self.model.get_weights()
            optimizer = self.model.optimizer
            before = self._learning_rate(optimizer)
            best, wait = self.best, self.wait
            super().on_epoch_end(epoch, logs)  # Keras' plateau logic
            after = self._learning_rate(optimizer)
            if before is not None and after is not None and after < before:
                self._record(epoch, "learning_rate", before, after,
                             f"{self.monitor} has not improved by more than {abs(self.min_delta):g} for {wait + 1} epochs "
                             f"(best {best:.6g}, now {float(logs.get(self.monitor, float('nan'))):.6g}): plateau")

        def _divergence(self, watched, monitored) -> str | None:
            name = self.settings.divergence_monitor
            if watched is not None and not math.isfinite(float(watched)):
                return f"{name} is {float(watched)} (not finite)"
            if monitored is not None and not math.isfinite(float(monitored)):
                return f"{self.monitor} is {float(monitored)} (not finite)"
            start, factor = self.start_loss, self.settings.start_loss_factor
            if watched is not None and start is not None and factor is not None and self.best_divergence_value is None \
                    and start > 0 and float(watched) > factor * start:
                return (f"{name} {float(watched):.6g} is above {factor:g}x the first batch's {start:.6g}: "
                        "training made the model worse than it started")
            best = self.best_divergence_value
            if watched is not None and best is not None and best > 0 and float(watched) > self.settings.divergence_threshold * best:
                return (f"{name} jumped to {float(watched):.6g}, more than {self.settings.divergence_threshold:g}x "
                        f"its best {best:.6g}")
            return None

        def _recover(self, epoch, why, logs):
            self.recoveries += 1
            optimizer = self.model.optimizer
            if self.recoveries > self.settings.max_recoveries:
                self.model.stop_training = True
                self._record(epoch, "stop_training", False, True,
                             f"{why}: divergence number {self.recoveries} exceeds max_recoveries={self.settings.max_recoveries}")
                return
            if self._healthy_weights is not None:
                self.model.set_weights(self._healthy_weights)
                self._clear_optimizer_slots(optimizer)
                self._record(epoch, "weights", "diverged", "last healthy epoch", f"{why}: restored the weights and cleared the optimizer state")
            rebuild = False
            before = self._learning_rate(optimizer)
            if before is not None:
                after = max(before * self.settings.divergence_factor, self.min_lr)
                logs["learning_rate"] = before  # like Keras: the rate this epoch ran with
                if after < before and self._set_learning_rate(optimizer, after):
                    self._record(epoch, "learning_rate", before, after, f"{why}: divergence, x{self.settings.divergence_factor:g}")
            limit = self.settings.clipnorm
            if limit is not None and not getattr(optimizer, "global_clipnorm", None) and not getattr(optimizer, "clipvalue", None):
                current = getattr(optimizer, "clipnorm", None)
                if current is None or current > limit:
                    optimizer.clipnorm = float(limit)
                    rebuild = True
                    self._record(epoch, "clipnorm", current, float(limit), f"{why}: clip each gradient's norm")
            momentum = getattr(optimizer, "momentum", None)
            if isinstance(momentum, (int, float)) and not isinstance(momentum, bool) and momentum > 0 and self.settings.momentum_factor < 1:
                new = float(momentum) * self.settings.momentum_factor
                optimizer.momentum = new
                rebuild = True
                self._record(epoch, "momentum", float(momentum), new, f"{why}: less momentum")
            if rebuild:
                # clipnorm and momentum are Python numbers read when the train step is traced.
                self.model.make_train_function(force=True)
            self.wait = 0
            self.cooldown_counter = self.cooldown

        # ---------------------------------------------------------------- helpers
        @staticmethod
        def _learning_rate(optimizer) -> float | None:
            try:
                return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
            except Exception:  # noqa: BLE001 - a schedule without a current value
                return None

        @staticmethod
        def _set_learning_rate(optimizer, value: float) -> bool:
            try:
                optimizer.learning_rate = value
            except TypeError as exc:  # a LearningRateSchedule cannot be overwritten
                log.warning("cannot change the learning rate: %s", exc)
                return False
            return True

        @staticmethod
        def _clear_optimizer_slots(optimizer):
            keep = {id(getattr(optimizer, "_iterations", None)), id(getattr(optimizer, "_learning_rate", None))}
            for variable in getattr(optimizer, "variables", []):
                if id(variable) in keep or "iteration" in variable.name or "learning_rate" in variable.name:
                    continue
                variable.assign(np.zeros(variable.shape, dtype=variable.dtype))

        def _record(self, epoch, setting, old, new, because):
            change = {"epoch": int(epoch) + 1, "setting": setting, "old": _plain(old), "new": _plain(new), "because": because}
            self.changes.append(change)
            message = f"epoch {epoch + 1}: {setting} {change['old']} -> {change['new']} because {because}"
            log.info("AdaptiveController %s", message)
            if self.print_changes:
                print(f"\nAdaptiveController {message}", flush=True)

    _CLASS = AdaptiveController
    return _CLASS


def _plain(value):
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value


def __getattr__(name):
    if name == "AdaptiveController":
        return _controller_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), "AdaptiveController"])
