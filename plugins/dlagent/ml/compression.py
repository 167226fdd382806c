"""Model compression: magnitude pruning, knowledge distillation and post-training quantization.

Everything here is written against Keras 3 directly (tensorflow-model-optimization refuses
Keras 3 models), and nothing imports Airflow. The steps, in the order :func:`compress` runs them:

1. **Distillation** (``distill=True``): a smaller ``mlp``/``cnn`` student learns from the
   teacher's soft targets at a ``temperature`` and from the hard labels, weighted by ``alpha``.
2. **Pruning** (``sparsity > 0``): the smallest-magnitude weights of every Dense/Conv kernel are
   set to zero (one global threshold by default, or the same fraction per layer), then a short fine-tune runs with the masks
   held fixed (a callback re-applies them after every batch). The ``polynomial`` schedule
   raises the sparsity gradually during the fine-tune instead of all at once.
3. **Quantization** with ``tf.lite.TFLiteConverter``: ``none`` (float32), ``dynamic``
   (int8 weights, float activations), ``float16`` (float16 weights) or ``int8`` (full
   integer: int8 weights and activations, calibrated on a representative sample of the
   *training* split, every op restricted to the int8 builtins).

   The conversion, the int8 I/O choice and a table model's float preprocessing are
   :mod:`dlagent.ml.quantization`.

:func:`compress` returns a :class:`Candidate`: the TFLite bytes, the (pruned or distilled)
Keras model and the measurements (size, gzip size, the test metrics through the TFLite
interpreter, single-sample latency p50/p95, batch throughput, measured sparsity).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from dlagent.errors import ConfigError
from dlagent.ml.config import AUTO_MODEL, resolve_model
from dlagent.ml.data import DatasetSplits
from dlagent.ml.distillation import STUDENT_MODELS, distill
from dlagent.ml.models import copy_model
from dlagent.ml.quantization import quantize, representative_sample, validate_quantization
from dlagent.ml.tflite import gzip_size
from dlagent.validation import check_choice, check_int, check_number, settings_from_dict

log = logging.getLogger(__name__)

PRUNING_SCOPES = ("layer", "global")
PRUNING_SCHEDULES = ("oneshot", "polynomial")
MAX_SPARSITY = 0.99
# Layer classes whose kernels are pruned (by class name, so no Keras import is needed here).
PRUNABLE_LAYERS = ("Dense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")


def validate_sparsity(value, field_name: str = "sparsity") -> float:
    """Return ``value`` as a float if it is a number in [0, 0.99]; raise :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(field_name, f"must be a number in [0, {MAX_SPARSITY}], got {value!r}.", "give the fraction of weights to zero, e.g. 0.8.")
    if not 0.0 <= value <= MAX_SPARSITY:
        raise ConfigError(
            field_name,
            f"must be in [0, {MAX_SPARSITY}], got {value}.",
            "give the fraction of weights to set to zero, e.g. 0.8 for 80% (1.0 would remove every weight).",
        )
    return float(value)


