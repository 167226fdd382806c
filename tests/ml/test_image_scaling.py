"""Images whose values leave [0, 1] (0-255 floats, sensor units) are standardised per channel
inside the built-in image models; images in [0, 1], as every loader gives them, keep the model
they always had."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from dlagent.ml.config import TrainConfig
from dlagent.ml.models import STANDARDIZE_LAYER, build_model, pixel_statistics


def _layer_names(model) -> list[str]:
    return [layer.name for layer in model.layers]


def test_images_in_the_unit_range_get_no_layer_and_others_are_standardised_per_channel():
    import keras

    rng = np.random.default_rng(0)
    unit = rng.random((40, 8, 8, 3), dtype=np.float32)
    assert pixel_statistics(unit) is None
    assert STANDARDIZE_LAYER not in _layer_names(build_model(TrainConfig(model="cnn"), (8, 8, 3), 3, adapt_data=unit))

    raw = np.stack([unit[..., 0] * 255, unit[..., 1] * 4000 - 1000, np.full((40, 8, 8), 7.0, np.float32)], axis=-1)
    statistics = pixel_statistics(raw)
    np.testing.assert_allclose(statistics.mean, raw.reshape(-1, 3).mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(statistics.variance[:2], raw.reshape(-1, 3)[:, :2].var(axis=0), rtol=1e-5)
    assert statistics.variance[2] == 1.0  # a constant channel is centred, not blown up
    for model_name in ("cnn", "resnet"):
        model = build_model(TrainConfig(model=model_name, filters=8, units=8), (8, 8, 3), 3, adapt_data=raw)
        standardised = np.asarray(keras.Model(model.input, model.get_layer(STANDARDIZE_LAYER).output)(raw))
        np.testing.assert_allclose(standardised.reshape(-1, 3).mean(axis=0), [0, 0, 0], atol=1e-3)
        np.testing.assert_allclose(standardised.reshape(-1, 3).std(axis=0), [1, 1, 0], atol=1e-3)

    gray = raw[..., 0]  # (h, w) samples: one channel
    model = build_model(TrainConfig(model="cnn"), (8, 8), 3, adapt_data=gray)
    assert tuple(model.get_layer(STANDARDIZE_LAYER).output.shape) == (None, 8, 8)  # before the channel axis is added
    assert pixel_statistics(np.clip(gray / 255, 0, 1)) is None


def test_a_mapped_archive_is_read_a_chunk_at_a_time_to_the_same_statistics(tmp_path):
    from dlagent.ml import table_rows

    images = (np.random.default_rng(1).random((3000, 12, 12)) * 255).astype(np.float32)
    mapped = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=images.shape)
    mapped[:] = images
    held = pixel_statistics(images)
    original = table_rows.CHUNK_BYTES
    table_rows.CHUNK_BYTES = 64 * 1024  # about 100 images a chunk: the merge across chunks is what is checked
    try:
        chunked = pixel_statistics(mapped)
    finally:
        table_rows.CHUNK_BYTES = original
    np.testing.assert_allclose(chunked.mean, held.mean, rtol=1e-9)
    np.testing.assert_allclose(chunked.variance, held.variance, rtol=1e-9)
    assert (chunked.low, chunked.high) == (held.low, held.high)


def test_augmenting_standardised_images_keeps_their_negative_values():
    """Keras' contrast layer clips to 0-255 unless told the images' range: standardised values
    below 0 would all become 0 while training, and never at inference."""
    import keras

    raw = np.random.default_rng(2).random((16, 16, 16, 1), dtype=np.float32) * 255
    model = build_model(TrainConfig(model="cnn", augment=True), (16, 16, 1), 2, adapt_data=raw)
    front = keras.Model(model.input, model.get_layer("augment_contrast").output)
    augmented = np.asarray(front(raw, training=True))
    assert (augmented < -0.5).mean() > 0.1


def test_digits_saved_as_0_to_255_floats_train_and_int8_keeps_the_standardisation_in_float(tmp_path):
    import tensorflow as tf
    from dlagent.ml.compression import CompressionConfig, compress
    from dlagent.ml.data import load_dataset
    from dlagent.ml.evaluation import keras_score
    from dlagent.ml.training import fit

    digits = load_dataset("digits", seed=0)
    np.savez(tmp_path / "digits255.npz", x=np.concatenate([digits.x_train, digits.x_val, digits.x_test]) * 255,
             y=np.concatenate([digits.y_train, digits.y_val, digits.y_test]))
    splits = load_dataset(f"npz:{tmp_path / 'digits255.npz'}", seed=0)
    assert float(splits.x_train.max()) > 200  # kept as given: the model scales, not the loader
    model = fit(splits, TrainConfig(epochs=12, seed=0)).model
    assert STANDARDIZE_LAYER in _layer_names(model)
    accuracy = keras_score(model, splits)
    assert accuracy >= 0.95
    candidate = compress(model, splits, CompressionConfig(quantization="int8"), latency_runs=5)
    assert candidate.metrics["test_accuracy"] >= accuracy - 0.02
    ops = [op["op_name"] for op in tf.lite.Interpreter(model_content=candidate.tflite_bytes)._get_ops_details()]
    assert ops.index("QUANTIZE") > ops.index("SUB")  # standardised in float, then int8
    scaled = dataclasses.replace(splits, x_train=splits.x_train / 255, x_val=splits.x_val / 255, x_test=splits.x_test / 255)
    assert STANDARDIZE_LAYER not in _layer_names(fit(scaled, TrainConfig(epochs=1, seed=0)).model)


@pytest.mark.parametrize("shape", [(5, 6, 6), (5, 6, 6, 2)])
def test_statistics_are_per_channel_for_both_image_layouts(shape):
    images = np.random.default_rng(3).normal(size=shape) * 50
    statistics = pixel_statistics(images)
    channels = shape[-1] if len(shape) == 4 else 1
    assert statistics.mean.shape == (channels,) and statistics.low.shape == (channels,)


def test_a_transfer_models_nested_standardisation_is_found_kept_float_and_checked():
    """``adapt_source`` nests the source in one ``transfer_base`` layer: its ``standardize`` layer
    must still be kept in float32 by int8, logged, and refuse ``int8_io`` before any compute."""
    import tensorflow as tf
    from dlagent.errors import ConfigError
    from dlagent.ml.data import DatasetSplits
    from dlagent.ml.models import nested_layer, scaling_statistics
    from dlagent.ml.quantization import float_preprocessing, quantize
    from dlagent.ml.transfer import adapt_source
    from dlagent.operators.pipeline import refuse_int8_io_on_raw_inputs, warn_on_other_pixel_units

    raw = np.random.default_rng(4).random((30, 8, 8, 1), dtype=np.float32) * 255
    source = build_model(TrainConfig(model="cnn", filters=4, units=8), (8, 8, 1), 3, adapt_data=raw)
    adapted = adapt_source(source, (8, 8, 1), 2).model
    assert STANDARDIZE_LAYER not in _layer_names(adapted) and nested_layer(adapted, STANDARDIZE_LAYER) is not None
    assert float_preprocessing(adapted) == [STANDARDIZE_LAYER]
    assert scaling_statistics(adapted)["mean"] == pytest.approx([float(raw.mean())], rel=1e-5)
    ops = [op["op_name"] for op in tf.lite.Interpreter(model_content=quantize(adapted, "int8", raw))._get_ops_details()]
    assert ops.index("QUANTIZE") > ops.index("SUB")

    def splits(x):
        return DatasetSplits("t", x, np.zeros(len(x), np.int64), x, np.zeros(len(x), np.int64), x, np.zeros(len(x), np.int64), 2)

    candidates = [{"quantization": "int8", "int8_io": True}]
    with pytest.raises(ConfigError, match="the raw values the init_from model standardises first"):
        refuse_int8_io_on_raw_inputs(candidates, "cnn", splits(raw / 255), source=source)
    plain = build_model(TrainConfig(model="cnn", filters=4, units=8), (8, 8, 1), 3, adapt_data=raw / 255)
    refuse_int8_io_on_raw_inputs(candidates, "cnn", splits(raw / 255), source=plain)  # nothing to refuse
    class Log:  # the operator's task logger, as far as the warning goes
        messages: list[str] = []

        def warning(self, message, *args):
            self.messages.append(message % args)

    log = Log()
    warn_on_other_pixel_units(log, source, splits(raw / 255))  # trained on 0-255, given [0, 1]
    warn_on_other_pixel_units(log, plain, splits(raw))  # trained on [0, 1], given 0-255
    warn_on_other_pixel_units(log, plain, splits(raw / 255))  # the same units: no word
    assert [("source model standardises" in m, "leave [0, 1]" in m) for m in log.messages] == [(True, False), (False, True)]


def test_a_bundle_of_a_model_trained_on_other_units_refuses_image_files_and_takes_arrays(tmp_path):
    """Image files are read as pixels in [0, 1]; a model that standardises 0-255 values would see
    near-constant inputs and answer without an error."""
    from dlagent.errors import ConfigError
    from dlagent.ml.quantization import quantize
    from dlagent.ml.serving import TFLITE_FILE, load_bundle, write_serving_bundle
    from PIL import Image

    raw = np.random.default_rng(5).random((20, 8, 8), dtype=np.float32) * 255
    model = build_model(TrainConfig(model="cnn", filters=4, units=8), (8, 8), 2, adapt_data=raw)
    write_serving_bundle(tmp_path / "deploy", {TFLITE_FILE: quantize(model, "none")}, ["a", "b"], {})
    Image.fromarray(raw[0].astype(np.uint8)).save(tmp_path / "x.png")
    predictor = load_bundle(tmp_path / "deploy")
    with pytest.raises(ConfigError, match="trained on images in other units"):
        predictor.predict_images([str(tmp_path / "x.png")])
    np.testing.assert_allclose(predictor.predict(raw[:3]), model.predict(raw[:3], verbose=0), atol=1e-5)
