"""Builders that break the contract in one way each (tests/ml/test_builders.py allows this module)."""

from __future__ import annotations


def returns_dict(hp, input_shape, n_outputs, task):
    return {"layers": 2}


def three_outputs(hp, input_shape, n_outputs, task):
    import keras

    inputs = keras.Input(shape=input_shape)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs)))


def logits(hp, input_shape, n_outputs, task):
    import keras

    inputs = keras.Input(shape=input_shape)
    return keras.Model(inputs, keras.layers.Dense(n_outputs)(keras.layers.Flatten()(inputs)))


def raises(hp, input_shape, n_outputs, task):
    raise ValueError(f"width must be even, got {hp.get('width')}")


def sequential(hp, input_shape, n_outputs, task):
    import keras

    return keras.Sequential([keras.Input(shape=input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(n_outputs, activation="softmax")])