@dataclass(frozen=True)
class CompressionConfig:
    """Compression settings, validated on creation (the names are the Params' names)."""

    sparsity: float = 0.0
    pruning_scope: str = "global"
    pruning_schedule: str = "oneshot"
    fine_tune_epochs: int = 2
    fine_tune_learning_rate: float = 1e-3
    quantization: str = "int8"
    int8_io: bool = False
    representative_samples: int = 200
    distill: bool = False
    student_model: str = AUTO_MODEL  # the cnn for images, the mlp for a table's rows
    student_units: int = 32
    student_filters: int = 8
    temperature: float = 4.0
    alpha: float = 0.1
    distill_epochs: int = 10
    batch_size: int = 32
    seed: int = 42

    def __post_init__(self):
        validate_sparsity(self.sparsity)
        validate_quantization(self.quantization)
        check_choice("pruning_scope", self.pruning_scope, PRUNING_SCOPES)
        check_choice("pruning_schedule", self.pruning_schedule, PRUNING_SCHEDULES)
        check_choice("student_model", self.student_model, STUDENT_MODELS)
        check_int("fine_tune_epochs", self.fine_tune_epochs, low=0, high=1_000)
        check_int("representative_samples", self.representative_samples, low=1, high=100_000)
        check_int("student_units", self.student_units, low=1, high=65_536)
        check_int("student_filters", self.student_filters, low=1, high=4_096)
        check_int("distill_epochs", self.distill_epochs, low=1, high=10_000)
        check_int("batch_size", self.batch_size, low=1, high=65_536)
        check_int("seed", self.seed, low=0, high=2**31 - 1)
        check_number("fine_tune_learning_rate", self.fine_tune_learning_rate, low=0.0, high=10.0, low_open=True)
        check_number("temperature", self.temperature, low=0.0, high=100.0, low_open=True)
        check_number("alpha", self.alpha, low=0.0, high=1.0)
        for name in ("int8_io", "distill"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be true or false, got {getattr(self, name)!r}.", "give a boolean.")
        if self.pruning_schedule == "polynomial" and self.sparsity > 0 and self.fine_tune_epochs == 0:
            raise ConfigError(
                "fine_tune_epochs",
                "the 'polynomial' pruning schedule raises sparsity during the fine-tune, but fine_tune_epochs is 0.",
                "give fine_tune_epochs >= 1 or use pruning_schedule 'oneshot'.",
            )

    @classmethod
    def from_dict(cls, values: dict) -> CompressionConfig:
        """Build from a dict (Params, a plan); unknown keys are refused."""
        return settings_from_dict(cls, values, section="compression", prefix="", what="compression setting")

    def replace(self, **changes) -> CompressionConfig:
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def for_input(self, input_shape) -> CompressionConfig:
        """These settings with a distilled ``student_model: auto`` replaced by the student for samples of
        ``input_shape`` (:func:`dlagent.ml.config.resolve_model`), so the candidate's name and params say which."""
        if not self.distill or self.student_model != AUTO_MODEL:
            return self
        return self.replace(student_model=resolve_model(AUTO_MODEL, input_shape))

    @property
    def label(self) -> str:
        """A short readable name, e.g. ``student+pruned80+int8``."""
        parts = []
        if self.distill:
            parts.append("student" if self.student_model == AUTO_MODEL else f"student-{self.student_model}")
        if self.sparsity > 0:
            parts.append(f"pruned{round(self.sparsity * 100):d}")
        parts.append("float32" if self.quantization == "none" else self.quantization)
        return "+".join(parts)


@dataclass
class Candidate:
    """A compressed model: TFLite bytes, the Keras model they came from, and measurements."""

    name: str
    config: CompressionConfig
    tflite_bytes: bytes
    keras_model: object
    metrics: dict = field(default_factory=dict)



# --------------------------------------------------------------------------- pruning


def prunable_kernels(model) -> list:
    """``(layer, kernel_variable)`` for every Dense/Conv layer of ``model`` (nested models and custom layers too),
    except a transfer adapter's fixed colour conversion (``transfer_channels``)."""
    found = []
    for layer in _walk_layers(model):
        if type(layer).__name__ in PRUNABLE_LAYERS and getattr(layer, "kernel", None) is not None and not layer.name.startswith("transfer_"):
            found.append((layer, layer.kernel))
    return found


def _walk_layers(model):
    """Every layer inside ``model``, depth first: nested models, and the sub-layers of a custom
    layer (a user's builder may keep Dense layers inside its own layer class)."""
    flatten = getattr(model, "_flatten_layers", None)  # Keras 3's own walk of the layer tree
    if flatten is not None:
        yield from flatten(include_self=False, recursive=True)
        return
    for layer in getattr(model, "layers", []):
        if hasattr(layer, "layers") and layer is not model:
            yield from _walk_layers(layer)
        else:
            yield layer


def measure_sparsity(model, *, per_layer: bool = False):
    """Fraction of exactly-zero weights in the prunable kernels, read from the weights.

    With ``per_layer=True`` returns ``(overall, {layer_name: sparsity})``.
    """
    zeros = total = 0
    layers = {}
    for layer, kernel in prunable_kernels(model):
        values = np.asarray(kernel.numpy())
        layer_zeros = int(np.count_nonzero(values == 0))
        zeros += layer_zeros
        total += values.size
        layers[layer.name] = layer_zeros / values.size if values.size else 0.0
    overall = zeros / total if total else 0.0
    return (overall, layers) if per_layer else overall


def magnitude_masks(kernels: list, sparsity: float, scope: str = "layer") -> list[np.ndarray]:
    """Boolean keep-masks zeroing the ``sparsity`` fraction of smallest-magnitude weights.

    ``layer``: every kernel loses the same fraction. ``global``: one threshold over all
    kernels, so the large, redundant layers (the Dense layer after Flatten) lose most and the
    small first convolution little; on the digits CNN at 80% this keeps ~10 points more
    accuracy than the per-layer rule before fine-tuning. Exactly ``round(sparsity * n)``
    weights are dropped per layer (or in total), ties broken by position, so the measured
    sparsity equals the requested one.
    """
    sparsity = validate_sparsity(sparsity)
    check_choice("pruning_scope", scope, PRUNING_SCOPES)
    values = [np.abs(np.asarray(k.numpy() if hasattr(k, "numpy") else k, dtype=np.float32)) for k in kernels]
    if scope == "layer":
        return [_keep_mask(v.ravel(), int(round(sparsity * v.size))).reshape(v.shape) for v in values]
    flat = np.concatenate([v.ravel() for v in values]) if values else np.zeros(0, np.float32)
    keep = _keep_mask(flat, int(round(sparsity * flat.size)))
    masks, start = [], 0
    for v in values:
        masks.append(keep[start : start + v.size].reshape(v.shape))
        start += v.size
    return masks


def _keep_mask(magnitudes: np.ndarray, n_drop: int) -> np.ndarray:
    keep = np.ones(magnitudes.size, dtype=bool)
    if n_drop > 0:
        keep[np.argsort(magnitudes, kind="stable")[:n_drop]] = False
    return keep


def polynomial_sparsity(step: int, end_step: int, target: float, initial: float = 0.0, power: int = 3) -> float:
    """Sparsity at ``step`` of a gradual schedule: ``target + (initial - target)(1 - t)^power``."""
    if end_step <= 0:
        return target
    t = min(max(step / end_step, 0.0), 1.0)
    return target + (initial - target) * (1.0 - t) ** power


def prune(
    model,
    splits: DatasetSplits | None,
    sparsity: float,
    *,
    scope: str = "global",
    schedule: str = "oneshot",
    fine_tune_epochs: int = 2,
    learning_rate: float = 1e-3,
    batch_size: int = 32,
    seed: int = 42,
):
    """Return a pruned copy of ``model`` at ``sparsity`` (the input model is left untouched).

    ``oneshot`` zeroes the weights at once, then fine-tunes with the masks fixed;
    ``polynomial`` starts dense and raises the sparsity during the first 70% of the
    fine-tune steps, leaving the rest to recover. ``fine_tune_epochs=0`` prunes without
    training (``splits`` may then be ``None``).
    """
    import keras

    from dlagent.ml.callbacks import MaskedPruning

    sparsity = validate_sparsity(sparsity)
    check_choice("pruning_scope", scope, PRUNING_SCOPES)
    check_choice("pruning_schedule", schedule, PRUNING_SCHEDULES)
    check_int("fine_tune_epochs", fine_tune_epochs, low=0, high=1_000)
    if schedule == "polynomial" and fine_tune_epochs == 0 and sparsity > 0:
        raise ConfigError("fine_tune_epochs", "the 'polynomial' schedule needs fine_tune_epochs >= 1.", "raise it or use 'oneshot'.")
    pruned = copy_model(model)
    kernels = [kernel for _, kernel in prunable_kernels(pruned)]
    if not kernels:
        raise ConfigError("model", "has no Dense or Conv layers to prune.", "use sparsity 0 for this model.")
    masks = magnitude_masks(kernels, sparsity, scope)
    if fine_tune_epochs == 0 or sparsity == 0:
        for kernel, mask in zip(kernels, masks, strict=True):
            kernel.assign(kernel.numpy() * mask)
        return pruned
    if splits is None:
        raise ConfigError("splits", "fine-tuning after pruning needs the training data.", "pass the data set splits or fine_tune_epochs=0.")
    keras.utils.set_random_seed(seed)
    steps_per_epoch = math.ceil(len(splits.y_train) / batch_size)
    total_steps = steps_per_epoch * fine_tune_epochs
    end_step = max(1, int(0.7 * total_steps))
    callback = MaskedPruning(
        kernels, masks if schedule == "oneshot" else [np.ones_like(m) for m in masks],
        target=sparsity, scope=scope, schedule=schedule, end_step=end_step, frequency=max(1, end_step // 10),
    )
    from dlagent.ml.ensemble import is_ensemble, members_of, training_view
    from dlagent.ml.training import task_loss

    trainee = training_view(pruned) if is_ensemble(pruned) else pruned  # an ensemble's members fine-tune on their own losses
    trainee.compile(optimizer=keras.optimizers.Adam(learning_rate), **task_loss(splits.task, members_of(pruned)))
    started = time.perf_counter()
    from dlagent.ml.streaming import eval_data, fit_data, naming_bad_files

    with naming_bad_files(splits.x_train, splits.x_val):
        trainee.fit(**fit_data(splits.x_train, splits.y_train, batch_size=batch_size, seed=0),
                   validation_data=eval_data(splits.x_val, splits.y_val), epochs=fine_tune_epochs, callbacks=[callback], verbose=0)
    log.info("pruned to %.1f%% (%s, %s) and fine-tuned %d epochs in %.1fs; measured sparsity %.4f",
             sparsity * 100, scope, schedule, fine_tune_epochs, time.perf_counter() - started, measure_sparsity(pruned))
    return pruned


# --------------------------------------------------------------------------- the whole step


def compress(model, splits: DatasetSplits, config: CompressionConfig, *, measure: bool = True, latency_runs: int = 200,
             num_threads: int | None = 1) -> Candidate:
    """Distil (optional), prune (optional) and quantize ``model``; measure the result.

    The input model is never modified. Measurements (``measure=True``) are taken through the
    TFLite interpreter: the primary ``val_<metric>`` on the validation split (what the evaluate
    step and the agent choose among candidates with) and the task's ``test_<metric>`` on the test
    split (what is reported) (:mod:`dlagent.ml.metrics`),
    ``size_bytes``, ``gzip_size_bytes``, ``latency_ms_p50``/``latency_ms_p95`` (one sample per
    call), ``throughput_samples_per_s`` (batches), plus ``sparsity`` measured on the Keras
    weights, ``num_params`` and ``keras_test_<metric>`` (the primary metric before quantization).
    """
    if not isinstance(config, CompressionConfig):
        raise ConfigError("compression", f"must be a CompressionConfig, got {type(config).__name__}.", "use CompressionConfig.from_dict(...).")
    if config.distill and splits.is_regression:
        raise ConfigError("compression.distill", "distillation learns a classifier's soft class probabilities; this task is regression.",
                          "use pruning and quantization for a regression model (distill: false).")
    config = config.for_input(splits.input_shape)
    started = time.perf_counter()
    work = model
    if config.distill:
        work = distill(model, splits, student_model=config.student_model, student_units=config.student_units,
                       student_filters=config.student_filters, temperature=config.temperature, alpha=config.alpha,
                       epochs=config.distill_epochs, batch_size=config.batch_size, seed=config.seed)
    if config.sparsity > 0:
        work = prune(work, splits, config.sparsity, scope=config.pruning_scope, schedule=config.pruning_schedule,
                     fine_tune_epochs=config.fine_tune_epochs, learning_rate=config.fine_tune_learning_rate,
                     batch_size=config.batch_size, seed=config.seed)
    representative = representative_sample(splits, config.representative_samples, config.seed) if config.quantization == "int8" else None
    content = quantize(work, config.quantization, representative, int8_io=config.int8_io)
    candidate = Candidate(name=config.label, config=config, tflite_bytes=content, keras_model=work)
    candidate.metrics["compress_seconds"] = round(time.perf_counter() - started, 3)
    if measure:
        candidate.metrics.update(measure_candidate(candidate, splits, latency_runs=latency_runs, num_threads=num_threads))
    return candidate


def measure_candidate(candidate: Candidate, splits: DatasetSplits, *, latency_runs: int = 200, num_threads: int | None = 1) -> dict:
    from dlagent.ml.evaluation import keras_score
    from dlagent.ml.metrics import report_scores
    from dlagent.ml.tflite import TFLiteModel

    runner = TFLiteModel(candidate.tflite_bytes, num_threads=num_threads)
    metrics = {
        "size_bytes": len(candidate.tflite_bytes),
        "gzip_size_bytes": gzip_size(candidate.tflite_bytes),
        splits.primary.val_key: splits.primary.score(splits.y_val, runner.predict(splits.x_val)),
        **report_scores(splits.task, splits.y_test, runner.predict(splits.x_test), splits.primary),
        f"keras_{splits.primary.test_key}": keras_score(candidate.keras_model, splits),
        "sparsity": measure_sparsity(candidate.keras_model),
        "num_params": int(candidate.keras_model.count_params()),
    }
    metrics.update(runner.latency(splits.x_test, runs=latency_runs))
    metrics["throughput_samples_per_s"] = runner.throughput(splits.x_test)
    return metrics
