"""Train and evaluate Keras models; log params, per-epoch metrics and the model to MLflow.

Nothing here knows about Airflow: the operators call :func:`train` and :func:`evaluate`, and
so do the benchmarks and tests, with the same results for the same data, config and seed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from dlagent.errors import ConfigError
from dlagent.ml.config import TrainConfig
from dlagent.ml.data import DatasetSplits
from dlagent.ml.ensemble import is_ensemble, members_of, training_view
from dlagent.ml.streaming import eval_data, fit_data, is_streamed, naming_bad_files

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: object
    history: dict = field(default_factory=dict)
    epochs_run: int = 0
    best_epoch: int = 0
    seconds: float = 0.0
    start_val_loss: float | None = None  # warm start: the starting model's validation loss
    kept_start: bool = False  # warm start: no epoch beat it, the starting weights were kept
    transfer: dict | None = None  # init_from: what each fine-tuning phase did (dlagent.ml.transfer)
    kept_epoch: int | None = None  # the epoch whose weights the model holds (the best with early stopping, else the last)
    metric: str = "accuracy"  # the primary metric (dlagent.ml.metrics)
    members: int = 1  # the networks the model averages (dlagent.ml.ensemble)

    @property
    def best_val_metric(self) -> float:
        """The primary metric on the validation split at the best epoch (logged as ``best_val_<metric>``)."""
        from dlagent.ml.metrics import get_metric

        values = self.history.get(f"val_{self.metric}") or [float("nan")]
        if self.best_epoch < len(values):
            return float(values[self.best_epoch])
        best = get_metric(self.metric).best(values)
        return float("nan") if best is None else best

    @property
    def best_val_accuracy(self) -> float:
        return self.best_val_metric if self.metric == "accuracy" else float("nan")

    def metrics(self) -> dict:
        return {
            f"best_val_{self.metric}": self.best_val_metric,
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "train_seconds": round(self.seconds, 3),
            "ensemble_members": self.members,
            **({"start_val_loss": self.start_val_loss, "kept_start_weights": int(self.kept_start)} if self.start_val_loss is not None else {}),
            **({f"transfer_{k}": v for k, v in self.transfer.items() if isinstance(v, int) and not isinstance(v, bool)}
               if self.transfer else {}),
        }


def fit(splits: DatasetSplits, config: TrainConfig, *, callbacks=(), verbose: int = 0, initial_model=None,
        source_model=None) -> TrainResult:
    """Build, compile and fit a model; early stopping restores the best validation weights.

    With ``initial_model`` (a Keras model, e.g. :func:`dlagent.ml.model_store.load_checkpoint` of the best tuning
    trial) training continues from its weights for ``config.epochs`` more epochs, with a fresh
    optimizer at ``config.learning_rate``; when no epoch beats its starting validation loss the
    starting weights are kept (Keras' early stopping alone would keep the best *new* epoch).

    With ``config.init_from`` (and no ``initial_model``) a copy of ``source_model``, the model it
    names (:func:`dlagent.ml.transfer.load_source_model`), is fine-tuned in two phases
    (:func:`dlagent.ml.transfer.fit_transfer`).

    ``model: auto`` becomes the built-in for the data's samples where the model is built (:func:`build_model`).
    """
    import keras

    from dlagent.ml.models import build_model

    keras.utils.set_random_seed(config.seed)
    if initial_model is None and config.init_from:
        from dlagent.ml.transfer import fit_transfer

        if source_model is None:
            raise ConfigError("init_from", f"{config.init_from!r} was not loaded.", "pass source_model=load_source_model(client, "
                              "config.init_from), or call train(..., client=...), which loads it.")
        return fit_transfer(splits, config, source_model, callbacks=callbacks, verbose=verbose)
    if initial_model is None:
        model = build_model(config, splits.input_shape, splits.num_classes, adapt_data=splits.x_train, impute=splits.impute,
                            task=splits.task, targets=splits.y_train if splits.is_regression else None)
    else:
        _check_shapes(initial_model, splits)
        model = initial_model
    trainee = training_view(model) if is_ensemble(model) else model  # members train on their own losses (dlagent.ml.ensemble)
    compile_for_training(trainee, config, config.learning_rate, splits.task, members=members_of(model))
    if trainee is not model:  # evaluate() scores the averaged model; its optimizer is the one its members trained with
        model.compile(optimizer=trainee.optimizer, **task_loss(splits.task))
    all_callbacks = [*validation_score(splits, model), *callbacks, *early_stopping(config, splits.metric)]
    start_val_loss, start_weights = None, None
    if initial_model is not None:
        start_val_loss = _loss(trainee, splits.x_val, splits.y_val)
        start_weights = model.get_weights()
    started = time.perf_counter()
    with naming_bad_files(splits.x_train, splits.x_val):
        history = trainee.fit(
            **fit_data(splits.x_train, splits.y_train, batch_size=config.batch_size, seed=config.seed),
            validation_data=eval_data(splits.x_val, splits.y_val),
            epochs=config.epochs,
            callbacks=all_callbacks,
            class_weight=class_weights(splits.y_train, splits.num_classes, config.class_weight) if not splits.is_regression else None,
            verbose=verbose,
        )
    seconds = time.perf_counter() - started
    hist = {k: [float(v) for v in values] for k, values in history.history.items()}
    val_loss = hist.get("val_loss", [])
    best_epoch = best_epoch_of(hist, splits.metric)
    kept_start = False
    if start_weights is not None and not (val_loss and np.isfinite(val_loss[best_epoch]) and val_loss[best_epoch] < start_val_loss):
        model.set_weights(start_weights)
        kept_start = True
        log.info("no epoch beat the starting validation loss %.4f: the starting weights are kept", start_val_loss)
    return TrainResult(model=model, history=hist, epochs_run=len(val_loss), best_epoch=best_epoch, seconds=seconds,
                       start_val_loss=start_val_loss, kept_start=kept_start,
                       kept_epoch=best_epoch if config.early_stopping_patience > 0 else len(val_loss) - 1, metric=splits.metric,
                       members=members_of(model))


def compile_for_training(model, config: TrainConfig, learning_rate: float, task: str = "classification", *, members: int = 1) -> None:
    """Compile with ``config``'s optimizer at ``learning_rate`` (a fine-tuning phase passes its own)
    and the task's loss: cross-entropy for classes, mean squared error for regression (``members``:
    an ensemble's :func:`~dlagent.ml.ensemble.training_view`)."""
    from dlagent.ml.models import build_optimizer

    model.compile(optimizer=build_optimizer(config.replace(learning_rate=learning_rate)), **task_loss(task, members))


def task_loss(task: str = "classification", members: int = 1) -> dict:
    """``compile`` keywords of a task: mean squared error for regression; cross-entropy, with
    Keras' own accuracy for the epoch logs, for classes. With ``members`` > 1, for an ensemble's
    stacked predictions: the mean of the members' own losses, the averaged prediction's accuracy."""
    if members > 1:
        from dlagent.ml.ensemble import averaged_accuracy, member_loss

        return {"loss": member_loss(task, members), **({} if task == "regression" else {"metrics": [averaged_accuracy()]})}
    if task == "regression":
        return {"loss": "mse"}
    return {"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]}


def monitored(metric: str = "accuracy") -> tuple[str, str]:
    """``(key, mode)`` that early stopping and the best epoch follow: the primary metric on the
    validation split, except for accuracy, which keeps ``val_loss`` (accuracy on a validation
    split moves in steps and ties; the loss is its smooth surrogate)."""
    from dlagent.ml.metrics import get_metric

    primary = get_metric(metric)
    return ("val_loss", "min") if primary.name == "accuracy" else (primary.val_key, primary.mode)


def best_epoch_of(history: dict, metric: str = "accuracy") -> int:
    """The epoch early stopping keeps: the best :func:`monitored` value (the last when none is finite)."""
    key, mode = monitored(metric)
    values = history.get(key, [])
    if not values or not np.isfinite(values).any():
        return max(len(values) - 1, 0)
    return int(np.nanargmin(values) if mode == "min" else np.nanargmax(values))


def validation_score(splits: DatasetSplits, model=None) -> list:
    """``[ValidationScore]`` when the primary metric is not one Keras logs itself (all but accuracy),
    scoring ``model``'s predictions (default: the model being fitted)."""
    if splits.metric == "accuracy":
        return []
    from dlagent.ml.callbacks import ValidationScore

    return [ValidationScore(splits.primary, splits.x_val, splits.y_val, model=model)]


def early_stopping(config: TrainConfig, metric: str = "accuracy") -> list:
    """``[EarlyStopping]`` on the :func:`monitored` value, restoring the best weights; ``[]`` with patience 0."""
    import keras

    if config.early_stopping_patience <= 0:
        return []
    key, mode = monitored(metric)
    return [keras.callbacks.EarlyStopping(monitor=key, mode=mode, patience=config.early_stopping_patience, restore_best_weights=True)]


def class_weights(y: np.ndarray, num_classes: int, mode: str) -> dict[int, float] | None:
    """Keras ``class_weight`` for ``mode``: ``None`` for ``"none"``; for ``"balanced"`` (scikit-learn's
    rule) ``n_samples / (n_classes x count)`` per class, so every class adds the same total weight."""
    if mode == "none":
        return None
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=num_classes)
    return {c: float(len(y) / (num_classes * counts[c])) if counts[c] else 0.0 for c in range(num_classes)}


def _check_shapes(model, splits: DatasetSplits) -> None:
    expected_in, expected_out = tuple(splits.input_shape), splits.num_classes
    got_in, got_out = tuple(model.input_shape[1:]), model.output_shape[-1]
    if got_in != expected_in or got_out != expected_out:
        what = "targets" if splits.is_regression else "classes"
        raise ConfigError("warm_start", f"the starting model takes {got_in} and predicts {got_out} {what}; the data has "
                          f"{expected_in} and {expected_out} {what}.", "start from a checkpoint trained on this dataset, or train from scratch.")


def _loss(model, x, y) -> float:
    """The compiled loss on ``(x, y)`` (Keras returns a list with metrics, a float without)."""
    with naming_bad_files(x):
        values = model.evaluate(x.dataset(y, batch_size=256), verbose=0) if is_streamed(x) else model.evaluate(x, y, verbose=0, batch_size=256)
    return float(values[0] if isinstance(values, (list, tuple)) else values)


def evaluate(model, splits: DatasetSplits) -> dict:
    """Test-split loss and the task's metrics, ``test_<metric>`` (the held-out part no training step has seen)."""
    from dlagent.ml.metrics import report_scores
    from dlagent.ml.models import keras_predict

    loss = _loss(model, splits.x_test, splits.y_test)
    scores = report_scores(splits.task, splits.y_test, keras_predict(model, splits.x_test), splits.primary)
    return {**scores, "test_loss": float(loss)}


def train(
    splits: DatasetSplits,
    config: TrainConfig,
    *,
    client=None,
    run_id: str | None = None,
    callbacks=(),
    log_model: bool = True,
    initial_model=None,
    source_model=None,
    allowed_roots=None,
) -> tuple[TrainResult, str | None]:
    """Fit a model and, with an MLflow ``client`` and ``run_id``, log params, per-epoch metrics and the model.

    With ``config.init_from`` and no ``source_model``, the source is loaded through ``client``
    (a ``.keras`` file only from inside ``allowed_roots``). Returns the result and the logged
    model's URI (``None`` without a run). The params name the model trained (``auto`` resolved).
    """
    config = config.for_input(splits.input_shape)
    source_uri = None
    if config.init_from and source_model is None and initial_model is None and client is not None:
        from dlagent.ml.transfer import load_source

        source_model, source_uri = load_source(client, config.init_from, allowed_roots=allowed_roots)
    if run_id is None:
        return fit(splits, config, callbacks=callbacks, initial_model=initial_model, source_model=source_model), None
    if client is None:
        raise ConfigError("client", "a run_id was given but no MLflow client.", "pass the hook's client (hook.client).")
    from dlagent.ml import mlflow_names as names
    from dlagent.ml import tracking
    from dlagent.ml.callbacks import MLflowEpochLogger
    from dlagent.ml.lineage import TRAINING, log_dataset_input
    from dlagent.ml.model_store import log_keras_model

    tracking.log_params_safely(client, run_id, {**config.to_params(), **_data_params(splits)})
    log_dataset_input(client, run_id, splits, TRAINING)
    result = fit(splits, config, callbacks=[*callbacks, MLflowEpochLogger(client, run_id)], initial_model=initial_model,
                 source_model=source_model)
    tracking.log_metrics(client, run_id, result.metrics())
    if result.transfer:
        resolved = {"transfer.source_model_uri": source_uri} if source_uri else {}
        tracking.log_params_safely(client, run_id, {**resolved, **{k: v for k, v in result.transfer.items() if isinstance(v, (bool, str))}})
        head = result.transfer["head_epochs"]
        for epoch in range(result.epochs_run):  # which phase each epoch's metrics belong to (1 head, 2 fine-tune)
            tracking.log_metrics(client, run_id, {"transfer_phase": 1 if epoch < head else 2}, step=epoch)
    log.info(
        "trained %s: %d epochs in %.1fs, best epoch %d, best val_%s %.4f",
        config.model, result.epochs_run, result.seconds, result.best_epoch + 1, result.metric, result.best_val_metric,
    )
    from dlagent.ml.models import scaling_statistics

    statistics = scaling_statistics(result.model)
    if statistics is not None:  # the standardisation the model applies, from the training split
        client.log_dict(run_id, {**statistics, "rows": int(len(splits.y_train))}, names.SCALING_FILE)
    if splits.encoding is not None:  # the vocabularies of the categorical columns, from the training split
        client.log_text(run_id, splits.encoding.dumps(), names.ENCODING_FILE)
    model_uri = log_keras_model(client, run_id, result.model, splits.x_test[:2], encoding=splits.encoding) if log_model else None
    return result, model_uri


def _data_params(splits: DatasetSplits) -> dict:
    summary = splits.summary()
    return {key: summary[key] for key in ("dataset", "task", "metric", "num_classes", "n_train")}
