"""Knowledge distillation: a small student model trained on a teacher's softened outputs."""

from __future__ import annotations

import logging
import time

import numpy as np

from dlagent.errors import ConfigError
from dlagent.ml.config import AUTO_MODEL, TrainConfig, resolve_model
from dlagent.ml.data import DatasetSplits
from dlagent.validation import check_choice, check_number

log = logging.getLogger(__name__)

STUDENT_MODELS = (AUTO_MODEL, "mlp", "cnn")  # auto: the cnn for images, the mlp for a table's rows (resolve_model)


def build_student(kind: str, input_shape: tuple, num_classes: int, *, units: int = 32, filters: int = 8, seed: int = 42,
                  adapt_data=None, impute: bool = False):
    """``(logits_model, model)``: a small ``mlp``/``cnn`` (``auto``: the one for ``input_shape``) built
    like the project's models, whose ``logits_model`` ends in a linear layer (for the temperature)
    and ``model`` adds the softmax (the model that is kept)."""
    import keras
    from keras import layers

    from dlagent.ml.models import build_model

    check_choice("student_model", kind, STUDENT_MODELS)
    kind = resolve_model(kind, input_shape)
    base = build_model(TrainConfig(model=kind, units=units, filters=filters, dropout=0.1, seed=seed, ensemble=1), input_shape, num_classes,
                       adapt_data=adapt_data, impute=impute)
    penultimate = base.get_layer("probabilities").input
    logits = layers.Dense(num_classes, name="logits")(penultimate)
    logits_model = keras.Model(base.input, logits, name=f"dlagent_student_{kind}_logits")
    probabilities = layers.Activation("softmax", name="probabilities")(logits)
    return logits_model, keras.Model(base.input, probabilities, name=f"dlagent_student_{kind}")


def distill(
    teacher,
    splits: DatasetSplits,
    *,
    student_model: str = AUTO_MODEL,
    student_units: int = 32,
    student_filters: int = 8,
    temperature: float = 4.0,
    alpha: float = 0.1,
    epochs: int = 10,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 42,
):
    """Train a smaller student on the teacher's soft targets; return the student (softmax output).

    Loss: ``alpha * CE(labels, softmax(z)) + (1 - alpha) * T^2 * KL(p_teacher^T || softmax(z / T))``,
    where ``p_teacher^T`` is the teacher's distribution at temperature ``T``
    (``softmax(log p_teacher / T)``, since the teacher outputs probabilities). Early stopping on
    the validation loss restores the best weights.
    """
    import keras
    from keras import ops

    check_number("temperature", temperature, low=0.0, high=100.0, low_open=True)
    check_number("alpha", alpha, low=0.0, high=1.0)
    keras.utils.set_random_seed(seed)
    num_classes = splits.num_classes

    def soft_targets(x):
        probs = np.asarray(teacher.predict(x, batch_size=256, verbose=0), dtype=np.float64)
        logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
        logits -= logits.max(axis=1, keepdims=True)
        soft = np.exp(logits)
        return (soft / soft.sum(axis=1, keepdims=True)).astype(np.float32)

    def packed(x, y):
        return np.concatenate([np.eye(num_classes, dtype=np.float32)[y], soft_targets(x)], axis=1)

    def loss(y_true, logits):
        hard, soft = y_true[:, :num_classes], y_true[:, num_classes:]
        student_loss = keras.losses.categorical_crossentropy(hard, logits, from_logits=True)
        log_student_t = ops.log_softmax(logits / temperature, axis=-1)
        kl = ops.sum(soft * (ops.log(ops.clip(soft, 1e-12, 1.0)) - log_student_t), axis=-1)
        return alpha * student_loss + (1.0 - alpha) * (temperature**2) * kl

    def accuracy(y_true, logits):
        return ops.cast(ops.equal(ops.argmax(y_true[:, :num_classes], axis=-1), ops.argmax(logits, axis=-1)), "float32")

    from dlagent.ml.streaming import is_streamed

    if is_streamed(splits.x_train):
        raise ConfigError("compression.distill", "distillation packs the teacher's outputs beside every training sample, which "
                          "needs the training data in memory; this data set is streamed.",
                          "set the data option cache to 'memory' (if it fits), or use pruning and quantization (distill: false).")
    student_model = resolve_model(student_model, splits.input_shape)  # 'auto': the cnn for images, the mlp for rows
    logits_model, student = build_student(student_model, splits.input_shape, num_classes, units=student_units,
                                          filters=student_filters, seed=seed, adapt_data=splits.x_train,
                                          impute=splits.impute)
    logits_model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=[accuracy])
    started = time.perf_counter()
    logits_model.fit(
        splits.x_train, packed(splits.x_train, splits.y_train),
        validation_data=(splits.x_val, packed(splits.x_val, splits.y_val)),
        epochs=epochs, batch_size=batch_size, verbose=0,
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)],
    )
    log.info("distilled a %s student (%d params, teacher %d) in %.1fs", student_model, student.count_params(),
             teacher.count_params(), time.perf_counter() - started)
    return student
