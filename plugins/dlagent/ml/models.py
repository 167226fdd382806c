"""Keras models: builders by name, an independent copy, batched prediction. Keras is imported inside
the functions (it costs seconds)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from dlagent.errors import ConfigError
from dlagent.ml.config import TABLE_MLP_L2, TrainConfig, resolve_model
from dlagent.ml.metrics import CLASSIFICATION, REGRESSION
from dlagent.ml.tflite import padded_batches

log = logging.getLogger(__name__)


def check_model_input(model: str, input_shape: tuple[int, ...]) -> None:
    """Refuse a built-in model that cannot take samples of ``input_shape`` (no Keras needed: checked at the edge).

    ``cnn`` and ``resnet`` need images, ``(height, width[, channels])`` with height and width
    >= 2 (they pool by 2); ``mlp`` flattens any shape. A user's builder is checked by building
    it (:func:`dlagent.ml.builders.check_model_on_data`).
    """
    shape = tuple(int(d) for d in input_shape)
    model = resolve_model(model, shape)
    if model in IMAGE_MODELS and (len(shape) not in (2, 3) or min(shape[:2]) < 2):
        raise ConfigError(
            "model",
            f"{model!r} needs image data of shape (height, width[, channels]) with height and width >= 2, got samples of shape {shape}.",
            "use model 'mlp' for tabular data (csv:, or npz: with one feature row per sample).",
        )


IMAGE_MODELS = ("cnn", "resnet")


def build_model(config: TrainConfig, input_shape: tuple[int, ...], num_classes: int, *, allowed_modules=None, adapt_data=None,
                impute: bool = False, task: str = CLASSIFICATION, targets=None):
    """Return an uncompiled Keras model for ``config.model``: a built-in (``mlp``, ``cnn``,
    ``resnet``; ``auto`` becomes one for ``input_shape``) or the user's builder
    ``package.module:function`` called with ``config.model_args``.

    ``adapt_data`` (the training split's features): an ``mlp`` on a table standardises its
    inputs with statistics of these rows (:func:`standardize_layer`), inside the model; with
    ``impute`` it first fills missing values with these rows' medians and adds was-missing
    indicators (:class:`dlagent.ml.layers.ImputeMissing`).

    ``task``: a classifier ends in ``num_classes`` probabilities (softmax); a regressor in
    ``num_classes`` predicted targets (linear), re-scaled by the training split's ``targets``
    statistics when given (:class:`dlagent.ml.layers.TargetScale`).
    """
    import keras
    from keras import layers

    if not config.is_builtin:
        from dlagent.ml.builders import build_user_model

        return build_user_model(config.model, config.model_args, input_shape, num_classes, task, allowed_modules=allowed_modules)
    config = config.for_input(input_shape)
    check_model_input(config.model, input_shape)
    inputs = keras.Input(shape=input_shape, name="features")
    if config.model in IMAGE_MODELS:
        x, value_range = inputs, None
        pixels = pixel_statistics(adapt_data) if isinstance(adapt_data, np.ndarray) else None
        if pixels is not None:  # values outside [0, 1]: 0-255 floats, sensor units; standardised here, never by a server
            x, value_range = pixels.layer(channel_axis=len(input_shape) == 3)(x), pixels.standardised_range()
        x = layers.Reshape((*input_shape, 1))(x) if len(input_shape) == 2 else x
        if config.augment:
            x = augmentation(x, input_shape, value_range)
    else:
        x = inputs
        if len(input_shape) == 1 and adapt_data is not None:
            imputer = None
            if impute:
                from dlagent.ml.layers import impute_layer

                imputer = impute_layer(adapt_data)
                x = imputer(x)
            x = standardize_layer(adapt_data, imputer)(x)
        x = layers.Flatten()(x)
    penalty = kernel_penalty(config, task, targets, input_shape)
    members = config.members(task)  # the preprocessing above has no weights to learn: every member shares it
    heads = [_network(x, config, input_shape, num_classes, task, penalty, suffix=f"_{k}" if members > 1 else "") for k in range(members)]
    if members > 1:
        from dlagent.ml.ensemble import ENSEMBLE_LAYER

        outputs = layers.Average(name=ENSEMBLE_LAYER)(heads)
    else:
        outputs = heads[0]
    if task == REGRESSION and targets is not None:  # an affine map: scaling the average is the average of the scaled
        from dlagent.ml.layers import target_scale_layer

        outputs = target_scale_layer(targets)(outputs)
    return keras.Model(inputs, outputs, name=f"dlagent_{config.model}")


def _network(x, config: TrainConfig, input_shape, num_classes: int, task: str, penalty, suffix: str = ""):
    """One network of a built-in model on the prepared input ``x``: its features (convolutions, or
    the columns), hidden dense layers and output layer (an ensemble member when ``suffix`` is set)."""
    from keras import layers

    if config.model in IMAGE_MODELS:  # convolution features: dropout before the dense layer
        x = _cnn_features(x, config, input_shape) if config.model == "cnn" else _resnet_features(x, config)
        x = layers.Dropout(config.dropout)(x)
    columns = x
    for _ in range(config.hidden_layers):  # none: a linear model on the features (logistic / linear regression)
        x = layers.Dense(config.units, activation="relu", kernel_regularizer=penalty)(x)
        if config.model not in IMAGE_MODELS:  # mlp: dropout on the hidden layers, never on the input columns
            x = layers.Dropout(config.dropout)(x)
    if config.model == "mlp" and config.linear_path and config.hidden_layers > 0:  # wide and deep: a line needs no hidden unit
        x = layers.Concatenate(name=f"linear_path{suffix}")([columns, x])
    if task == REGRESSION:
        return layers.Dense(num_classes, name=f"predictions{suffix}", kernel_regularizer=penalty)(x)
    return layers.Dense(num_classes, activation="softmax", name=f"probabilities{suffix}", kernel_regularizer=penalty)(x)


def kernel_penalty(config: TrainConfig, task: str = CLASSIFICATION, targets=None, input_shape: tuple[int, ...] = ()):
    """The dense kernels' L2 regulariser for ``config.l2`` (``None`` at 0).

    Left empty, ``l2`` is :data:`~dlagent.ml.config.TABLE_MLP_L2` for an ``mlp`` classifying a
    table (samples of one dimension), where a few hundred rows over-fit an unpenalised hidden
    layer; 0 elsewhere: on images it was not measured, and on regression tables it helped a
    noisy line (the diabetes table) and cost the curved Friedman tables more (README, "An L2 penalty").

    Keras adds ``l2 x sum(w ** 2)`` to the batch's mean loss. A regressor's loss is the mean
    squared error in the target's own units (its last layer re-scales, :class:`TargetScale`),
    so the penalty is multiplied by the training targets' variance: relative to the loss on
    standardised targets, ``l2`` weighs the same on house prices as on probabilities, and a
    value chosen on one table transfers to another. Cross-entropy has no units: ``l2`` as given.
    """
    l2 = effective_l2(config, input_shape, task)
    if not l2:
        return None
    import keras

    scale = 1.0
    if task == REGRESSION and targets is not None:
        from dlagent.ml.layers import target_std

        scale = float((target_std(targets) ** 2).mean())
    return keras.regularizers.L2(l2 * scale)


def effective_l2(config: TrainConfig, input_shape: tuple[int, ...] = (), task: str = CLASSIFICATION) -> float:
    """``config.l2``, or when it is empty the default for the model, its samples' shape and the task (:func:`kernel_penalty`)."""
    if config.l2 is not None:
        return float(config.l2)
    return TABLE_MLP_L2 if resolve_model(config.model, input_shape) == "mlp" and len(tuple(input_shape)) == 1 and task == CLASSIFICATION else 0.0


STANDARDIZE_LAYER = "standardize"


def standardize_layer(features, imputer=None):
    """A Keras ``Normalization`` layer holding the per-column mean and variance of ``features``
    (the training split only; after ``imputer``'s filling when given), so the model, its TFLite
    file and the served model all take raw values: no training/serving skew. A constant column
    keeps variance 1 (scikit-learn's ``StandardScaler`` rule), where Keras' own floor of 1e-7
    would blow up any other value.

    The moments are merged a chunk at a time in float64 (Chan et al.'s pairwise update), so a
    streamed table (:class:`~dlagent.ml.table_rows.TableRows`) is never held whole."""
    from keras import layers

    from dlagent.ml.table_rows import iter_chunks

    mean, variance = merged_moments(np.asarray(imputer.transform(chunk) if imputer is not None else chunk, np.float64).reshape(len(chunk), -1)
                                    for chunk in iter_chunks(features))
    return layers.Normalization(mean=mean.astype(np.float32), variance=variance.astype(np.float32), name=STANDARDIZE_LAYER)


def merged_moments(chunks) -> tuple[np.ndarray, np.ndarray]:
    """The per-column mean and variance of float64 ``chunks`` (2-D, rows by columns), merged a
    chunk at a time (Chan et al.'s pairwise update); a constant column keeps variance 1."""
    count, mean, m2 = 0, 0.0, 0.0
    for values in chunks:
        n, chunk_mean = len(values), values.mean(axis=0)
        delta, total = chunk_mean - mean, count + n
        m2 = m2 + ((values - chunk_mean) ** 2).sum(axis=0) + delta**2 * count * n / total
        mean, count = mean + delta * n / total, total
    variance = m2 / count
    variance[variance < 1e-12] = 1.0
    return mean, variance


def nested_layer(model, name: str):
    """``model``'s layer called ``name`` at any depth (a transfer-learning model holds its source
    as one nested ``transfer_base`` layer, and with it the source's preprocessing), or ``None``."""
    for layer in getattr(model, "layers", ()):
        if layer.name == name:
            return layer
        found = nested_layer(layer, name) if hasattr(layer, "layers") else None
        if found is not None:
            return found
    return None


def scaling_statistics(model) -> dict | None:
    """``{"mean": [...], "std": [...]}`` of a model's input standardisation (with ``"impute"``:
    ``fill_values`` and ``indicator_columns`` when it fills missing values), or ``None`` without one."""
    layer = nested_layer(model, STANDARDIZE_LAYER)
    if layer is None:
        return None
    mean, variance = (np.asarray(layer.mean).ravel(), np.asarray(layer.variance).ravel())
    statistics = {"mean": [float(v) for v in mean], "std": [float(v) for v in np.sqrt(variance)]}
    from dlagent.ml.layers import IMPUTE_LAYER

    imputer = nested_layer(model, IMPUTE_LAYER)
    if imputer is None:
        return statistics
    return {**statistics, "impute": {"fill_values": imputer.fill_values, "indicator_columns": imputer.indicator_columns}}


@dataclass(frozen=True)
class PixelStatistics:
    """Per-channel statistics of a training split's images whose values leave ``[0, 1]``."""

    low: np.ndarray
    high: np.ndarray
    mean: np.ndarray
    variance: np.ndarray

    def layer(self, channel_axis: bool = True):
        """The ``standardize`` layer (``Normalization`` per channel; without ``channel_axis``, for
        ``(h, w)`` samples, one mean and variance): the name a table's standardisation has, so
        int8 keeps it in float32 (the model's first operators) and training logs its statistics."""
        from keras import layers

        if not channel_axis:
            return layers.Normalization(axis=None, mean=float(self.mean[0]), variance=float(self.variance[0]), name=STANDARDIZE_LAYER)
        return layers.Normalization(mean=self.mean.astype(np.float32), variance=self.variance.astype(np.float32),
                                    name=STANDARDIZE_LAYER)

    def standardised_range(self) -> tuple[float, float]:
        std = np.sqrt(self.variance)
        return float(((self.low - self.mean) / std).min()), float(((self.high - self.mean) / std).max())


def pixel_statistics(images: np.ndarray) -> PixelStatistics | None:
    """The per-channel range, mean and variance of ``images`` (a training split of ``(h, w)`` or
    ``(h, w, c)`` samples, read a chunk at a time, so a large split is never copied whole as
    float64), or ``None`` when every value lies in ``[0, 1]``, as the image loaders give pixels
    (divided by 255) and the built-in image models expect them: then only the range is read, in the
    samples' own dtype (every tuning trial builds a model). Anything else (0-255 floats, raw sensor
    units such as -1000..3000) trains a worse model unscaled: the ``cnn`` on MNIST saved as 0-255
    floats lost 0.7 points in 8 epochs, and 2.5 as -1000..3000. A constant channel keeps variance 1."""
    from dlagent.ml.table_rows import iter_chunks

    if not len(images):
        return None
    channels = int(images.shape[-1]) if images.ndim == 4 else 1
    low, high = np.full(channels, np.inf), np.full(channels, -np.inf)
    for chunk in iter_chunks(images):
        values = np.asarray(chunk).reshape(-1, channels)
        low, high = np.minimum(low, values.min(axis=0)), np.maximum(high, values.max(axis=0))
    if low.min() >= 0.0 and high.max() <= 1.0:
        return None
    mean, variance = merged_moments(np.asarray(chunk, np.float64).reshape(-1, channels) for chunk in iter_chunks(images))
    log.info("image values %.4g..%.4g, outside [0, 1]: the model standardises them per channel (mean %s)", low.min(), high.max(),
             np.round(mean, 4).tolist())
    return PixelStatistics(low, high, mean, variance)


def augmentation(x, input_shape: tuple[int, ...], value_range: tuple[float, float] | None = None):
    """Random horizontal flips, shifted crops (pad by 1/8, crop back), small rotations and contrast
    changes: Keras preprocessing layers, which act only in training (at inference they pass the
    image through, so evaluation, TFLite and serving see the images as given). ``value_range``:
    the standardised images' range, where the contrast change clips (Keras' default, 0-255,
    holds pixels in ``[0, 1]`` but would cut every negative standardised value to 0)."""
    from keras import layers

    pad = max(1, int(input_shape[0]) // 8)
    x = layers.RandomFlip("horizontal", name="augment_flip")(x)
    x = layers.RandomTranslation(pad / int(input_shape[0]), pad / int(input_shape[1]), fill_mode="constant", name="augment_crop")(x)
    x = layers.RandomRotation(0.05, fill_mode="constant", name="augment_rotation")(x)
    return layers.RandomContrast(0.2, **({"value_range": value_range} if value_range else {}), name="augment_contrast")(x)


def _cnn_features(x, config: TrainConfig, input_shape):
    from keras import layers

    small = min(input_shape[:2]) < 16  # 8x8 digits: one pooling step less
    x = layers.Conv2D(config.filters, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(config.filters * 2, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x) if not small else x
    return layers.Flatten()(x)


RESNET_STAGES = 3  # filters, 2x filters, 4x filters; each stage after the first halves the image


def _resnet_features(x, config: TrainConfig):
    """A small residual network (He et al. 2016, the CIFAR variant): a 3x3 stem, then
    :data:`RESNET_STAGES` stages of one residual block each (two 3x3 convolutions with batch
    normalisation; a 1x1 projection where the shape changes), global average pooling."""
    from keras import layers

    x = layers.Conv2D(config.filters, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    for stage in range(RESNET_STAGES):
        filters = config.filters * 2**stage
        downsample = stage > 0 and min(x.shape[1], x.shape[2]) >= 4
        x = _residual_block(x, filters, stride=2 if downsample else 1)
    return layers.GlobalAveragePooling2D()(x)


def _residual_block(x, filters: int, *, stride: int):
    from keras import layers

    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    y = layers.BatchNormalization()(y)
    y = layers.Activation("relu")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization()(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
        shortcut = layers.BatchNormalization()(shortcut)
    return layers.Activation("relu")(layers.Add()([shortcut, y]))


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
    from dlagent.ml.streaming import is_streamed

    x = x if is_streamed(x) else np.asarray(x, dtype=np.float32)  # streamed images are decoded a batch at a time
    if len(x) == 0:
        return np.zeros((0, *model.output_shape[1:]), np.float32)
    size = min(batch_size, len(x))
    outputs = []
    for chunk, n in padded_batches(x, size):
        outputs.append(np.asarray(model.predict_on_batch(chunk), dtype=np.float32)[:n])
    return np.concatenate(outputs)
