"""Running a TFLite file: float in, probabilities (or predicted values) out, one sample or whole batches, whatever the
model's input and output types (float32, or int8 with its quantization parameters)."""

from __future__ import annotations

import gzip
import math
import time

import numpy as np


class TFLiteModel:
    """A ``tf.lite.Interpreter`` with float in, probabilities out, whatever the model's I/O type.

    Int8 (or uint8) input/output tensors are quantized/dequantized with the tensors' own scale
    and zero point, so accuracy is computed the same way for every quantization mode. One
    interpreter serves single samples (the model's batch-1 shape); a second one, resized to
    ``batch_size``, serves batches.
    """

    def __init__(self, model_content: bytes, *, num_threads: int | None = 1):
        import tensorflow as tf

        self.model_content = bytes(model_content)
        self.num_threads = num_threads
        self._tf = tf
        self.interpreter = self._new_interpreter()
        self.input_detail = self.interpreter.get_input_details()[0]
        self.output_detail = self.interpreter.get_output_details()[0]
        self._batch_interpreters: dict[int, object] = {}

    def _new_interpreter(self):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "tf.lite.Interpreter is deprecated" (LiteRT is not installed)
            interpreter = self._tf.lite.Interpreter(model_content=self.model_content, num_threads=self.num_threads)
        interpreter.allocate_tensors()
        return interpreter

    def _to_input(self, x: np.ndarray) -> np.ndarray:
        dtype = self.input_detail["dtype"]
        if dtype in (np.int8, np.uint8):
            scale, zero_point = self.input_detail["quantization"]
            info = np.iinfo(dtype)
            return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)
        return np.asarray(x, dtype=dtype)

    def _from_output(self, y: np.ndarray) -> np.ndarray:
        if self.output_detail["dtype"] in (np.int8, np.uint8):
            scale, zero_point = self.output_detail["quantization"]
            return (y.astype(np.float32) - zero_point) * scale
        return y.astype(np.float32)

    def predict_one(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for one sample of shape ``(1, ...)``."""
        interpreter = self.interpreter
        interpreter.set_tensor(self.input_detail["index"], self._to_input(x))
        interpreter.invoke()
        return self._from_output(interpreter.get_tensor(self.output_detail["index"]))

    def _batch_interpreter(self, size: int):
        if size not in self._batch_interpreters:
            interpreter = self._new_interpreter()
            detail = interpreter.get_input_details()[0]
            interpreter.resize_tensor_input(detail["index"], [size, *detail["shape"][1:]], strict=False)
            interpreter.allocate_tensors()
            self._batch_interpreters[size] = interpreter
        return self._batch_interpreters[size]

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Probabilities for every sample in ``x`` (batched; the last batch is padded)."""
        from dlagent.ml.streaming import is_streamed

        x = x if is_streamed(x) else np.asarray(x, dtype=np.float32)  # streamed images are decoded a batch at a time
        if len(x) == 0:
            return np.zeros((0, *self.output_detail["shape"][1:]), np.float32)
        batch_size = max(1, min(batch_size, len(x)))
        interpreter = self._batch_interpreter(batch_size)
        in_index = interpreter.get_input_details()[0]["index"]
        out_index = interpreter.get_output_details()[0]["index"]
        outputs = []
        for chunk, n in padded_batches(x, batch_size):
            interpreter.set_tensor(in_index, self._to_input(chunk))
            interpreter.invoke()
            outputs.append(self._from_output(interpreter.get_tensor(out_index))[:n])
        return np.concatenate(outputs)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        """Classification accuracy of ``x`` against labels ``y``."""
        return float(np.mean(np.argmax(self.predict(x), axis=1) == y))

    def latency(self, x: np.ndarray, *, runs: int = 200, warmup: int = 10) -> dict:
        """Single-sample latency (ms) over ``runs`` calls, cycling through samples of ``x``."""
        samples = [np.asarray(x[i % len(x)][None], dtype=np.float32) for i in range(min(len(x), 64))]
        return latency_stats(self.predict_one, samples, runs=runs, warmup=warmup)

    def throughput(self, x: np.ndarray, *, batch_size: int = 256, repeats: int = 3) -> float:
        """Samples per second for ``x`` in batches (best of ``repeats`` passes)."""
        self.predict(x[:batch_size], batch_size=batch_size)  # warm-up
        best = math.inf
        for _ in range(repeats):
            started = time.perf_counter()
            self.predict(x, batch_size=batch_size)
            best = min(best, time.perf_counter() - started)
        return float(len(x) / best) if best > 0 else float("inf")


def gzip_size(data: bytes) -> int:
    """Bytes after gzip at the highest level (what a download or an OTA update carries)."""
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def padded_batches(x: np.ndarray, size: int):
    """Yield ``(batch, n_real)``: batches of exactly ``size`` rows, the last padded by repeating
    its final row, so a model with a fixed batch shape never sees a new shape."""
    for start in range(0, len(x), size):
        chunk = x[start : start + size]
        n = len(chunk)
        if n < size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - n, axis=0)])
        yield chunk, n


def latency_stats(fn, samples: list, *, runs: int = 200, warmup: int = 10, prefix: str = "") -> dict:
    """``{prefix}latency_ms_p50`` / ``_p95`` of ``fn(sample)``, cycling through ``samples``."""
    for i in range(warmup):
        fn(samples[i % len(samples)])
    times = np.empty(runs)
    for i in range(runs):
        sample = samples[i % len(samples)]
        started = time.perf_counter()
        fn(sample)
        times[i] = time.perf_counter() - started
    return {
        f"{prefix}latency_ms_p50": float(np.percentile(times, 50) * 1000.0),
        f"{prefix}latency_ms_p95": float(np.percentile(times, 95) * 1000.0),
    }
