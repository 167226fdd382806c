"""Compression on real (small) models: every quantization mode runs in the TFLite interpreter
with the accuracy it reports, pruning reaches the requested sparsity measured on the weights,
and distillation yields a smaller student that works."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dlagent.errors import ConfigError
from dlagent.ml.compression import (
    CompressionConfig,
    compress,
    magnitude_masks,
    measure_sparsity,
    polynomial_sparsity,
    prunable_kernels,
    prune,
    validate_sparsity,
)
from dlagent.ml.config import TrainConfig
from dlagent.ml.quantization import QUANTIZATION_MODES, quantize

# Its module-scoped fixtures train models: all its tests on one pytest-xdist worker, so they train once.
pytestmark = pytest.mark.xdist_group("ml_compression")


@pytest.fixture(scope="module")
def teacher(digits_small):
    from dlagent.ml.training import fit

    return fit(digits_small, TrainConfig(model="cnn", epochs=10, filters=16, units=64, early_stopping_patience=0)).model


@pytest.fixture(scope="module")
def teacher_accuracy(teacher, digits_small):
    from dlagent.ml.evaluation import keras_score

    return keras_score(teacher, digits_small)


def _interpreter_accuracy(content: bytes, x: np.ndarray, y: np.ndarray) -> tuple[float, dict, dict]:
    """Accuracy computed with a bare tf.lite.Interpreter, one sample at a time (independent of
    dlagent's runner)."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=content)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    correct = 0
    for sample, label in zip(x, y, strict=True):
        value = sample[None].astype(np.float32)
        if inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            value = np.clip(np.round(value / scale + zero), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], value)
        interpreter.invoke()
        correct += int(np.argmax(interpreter.get_tensor(out["index"])[0]) == label)
    return correct / len(y), inp, out


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("bad", [-0.1, 1.0, 0.995, 2, float("nan"), "0.5", True, None])
def test_sparsity_outside_range_is_refused(bad):
    with pytest.raises(ConfigError) as err:
        CompressionConfig(sparsity=bad)
    assert err.value.field == "sparsity"
    assert "0.99" in str(err.value)


@pytest.mark.parametrize("good", [0, 0.0, 0.5, 0.99])
def test_sparsity_in_range_is_accepted(good):
    assert validate_sparsity(good) == float(good)
    assert CompressionConfig(sparsity=good).sparsity == good


@pytest.mark.parametrize("mode", ["int4", "INT8", "", None, "fp16"])
def test_unknown_quantization_mode_is_refused(mode):
    with pytest.raises(ConfigError) as err:
        CompressionConfig(quantization=mode)
    assert err.value.field == "quantization"
    assert "int8" in str(err.value)


def test_quantize_refuses_unknown_mode_before_converting(teacher):
    with pytest.raises(ConfigError) as err:
        quantize(teacher, "int3")
    assert err.value.field == "quantization"


@pytest.mark.parametrize("data", [None, np.zeros((0, 8, 8), np.float32)])
def test_int8_without_representative_data_is_refused(teacher, data):
    with pytest.raises(ConfigError) as err:
        quantize(teacher, "int8", data)
    assert err.value.field == "representative_data"
    assert "representative" in str(err.value)


def test_from_dict_refuses_unknown_keys_and_round_trips():
    config = CompressionConfig.from_dict({"sparsity": 0.8, "quantization": "int8", "distill": True})
    assert CompressionConfig.from_dict(config.to_dict()) == config
    assert config.label == "student+pruned80+int8"  # student_model 'auto': the cnn or the mlp, as the data's samples ask
    assert config.replace(student_model="mlp").label == "student-mlp+pruned80+int8"
    assert config.for_input((5,)).label == "student-mlp+pruned80+int8"  # where the data is known, the name says which
    assert config.for_input((8, 8)).label == "student-cnn+pruned80+int8"
    assert config.replace(distill=False).for_input((5,)).student_model == "auto"  # no student: nothing to choose
    with pytest.raises(ConfigError) as err:
        CompressionConfig.from_dict({"sparsty": 0.8})
    assert err.value.field == "sparsty"
    with pytest.raises(ConfigError):
        CompressionConfig.from_dict(["sparsity", 0.8])


