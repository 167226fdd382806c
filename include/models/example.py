"""An example model builder: a gated multi-layer perceptron with a custom layer.

Use it from the trigger form or a DAG's conf::

    {"model": "include.models.example:build", "model_args": {"width": 64, "depth": 2}}

and tune its arguments like the built-in settings::

    {"search_space": {"model_args.width": {"type": "int", "low": 32, "high": 256, "log": true},
                      "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": true}}}

The contract (``dlagent.ml.builders``): ``build(hp, input_shape, n_outputs, task)`` returns an
uncompiled ``keras.Model`` that takes samples of ``input_shape`` and, for ``task ==
"classification"``, ends in ``n_outputs`` class probabilities (a softmax). dlagent compiles,
trains, tunes, compresses, evaluates and deploys it like its own models.

A custom layer must be registered serializable (``register_keras_serializable``) and define
``get_config``: models are stored in the Keras format and loaded back in safe mode, which
rebuilds registered classes and refuses arbitrary code. dlagent imports this module again
before loading a logged model of this builder, so the registration is always in place.
"""

from __future__ import annotations

import keras
from keras import layers

DEFAULTS = {"width": 64, "depth": 2, "dropout": 0.1}


@keras.saving.register_keras_serializable(package="include.models.example")
class GatedDense(layers.Layer):
    """``relu(x W + b) * sigmoid(x V + c)``: a dense layer whose output is gated per unit."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.value = layers.Dense(self.units, activation="relu")
        self.gate = layers.Dense(self.units, activation="sigmoid")

    def build(self, input_shape):
        self.value.build(input_shape)
        self.gate.build(input_shape)

    def call(self, inputs):
        return self.value(inputs) * self.gate(inputs)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def build(hp: dict, input_shape: tuple, n_outputs: int, task: str) -> keras.Model:
    """``depth`` gated layers of ``width`` units with ``dropout``; any input shape (flattened)."""
    if task != "classification":
        raise ValueError(f"this example builds classifiers only, not {task!r}")
    unknown = sorted(set(hp) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown model_args {unknown}; this builder takes {sorted(DEFAULTS)}")
    hp = {**DEFAULTS, **hp}
    inputs = keras.Input(shape=input_shape, name="features")
    x = layers.Flatten()(inputs)
    for index in range(int(hp["depth"])):
        x = GatedDense(int(hp["width"]), name=f"gated_{index}")(x)
        x = layers.Dropout(float(hp["dropout"]))(x)
    outputs = layers.Dense(n_outputs, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="example_gated_mlp")
