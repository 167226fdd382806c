"""dlagent's own Keras layers, registered serializable so logged models load in safe mode.

Imported only where a model is built or loaded (it imports Keras); loading a model that uses
one imports this module first (:func:`dlagent.ml.builders.import_custom_modules`).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

IMPUTE_LAYER = "impute_missing"  # the name of a model's ImputeMissing layer


@keras.saving.register_keras_serializable(package="dlagent")
class ImputeMissing(layers.Layer):
    """Fill missing (NaN) features and flag them: each column's NaN becomes its fill value (the
    training split's median), and a 0/1 column is appended for each of ``indicator_columns``
    (the columns that had missing values in training), so the model can learn from the fact that
    a value was missing. Part of the model, so Keras, TFLite and serving fill raw rows the same
    way; NaN is found as ``x != x``, which TFLite's built-in ops carry."""

    def __init__(self, fill_values, indicator_columns=(), **kwargs):
        super().__init__(**kwargs)
        self.fill_values = [float(v) for v in fill_values]
        self.indicator_columns = [int(c) for c in indicator_columns]

    def call(self, inputs):
        missing = ops.not_equal(inputs, inputs)
        filled = ops.where(missing, ops.convert_to_tensor(np.asarray(self.fill_values, np.float32)), inputs)
        if not self.indicator_columns:
            return filled
        flags = ops.cast(ops.take(missing, np.asarray(self.indicator_columns, np.int32), axis=1), filled.dtype)
        return ops.concatenate([filled, flags], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] + len(self.indicator_columns))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """The same filling in NumPy (for statistics computed on the filled training rows)."""
        x = np.asarray(x, np.float32)
        missing = np.isnan(x)
        filled = np.where(missing, np.asarray(self.fill_values, np.float32), x)
        return np.concatenate([filled, missing[:, self.indicator_columns].astype(np.float32)], axis=1)

    def get_config(self):
        return {**super().get_config(), "fill_values": self.fill_values, "indicator_columns": self.indicator_columns}


MEDIAN_ROWS = 100_000  # training rows a median is taken over; a seeded sample of them when there are more...
MEDIAN_BYTES = 64 * 2**20  # ...and fewer when that many (encoded, float32) rows would be larger than this


def impute_layer(features) -> ImputeMissing:
    """An :class:`ImputeMissing` from the training split's features (an array or a streamed
    table): per-column medians of the values present (0 for a column with none), indicators for
    the columns with any NaN.

    A median needs its values in memory, so above :data:`MEDIAN_ROWS` rows (or
    :data:`MEDIAN_BYTES` of them, for a wide table) it is the median of a seeded sample of that
    many rows (the same in every task); which columns get an indicator is found over all rows, a
    chunk at a time."""
    from dlagent.ml.table_rows import iter_chunks

    n, width = len(features), int(np.prod(features.shape[1:]))
    most = max(1, min(MEDIAN_ROWS, MEDIAN_BYTES // (4 * max(1, width))))
    sample = features[:] if n <= most else features[np.sort(np.random.default_rng(0).choice(n, most, replace=False))]
    x = np.asarray(sample, np.float32)
    fill = []
    for j in range(x.shape[1]):  # a column at a time: a float64 copy of the sample would double it
        present = x[:, j][~np.isnan(x[:, j])]
        fill.append(float(np.median(present.astype(np.float64))) if len(present) else 0.0)
    gaps = np.zeros(x.shape[1], bool)
    for chunk in iter_chunks(features):
        gaps |= np.isnan(chunk).any(axis=0)
    return ImputeMissing(fill, [int(j) for j in np.flatnonzero(gaps)], name=IMPUTE_LAYER)


TARGET_SCALE_LAYER = "target_scale"  # the name of a regression model's TargetScale layer


@keras.saving.register_keras_serializable(package="dlagent")
class TargetScale(layers.Layer):
    """``outputs * std + mean``: a regression model's last layer, with each target's mean and
    standard deviation on the training split. The layers before it learn standardised targets
    (unit scale, whatever the target's units, so one learning rate suits every data set) while
    the model, its TFLite file and the served model all predict in the target's own units."""

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]

    def call(self, inputs):
        return inputs * ops.convert_to_tensor(np.asarray(self.std, np.float32)) + ops.convert_to_tensor(np.asarray(self.mean, np.float32))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


def target_scale_layer(targets: np.ndarray) -> TargetScale:
    """A :class:`TargetScale` from the training split's targets (a constant target keeps std 1)."""
    y = np.asarray(targets, np.float64).reshape(len(targets), -1)
    return TargetScale(y.mean(axis=0), target_std(y), name=TARGET_SCALE_LAYER)


def target_std(targets) -> np.ndarray:
    """Each target column's standard deviation on the training split; a constant target keeps std 1
    (the one rule for the target's scale: :class:`TargetScale` and the L2 penalty's scaling read it)."""
    y = np.asarray(targets, np.float64).reshape(len(targets), -1)
    std = y.std(axis=0)
    std[std < 1e-12] = 1.0
    return std
