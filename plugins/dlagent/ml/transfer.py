"""Transfer learning: start from another model's learned features (the ``init_from`` setting).

The source is a registered model (``models:/name@alias`` or ``models:/name/<version>``), a
logged model (``models:/m-...``, ``runs:/<run>/<name>``) or a ``.keras`` file inside the data
roots, always loaded in Keras safe mode. Its **base** is everything up to the input of its
final Dense layer; the **head** is that layer, kept when the number of outputs matches and
replaced by a new one when it does not.

Fine-tuning follows the two phases of Keras' transfer-learning guide
(https://keras.io/guides/transfer_learning/):

1. **head**: the base frozen, the head trained at ``learning_rate`` for the first half of
   ``epochs`` (all of them with ``freeze`` 1.0);
2. **fine-tune**: the top ``1 - freeze`` of the base's weighted layers unfrozen (by default all
   of them, as in the guide) and the whole model trained at ``fine_tune_learning_rate`` for the
   rest (1e-3 by default, for small models; the guide's large model uses 1e-5). Batch normalisation
   stays in inference mode throughout (the base is called with ``training=False`` and its
   batch-normalisation layers are never unfrozen), so a small target set cannot wreck the
   source's statistics.

The input is adapted where it can be: an image of another size is resized to the source's
(a ``Resizing`` layer inside the model, so TFLite and serving take the target's images as they
are), grey becomes colour by repeating the channel and colour becomes grey by averaging (a
fixed 1x1 convolution). Anything else, e.g. a table with another number of columns, is refused
with the reason before any compute.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from dlagent.errors import ConfigError
from dlagent.ml.streaming import eval_data, fit_data

log = logging.getLogger(__name__)

INIT_FROM_FIX = ("give models:/<name>@<alias> (e.g. models:/dlagent-classifier@champion), models:/<name>/<version>, "
                 "models:/m-<id>, runs:/<run id>/<model name>, or a .keras file inside the data roots.")


@dataclass
class AdaptedModel:
    """The model to fine-tune, its frozen-then-partly-unfrozen base, and what was adapted."""

    model: object
    base: object
    new_head: bool
    notes: list[str] = field(default_factory=list)

    def params(self) -> dict:
        return {"transfer.new_head": self.new_head, "transfer.input_adapter": "; ".join(self.notes) or "none"}


def load_source_model(client, init_from: str, *, allowed_roots=None):
    """The source model named by ``init_from``, loaded in Keras safe mode; refusals name ``init_from``."""
    return load_source(client, init_from, allowed_roots=allowed_roots)[0]


def load_source(client, init_from: str, *, allowed_roots=None):
    """``(model, resolved)``: the source model and what ``init_from`` resolved to (an alias or a
    version becomes the ``models:/m-...`` it pointed at when loaded; the training run records it,
    since an alias can move)."""
    from dlagent.ml.model_store import load_keras_model

    uri = str(init_from or "").strip()
    if not uri:
        raise ConfigError("init_from", "is empty.", INIT_FROM_FIX)
    if uri.startswith("models:/") and not uri.startswith("models:/m-"):
        uri = _registered_model_uri(client, uri)
    if uri.startswith(("models:/", "runs:/")):
        try:
            return load_keras_model(client, uri), uri
        except ConfigError as exc:
            raise ConfigError("init_from", f"cannot load {init_from!r}: {exc.problem}", exc.fix or INIT_FROM_FIX) from exc
    return _load_keras_file(uri, allowed_roots), uri


def _registered_model_uri(client, uri: str) -> str:
    """``models:/name@alias`` or ``models:/name/<version>`` -> the logged model behind it (``models:/m-...``)."""
    from mlflow.exceptions import MlflowException

    from dlagent.ml.mlflow_names import is_missing, model_id_of

    reference = uri[len("models:/"):].strip("/")
    name, at, alias = reference.partition("@")
    try:
        if at:
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = reference.rpartition("/")
            if not name or not number.isdigit():
                raise ConfigError("init_from", f"{uri!r} names neither an alias (@) nor a version number.", INIT_FROM_FIX)
            version = client.get_model_version(name, number)
    except MlflowException as exc:
        if is_missing(exc):
            raise ConfigError("init_from", f"{uri!r} does not exist in the model registry.",
                              "check the registered model's name and alias (the MLflow UI's Models page lists them).") from exc
        raise
    model_id = model_id_of(version)
    if model_id is None:
        raise ConfigError("init_from", f"{uri!r} (version {version.version}) has no logged model behind it.", INIT_FROM_FIX)
    return f"models:/{model_id}"


def _load_keras_file(argument: str, allowed_roots):
    import keras

    from dlagent.ml.builders import import_custom_modules
    from dlagent.ml.data_paths import resolve_data_path

    path = resolve_data_path(argument, allowed_roots=allowed_roots, field_name="init_from")
    if path.suffix != ".keras" or not path.is_file():
        raise ConfigError("init_from", f"{argument!r} is not a .keras file.", INIT_FROM_FIX)
    import_custom_modules(path, field="init_from")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - the kind of failure, never the file's text
        raise ConfigError("init_from", f"cannot load {argument!r} ({type(exc).__name__}: not a Keras model file, or refused by "
                          "Keras safe mode).", INIT_FROM_FIX) from exc


def adapt_source(source, input_shape: tuple, n_outputs: int) -> AdaptedModel:
    """A new model: the target's input, adapted to the source's; the source's base called in
    inference mode; the source's head when it has ``n_outputs`` outputs, else a new softmax head.
    From an ensemble (:mod:`dlagent.ml.ensemble`) its first network: one base and one head.

    The source's layers are shared, not copied: pass a copy (:func:`dlagent.ml.models.copy_model`)
    when the source must stay untouched.
    """
    import keras
    from keras import layers

    from dlagent.ml.ensemble import first_member, is_ensemble, members_of

    averaged = members_of(source) if is_ensemble(source) else 0
    if averaged:
        source = first_member(source)
    last = source.layers[-1]
    if type(last).__name__ != "Dense":
        raise ConfigError("init_from", f"the source model ends in a {type(last).__name__} layer, not a Dense output layer, so "
                          "its features and its head cannot be told apart.", "start from a model whose last layer is Dense.")
    base = keras.Model(source.inputs, last.input, name="transfer_base")
    inputs = keras.Input(shape=tuple(input_shape), name="features")
    x, notes = _adapt_input(inputs, tuple(int(d) for d in input_shape), tuple(int(d) for d in source.input_shape[1:]))
    if averaged:
        notes.append(f"the source averages {averaged} networks (ensemble): its first is fine-tuned")
    features = base(x, training=False)  # batch normalisation in inference mode, also once unfrozen
    softmax = last.get_config().get("activation") == "softmax"
    new_head = int(last.units) != int(n_outputs) or not softmax
    outputs = layers.Dense(n_outputs, activation="softmax", name="probabilities")(features) if new_head else last(features)
    if new_head:
        notes.append(f"new head: {last.units} -> {n_outputs} outputs" if softmax else
                     f"new head: the source's last layer outputs {last.get_config().get('activation')!r}, not probabilities")
    return AdaptedModel(keras.Model(inputs, outputs, name="dlagent_transfer"), base, new_head, notes)


def _adapt_input(inputs, target: tuple, source: tuple):
    from keras import layers

    if target == source:
        return inputs, []
    reason = f"the source model takes samples of shape {source}, this data has {target}"
    if len(target) not in (2, 3) or len(source) not in (2, 3):
        raise ConfigError("init_from", f"{reason}; only images (height, width[, channels]) can be adapted.",
                          "start from a model trained on data of the same shape, or train from scratch (init_from empty).")
    x, notes = inputs, []
    if len(target) == 2:
        x = layers.Reshape((*target, 1))(x)
    target_channels, source_channels = (target[2] if len(target) == 3 else 1), (source[2] if len(source) == 3 else 1)
    if target[:2] != source[:2]:
        x = layers.Resizing(source[0], source[1], name="transfer_resize")(x)
        notes.append(f"images resized {target[0]}x{target[1]} -> {source[0]}x{source[1]}")
    if target_channels != source_channels:
        if {target_channels, source_channels} != {1, 3}:
            raise ConfigError("init_from", f"{reason}; {target_channels} channels cannot be mapped to {source_channels}.",
                              "give images with the source's channels (grey and RGB are converted into each other).")
        weight = np.full((1, 1, target_channels, source_channels), 1.0 / target_channels, np.float32)
        convert = layers.Conv2D(source_channels, 1, use_bias=False, trainable=False, name="transfer_channels")
        x = convert(x)
        convert.set_weights([weight])
        notes.append("grey repeated to RGB" if target_channels == 1 else "RGB averaged to grey")
    if len(source) == 2:
        x = layers.Reshape(source)(x)
    return x, notes


def unfreeze_top(base, fraction: float) -> int:
    """Make the top ``fraction`` of ``base``'s weighted layers trainable; return how many were unfrozen.

    Layers are counted at the leaves of the layer tree (inside nested models and custom layers,
    e.g. a champion that was itself fine-tuned). Batch normalisation is never unfrozen: in Keras 3
    a frozen ``BatchNormalization`` runs in inference mode, which calling the base with
    ``training=False`` alone does not ensure for nested layers. Adapter layers of an earlier
    transfer (``transfer_*``) stay fixed too.
    """
    from keras import layers

    everything = list(base._flatten_layers(include_self=False, recursive=True))
    leaves = [layer for layer in everything if not list(layer._flatten_layers(include_self=False, recursive=False))]
    weighted = [layer for layer in leaves if layer.weights and not isinstance(layer, layers.BatchNormalization)
                and not layer.name.startswith("transfer_")]
    count = math.ceil(fraction * len(weighted) - 1e-9) if fraction > 0 else 0
    base.trainable = True
    for layer in everything:
        layer.trainable = False
    for layer in weighted[len(weighted) - count:]:
        layer.trainable = True
    return count


def kept_epoch(losses: list[float], patience: int) -> tuple[float, int]:
    """``(validation loss, epoch index)`` of the weights a phase ends with: with early stopping the
    best finite loss (Keras restores that epoch), without it the last epoch; a non-finite loss
    counts as infinitely bad (a diverged phase never wins)."""
    if not losses:
        return math.inf, -1
    if patience > 0:
        finite = [(value, index) for index, value in enumerate(losses) if math.isfinite(value)]
        return min(finite) if finite else (math.inf, len(losses) - 1)
    last = losses[-1]
    return (last if math.isfinite(last) else math.inf), len(losses) - 1


def phase_epochs(epochs: int, freeze: float) -> tuple[int, int]:
    """``(head, fine_tune)`` epochs: the first half trains the head, the rest fine-tunes (all head with freeze 1)."""
    if freeze >= 1.0 or epochs < 2:
        return epochs, 0
    head = math.ceil(epochs / 2)
    return head, epochs - head


def fit_transfer(splits, config, source_model, *, callbacks=(), verbose: int = 0):
    """Fine-tune a copy of ``source_model`` on ``splits`` in two phases; return a
    :class:`~dlagent.ml.training.TrainResult` whose ``transfer`` says what each phase did.

    ``epochs`` counts both phases; early stopping (``early_stopping_patience``) acts within each
    phase and keeps its best weights; when the fine-tuning phase never beats the head phase's
    best monitored value (:func:`dlagent.ml.training.monitored`: the validation loss for
    accuracy, else ``val_<metric>``), the head phase's weights are kept.
    """
    from dlagent.ml.models import copy_model
    from dlagent.ml.training import TrainResult, class_weights, compile_for_training, early_stopping, monitored, validation_score

    if splits.is_regression:
        raise ConfigError("init_from", "transfer learning fine-tunes classifiers; this task is regression.",
                          "leave init_from empty (train from scratch), or use task 'classification'.")
    stopping = [*validation_score(splits), *callbacks, *early_stopping(config, splits.metric)]
    key, mode = monitored(splits.metric)  # what early stopping follows; lower is better after the sign below

    def watched(history: dict) -> list:
        return [-v if mode == "max" else v for v in history.get(key, [])]

    adapted = adapt_source(copy_model(source_model), splits.input_shape, splits.num_classes)
    model, base = adapted.model, adapted.base
    head_epochs, tune_epochs = phase_epochs(config.epochs, config.freeze)
    weights = class_weights(splits.y_train, splits.num_classes, config.class_weight)
    data = {**fit_data(splits.x_train, splits.y_train, batch_size=config.batch_size, seed=config.seed),
            "validation_data": eval_data(splits.x_val, splits.y_val), "class_weight": weights, "verbose": verbose}
    started = time.perf_counter()

    base.trainable = False
    compile_for_training(model, config, config.learning_rate)
    trainable_head = int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))
    log.info("transfer, phase 1 (head): %d epochs at learning rate %g, base frozen, %d trainable weights; %s",
             head_epochs, config.learning_rate, trainable_head, "; ".join(adapted.notes) or "input as the source's")
    history = _history(model.fit(epochs=head_epochs, callbacks=stopping, **data))
    head_run = len(history.get("val_loss", []))
    head_loss, head_index = kept_epoch(watched(history), config.early_stopping_patience)
    head_weights = model.get_weights()

    unfrozen, tune_run, kept_head, best_epoch = 0, 0, False, max(head_index, 0)
    if tune_epochs > 0:
        unfrozen = unfreeze_top(base, 1.0 - config.freeze)
        compile_for_training(model, config, config.fine_tune_learning_rate)  # recompile: the trainable set changed
        log.info("transfer, phase 2 (fine-tune): %d epochs at learning rate %g, top %d of the base's layers unfrozen "
                 "(freeze %g; batch normalisation stays in inference mode)", tune_epochs, config.fine_tune_learning_rate,
                 unfrozen, config.freeze)
        tuned = _history(model.fit(initial_epoch=head_run, epochs=head_run + tune_epochs,
                                   callbacks=stopping, **data))
        tune_run = len(tuned.get("val_loss", []))
        for name in set(history) | set(tuned):  # not `key`: that is the monitored metric, read just below
            history[name] = history.get(name, [math.nan] * head_run) + tuned.get(name, [math.nan] * tune_run)
        tune_loss, tune_index = kept_epoch(watched(tuned), config.early_stopping_patience)
        if tune_loss < head_loss:
            best_epoch = head_run + tune_index
        else:
            model.set_weights(head_weights)
            kept_head = True
            log.info("fine-tuning never beat the head phase's best %s %.4f: the head phase's weights are kept", key, abs(head_loss))
    seconds = time.perf_counter() - started
    val_loss = history.get("val_loss", [])
    transfer = {"head_epochs": head_run, "fine_tune_epochs": tune_run, "unfrozen_layers": unfrozen, "kept_head_weights": int(kept_head),
                "head_trainable_weights": trainable_head, **adapted.params()}
    return TrainResult(model=model, history=history, epochs_run=len(val_loss), best_epoch=best_epoch, seconds=seconds,
                       transfer=transfer, kept_epoch=best_epoch, metric=splits.metric)


def _history(history) -> dict:
    return {k: [float(v) for v in values] for k, values in history.history.items()}