@pytest.mark.parametrize(
    ("field", "value"),
    [("fine_tune_epochs", -1), ("temperature", 0), ("alpha", 1.5), ("student_units", 0), ("int8_io", "yes"),
     ("pruning_scope", "model"), ("pruning_schedule", "cubic"), ("student_model", "resnet"), ("representative_samples", 0)],
)
def test_other_settings_are_validated(field, value):
    with pytest.raises(ConfigError) as err:
        CompressionConfig(**{field: value})
    assert err.value.field == field


def test_polynomial_schedule_needs_fine_tune_epochs():
    with pytest.raises(ConfigError) as err:
        CompressionConfig(sparsity=0.5, pruning_schedule="polynomial", fine_tune_epochs=0)
    assert err.value.field == "fine_tune_epochs"


# --------------------------------------------------------------------------- quantization


@pytest.mark.parametrize(("mode", "int8_io"), [(m, False) for m in QUANTIZATION_MODES] + [("int8", True)])
def test_each_quantization_mode_runs_in_the_interpreter_with_the_accuracy_it_reports(teacher, teacher_accuracy, digits_small, mode, int8_io):
    candidate = compress(teacher, digits_small, CompressionConfig(quantization=mode, int8_io=int8_io), latency_runs=30)
    metrics = candidate.metrics
    accuracy, inp, out = _interpreter_accuracy(candidate.tflite_bytes, digits_small.x_test, digits_small.y_test)
    assert metrics["test_accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert abs(accuracy - teacher_accuracy) <= 0.035  # at most 3 of the 90 test samples change
    expected_io = np.int8 if int8_io else np.float32
    assert inp["dtype"] == expected_io and out["dtype"] == expected_io
    assert metrics["size_bytes"] == len(candidate.tflite_bytes)
    assert 0 < metrics["gzip_size_bytes"] <= metrics["size_bytes"]
    assert 0 < metrics["latency_ms_p50"] <= metrics["latency_ms_p95"]
    assert metrics["throughput_samples_per_s"] > 0
    assert metrics["sparsity"] == 0.0 and metrics["num_params"] == teacher.count_params()


def test_quantized_sizes_shrink_as_expected(teacher):
    float_size = len(quantize(teacher, "none"))
    weights_bytes = 4 * teacher.count_params()
    assert float_size >= weights_bytes
    assert len(quantize(teacher, "float16")) < 0.55 * float_size
    assert len(quantize(teacher, "dynamic")) < 0.3 * float_size
    representative = np.random.default_rng(0).uniform(0, 1, (50, 8, 8)).astype(np.float32)
    # int8 weights are a quarter of float32 ones; the file also holds names and quantization
    # parameters, whose length varies by a few bytes with Keras' per-process layer-name counter.
    assert len(quantize(teacher, "int8", representative)) < 0.32 * float_size


def test_int8_model_is_integer_inside(teacher, digits_small):
    import tensorflow as tf

    content = quantize(teacher, "int8", digits_small.x_train[:100])
    interpreter = tf.lite.Interpreter(model_content=content)
    dtypes = {d["dtype"] for d in interpreter.get_tensor_details() if len(d["shape"]) > 1 and "kernel" not in d["name"].lower()}
    weight_dtypes = {d["dtype"] for d in interpreter.get_tensor_details() if len(d["shape"]) >= 2}
    assert np.int8 in weight_dtypes
    assert np.float32 in dtypes  # float I/O at the edges only ...
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "QUANTIZE" in ops and "DEQUANTIZE" in ops  # ... converted by QUANTIZE/DEQUANTIZE ops


# --------------------------------------------------------------------------- pruning


def test_magnitude_masks_drop_exactly_the_smallest_weights():
    kernel = np.array([[0.5, -0.1], [0.05, -2.0]], dtype=np.float32)
    (mask,) = magnitude_masks([kernel], 0.5)
    assert mask.tolist() == [[True, False], [False, True]]
    small, large = np.linspace(0.01, 0.1, 10, dtype=np.float32), np.linspace(1, 2, 10, dtype=np.float32)
    global_masks = magnitude_masks([small, large], 0.5, scope="global")
    assert not global_masks[0].any() and global_masks[1].all()
    layer_masks = magnitude_masks([small, large], 0.5, scope="layer")
    assert layer_masks[0].sum() == 5 and layer_masks[1].sum() == 5


def test_polynomial_schedule_rises_to_the_target():
    values = [polynomial_sparsity(step, 100, 0.8) for step in range(0, 121, 10)]
    assert values[0] == 0.0 and values[-1] == pytest.approx(0.8)
    assert all(a <= b + 1e-12 for a, b in zip(values, values[1:], strict=False))


@pytest.mark.parametrize(("sparsity", "scope", "schedule"), [(0.8, "layer", "oneshot"), (0.5, "global", "polynomial"), (0.9, "layer", "polynomial")])
def test_pruning_reaches_the_requested_sparsity_on_the_weights(teacher, digits_small, sparsity, scope, schedule):
    before = [w.copy() for w in teacher.get_weights()]
    pruned = prune(teacher, digits_small, sparsity, scope=scope, schedule=schedule, fine_tune_epochs=2)
    kernels = [k.numpy() for _, k in prunable_kernels(pruned)]
    zeros = sum(int((k == 0).sum()) for k in kernels)
    total = sum(k.size for k in kernels)
    assert zeros / total == pytest.approx(sparsity, abs=0.002)  # counted here, on the weights
    overall, per_layer = measure_sparsity(pruned, per_layer=True)
    assert overall == pytest.approx(zeros / total)
    if scope == "layer":
        assert all(value == pytest.approx(sparsity, abs=0.01) for value in per_layer.values())
    assert all(np.array_equal(a, b) for a, b in zip(before, teacher.get_weights(), strict=True)), "the input model changed"
    assert measure_sparsity(teacher) < 0.01


def test_fine_tune_keeps_masks_and_recovers_accuracy(teacher, teacher_accuracy, digits_small):
    from dlagent.ml.evaluation import keras_score

    oneshot = prune(teacher, None, 0.8, fine_tune_epochs=0)
    tuned = prune(teacher, digits_small, 0.8, fine_tune_epochs=2)
    oneshot_zero = [k.numpy() == 0 for _, k in prunable_kernels(oneshot)]
    tuned_kernels = [k.numpy() for _, k in prunable_kernels(tuned)]
    assert all(np.array_equal(z, t == 0) for z, t in zip(oneshot_zero, tuned_kernels, strict=True)), "the masks moved"
    assert any(not np.allclose(a, b) for a, b in zip(oneshot.get_weights(), tuned.get_weights(), strict=True)), "no fine-tune happened"
    assert keras_score(tuned, digits_small) >= teacher_accuracy - 0.035


def test_pruned_int8_candidate_is_sparse_and_smaller_after_gzip(teacher, teacher_accuracy, digits_small):
    dense = compress(teacher, digits_small, CompressionConfig(quantization="int8"), latency_runs=20)
    sparse = compress(teacher, digits_small, CompressionConfig(quantization="int8", sparsity=0.8, fine_tune_epochs=3), latency_runs=20)
    assert sparse.metrics["sparsity"] == pytest.approx(0.8, abs=0.002)
    assert sparse.metrics["gzip_size_bytes"] < 0.6 * dense.metrics["gzip_size_bytes"]
    accuracy, _, _ = _interpreter_accuracy(sparse.tflite_bytes, digits_small.x_test, digits_small.y_test)
    assert sparse.metrics["test_accuracy"] == pytest.approx(accuracy)
    assert accuracy >= teacher_accuracy - 0.035


# --------------------------------------------------------------------------- distillation


def test_distillation_produces_a_smaller_working_student(teacher, teacher_accuracy, digits_small):
    config = CompressionConfig(distill=True, student_model="cnn", student_filters=4, student_units=16, distill_epochs=25,
                               temperature=4.0, alpha=0.1, quantization="int8")
    candidate = compress(teacher, digits_small, config, latency_runs=20)
    student = candidate.keras_model
    assert student.count_params() * 4 < teacher.count_params()
    assert candidate.metrics["num_params"] == student.count_params()
    assert student.output_shape == teacher.output_shape
    assert candidate.metrics["size_bytes"] < len(quantize(teacher, "int8", digits_small.x_train[:50])) / 3
    accuracy, _, _ = _interpreter_accuracy(candidate.tflite_bytes, digits_small.x_test, digits_small.y_test)
    assert candidate.metrics["test_accuracy"] == pytest.approx(accuracy)
    assert accuracy >= 0.75, f"student accuracy {accuracy:.3f} (teacher {teacher_accuracy:.3f})"
    probs = student.predict(digits_small.x_test[:5], verbose=0)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)  # the kept student ends in a softmax
    assert math.isfinite(candidate.metrics["latency_ms_p95"])


