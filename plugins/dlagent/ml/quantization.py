"""Post-training quantization with ``tf.lite.TFLiteConverter``: ``none`` (float32), ``dynamic``
(int8 weights, float activations), ``float16`` (float16 weights) or ``int8`` (full integer: int8
weights and activations, calibrated on a representative sample of the *training* split, every op
restricted to the int8 builtins).

``int8`` I/O choice: by default the int8 model keeps **float32 input and output** (a QUANTIZE op
in front, a DEQUANTIZE op behind), so it is a drop-in replacement for the float model: the same
features in, probabilities out. ``int8_io=True`` makes the input and output int8 as well, for
integer-only hardware (micro-controllers, Edge TPU); the :class:`~dlagent.ml.tflite.TFLiteModel`
runner then quantizes the input and dequantizes the output with the tensors' own scale and zero
point.

A table model's input preprocessing (:class:`~dlagent.ml.layers.ImputeMissing` and the
``standardize`` layer, which an image model has too when its pixels leave ``[0, 1]``) stays float32 under ``int8`` (:func:`float_preprocessing`): one int8 scale
cannot hold raw columns in the thousands beside columns near 0.1 (the small ones round to zero)
nor a NaN gap, and a fully int8 table model fell to chance accuracy. Everything after the
standardisation is int8; ``int8_io`` on such a model is refused.

Nothing here imports TensorFlow at module level, nor Airflow.
"""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np

from dlagent.errors import ConfigError

log = logging.getLogger(__name__)

QUANTIZATION_MODES = ("none", "dynamic", "float16", "int8")


def validate_quantization(value, field_name: str = "quantization") -> str:
    if value not in QUANTIZATION_MODES:
        raise ConfigError(field_name, f"unknown quantization mode {value!r}; known: {list(QUANTIZATION_MODES)}.", f"pick one of {list(QUANTIZATION_MODES)}.")
    return value


def representative_sample(splits, n: int, seed: int = 0) -> np.ndarray:
    """``n`` training samples (stratified by chance, seeded) for int8 calibration."""
    rng = np.random.default_rng(seed)
    n = min(n, len(splits.x_train))
    return splits.x_train[rng.choice(len(splits.x_train), size=n, replace=False)].astype(np.float32)


def quantize(model, mode: str = "int8", representative_data=None, *, int8_io: bool = False) -> bytes:
    """Convert a Keras model to a TFLite flatbuffer with post-training quantization.

    ``representative_data`` (an array of input samples from the training split) is required
    for ``int8`` and ignored otherwise. See the module docstring for the int8 I/O choice.
    """
    import tensorflow as tf

    validate_quantization(mode)
    if mode == "int8":
        if representative_data is None or len(representative_data) == 0:
            raise ConfigError(
                "representative_data",
                "full-integer int8 quantization needs representative input samples to calibrate activation ranges, got none.",
                "pass a few hundred training samples (representative_sample(splits, 200)) or use quantization 'dynamic'.",
            )
        representative_data = np.asarray(representative_data, dtype=np.float32)
        if int8_io and float_preprocessing(model):
            raise ConfigError("compression.int8_io", "integer input cannot carry the raw values this model standardises first, in "
                              "float32 (a table's columns, or images outside [0, 1]): one int8 scale would round the small ones to zero.",
                              "use int8 without int8_io (float input, int8 inside).")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode == "int8":
        def generate():
            for i in range(len(representative_data)):
                yield [representative_data[i : i + 1]]

        converter.representative_dataset = generate
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    chatter = io.StringIO()  # the converter prints the exported signature to stdout
    with contextlib.redirect_stdout(chatter):
        content = converter.convert()
        if mode == "int8" and not int8_io and float_preprocessing(model):
            content = _with_float_preprocessing(converter, content, generate)
    log.debug("TFLite converter output: %s", chatter.getvalue())
    return bytes(content)


def float_preprocessing(model) -> list[str]:
    """The names of ``model``'s input preprocessing layers (imputation, standardisation) that an
    int8 conversion keeps in float32."""
    from dlagent.ml.layers import IMPUTE_LAYER
    from dlagent.ml.models import STANDARDIZE_LAYER, nested_layer

    return [name for name in (IMPUTE_LAYER, STANDARDIZE_LAYER) if nested_layer(model, name) is not None]  # at any depth (transfer)


def _with_float_preprocessing(converter, content: bytes, representative) -> bytes:
    """The int8 conversion again with the preprocessing layers' operators left in float32
    (TensorFlow Lite's selective quantization: the quantization debugger's deny-list of nodes,
    named from the fully quantized model ``content``); a QUANTIZE op then follows them."""
    import tensorflow as tf

    from dlagent.ml.layers import IMPUTE_LAYER
    from dlagent.ml.models import STANDARDIZE_LAYER

    tensors = tf.lite.Interpreter(model_content=content).get_tensor_details()
    denied = [t["name"] for t in tensors if any(f"/{name}" in t["name"] for name in (IMPUTE_LAYER, STANDARDIZE_LAYER))]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denied)
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=representative, debug_options=options)
    return debugger.get_nondebug_quantized_model()
