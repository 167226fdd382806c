"""A site's side of a round: train from the global weights on the site's own rows, return only weights.

FedAvg's local step is plain minibatch training; FedProx adds ``mu/2 * ||w - w_global||^2``
to the loss, which keeps a site whose data differ from the others' (label skew) from pulling
the global model towards its own classes. Both run the same custom loop, so ``mu = 0`` is
exactly FedAvg.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from dlagent.errors import ConfigError
from dlagent.ml.config import TrainConfig


def _reseed_layers(model, seed: int) -> None:
    """Reset the state of the model's random layers (dropout's seed generators): the model is
    reused across rounds, and without this the same site, round and seed would draw other masks
    on a rerun than in the first run. These states are not weights (``get_weights`` leaves them
    out), so they are never averaged or sent."""
    generators = [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]
    for index, state in enumerate(generators):
        state.assign(np.array([seed, index], dtype=state.dtype))


@dataclass
class LocalUpdate:
    """What leaves a site: the updated weights, how many rows produced them, and training figures."""

    weights: list
    samples: int
    metrics: dict = field(default_factory=dict)


def local_update(model, global_weights, x: np.ndarray, y: np.ndarray, *, config: TrainConfig, epochs: int, mu: float = 0.0,
                 seed: int = 0, task: str = "classification") -> LocalUpdate:
    """Set ``model`` to ``global_weights``, train it ``epochs`` epochs on ``(x, y)`` with a fresh
    optimizer (``config``'s optimizer, learning rate and batch size), return the new weights.

    ``model`` is any Keras model of the global architecture, built once per process and reused
    for every round (its weights are overwritten first).
    """
    import keras
    import tensorflow as tf

    from dlagent.ml.models import build_optimizer

    if len(y) == 0:
        raise ConfigError("shard", "has no training rows.", "give every site some data, or leave it out of the round.")
    if mu < 0:
        raise ConfigError("mu", f"must be >= 0, got {mu!r}.", "use 0 (FedAvg) or a small positive value such as 0.01.")
    keras.utils.set_random_seed(seed)
    model.set_weights(global_weights)
    _reseed_layers(model, seed)
    optimizer = build_optimizer(config)
    loss_fn = keras.losses.MeanSquaredError() if task == "regression" else keras.losses.SparseCategoricalCrossentropy()
    anchors = [tf.constant(np.asarray(v)) for v in model.trainable_weights] if mu > 0 else []
    half_mu = tf.constant(mu / 2.0, dtype=tf.float32)

    @tf.function(reduce_retracing=True)
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
            if model.losses:
                loss += tf.add_n(model.losses)
            if anchors:
                loss += half_mu * tf.add_n([tf.reduce_sum(tf.square(v.value - a)) for v, a in zip(model.trainable_weights, anchors, strict=True)])
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply(grads, model.trainable_weights)
        return loss

    data = tf.data.Dataset.from_tensor_slices((np.asarray(x, np.float32), np.asarray(y)))
    started = time.perf_counter()
    losses = []
    for epoch in range(epochs):
        batches = data.shuffle(len(y), seed=seed + epoch, reshuffle_each_iteration=False).batch(config.batch_size)
        total, steps = 0.0, 0
        for xb, yb in batches:
            total += float(step(xb, yb))
            steps += 1
        losses.append(total / max(steps, 1))
    weights = model.get_weights()
    if not all(np.all(np.isfinite(w)) for w in weights):
        raise ConfigError("learning_rate", f"the site's training diverged (loss {losses[-1]:.4g}): its weights are not finite.",
                          "lower the learning rate or the local epochs.")
    return LocalUpdate(weights=weights, samples=int(len(y)),
                       metrics={"train_loss": losses[-1], "local_epochs": epochs, "local_seconds": round(time.perf_counter() - started, 3)})