def test_the_default_student_is_the_cnn_for_images_and_the_mlp_for_a_tables_rows():
    """``student_model`` left at ``auto``: a table's teacher gets an ``mlp`` student that standardises
    its raw columns like the teacher (a ``cnn`` would refuse one-dimensional rows)."""
    from dlagent.ml.distillation import build_student

    rows = np.random.default_rng(0).normal(size=(40, 5)).astype("float32") * [1, 10, 100, 1000, 0.1]
    _, table_student = build_student("auto", (5,), 3, adapt_data=rows)
    _, image_student = build_student("auto", (8, 8), 10)
    assert (table_student.name, image_student.name) == ("dlagent_student_mlp", "dlagent_student_cnn")
    assert table_student.output_shape == (None, 3)


# --------------------------------------------------------------------------- int8 on tables


def test_int8_keeps_a_tables_imputation_and_standardisation_in_float(tmp_path, monkeypatch):
    """Columns in the thousands beside columns near 0.1, and NaN gaps: one int8 input scale
    would round the small columns to zero. The preprocessing stays float32, the dense layers are
    int8, and the accuracy stays with the Keras model's (fully int8, it falls to chance)."""
    import tensorflow as tf
    from dlagent.ml import quantization
    from dlagent.ml.data import load_dataset
    from dlagent.ml.evaluation import keras_score
    from dlagent.ml.training import fit

    from tests.ml.test_table_rows import _table

    splits = load_dataset(_table(tmp_path / "t.csv", rows=1200), seed=0, missing="impute")
    model = fit(splits, TrainConfig(model="mlp", epochs=12, seed=0)).model
    keras_accuracy = keras_score(model, splits)
    candidate = compress(model, splits, CompressionConfig(quantization="int8"), latency_runs=5)
    assert candidate.metrics["test_accuracy"] >= keras_accuracy - 0.03 and keras_accuracy >= 0.85
    interpreter = tf.lite.Interpreter(model_content=candidate.tflite_bytes)
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    assert ops.index("QUANTIZE") > ops.index("SUB") and "SELECT_V2" in ops[:ops.index("QUANTIZE")]  # gaps filled, then scaled, in float
    dense_weights = [t for t in interpreter.get_tensor_details() if "dense" in t["name"] and t["name"].endswith("MatMul")]
    assert dense_weights and all(t["dtype"] == np.int8 for t in dense_weights)
    monkeypatch.setattr(quantization, "float_preprocessing", lambda model: [])
    fully_int8 = compress(model, splits, CompressionConfig(quantization="int8"), latency_runs=5)
    assert fully_int8.metrics["test_accuracy"] < keras_accuracy - 0.2  # what the float preprocessing prevents


def test_int8_io_on_a_model_that_standardises_raw_columns_is_refused_before_converting():
    from dlagent.ml.models import build_model

    rows = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32) * [1, 1000, 0.01]
    model = build_model(TrainConfig(model="mlp", units=8), (3,), 2, adapt_data=rows)
    with pytest.raises(ConfigError, match="compression.int8_io.*integer input cannot carry"):
        quantize(model, "int8", rows, int8_io=True)
