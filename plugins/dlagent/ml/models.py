"""Keras models: builders by name, an independent copy, batched prediction. Keras is imported inside
the functions (it costs seconds)."""

from __future__ import annotations

import numpy as np

from dlagent.errors import ConfigError
from dlagent.ml.config import TrainConfig
from dlagent.ml.tflite import padded_batches


def check_model_input(model: str, input_shape: tuple[int, ...]) -> None:
    """Refuse a model that cannot take samples of ``input_shape`` (no Keras needed: checked at the edge).

    ``cnn`` needs images, ``(height, width[, channels])`` with height and width >= 2 (it pools
    by 2); ``mlp`` flattens any shape.
    """
    shape = tuple(int(d) for d in input_shape)
    if model == "cnn" and (len(shape) not in (2, 3) or min(shape[:2]) < 2):
        raise ConfigError(
            "model",
            f"'cnn' needs image data of shape (height, width[, channels]) with height and width >= 2, got samples of shape {shape}.",
            "use model 'mlp' for tabular data (csv:, or npz: with one feature row per sample).",
        )


def build_model(config: TrainConfig, input_shape: tuple[int, ...], num_classes: int):
    """Return an uncompiled Keras model for ``config.model`` (``mlp`` or ``cnn``)."""
    import keras
    from keras import layers

    check_model_input(config.model, input_shape)
    inputs = keras.Input(shape=input_shape, name="features")
    if config.model == "cnn":
        x = layers.Reshape((*input_shape, 1))(inputs) if len(input_shape) == 2 else inputs
        small = min(input_shape[:2]) < 16  # 8x8 digits: one pooling step less
        x = layers.Conv2D(config.filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Conv2D(config.filters * 2, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x) if not small else x
        x = layers.Flatten()(x)
    else:
        x = layers.Flatten()(inputs)
    x = layers.Dropout(config.dropout)(x)
    x = layers.Dense(config.units, activation="relu")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"dlagent_{config.model}")


def build_optimizer(config: TrainConfig):
    import keras

    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=config.learning_rate, momentum=config.momentum)
    if config.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=config.learning_rate, momentum=config.momentum)
    return keras.optimizers.Adam(learning_rate=config.learning_rate)


def copy_model(model):
    """An independent copy of a Keras model: same architecture and weights, **not compiled**.

    ``keras.models.clone_model`` re-compiles the clone when the source is compiled (Keras
    3.15), which would carry optimizer state into a saved file; ``from_config`` does not.
    """
    import keras

    try:
        clone = type(model).from_config(model.get_config())
    except (NotImplementedError, TypeError, ValueError):  # a subclassed model without a config
        clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def keras_predict(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Probabilities for ``x`` in fixed-size batches with ``predict_on_batch``.

    ``model.predict`` costs tens of milliseconds of set-up per call, which dominates
    explanations that predict many small arrays; the last batch is padded so the model is
    traced for one batch shape only.
    """
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        return np.zeros((0, *model.output_shape[1:]), np.float32)
    size = min(batch_size, len(x))
    outputs = []
    for chunk, n in padded_batches(x, size):
        outputs.append(np.asarray(model.predict_on_batch(chunk), dtype=np.float32)[:n])
    return np.concatenate(outputs)
