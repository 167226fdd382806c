"""Every Keras callback dlagent uses, as top-level classes (Keras' own shape: state in the
instance, reset in ``on_train_begin``, decisions in ``on_epoch_end``).

This module imports Keras at its top, so it is itself imported lazily, inside the functions that
train (a DAG file or the plugin never pays Keras' import):

* :class:`ValidationScore`: adds the primary metric on the validation split (``val_<metric>``)
  to every epoch's logs, so early stopping, pruning and MLflow all read it;
* :class:`EpochPruningCallback`: reports a tuning trial's per-epoch metric to Optuna and prunes it;
* :class:`MLflowEpochLogger`: logs every epoch's metrics (and the learning rate) to an MLflow run;
  a failure to log is reported, never raised (logging never kills training);
* :class:`MaskedPruning`: holds pruned kernels at their masks during a fine-tune (compression);
* :class:`AdaptiveController`: the agent's in-training controller (plateau and divergence).
"""

from __future__ import annotations

import logging
import math

import keras
import numpy as np

from dlagent.agent.controller import ControllerSettings

log = logging.getLogger(__name__)


class ValidationScore(keras.callbacks.Callback):
    """Put ``val_<metric>`` (:meth:`dlagent.ml.metrics.Metric.score` of the validation split's
    predictions, the function evaluation uses) into each epoch's logs. Keras hands every
    callback the same logs dict in list order, so this one goes first."""

    def __init__(self, metric, x_val: np.ndarray, y_val: np.ndarray, model=None):
        super().__init__()
        self.metric, self.x_val, self.y_val = metric, x_val, y_val
        self.scored = model  # an ensemble's averaged model, while its members' view is fitted

    def on_epoch_end(self, epoch, logs=None):
        from dlagent.ml.models import keras_predict

        if logs is not None:
            logs[self.metric.val_key] = self.metric.score(self.y_val, keras_predict(self.scored or self.model, self.x_val))


class EpochPruningCallback(keras.callbacks.Callback):
    """Report ``monitor`` to an Optuna trial after every epoch; raise ``TrialPruned`` when told to.

    Like ``optuna_integration.KerasPruningCallback`` (which works with Keras 3), but the step is
    the number of epochs done (1-based), so the pruner's ``min_resource``/``max_resource`` are
    epoch counts; it also counts the epochs a pruned trial consumed (``epochs_run``).
    """

    def __init__(self, trial, monitor: str):
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"monitor must name a metric Keras logs, got {monitor!r}")
        self.trial = trial
        self.monitor = monitor
        self.epochs_run = 0

    def on_train_begin(self, logs=None):
        self.epochs_run = 0

    def on_epoch_end(self, epoch, logs=None):
        import optuna

        self.epochs_run = epoch + 1
        value = (logs or {}).get(self.monitor)
        if value is None:
            log.warning("metric %r missing from the epoch logs %s: trial %d is not pruned", self.monitor, sorted(logs or {}), self.trial.number)
            return
        value = float(value)
        self.trial.report(value, step=self.epochs_run)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {self.epochs_run}: {self.monitor}={value:.4f}")


class MLflowEpochLogger(keras.callbacks.Callback):
    """Log every epoch's metrics (and the optimizer's learning rate) to MLflow run ``run_id``."""

    def __init__(self, client, run_id: str):
        super().__init__()
        self.client = client
        self.run_id = run_id

    def on_epoch_end(self, epoch, logs=None):
        from dlagent.ml.tracking import log_metrics

        metrics = dict(logs or {})
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            try:
                metrics.setdefault("learning_rate", float(keras.ops.convert_to_numpy(optimizer.learning_rate)))
            except Exception:  # noqa: BLE001 - a schedule without a current value
                pass
        log_metrics(self.client, self.run_id, metrics, step=epoch)


class MaskedPruning(keras.callbacks.Callback):
    """Hold ``kernels`` at their ``masks`` after every batch of a fine-tune.

    With ``schedule='polynomial'`` it also recomputes the masks every ``frequency`` steps at
    the scheduled sparsity, reaching ``target`` at ``end_step``; masks only ever grow (a
    pruned weight is zero, so it stays among the smallest).
    """

    def __init__(self, kernels: list, masks: list, *, target: float = 0.0, scope: str = "layer", schedule: str = "oneshot",
                 end_step: int = 0, frequency: int = 1):
        super().__init__()
        if schedule not in ("oneshot", "polynomial"):
            raise ValueError(f"schedule must be 'oneshot' or 'polynomial', got {schedule!r}")
        if not isinstance(frequency, int) or frequency < 1:
            raise ValueError(f"frequency must be an integer >= 1, got {frequency!r}")
        self.kernels, self.target, self.scope, self.schedule = kernels, target, scope, schedule
        self.end_step, self.frequency = end_step, frequency
        self.masks = [np.asarray(m, dtype=np.float32) for m in masks]
        self.step = 0
        self.current_sparsity = target if schedule == "oneshot" else 0.0

    def on_train_begin(self, logs=None):
        self.step = 0
        self._apply()

    def on_train_batch_end(self, batch, logs=None):
        from dlagent.ml.compression import magnitude_masks, polynomial_sparsity

        self.step += 1
        if self.schedule == "polynomial" and (self.step % self.frequency == 0 or self.step >= self.end_step):
            scheduled = polynomial_sparsity(self.step, self.end_step, self.target)
            if scheduled > self.current_sparsity:
                self.current_sparsity = scheduled
                self.masks = [m.astype(np.float32) for m in magnitude_masks(self.kernels, scheduled, self.scope)]
        self._apply()

    def on_train_end(self, logs=None):
        from dlagent.ml.compression import magnitude_masks

        if self.schedule == "polynomial" and self.current_sparsity < self.target:
            self.current_sparsity = self.target
            self.masks = [m.astype(np.float32) for m in magnitude_masks(self.kernels, self.target, self.scope)]
        self._apply()

    def _apply(self):
        for kernel, mask in zip(self.kernels, self.masks, strict=True):
            kernel.assign(kernel.numpy() * mask)


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


def _plain(value):
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value
